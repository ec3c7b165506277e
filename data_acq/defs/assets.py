"""Assets: what data-acq produces, as the Dagster UI shows it."""

import time

from dagster import AssetExecutionContext, Config, MaterializeResult, MetadataValue, asset
from pydantic import Field

from data_acq.defs.resources import MQTTBroker, Storage
from data_acq.drain import Drain, DrainLimits, DrainStats
from data_acq.raw import RAW_PREFIX

PROGRESS_EVERY_S = 30.0
_DEFAULTS = DrainLimits()


class DrainConfig(Config):
    subscription: str = Field(
        default="main", description="Name of the subscription (tag of the run)"
    )
    topics: list[str] = Field(
        default_factory=list, description="Topic filters; default: MQTT_TOPIC"
    )
    client_id: str = Field(
        default="", description="Persistent-session client id; default: MQTT_CLIENT_ID"
    )
    max_seconds: float = Field(default=600.0, description="Length of the drain window")
    idle_exit_s: float | None = Field(
        default=None, description="End early after this long without messages"
    )
    batch_messages: int = _DEFAULTS.batch_messages
    max_batch_age_s: float = _DEFAULTS.max_batch_age_s


@asset(
    group_name="acquisition",
    kinds={"mqtt"},
    description=(
        "Raw MQTT messages, exactly as received, with topic and receive time: gzip NDJSON objects "
        "under <storage>/raw/date=YYYY-MM-DD/hour=HH/, written once and never changed. Each "
        "materialization is one drain window; the drain sensor keeps one running per subscription."
    ),
)
def raw_messages(
    context: AssetExecutionContext, config: DrainConfig, mqtt: MQTTBroker, storage: Storage
) -> MaterializeResult:
    broker = mqtt.settings(topics=config.topics or None, client_id=config.client_id or None)
    store = storage.store()
    limits = DrainLimits(
        max_seconds=config.max_seconds,
        idle_exit_s=config.idle_exit_s,
        batch_messages=config.batch_messages,
        max_batch_age_s=config.max_batch_age_s,
    )
    context.log.info(
        f"draining {', '.join(broker.topics)} from {broker.address} as {broker.client_id} into "
        f"{store.url(RAW_PREFIX)} for up to {limits.max_seconds:.0f} s"
    )
    last_report = [time.monotonic()]

    def progress(stats: DrainStats) -> None:
        if time.monotonic() - last_report[0] >= PROGRESS_EVERY_S:
            last_report[0] = time.monotonic()
            context.log.info(
                f"{stats.stored} messages stored in {stats.objects} objects, "
                f"{stats.acknowledged} acknowledged, from {len(stats.sites)} sites"
            )

    stats = Drain(broker, mqtt.ca_file(), store, limits, on_flush=progress).run()
    context.log.info(f"window ended: {stats.stored} messages stored in {stats.objects} objects")
    metadata: dict[str, object] = {
        **stats.to_metadata(),
        "subscription": config.subscription,
        "raw_root": MetadataValue.path(store.url(RAW_PREFIX)),
    }
    if stats.keys:
        metadata["last_object"] = MetadataValue.path(store.url(stats.keys[-1]))
    return MaterializeResult(metadata=metadata)
