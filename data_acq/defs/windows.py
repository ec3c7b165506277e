"""Window runs: drains and live workers work for a window, then end, and a sensor keeps each
slot (a subscription, a live worker) going.

So that a run's start-up (a Fargate task: 30-90 s) is never in the data's path, the sensor
launches a slot's successor `handover_s` before the running window ends; the successor starts,
then waits inside its run until its predecessor has ended, and takes over at once. Whoever
launched it -- the sensor, a retry, someone in the UI -- a run works its slot only when no older
run of the slot is active: it waits for one that is about to end, and is refused otherwise.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from dagster import (
    DagsterInstance,
    DagsterRun,
    DagsterRunStatus,
    Failure,
    RunRecord,
    RunRequest,
    RunsFilter,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
)

from data_acq.backoff import MAX_S, failure_backoff_s

KIND_TAG = "data_acq/kind"
SUBSCRIPTION_TAG = "data_acq/subscription"
WORKER_TAG = "data_acq/live_worker"
DRAIN_JOB = "drain"
# EcsRunLauncher's tag for RunTask arguments: the drain job names its task definition in it
RUN_TASK_KWARGS = "ecs/run_task_kwargs"


def drain_task(task_definition: str | None) -> dict[str, str]:
    """The drain job's tag on ECS: drains run as tasks of their own definition (deploy/cfn.yaml:
    the MQTT credentials, the role that writes raw/). The guarded launcher
    (data_acq.run_launcher) allows this tag, on drains only."""
    if not task_definition:
        return {}
    return {RUN_TASK_KWARGS: json.dumps({"taskDefinition": task_definition})}


LIVE_JOB = "live_processing"
ACTIVE = [
    DagsterRunStatus.QUEUED,
    DagsterRunStatus.NOT_STARTED,
    DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED,
    DagsterRunStatus.CANCELING,
]
# a predecessor that ends this much later than the handover is still waited for, not refused
HANDOVER_SLACK_S = 60.0
# how long past its window a predecessor may go on (a drain's last flush, a unit's refresh)
OVERRUN_S = 1800.0
WORKED = {"drain": "being drained", "live": "being processed"}
WHY_ONE = {
    "drain": "a second drain would take over its MQTT session",
    "live": "two workers would refresh the same units",
}


@dataclass(frozen=True, slots=True)
class Slot:
    kind: str  # "drain" or "live"
    name: str  # the subscription, or the live worker's number

    def __str__(self) -> str:
        return f"subscription {self.name!r}" if self.kind == "drain" else f"live worker {self.name}"


def _config(run: DagsterRun, op: str) -> dict:
    return run.run_config.get("ops", {}).get(op, {}).get("config", {}) or {}


def slot_of(run: DagsterRun) -> Slot | None:
    """The slot a run works: a drain or a live run."""
    if run.job_name == DRAIN_JOB:
        name = run.tags.get(SUBSCRIPTION_TAG) or _config(run, "raw_messages").get("subscription")
        return Slot("drain", str(name or "main"))
    if run.job_name == LIVE_JOB:
        worker = run.tags.get(WORKER_TAG) or _config(run, "live_window").get("worker")
        return Slot("live", str(worker or 1))
    return None


def window_of(run: DagsterRun) -> float:
    """The run's window in seconds, from its configuration (the jobs' defaults without it)."""
    config = (
        _config(run, "raw_messages").get("max_seconds")
        if run.job_name != LIVE_JOB
        else _config(run, "live_window").get("window_s")
    )
    return float(config or 600.0)


def active_by_slot(instance: DagsterInstance) -> dict[Slot, list[RunRecord]]:
    slots: dict[Slot, list[RunRecord]] = {}
    for record in instance.get_run_records(filters=RunsFilter(statuses=ACTIVE)):
        slot = slot_of(record.dagster_run)
        if slot is not None:
            slots.setdefault(slot, []).append(record)
    return slots


def _order(record: RunRecord) -> tuple[datetime, str]:
    return record.create_timestamp, record.dagster_run.run_id


FINISHED = [DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED]


def window_began(instance: DagsterInstance, record: RunRecord) -> float:
    """When an active run's window began: when it took its slot over, that is when it started,
    or when the older run of its slot it waited for ended. The successor is launched a handover
    before this plus the window, so a slot's windows follow each other a window apart: as many
    runs an hour as windows fit in it, with no gap and no drift."""
    began = record.start_time or time.time()
    slot = slot_of(record.dagster_run)
    older = instance.get_run_records(
        filters=RunsFilter(statuses=FINISHED, created_before=record.create_timestamp), limit=100
    )  # newest first: its predecessor is among the last ones created before it
    for other in older:
        if other.end_time and slot_of(other.dagster_run) == slot:
            return max(began, other.end_time)
    return began


def take_over(
    instance: DagsterInstance,
    run_id: str,
    slot: Slot,
    handover_s: float,
    log: Callable[[str], None],
    poll_s: float = 1.0,
) -> None:
    """Return once this run may work `slot`: no older run of it is active. Wait for an older
    run whose window ends within the handover; raise Failure (the older run goes on) else."""
    told = False
    while True:
        records = active_by_slot(instance).get(slot, [])
        mine = next((r for r in records if r.dagster_run.run_id == run_id), None)
        older = [
            r
            for r in records
            if r.dagster_run.run_id != run_id and (mine is None or _order(r) < _order(mine))
        ]
        if not older:
            return
        now = time.time()
        ends = {
            r.dagster_run.run_id: (window_began(instance, r) if r.start_time else now)
            + window_of(r.dagster_run)
            for r in older
        }
        other, end = max(ends.items(), key=lambda item: item[1])
        status = next(r.dagster_run.status for r in older if r.dagster_run.run_id == other)
        if end - now > handover_s + HANDOVER_SLACK_S:
            raise Failure(
                f"{slot} is already {WORKED[slot.kind]} by run {other[:8]} (its window ends in "
                f"{end - now:.0f} s): {WHY_ONE[slot.kind]}"
            )
        if now - end > OVERRUN_S:
            raise Failure(
                f"run {other[:8]} of {slot} should have ended its window {now - end:.0f} s ago "
                f"and is still {status.value.lower()}: {WHY_ONE[slot.kind]}"
            )
        if not told:
            log(
                f"waiting for run {other[:8]} to end its window (in about {max(0, end - now):.0f} s)"
            )
            told = True
        time.sleep(poll_s)


@dataclass(frozen=True)
class WindowSpec:
    """What a sensor launches for one slot."""

    slot: Slot
    window_s: float
    run_config: dict
    tags: dict[str, str]


def window_requests(
    context: SensorEvaluationContext, job_name: str, specs: list[WindowSpec], handover_s: float
) -> SensorResult:
    """A run for every slot with none active (after a back-off when its runs keep failing), and
    its successor `handover_s` before the active one's window ends; never a third."""
    launched: dict[str, int] = json.loads(context.cursor) if context.cursor else {}
    active = active_by_slot(context.instance)
    now = time.time()
    requests: list[RunRequest] = []
    skipped: list[str] = []
    for spec in specs:
        runs = active.get(spec.slot, [])
        if len(runs) >= 2:
            skipped.append(f"{spec.slot}: a run and its successor are active")
            continue
        if runs:
            run = runs[0]
            started = run.start_time
            if run.dagster_run.status != DagsterRunStatus.STARTED or started is None:
                skipped.append(f"{spec.slot}: run {run.dagster_run.run_id[:8]} is starting")
                continue
            handover_at = (
                window_began(context.instance, run) + window_of(run.dagster_run) - handover_s
            )
            if now < handover_at:
                skipped.append(
                    f"{spec.slot}: run {run.dagster_run.run_id[:8]} works it; its successor is "
                    f"launched in {handover_at - now:.0f} s"
                )
                continue
        else:
            waiting = _failure_wait(context.instance, job_name, spec.slot)
            if waiting:
                skipped.append(f"{spec.slot}: {waiting}")
                continue
        number = launched.get(spec.slot.name, 0) + 1
        launched[spec.slot.name] = number
        requests.append(
            RunRequest(
                run_key=f"{spec.slot.kind}-{spec.slot.name}-{number}",
                run_config=spec.run_config,
                tags=spec.tags,
            )
        )
    return SensorResult(
        run_requests=requests,
        skip_reason=SkipReason("; ".join(skipped)) if not requests else None,
        cursor=json.dumps(launched, sort_keys=True),
    )


def _failure_wait(instance: DagsterInstance, job_name: str, slot: Slot) -> str | None:
    """Why to wait before the next run of a slot whose last runs failed, if so."""
    tag = SUBSCRIPTION_TAG if slot.kind == "drain" else WORKER_TAG
    recent = instance.get_run_records(
        filters=RunsFilter(
            job_name=job_name,
            tags={tag: slot.name},
            updated_after=datetime.now(UTC) - timedelta(seconds=2 * MAX_S),
        ),
        limit=10,
    )
    failures = 0
    for record in recent:  # newest first
        if record.dagster_run.status != DagsterRunStatus.FAILURE:
            break
        failures += 1
    if not failures:
        return None
    ended = recent[0].end_time or recent[0].update_timestamp.timestamp()
    # one failure (a dead task, a hiccup) is followed at once; then 30 s, doubling to 15 min
    remaining = ended + failure_backoff_s(failures - 1) - time.time()
    if remaining <= 0:
        return None
    return f"{failures} failed runs in a row; next try in {remaining:.0f} s"
