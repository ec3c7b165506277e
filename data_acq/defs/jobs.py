"""Jobs for operators."""

from dagster import OpExecutionContext, Output, job, op

from data_acq.broker import connect, make_client
from data_acq.defs.resources import MQTTBroker


@op(description="Connect to the broker with the configured TLS, CA and credentials, then leave.")
def connect_to_broker(context: OpExecutionContext, mqtt: MQTTBroker) -> Output[str]:
    broker = mqtt.settings()
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
