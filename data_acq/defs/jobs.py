"""Jobs for operators."""

from datetime import UTC, datetime, timedelta

from dagster import (
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
from data_acq.defs.acquisition import raw_messages
from data_acq.defs.processing import curated, daily_charts, staged_raw, warehouse
from data_acq.defs.resources import MQTTBroker

# EcsRunLauncher sizes each run's task by these tags: a drain holds a batch or two, a unit's
# refresh one unit-hour at a time (docs/performance.md)
SMALL_TASK = {"ecs/cpu": "512", "ecs/memory": "1024"}
PROCESSING_TASK = {"ecs/cpu": "1024", "ecs/memory": "4096"}


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
    tags={"data_acq/kind": "drain", "dagster/max_retries": "2", **SMALL_TASK},
)


stage_job = define_asset_job(
    "stage_raw",
    selection=[staged_raw, warehouse],
    description="Stage the raw objects not staged yet by unit and hour, and keep the warehouse's "
    "views current.",
    tags=PROCESSING_TASK,
)

curate_job = define_asset_job(
    "curate_unit",
    selection=[curated],
    description="Refresh one unit (a measurement date and a bucket of sites): the hours new data "
    "touched, the daily tables, the SQS feed, the checks. Units run in parallel, one run each.",
    tags=PROCESSING_TASK,
)

charts_job = define_asset_job(
    "draw_charts",
    selection=[daily_charts],
    description="Draw a date's chart per site.",
    tags=PROCESSING_TASK,
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
