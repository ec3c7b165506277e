"""The one Dagster `Definitions` of data-acq: it only assembles what `defs/` holds."""

from dagster import (
    DefaultScheduleStatus,
    Definitions,
    ScheduleDefinition,
    build_schedule_from_partitioned_job,
)

from data_acq.defs.acquisition import raw_messages
from data_acq.defs.jobs import (
    broker_check,
    charts_job,
    compact_tables,
    curate_job,
    drain_job,
    live_job,
    purge_old_runs,
    stage_job,
)
from data_acq.defs.partitions import settings
from data_acq.defs.processing import curated, daily_charts, staged_raw, warehouse
from data_acq.defs.resources import build_resources
from data_acq.defs.sensors import build_drain_sensor, build_live_sensor

schedule_status = (
    DefaultScheduleStatus.RUNNING if settings.sensors_running else DefaultScheduleStatus.STOPPED
)

defs = Definitions(
    assets=[raw_messages, staged_raw, curated, warehouse, daily_charts],
    jobs=[
        broker_check,
        drain_job,
        live_job,
        stage_job,
        curate_job,
        charts_job,
        compact_tables,
        purge_old_runs,
    ],
    schedules=[
        # closed dates compacted (a date closes at 01:00 the next day), old files deleted
        ScheduleDefinition(
            job=compact_tables, cron_schedule="20 * * * *", default_status=schedule_status
        ),
        ScheduleDefinition(
            job=purge_old_runs, cron_schedule="30 3 * * *", default_status=schedule_status
        ),
        # yesterday's charts, half an hour after midnight UTC
        build_schedule_from_partitioned_job(
            charts_job, hour_of_day=0, minute_of_hour=30, default_status=schedule_status
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
