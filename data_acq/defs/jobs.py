"""Jobs for operators."""

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, NamedTuple

from dagster import (
    AssetObservation,
    Config,
    DagsterRunStatus,
    JobDefinition,
    OpExecutionContext,
    Output,
    RunsFilter,
    define_asset_job,
    in_process_executor,
    job,
    op,
)
from pydantic import Field

from data_acq.acquire.broker import connect, make_client
from data_acq.curate.compaction import RETAIN, upkeep
from data_acq.curate.tables import CuratedTables
from data_acq.defs.acquisition import build_drain_op
from data_acq.defs.live import build_live_window
from data_acq.defs.processing import CURATED_ASSETS
from data_acq.defs.resources import MQTTBroker, Storage
from data_acq.defs.windows import DRAIN_JOB, KIND_TAG, LIVE_JOB, OVERRUN_S, drain_task
from data_acq.progress import logged
from data_acq.settings import Settings

if TYPE_CHECKING:  # what define_asset_job returns has no public name
    from dagster._core.definitions.unresolved_asset_job_definition import (
        UnresolvedAssetJobDefinition,
    )

# EcsRunLauncher sizes each run's task by these tags: a drain holds a batch or two, a unit's
# refresh one unit-hour at a time (docs/performance.md)
SMALL_TASK = {"ecs/cpu": "512", "ecs/memory": "1024"}
PROCESSING_TASK = {"ecs/cpu": "1024", "ecs/memory": "4096"}


class Jobs(NamedTuple):
    """The jobs whose runs' tags follow the deployment (windows, ECS task sizes)."""

    drain: JobDefinition
    live: JobDefinition
    stage: "UnresolvedAssetJobDefinition"
    curate: "UnresolvedAssetJobDefinition"
    charts: "UnresolvedAssetJobDefinition"
    compact: JobDefinition


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


def max_runtime(window_s: float, handover_s: float, overrun_s: float) -> dict[str, str]:
    """Run monitoring stops a run this long after it started: its window, the wait for its
    predecessor, and a margin for a last flush or refresh."""
    return {"dagster/max_runtime": str(int(window_s + handover_s + overrun_s))}


def build_jobs(settings: Settings) -> Jobs:
    """The jobs for one deployment: the window runs' limits follow its windows, and where runs
    are ECS tasks, each job's tags size its task (local runs carry none)."""
    small, processing = (SMALL_TASK, PROCESSING_TASK) if settings.on_ecs else ({}, {})
    by_hand = {KIND_TAG: "processing", **processing}  # backfills and work launched by hand
    # Window runs do their work in the run's own process (Dagster's default executor would
    # start a child process for the step): a run whose process is killed then stops working,
    # instead of leaving a child that goes on draining or refreshing beside the run that
    # replaces it.
    drain_op = build_drain_op(settings)

    @job(
        name=DRAIN_JOB,
        executor_def=in_process_executor,
        description=(
            "One drain window: the subscription's topics into raw storage, acknowledged only "
            "once stored, reported as raw_messages. Started and restarted by the drain sensor, "
            "one run per subscription."
        ),
        # where run retries are on (deploy/dagster.yaml), a drain whose task died is retried
        # at once; the maximum runtime holds for every drain run, whoever launched it
        tags={
            KIND_TAG: "drain",
            "dagster/max_retries": "2",
            **small,
            **max_runtime(settings.drain_window_s, settings.handover_s, 900),
            **drain_task(settings.drain_task_definition),
        },
    )
    def drain_job() -> None:
        drain_op()

    live_window = build_live_window(settings)

    @job(
        name=LIVE_JOB,
        executor_def=in_process_executor,
        description="One live window of one worker: stage new raw objects and refresh the "
        "pending units of the worker's buckets every DATA_ACQ_REFRESH_INTERVAL, for "
        "DATA_ACQ_LIVE_WINDOW. Kept going by the live sensor, one run per worker (its successor "
        "overlapping its end).",
        tags={
            KIND_TAG: "live",
            **processing,
            **max_runtime(settings.live_window_s, settings.handover_s, OVERRUN_S),
        },
    )
    def live_job() -> None:
        live_window()

    stage_job = define_asset_job(
        "stage_raw",
        selection=["staged_raw", "warehouse"],
        description="Stage the raw objects not staged yet by unit and hour, and keep the "
        "warehouse's views current (live runs do this as they go; this job is for doing it by "
        "hand).",
        tags=by_hand,
    )
    curate_job = define_asset_job(
        "curate_unit",
        selection=list(CURATED_ASSETS),
        description="Refresh one unit (a measurement date and a bucket of sites): its pending "
        "hours, or all of them when none is pending (a rebuild); the daily tables, the SQS feed, "
        "the checks. For backfills and rebuilds: a backfill of many units fans out, one run "
        "each.",
        tags=by_hand,
    )
    charts_job = define_asset_job(
        "draw_charts",
        selection=["daily_charts"],
        description="Draw a date's chart per site.",
        tags=by_hand,
    )

    @job(
        description="Upkeep of the curated tables: closed dates compacted (late data included), "
        "old files deleted. Hourly by schedule; `data-acq compact` does the same.",
        tags=by_hand,
    )
    def compact_tables() -> None:
        compact_curated()

    return Jobs(drain_job, live_job, stage_job, curate_job, charts_job, compact_tables)


class Upkeep(Config):
    retain_hours: int = Field(
        default=int(RETAIN.total_seconds() // 3600),
        ge=1,
        description="Files a table no longer holds are deleted this long after, for readers of "
        "older snapshots",
    )


@op(
    description="Compact each closed date of the curated tables into few large sorted files; "
    "delete files older snapshots held, checkpoint the tables' logs."
)
def compact_curated(context: OpExecutionContext, config: Upkeep, storage: Storage) -> Output[int]:
    tables = CuratedTables(storage.store())
    result = upkeep(
        tables, retain=timedelta(hours=config.retain_hours), progress=logged(context.log.info)
    )
    for name, days in result.compacted.items():
        context.log_event(
            AssetObservation(
                asset_key=name,
                metadata={
                    "dates_compacted": ", ".join(str(day) for day in days),
                    "files_before": result.files_before[name],
                    "files_after": result.files_after[name],
                },
            )
        )
    context.log.info(
        f"compacted {len(result.dates)} dates; deleted {sum(result.removed_files.values())} "
        "old files"
    )
    return Output(
        len(result.dates),
        metadata={
            "dates_compacted": len(result.dates),
            "old_files_deleted": sum(result.removed_files.values()),
        },
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
