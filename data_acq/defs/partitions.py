"""Partitions: measurement dates from DATA_ACQ_START_DATE, and units (date x bucket of sites)."""

from dataclasses import dataclass
from datetime import date

from dagster import (
    DailyPartitionsDefinition,
    MultiPartitionKey,
    MultiPartitionsDefinition,
    StaticPartitionsDefinition,
)

OWNERS = ["team:data-acq"]  # who answers for these assets, on every asset's page


@dataclass(frozen=True)
class Partitions:
    days: DailyPartitionsDefinition
    units: MultiPartitionsDefinition  # keys look like "07|2024-10-12": dimensions by name


def build_partitions(start_date: date, buckets: int) -> Partitions:
    days = DailyPartitionsDefinition(
        start_date=start_date.isoformat(), end_offset=1, timezone="UTC"
    )
    bucket_keys = StaticPartitionsDefinition([f"{bucket:02d}" for bucket in range(buckets)])
    return Partitions(days, MultiPartitionsDefinition({"date": days, "bucket": bucket_keys}))


def unit_key(day: date, bucket: int) -> MultiPartitionKey:
    """A unit's partition key, the one way it is written."""
    return MultiPartitionKey({"date": day.isoformat(), "bucket": f"{bucket:02d}"})


def unit_of(key: MultiPartitionKey) -> tuple[date, int]:
    """The date and bucket of a unit's partition key."""
    return date.fromisoformat(key.keys_by_dimension["date"]), int(key.keys_by_dimension["bucket"])
