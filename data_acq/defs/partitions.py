"""Partitions: measurement dates from DATA_ACQ_START_DATE, and units (date x bucket of sites)."""

from dagster import DailyPartitionsDefinition, MultiPartitionsDefinition, StaticPartitionsDefinition

from data_acq.settings import Settings

settings = Settings.from_env()
OWNERS = ["team:data-acq"]  # who answers for these assets, on every asset's page

days = DailyPartitionsDefinition(
    start_date=settings.start_date.isoformat(), end_offset=1, timezone="UTC"
)
buckets = StaticPartitionsDefinition([f"{bucket:02d}" for bucket in range(settings.buckets)])
# keys look like "07|2024-10-12": Dagster orders the dimensions by name
units = MultiPartitionsDefinition({"date": days, "bucket": buckets})
