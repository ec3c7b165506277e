"""Acquisition: the raw_messages asset and the drain op that reports it, one materialization per
drain window that stored messages.

raw_messages is an asset no run "materializes" as a step: a drain works for a window, and an
asset selected by an always-running run would show "Materializing..." for good. The drain op
reports it, as live runs report the curated tables, and the drain sensor keeps the drains
going (so "Materialize" is not offered: a drain by hand is a launch of the `drain` job)."""

import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Literal

from dagster import (
    AssetMaterialization,
    AssetObservation,
    AssetSpec,
    Config,
    Failure,
    FreshnessPolicy,
    MetadataValue,
    Nothing,
    OpDefinition,
    OpExecutionContext,
    Out,
    Output,
    op,
)
from pydantic import Field

from data_acq import layout
from data_acq.acquire.broker import BrokerError
from data_acq.acquire.ca_cert import CACertError
from data_acq.acquire.drain import Drain, DrainError, DrainLimits, DrainStats, DrainWriteError
from data_acq.defs.partitions import OWNERS
from data_acq.defs.resources import MQTTBroker, Storage
from data_acq.defs.windows import Slot, take_over
from data_acq.settings import Settings
from data_acq.storage import StorageError

PROGRESS_EVERY_S = 30.0
_DEFAULTS = DrainLimits()


class DrainConfig(Config):
    subscription: str = Field(
        default="main",
        description="Name of the subscription (DATA_ACQ_SUBSCRIPTIONS; `main` without it): its "
        "topics and persistent-session client id come from the deployment's settings",
    )
    max_seconds: float | None = Field(
        default=None,
        description="Length of the drain window; without it the deployment's "
        "(DATA_ACQ_DRAIN_WINDOW)",
        gt=0,
    )
    idle_exit_s: float | None = Field(
        default=None, description="End early after this long without messages"
    )
    batch_messages: int = Field(
        default=_DEFAULTS.batch_messages, description="A batch is stored once this many arrived"
    )
    max_batch_age_s: float = Field(
        default=_DEFAULTS.max_batch_age_s, description="...or once its first message is this old"
    )
    max_disconnected_share: float = Field(
        default=_DEFAULTS.max_disconnected_share,
        description="A window that spent more than this share of its time without a connection "
        "to the broker did not drain",
    )
    when_mostly_disconnected: Literal["fail", "warn"] = Field(
        default="fail", description="...and then fails the run, or only warns"
    )


RAW_MESSAGES = "raw_messages"


def build_raw_messages(settings: Settings) -> AssetSpec:
    """The asset for one deployment: its freshness policy."""
    return AssetSpec(
        RAW_MESSAGES,
        group_name="acquisition",
        kinds={"mqtt", "ndjson"},
        owners=OWNERS,
        freshness_policy=FreshnessPolicy.time_window(
            fail_window=timedelta(minutes=settings.raw_freshness_minutes),
            warn_window=timedelta(minutes=settings.raw_freshness_minutes / 2),
        ),
        description=(
            "Raw MQTT messages, exactly as received, with topic and receive time: gzip NDJSON "
            "objects under <storage>/raw/date=YYYY-MM-DD/hour=HH/, written once and never "
            "changed. Each drain window that stored messages is a materialization (one that "
            "stored none is an observation), so the freshness policy turns red when no data "
            "arrived for DATA_ACQ_RAW_FRESHNESS_MINUTES; the drain sensor keeps one drain per "
            "subscription (each window is a run of the drain job)."
        ),
    )


def build_drain_op(settings: Settings) -> OpDefinition:
    """The drain op for one deployment: its drain window and hand-over."""

    @op(
        name=RAW_MESSAGES,  # run configuration: {"ops": {"raw_messages": {"config": ...}}}
        out=Out(Nothing),
        description="One drain window of one subscription into raw storage, reported as a "
        "materialization of raw_messages (an observation when nothing was stored).",
    )
    def drain_op(
        context: OpExecutionContext, config: DrainConfig, mqtt: MQTTBroker, storage: Storage
    ) -> Iterator[AssetMaterialization | AssetObservation | Output]:
        yield from drain_window(context, config, mqtt, storage, settings)
        yield Output(None)

    return drain_op


def drain_window(
    context: OpExecutionContext,
    config: DrainConfig,
    mqtt: MQTTBroker,
    storage: Storage,
    settings: Settings,
) -> Iterator[AssetMaterialization | AssetObservation]:
    broker = mqtt.subscription_settings(config.subscription)
    store = storage.store()
    take_over(
        context.instance,
        context.run.run_id,
        Slot("drain", config.subscription),
        settings.handover_s,
        context.log.info,
    )
    limits = DrainLimits(
        max_seconds=config.max_seconds or settings.drain_window_s,
        idle_exit_s=config.idle_exit_s,
        batch_messages=config.batch_messages,
        max_batch_age_s=config.max_batch_age_s,
        max_disconnected_share=config.max_disconnected_share,
    )
    context.log.info(
        f"draining {', '.join(broker.topics)} from {broker.address} as {broker.client_id} into "
        f"{store.url(layout.RAW)} for up to {limits.max_seconds:.0f} s"
    )
    last_report = [time.monotonic()]

    def progress(stats: DrainStats) -> None:
        if time.monotonic() - last_report[0] >= PROGRESS_EVERY_S:
            last_report[0] = time.monotonic()
            context.log.info(
                f"{stats.stored} messages stored in {stats.objects} objects, "
                f"{stats.acknowledged} acknowledged, from {len(stats.sites)} sites"
            )

    try:
        drain = Drain(
            broker,
            mqtt.ca_file(),
            store,
            limits,
            on_flush=progress,
            on_connection=context.log.warning,
            on_subscribed=lambda: context.log.info(
                f"subscribed to {', '.join(broker.topics)} as {broker.client_id}"
            ),
        )
        stats = drain.run()
    except (BrokerError, CACertError, DrainError, DrainWriteError, StorageError) as exc:
        raise Failure(description=str(exc)) from None  # the cause first, not a stack trace
    context.log.info(
        f"window ended: {stats.stored} messages stored in {stats.objects} objects; "
        f"{stats.connection_losses} connection losses, {stats.disconnected_s:.0f} s disconnected"
    )
    metadata: dict[str, object] = {
        **stats.to_metadata(),
        "connection_history": MetadataValue.json(stats.connection_events),
        "subscription": config.subscription,
        "raw_root": MetadataValue.path(store.url(layout.RAW)),
    }
    if stats.keys:
        metadata["last_object"] = MetadataValue.path(store.url(stats.keys[-1]))
    if summary := stats.unreachable(broker.address, limits.max_disconnected_share):
        if config.when_mostly_disconnected == "fail":
            # what was stored is stored; the broker keeps the rest for the next window
            raise Failure(description=summary, metadata=metadata)
        context.log.warning(summary)
    if stats.stored:
        yield AssetMaterialization(asset_key=RAW_MESSAGES, metadata=metadata)  # type: ignore[arg-type]
    else:
        yield AssetObservation(asset_key=RAW_MESSAGES, metadata=metadata)  # type: ignore[arg-type]
