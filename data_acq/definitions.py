"""The Dagster definitions of data-acq, built from one settings object.

Nothing under `defs/` reads the environment: `build_defs` gets the settings, and Dagster calls
`defs` (read from the environment) only when it loads the code location, so a bad variable
stops the loading with its one-line message, not an import of some module.
"""

from dagster import (
    DefaultScheduleStatus,
    Definitions,
    ScheduleDefinition,
    build_schedule_from_partitioned_job,
    definitions,
)

from data_acq.defs.acquisition import build_raw_messages
from data_acq.defs.jobs import broker_check, build_jobs, purge_old_runs
from data_acq.defs.partitions import build_partitions
from data_acq.defs.processing import build_processing
from data_acq.defs.resources import build_resources
from data_acq.defs.sensors import build_drain_sensor, build_live_sensor
from data_acq.settings import Settings


def build_defs(settings: Settings) -> Definitions:
    """Everything Dagster shows for one deployment."""
    partitions = build_partitions(settings.start_date, settings.buckets)
    jobs = build_jobs(settings)
    status = (
        DefaultScheduleStatus.RUNNING if settings.sensors_running else DefaultScheduleStatus.STOPPED
    )
    return Definitions(
        assets=[build_raw_messages(settings), *build_processing(settings, partitions)],
        jobs=[broker_check, *jobs, purge_old_runs],
        schedules=[
            # closed dates compacted (a date closes at 01:00 the next day), old files deleted
            ScheduleDefinition(job=jobs.compact, cron_schedule="20 * * * *", default_status=status),
            ScheduleDefinition(
                job=purge_old_runs, cron_schedule="30 3 * * *", default_status=status
            ),
            # yesterday's charts, half an hour after midnight UTC
            build_schedule_from_partitioned_job(
                jobs.charts, hour_of_day=0, minute_of_hour=30, default_status=status
            ),
        ],
        sensors=[
            build_drain_sensor(
                settings.subscriptions,
                settings.drain_window_s,
                settings.sensors_running,
                settings.handover_s,
            ),
            build_live_sensor(
                settings.live_workers,
                settings.live_window_s,
                settings.refresh_interval_s,
                settings.sensors_running,
                settings.handover_s,
            ),
        ],
        resources=build_resources(settings),
    )


@definitions
def defs() -> Definitions:
    """The deployment's definitions, from its environment (docs/operations.md lists it)."""
    return build_defs(Settings.from_env())
