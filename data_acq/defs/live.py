"""Live processing in Dagster: one run per live worker and window (data_acq.live.window does the
work), reporting what it staged and refreshed as the assets' materializations and checks."""

from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta

from dagster import (
    AssetCheckEvaluation,
    AssetKey,
    AssetMaterialization,
    Config,
    Failure,
    MetadataValue,
    MultiPartitionKey,
    Nothing,
    OpDefinition,
    OpExecutionContext,
    Out,
    Output,
    op,
)
from pydantic import Field

from data_acq.curate.staging import StageResult
from data_acq.curate.units import UnitResult
from data_acq.defs.checks import unit_checks
from data_acq.defs.partitions import unit_key
from data_acq.defs.processing import staging_metadata, unit_metadata
from data_acq.defs.resources import PipelineQueue, Storage
from data_acq.defs.windows import Slot, take_over
from data_acq.live.reports import Reports, StagingReports
from data_acq.live.shares import Share
from data_acq.live.window import Tick, WindowLimits, WindowStats, live_ticks
from data_acq.settings import Settings
from data_acq.storage import ObjectStore, StorageError

PROGRESS_EVERY_S = 300.0


class LiveConfig(Config):
    worker: int = Field(
        default=1, ge=1, description="Which live worker (1..DATA_ACQ_LIVE_WORKERS): its buckets"
    )
    window_s: float | None = Field(
        default=None,
        gt=0,
        description="Length of the window, after which the run ends; without it the "
        "deployment's (DATA_ACQ_LIVE_WINDOW)",
    )
    interval_s: float | None = Field(
        default=None,
        gt=0,
        description="Seconds between refreshes; without it the deployment's "
        "(DATA_ACQ_REFRESH_INTERVAL)",
    )


def _partition(result: UnitResult, start_date: date) -> MultiPartitionKey | None:
    """The unit's partition key, or None for a date outside the partitions (before
    DATA_ACQ_START_DATE, or after tomorrow: a logger's clock far ahead)."""
    today = datetime.now(UTC).date()
    if not start_date <= result.day <= today + timedelta(days=1):
        return None
    return unit_key(result.day, result.bucket)


def unit_events(
    store: ObjectStore, result: UnitResult, start_date: date
) -> Iterator[AssetMaterialization | AssetCheckEvaluation]:
    """A unit's refresh as a materialization of each curated table and a result of each check,
    all in the unit's partition."""
    partition = _partition(result, start_date)
    if partition is None:
        return
    for name, metadata in unit_metadata(store, result).items():
        yield AssetMaterialization(asset_key=name, partition=partition, metadata=metadata)  # type: ignore[arg-type]
    for check in unit_checks(result):
        yield AssetCheckEvaluation(
            asset_key=check.asset_key or AssetKey("readings"),
            check_name=str(check.check_name),
            passed=check.passed,
            metadata=check.metadata,
            severity=check.severity,
            partition=partition,
        )


def build_live_window(settings: Settings) -> OpDefinition:
    """The live op for one deployment: its workers, buckets, windows and partitions."""

    @op(
        description="One live window: every refresh interval, stage new raw objects (worker 1) and "
        "refresh this worker's pending units, reporting them as the curated assets' partitions and "
        "checks; at most a fixed number of unit reports an hour (data_acq.live.reports). Waits for "
        "its predecessor's window to end first. Fails when something still failed at the end.",
        out=Out(Nothing),
    )
    def live_window(
        context: OpExecutionContext,
        config: LiveConfig,
        storage: Storage,
        pipeline_queue: PipelineQueue,
    ) -> Iterator[AssetMaterialization | AssetCheckEvaluation | Output]:
        yield from work_window(context, config, storage, pipeline_queue, settings)

    return live_window


def work_window(
    context: OpExecutionContext,
    config: LiveConfig,
    storage: Storage,
    pipeline_queue: PipelineQueue,
    settings: Settings,
) -> Iterator[AssetMaterialization | AssetCheckEvaluation | Output]:
    try:
        share = Share(config.worker, settings.live_workers)
    except ValueError as exc:
        raise Failure(f"{exc} (DATA_ACQ_LIVE_WORKERS={settings.live_workers})") from None
    store = storage.store()
    take_over(
        context.instance,
        context.run.run_id,
        Slot("live", str(config.worker)),
        settings.handover_s,
        context.log.info,
    )
    window_s = config.window_s or settings.live_window_s
    interval_s = config.interval_s or settings.refresh_interval_s
    context.log.info(
        f"{share}: buckets {_buckets(share, settings.buckets)} of {settings.buckets}"
        f"{' (and staging)' if share.stages else ''}, every {interval_s:g} s for "
        f"{window_s:.0f} s"
    )
    limits = WindowLimits(window_s=window_s, interval_s=interval_s)
    reports, staging = Reports(), StagingReports()
    stats = WindowStats()
    outside: set[tuple] = set()
    last_progress = datetime.now(UTC)
    try:
        ticks = live_ticks(
            store, share, settings.buckets, limits, pipeline_queue.queue_url, stats=stats
        )
        for tick in ticks:
            yield from _tick_events(
                context, store, tick, reports, staging, outside, settings.start_date
            )
            if (tick.at - last_progress).total_seconds() >= PROGRESS_EVERY_S:
                last_progress = tick.at
                context.log.info(_summary(stats))
    except StorageError as exc:  # the bucket count refused, before any work
        raise Failure(description=str(exc)) from None
    if staged := staging.last():
        yield _staged(staged)
    for result in reports.last():
        yield from unit_events(store, result, settings.start_date)
    metadata = {
        "ticks": stats.ticks,
        "raw_objects_staged": stats.raw_objects,
        "messages_staged": stats.messages,
        "unit_refreshes": stats.refreshes,
        "unit_reports_left": len(reports.waiting),
        "failures": stats.failures,
        "cpu_s": round(stats.cpu_s, 1),
        "busy_share": round(stats.busy_s / max(window_s, 1.0), 3),
        "still_failing": MetadataValue.json(stats.failing),
    }
    if stats.failing:
        raise Failure(
            description=f"{len(stats.failing)} still failing at the end of the window: "
            + "; ".join(f"{what}: {why}" for what, why in sorted(stats.failing.items())[:5]),
            metadata=metadata,
        )
    context.log.info(_summary(stats))
    yield Output(None, metadata=metadata)


def _staged(result: StageResult) -> AssetMaterialization:
    return AssetMaterialization(asset_key="staged_raw", metadata=staging_metadata(result))  # type: ignore[arg-type]


def _buckets(share: Share, buckets: int) -> str:
    owned = [b for b in range(buckets) if share.owns(b)]
    return ", ".join(f"{b:02d}" for b in owned[:8]) + (" ..." if len(owned) > 8 else "")


def _summary(stats: WindowStats) -> str:
    return (
        f"{stats.ticks} refreshes so far: {stats.raw_objects:,} raw objects "
        f"({stats.messages:,} messages) staged, {stats.refreshes:,} unit refreshes, "
        f"{stats.failures} failures, {stats.cpu_s:.1f} CPU-s"
    )


def _tick_events(
    context: OpExecutionContext,
    store: ObjectStore,
    tick: Tick,
    reports: Reports,
    staging: StagingReports,
    outside: set[tuple],
    start_date: date,
) -> Iterator[AssetMaterialization | AssetCheckEvaluation]:
    if tick.staged and (staged := staging.add(tick.staged)):
        yield _staged(staged)
    for what, why in tick.failed.items():
        context.log.warning(f"{what} failed (tried again after a back-off): {why}")
    for result in tick.units:
        unit = (result.day, result.bucket)
        if _partition(result, start_date) is None:
            if unit not in outside:  # once: it is built, but no partition can show it
                outside.add(unit)
                context.log.warning(
                    f"{result.day} bucket {result.bucket:02d} is outside the date partitions "
                    f"({start_date} to tomorrow): built, not shown as a partition"
                )
            continue
        reports.add(result)
    for result in reports.due():
        yield from unit_events(store, result, start_date)
    if tick.warehouse:
        yield AssetMaterialization(
            asset_key="warehouse", metadata={"path": MetadataValue.path(tick.warehouse)}
        )
