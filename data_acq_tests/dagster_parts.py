"""The Dagster objects the tests run, built from explicit default settings as `build_defs`
builds them (no test depends on the environment it was started in)."""

from data_acq.defs.acquisition import build_raw_messages
from data_acq.defs.jobs import build_jobs
from data_acq.defs.partitions import build_partitions
from data_acq.defs.processing import build_processing
from data_acq.settings import Settings

SETTINGS = Settings.from_env({})
PARTITIONS = build_partitions(SETTINGS.start_date, SETTINGS.buckets)
raw_messages = build_raw_messages(SETTINGS)
staged_raw, curated, warehouse, daily_charts = build_processing(SETTINGS, PARTITIONS)
drain_job, live_job, stage_job, curate_job, charts_job, compact_job = build_jobs(SETTINGS)
