"""Assets: what data-acq produces, as the Dagster UI shows it."""

import base64
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetSpec,
    Config,
    DagsterRunStatus,
    DailyPartitionsDefinition,
    Failure,
    MaterializeResult,
    MetadataValue,
    RunsFilter,
    asset,
    multi_asset,
)
from dagster._core.instance import DagsterInstance
from pydantic import Field

from data_acq import layout
from data_acq.acquire.drain import Drain, DrainLimits, DrainStats
from data_acq.curate.charts import write_charts
from data_acq.curate.feed import send_new_documents
from data_acq.curate.units import DateResult, build_date, new_raw_keys, stage
from data_acq.curate.warehouse import refresh_warehouse_in
from data_acq.defs.resources import MQTTBroker, PipelineQueue, Storage
from data_acq.storage import ObjectStore

PROGRESS_EVERY_S = 30.0
_DEFAULTS = DrainLimits()


DRAIN_JOB = "drain"
SUBSCRIPTION_TAG = "data_acq/subscription"
RUNNING = [DagsterRunStatus.STARTING, DagsterRunStatus.STARTED]


class DrainConfig(Config):
    subscription: str = Field(
        default="main",
        description="Name of the subscription (DATA_ACQ_SUBSCRIPTIONS; `main` without it): its "
        "topics and persistent-session client id come from the deployment's settings",
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
    broker = mqtt.subscription_settings(config.subscription)
    _refuse_a_second_drain(context.instance, context.run.run_id, config.subscription)
    store = storage.store()
    limits = DrainLimits(
        max_seconds=config.max_seconds,
        idle_exit_s=config.idle_exit_s,
        batch_messages=config.batch_messages,
        max_batch_age_s=config.max_batch_age_s,
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

    stats = Drain(broker, mqtt.ca_file(), store, limits, on_flush=progress).run()
    context.log.info(f"window ended: {stats.stored} messages stored in {stats.objects} objects")
    metadata: dict[str, object] = {
        **stats.to_metadata(),
        "subscription": config.subscription,
        "raw_root": MetadataValue.path(store.url(layout.RAW)),
    }
    if stats.keys:
        metadata["last_object"] = MetadataValue.path(store.url(stats.keys[-1]))
    return MaterializeResult(metadata=metadata)


def drain_subscription(run_config: dict, tags: dict[str, str]) -> str:
    """The subscription a drain run drains: its tag, else its run configuration, else `main`."""
    if SUBSCRIPTION_TAG in tags:
        return tags[SUBSCRIPTION_TAG]
    config = run_config.get("ops", {}).get("raw_messages", {}).get("config", {})
    return str(config.get("subscription", "main"))


def _refuse_a_second_drain(instance: DagsterInstance, run_id: str, subscription: str) -> None:
    """One drain per subscription, whoever launched it: a second client with the same id would
    take the first one's MQTT session over. Of two running at once, the older one goes on."""
    records = instance.get_run_records(filters=RunsFilter(job_name=DRAIN_JOB, statuses=RUNNING))
    mine = next((r for r in records if r.dagster_run.run_id == run_id), None)
    for record in records:
        run = record.dagster_run
        if run.run_id == run_id or drain_subscription(run.run_config, run.tags) != subscription:
            continue
        if mine is None or record.create_timestamp <= mine.create_timestamp:
            raise Failure(
                f"subscription {subscription!r} is already being drained by run "
                f"{run.run_id[:8]}; a second drain would take over its MQTT session"
            )


daily = DailyPartitionsDefinition(start_date="2024-01-01", end_offset=1, timezone="UTC")
CURATED_ASSETS = {
    "readings": "Tidy readings (site, time, vid, device, field, value, value_text, received_at), "
    "de-duplicated on site, time, vid, device and field; Parquet in "
    "curated/readings/date=D/bucket=BB/.",
    "device_status": "The `_s` status readings (site, time, vid, device, content, level).",
    "pipeline_payloads": "Each accepted payload in the pipeline format (site, time, received_at, "
    "document), once per site and document.",
    "rejects": "Every payload, reading or value that could not be used: reason, path, the raw "
    "object and line it came from, and the payload's SHA-1 (one row however often delivered).",
    "readings_15min": "Per site, vid, device, field and quarter hour: mean, min, max, last, count.",
    "energy_daily": "The day's increase of each cumulative counter (E, E_exported, total_yield, "
    "runtime ...); a step down is a reset and counts as zero.",
    "completeness_daily": "Per site: payloads expected at one a minute, received, ratio, gaps.",
}
MAX_REJECTED_SHARE = 0.01
PREVIEW_CHARTS = 3  # charts embedded in the metadata; all of them are in the folder
MIN_COMPLETENESS = 0.95


@asset(
    group_name="processing",
    deps=[raw_messages],
    kinds={"polars"},
    description=(
        "Raw objects not processed yet, flattened and filed by measurement date under staging/. "
        "Its metadata lists the dates touched; the curation sensor refreshes exactly those."
    ),
)
def staged_raw(context: AssetExecutionContext, storage: Storage) -> MaterializeResult:
    store = storage.store()
    keys = new_raw_keys(store)
    result = stage(store, keys, progress=context.log.info) if keys else None
    dates = sorted(d.isoformat() for d in result.dates) if result else []
    context.log.info(f"staged {len(keys)} raw objects; dates touched: {', '.join(dates) or 'none'}")
    return MaterializeResult(
        metadata={
            "raw_objects": len(keys),
            "messages": result.messages if result else 0,
            "accepted": result.accepted if result else 0,
            "rejects": result.rejects if result else 0,
            "dates": MetadataValue.json(dates),
        }
    )


@multi_asset(
    specs=[
        AssetSpec(
            name, description=text, deps=[staged_raw], group_name="processing", kinds={"parquet"}
        )
        for name, text in CURATED_ASSETS.items()
    ]
    + [
        AssetSpec(
            "warehouse",
            deps=list(CURATED_ASSETS),
            group_name="processing",
            kinds={"duckdb"},
            description="DuckDB file <storage>/warehouse.duckdb with one table per curated dataset "
            "(see docs/analysts.md).",
        )
    ],
    partitions_def=daily,
    pool="warehouse",  # refreshes of one warehouse file must not overlap: limit this pool to 1
    check_specs=[
        AssetCheckSpec(
            "rejected_share",
            asset="rejects",
            description=f"At most {MAX_REJECTED_SHARE:.0%} of payloads rejected",
        ),
        AssetCheckSpec(
            "duplicates_removed",
            asset="readings",
            description="Redelivered readings were removed, and none remain",
        ),
        AssetCheckSpec(
            "completeness",
            asset="completeness_daily",
            description=f"Every site delivered at least {MIN_COMPLETENESS:.0%} of its minutes so far",
        ),
        AssetCheckSpec(
            "clock_skew",
            asset="readings",
            description="No payload time is ahead of its receive time by more than 5 minutes",
        ),
        AssetCheckSpec(
            "freshness",
            asset="readings",
            description="No site fell silent for more than an hour before the day ended (or now)",
        ),
    ],
)
def curated(
    context: AssetExecutionContext, storage: Storage, pipeline_queue: PipelineQueue
) -> Iterator[MaterializeResult | AssetCheckResult]:
    day = date.fromisoformat(context.partition_key)
    store = storage.store()
    built = build_date(store, day, progress=context.log.info)
    if pipeline_queue.queue_url:
        sent = send_new_documents(store, day, pipeline_queue.client(), pipeline_queue.queue_url)
        built.sent_to_queue = sent.sent
        context.log.info(
            f"sent {sent.sent} new pipeline documents ({sent.already_sent} sent before)"
        )
    yield from curated_results(store, built)
    location = refresh_warehouse_in(store, [day])
    yield MaterializeResult(asset_key="warehouse", metadata={"path": MetadataValue.path(location)})


def curated_results(
    store: ObjectStore, built: DateResult, now: datetime | None = None
) -> Iterator[MaterializeResult | AssetCheckResult]:
    """One materialization per curated asset of the date, and the date's data-quality checks."""
    for name in CURATED_ASSETS:
        metadata: dict[str, object] = {
            "rows": built.rows.get(name, 0),
            "location": MetadataValue.path(store.url(layout.curated_prefix(name, built.day))),
        }
        if name == "readings":
            metadata |= {"sites": built.sites, "duplicates_removed": built.duplicates_removed}
        if name == "pipeline_payloads" and built.sent_to_queue is not None:
            metadata["sent_to_sqs"] = built.sent_to_queue
        yield MaterializeResult(asset_key=name, metadata=metadata)
    yield AssetCheckResult(
        check_name="rejected_share",
        asset_key="rejects",
        passed=built.rejected_share <= MAX_REJECTED_SHARE,
        severity=AssetCheckSeverity.WARN,
        metadata={
            "rejected_payloads": built.rejected_payloads,
            "accepted_payloads": built.accepted_payloads,
            "share": round(built.rejected_share, 5),
        },
    )
    yield AssetCheckResult(
        check_name="duplicates_removed",
        asset_key="readings",
        passed=built.duplicates_left == 0,
        metadata={"removed": built.duplicates_removed, "left": built.duplicates_left},
    )
    worst = sorted(built.completeness.items(), key=lambda item: item[1])
    yield AssetCheckResult(
        check_name="completeness",
        asset_key="completeness_daily",
        passed=all(ratio >= MIN_COMPLETENESS for _, ratio in worst),
        severity=AssetCheckSeverity.WARN,
        metadata={
            "sites": len(worst),
            "below_target": sum(ratio < MIN_COMPLETENESS for _, ratio in worst),
            "worst_sites": MetadataValue.json({str(site): ratio for site, ratio in worst[:10]}),
        },
    )
    yield AssetCheckResult(
        check_name="clock_skew",
        asset_key="readings",
        passed=built.ahead_of_receipt == 0,
        severity=AssetCheckSeverity.WARN,
        metadata={
            "readings_ahead_of_receipt": built.ahead_of_receipt,
            "max_lag_s": round(built.max_lag_s, 1) if built.max_lag_s is not None else "none",
        },
    )
    silent = built.silent_sites(now or datetime.now(UTC))
    yield AssetCheckResult(
        check_name="freshness",
        asset_key="readings",
        passed=not silent,
        severity=AssetCheckSeverity.WARN,
        metadata={
            "sites": len(built.last_payload),
            "silent_sites": MetadataValue.json({str(site): m for site, m in silent.items()}),
            "last_payload": max(built.last_payload.values()).isoformat()
            if built.last_payload
            else "none",
        },
    )


@asset(
    partitions_def=daily,
    deps=["readings_15min", "energy_daily"],
    group_name="processing",
    kinds={"matplotlib"},
    description="A daily chart per site (power through the day, counters' gain since midnight), "
    "PNG under curated/charts/date=D/site=<site key>.png; the first ones are shown in the "
    "metadata.",
)
def daily_charts(context: AssetExecutionContext, storage: Storage) -> MaterializeResult:
    store = storage.store()
    day = date.fromisoformat(context.partition_key)
    charts = write_charts(store, day, progress=context.log.info)
    previews = "\n\n".join(
        f"**{_markdown_text(site)}**\n\n"
        f"![chart](data:image/png;base64,{base64.b64encode(store.get(key)).decode()})"
        for site, key in charts[:PREVIEW_CHARTS]
    )
    return MaterializeResult(
        metadata={
            "charts": len(charts),
            "folder": MetadataValue.path(store.url(layout.curated_prefix("charts", day))),
            "preview": MetadataValue.md(previews or "no data for this date"),
        }
    )


def _markdown_text(site: str | None) -> str:
    """A logger-chosen site id shown as text, not as Markdown or HTML."""
    text = "(no site)" if site is None else repr(site)[1:-1] or "(empty site id)"
    return "".join(f"\\{c}" if c in "\\`*_{}[]()<>#+-.!|~" else c for c in text[:80])
