"""Jobs for operators."""

from dagster import AssetSelection, OpExecutionContext, Output, define_asset_job, job, op

from data_acq.broker import connect, make_client
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
