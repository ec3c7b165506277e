"""Jobs for operators."""

from datetime import UTC, datetime, timedelta

from dagster import (
    AssetSelection,
    Config,
    DagsterRunStatus,
    OpExecutionContext,
    Output,
    RunsFilter,
    define_asset_job,
    job,
    op,
)
from pydantic import Field

from data_acq.acquire.broker import connect, make_client
from data_acq.defs.assets import curated, daily_charts, raw_messages, staged_raw
from data_acq.defs.resources import MQTTBroker


@op(description="Connect to the broker with the configured TLS, CA and credentials, then leave.")
def connect_to_broker(context: OpExecutionContext, mqtt: MQTTBroker) -> Output[str]:
    broker = mqtt.settings().for_role("check")  # never the drain's session
    ca_file = mqtt.ca_file()
    client = make_client(broker, ca_file)
    connect(client, broker)
    client.disconnect()
    context.log.info(f"connected to {broker.address}")
    return Output(
        broker.address,
        metadata={
            "broker": broker.address,
            "tls": broker.tls,
            "protocol": f"MQTT {broker.protocol}",
            "ca_file": str(ca_file) if ca_file else "system CAs / none",
            "topics": ", ".join(broker.topics),
        },
    )


@job(description="Check that the broker is reachable with the configured TLS and credentials.")
def broker_check() -> None:
    connect_to_broker()


drain_job = define_asset_job(
    "drain",
    selection=[raw_messages],
    description=(
        "One drain window: the subscription's topics into raw storage, acknowledged only once "
        "stored. Started and restarted by the drain sensor, one run per subscription."
    ),
    # where run retries are on (deploy/dagster.yaml), a failed drain is retried at once
    tags={"data_acq/kind": "drain", "dagster/max_retries": "2"},
)


stage_job = define_asset_job(
    "stage_raw",
    selection=[staged_raw],
    description="File raw objects not processed yet under their measurement dates.",
)

curate_job = define_asset_job(
    "curate_date",
    selection=AssetSelection.assets(curated, daily_charts),
    description="Rebuild one measurement date: curated tables, aggregates, checks, warehouse, "
    "charts.",
)


class RunRetention(Config):
    days: int = Field(default=90, description="Finished runs older than this are deleted")


FINISHED = [DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED]


@op(description="Delete finished runs (and their event logs) older than the retention period.")
def delete_old_runs(context: OpExecutionContext, config: RunRetention) -> Output[int]:
    cutoff = datetime.now(UTC) - timedelta(days=config.days)
    deleted = 0
    while records := context.instance.get_run_records(
        filters=RunsFilter(statuses=FINISHED, created_before=cutoff), limit=500
    ):
        for record in records:
            context.instance.delete_run(record.dagster_run.run_id)
        deleted += len(records)
    context.log.info(f"deleted {deleted} runs created before {cutoff:%Y-%m-%d %H:%M} UTC")
    return Output(deleted, metadata={"deleted_runs": deleted, "cutoff": cutoff.isoformat()})


@job(description="Run retention: drains alone make 144 runs a day per subscription.")
def purge_old_runs() -> None:
    delete_old_runs()
