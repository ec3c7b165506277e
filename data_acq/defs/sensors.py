"""The sensors: one drain run active per subscription, relaunched as runs end; staging as raw
objects arrive; one refresh per pending unit."""

import json
import time
from datetime import UTC, datetime, timedelta

from dagster import (
    DagsterRunStatus,
    DefaultSensorStatus,
    MultiPartitionKey,
    RunRequest,
    RunsFilter,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)
from dagster._core.storage.dagster_run import RunRecord

from data_acq.curate.staging import MAX_OBJECTS, new_raw_keys
from data_acq.curate.units import pending_units
from data_acq.defs.acquisition import SUBSCRIPTION_TAG, drain_subscription
from data_acq.defs.jobs import curate_job, drain_job, stage_job
from data_acq.defs.partitions import settings
from data_acq.defs.resources import Storage
from data_acq.settings import Subscription

PARTITION_TAG = "dagster/partition"
ACTIVE = [
    DagsterRunStatus.QUEUED,
    DagsterRunStatus.NOT_STARTED,
    DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED,
    DagsterRunStatus.CANCELING,
]
BACKOFF_BASE_S = 30.0
BACKOFF_MAX_S = 900.0


def failure_backoff_s(consecutive_failures: int) -> float:
    """30 s after one failed drain, doubling to at most 15 minutes."""
    if consecutive_failures == 0:
        return 0.0
    return min(BACKOFF_BASE_S * 2 ** (consecutive_failures - 1), BACKOFF_MAX_S)


def _consecutive_failures(statuses: list[DagsterRunStatus]) -> int:
    count = 0
    for status in statuses:  # newest first
        if status != DagsterRunStatus.FAILURE:
            break
        count += 1
    return count


def _status(running: bool) -> DefaultSensorStatus:
    return DefaultSensorStatus.RUNNING if running else DefaultSensorStatus.STOPPED


def _waiting_after_failures(recent: list[RunRecord]) -> tuple[int, float]:
    """(consecutive failures, seconds still to wait) from the newest runs of one kind."""
    failures = _consecutive_failures([r.dagster_run.status for r in recent])
    if not failures:
        return 0, 0.0
    ended = recent[0].end_time or recent[0].update_timestamp.timestamp()
    return failures, ended + failure_backoff_s(failures) - time.time()


def build_drain_sensor(
    subscriptions: tuple[Subscription, ...], window_s: float = 600.0, running: bool = False
) -> SensorDefinition:
    @sensor(
        job=drain_job,
        minimum_interval_seconds=15,
        default_status=_status(running),
        description=(
            "Keeps one drain run active per subscription: requests a run when none is queued or "
            "running, never a second one, and backs off after repeated failures (30 s doubling "
            "to 15 min). Turning it off lets the current windows finish and starts no more."
        ),
    )
    def drain_sensor(context: SensorEvaluationContext) -> SensorResult:
        launched: dict[str, int] = json.loads(context.cursor) if context.cursor else {}
        requests: list[RunRequest] = []
        skipped: list[str] = []
        # every active drain counts, also one launched by hand without the subscription tag
        active = {
            drain_subscription(run.run_config, run.tags): run
            for run in context.instance.get_runs(
                filters=RunsFilter(job_name=drain_job.name, statuses=ACTIVE)
            )
        }
        for sub in subscriptions:
            tags = {SUBSCRIPTION_TAG: sub.name}
            if sub.name in active:
                run = active[sub.name]
                skipped.append(f"{sub.name}: run {run.run_id[:8]} is {run.status.value}")
                continue
            recent = context.instance.get_run_records(
                filters=RunsFilter(job_name=drain_job.name, tags=tags), limit=10
            )
            failures, remaining = _waiting_after_failures(recent)
            if remaining > 0:
                skipped.append(
                    f"{sub.name}: {failures} failed runs in a row; next try in {remaining:.0f} s"
                )
                continue
            number = launched.get(sub.name, 0) + 1
            launched[sub.name] = number
            requests.append(
                RunRequest(
                    run_key=f"drain-{sub.name}-{number}",
                    run_config={
                        "ops": {
                            "raw_messages": {
                                "config": {"subscription": sub.name, "max_seconds": window_s}
                            }
                        }
                    },
                    # run monitoring fails a drain that hangs well past its window
                    tags={**tags, "dagster/max_runtime": str(int(window_s) + 900)},
                )
            )
        return SensorResult(
            run_requests=requests,
            skip_reason=SkipReason("; ".join(skipped)) if not requests else None,
            cursor=json.dumps(launched, sort_keys=True),
        )

    return drain_sensor


def build_processing_sensors(running: bool = False, interval_s: int = 60) -> list[SensorDefinition]:
    """The sensors that stage new raw objects and refresh the units they touched, every
    `interval_s` seconds (DATA_ACQ_REFRESH_INTERVAL): the cadence of live data."""

    @sensor(
        job=stage_job,
        minimum_interval_seconds=interval_s,
        default_status=_status(running),
        description="Stages raw objects as they arrive: requests a stage_raw run when raw storage "
        "holds objects not staged yet (found from the staging cursor) and no stage_raw run is "
        "active.",
    )
    def new_raw_sensor(context: SensorEvaluationContext, storage: Storage) -> SensorResult:
        active = context.instance.get_runs(
            filters=RunsFilter(job_name=stage_job.name, statuses=ACTIVE), limit=1
        )
        if active:
            return SensorResult(
                skip_reason=SkipReason(f"stage_raw run {active[0].run_id[:8]} active")
            )
        keys = new_raw_keys(storage.store(), limit=MAX_OBJECTS)
        if not keys:
            return SensorResult(skip_reason=SkipReason("no new raw objects"))
        return SensorResult(run_requests=[RunRequest(run_key=f"stage-through-{keys[-1]}")])

    @sensor(
        job=curate_job,
        minimum_interval_seconds=interval_s,
        default_status=_status(running),
        description="Late and new data: one curate_unit run for every unit (date x bucket of "
        "sites) with staged hours not built yet -- none while a run for that unit is queued or "
        "running, which picks up everything staged before it starts; after failures it waits "
        "30 s, doubling to 15 min. A crashed run leaves its unit pending, so it runs again.",
    )
    def curation_sensor(context: SensorEvaluationContext, storage: Storage) -> SensorResult:
        instance = context.instance
        active = {
            run.tags.get(PARTITION_TAG)
            for run in instance.get_runs(
                filters=RunsFilter(job_name=curate_job.name, statuses=ACTIVE)
            )
        }
        failed: dict[str, list[RunRecord]] = {}
        for record in instance.get_run_records(
            filters=RunsFilter(
                job_name=curate_job.name,
                statuses=[DagsterRunStatus.FAILURE],
                updated_after=datetime.now(UTC) - timedelta(seconds=BACKOFF_MAX_S),
            )
        ):
            failed.setdefault(record.dagster_run.tags.get(PARTITION_TAG, ""), []).append(record)
        first = settings.start_date
        requests: list[RunRequest] = []
        skipped: list[str] = []
        for day, bucket in sorted(pending_units(storage.store())):
            key = MultiPartitionKey({"date": day.isoformat(), "bucket": f"{bucket:02d}"})
            if day < first or day > datetime.now(UTC).date() + timedelta(days=1):
                skipped.append(f"{key}: outside the partitions (data-acq process builds it)")
            elif str(key) in active:
                skipped.append(f"{key}: a run is already queued or running")
            elif (wait := _backoff(failed.get(str(key), []))) > 0:
                skipped.append(f"{key}: failed recently; next try in {wait:.0f} s")
            else:
                requests.append(RunRequest(partition_key=key))
        if skipped:
            context.log.info("; ".join(skipped[:50]))
        return SensorResult(
            run_requests=requests,
            skip_reason=None
            if requests
            else SkipReason("; ".join(skipped[:20]) or "no staged data waits to be built"),
        )

    return [new_raw_sensor, curation_sensor]


def _backoff(failures: list[RunRecord]) -> float:
    """Seconds still to wait after a unit's recent failures (30 s doubling, at most 15 min)."""
    if not failures:
        return 0.0
    ended = max(r.end_time or r.update_timestamp.timestamp() for r in failures)
    return ended + failure_backoff_s(len(failures)) - time.time()
