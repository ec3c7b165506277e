"""The one Dagster `Definitions` of data-acq: it only assembles what `defs/` holds."""

from dagster import DefaultScheduleStatus, Definitions, ScheduleDefinition

from data_acq.defs.assets import curated, daily_charts, raw_messages, staged_raw
from data_acq.defs.jobs import broker_check, curate_job, drain_job, purge_old_runs, stage_job
from data_acq.defs.resources import build_resources
from data_acq.defs.sensors import build_drain_sensor, build_processing_sensors
from data_acq.settings import Settings

settings = Settings.from_env()

defs = Definitions(
    assets=[raw_messages, staged_raw, curated, daily_charts],
    jobs=[broker_check, drain_job, stage_job, curate_job, purge_old_runs],
    schedules=[
        ScheduleDefinition(
            job=purge_old_runs,
            cron_schedule="30 3 * * *",
            default_status=DefaultScheduleStatus.RUNNING
            if settings.sensors_running
            else DefaultScheduleStatus.STOPPED,
        )
    ],
    sensors=[
        build_drain_sensor(
            settings.subscriptions, settings.drain_window_s, settings.sensors_running
        ),
        *build_processing_sensors(settings.sensors_running),
    ],
    resources=build_resources(settings),
)
