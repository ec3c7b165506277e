"""The drain sensor: exactly one drain run active per subscription, relaunched as runs end."""

import json
import time

from dagster import (
    AssetKey,
    DagsterRunStatus,
    DefaultSensorStatus,
    EventLogEntry,
    RunRequest,
    RunsFilter,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    asset_sensor,
    sensor,
)

from data_acq.defs.assets import daily
from data_acq.defs.jobs import curate_job, drain_job, stage_job
from data_acq.defs.resources import Storage
from data_acq.process import new_raw_keys
from data_acq.settings import Subscription

SUBSCRIPTION_TAG = "data_acq/subscription"
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
        for sub in subscriptions:
            tags = {SUBSCRIPTION_TAG: sub.name}
            active = context.instance.get_runs(
                filters=RunsFilter(job_name=drain_job.name, tags=tags, statuses=ACTIVE), limit=1
            )
            if active:
                skipped.append(
                    f"{sub.name}: run {active[0].run_id[:8]} is {active[0].status.value}"
                )
                continue
            recent = context.instance.get_run_records(
                filters=RunsFilter(job_name=drain_job.name, tags=tags), limit=10
            )
            failures = _consecutive_failures([r.dagster_run.status for r in recent])
            if failures:
                wait = failure_backoff_s(failures)
                ended = recent[0].end_time or recent[0].update_timestamp.timestamp()
                remaining = ended + wait - time.time()
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
                                "config": {
                                    "subscription": sub.name,
                                    "topics": list(sub.topics),
                                    "client_id": sub.client_id,
                                    "max_seconds": window_s,
                                }
                            }
                        }
                    },
                    tags=tags,
                )
            )
        return SensorResult(
            run_requests=requests,
            skip_reason=SkipReason("; ".join(skipped)) if not requests else None,
            cursor=json.dumps(launched, sort_keys=True),
        )

    return drain_sensor


def build_processing_sensors(running: bool = False) -> list[SensorDefinition]:
    """The sensors that stage new raw objects and refresh the dates they touched."""

    @sensor(
        job=stage_job,
        minimum_interval_seconds=60,
        default_status=_status(running),
        description="Stages raw objects as they arrive: requests a stage_raw run when raw storage "
        "holds objects not processed yet and no stage_raw run is active.",
    )
    def new_raw_sensor(context: SensorEvaluationContext, storage: Storage) -> SensorResult:
        active = context.instance.get_runs(
            filters=RunsFilter(job_name=stage_job.name, statuses=ACTIVE), limit=1
        )
        if active:
            return SensorResult(
                skip_reason=SkipReason(f"stage_raw run {active[0].run_id[:8]} active")
            )
        keys = new_raw_keys(storage.store())
        if not keys:
            return SensorResult(skip_reason=SkipReason("no new raw objects"))
        return SensorResult(run_requests=[RunRequest(run_key=f"stage-through-{keys[-1]}")])

    @asset_sensor(
        asset_key=AssetKey("staged_raw"),
        job=curate_job,
        minimum_interval_seconds=30,
        default_status=_status(running),
        description="Late and new data: after each staging, refreshes exactly the measurement dates "
        "it touched (one curate_date run per date).",
    )
    def curation_sensor(
        context: SensorEvaluationContext, asset_event: EventLogEntry
    ) -> SensorResult:
        materialization = asset_event.asset_materialization
        dates_entry = materialization.metadata.get("dates") if materialization else None
        dates: list[str] = list(dates_entry.value) if dates_entry else []  # type: ignore[arg-type]
        valid = set(daily.get_partition_keys())
        requests = [
            RunRequest(run_key=f"curate-{asset_event.run_id}-{day}", partition_key=day)
            for day in dates
            if day in valid
        ]
        outside = sorted(set(dates) - valid)
        if outside:
            context.log.warning(
                f"dates outside the partitions, not refreshed: {', '.join(outside)}"
            )
        return SensorResult(
            run_requests=requests,
            skip_reason=None if requests else SkipReason("the staging touched no date"),
        )

    return [new_raw_sensor, curation_sensor]
