"""The curated tables as Delta Lake tables: `curated/<table>/`, partitioned by date.

Why a table format (docs/architecture.md has the measurements): a refresh or a compaction
replaces many files at once, and only a transaction log makes that one step for a reader, who
sees the table before or after, never half of it (no duplicates, no gaps). Why Delta: its log
lives beside the data (no catalog service to run), Polars, DuckDB and Athena read it natively,
and concurrent writers are kept apart by S3's conditional writes.

Hourly tables are partitioned by date, daily tables (small) not. Each table has a fixed
schema, created with the table, so no reader discovers it file by file; a column added here reaches the table as a schema change its log records. Beside their
own columns the tables hold `date` (the partition), `bucket` (the unit's) and, in hourly tables,
`hour`: a unit's refresh replaces exactly its rows by predicate, whatever files hold them (the
hot day's small files, or a closed day's compacted file when data comes late).
"""

from __future__ import annotations

import os
from datetime import date
from typing import Any
from urllib.parse import urlsplit

import polars as pl
from deltalake import DeltaTable, WriterProperties
from deltalake.exceptions import CommitFailedError, TableNotFoundError

from data_acq import layout
from data_acq.curate.flatten import (
    PAYLOADS_SCHEMA,
    READINGS_SCHEMA,
    REJECTS_SCHEMA,
    STATUS_SCHEMA,
    TIME,
)
from data_acq.storage import LocalStore, ObjectStore, StorageError

_STATS = {"mean": pl.Float64, "min": pl.Float64, "max": pl.Float64, "last": pl.Float64}
# each table's own columns, as analysts see them (Delta has no unsigned integers)
SCHEMAS: dict[str, dict[str, pl.DataType]] = {
    "readings": dict(READINGS_SCHEMA),
    "device_status": dict(STATUS_SCHEMA),
    "pipeline_payloads": dict(PAYLOADS_SCHEMA),
    "rejects": dict(REJECTS_SCHEMA),
    "readings_15min": {
        "site": pl.String(),
        "vid": pl.String(),
        "device": pl.String(),
        "field": pl.String(),
        "period": TIME,
        **_STATS,
        "count": pl.Int64(),
    },
    "energy_daily": {
        "site": pl.String(),
        "vid": pl.String(),
        "field": pl.String(),
        "energy": pl.Float64(),
        "resets": pl.Int64(),
        "readings": pl.Int64(),
    },
    "completeness_daily": {
        "site": pl.String(),
        "expected": pl.Int64(),
        "received": pl.Int64(),
        "ratio": pl.Float64(),
        "largest_gap_minutes": pl.Int64(),
        "gaps": pl.List(pl.Struct({"start": TIME, "minutes": pl.Int64()})),
    },
}
UNIT_COLUMNS = ("bucket", "hour")  # kept for refreshes and compaction; views leave them out
# the order a compacted file is sorted in: a site's rows together, in time order
SORT = {
    "readings": ("site", "time", "vid", "device", "field"),
    "device_status": ("site", "time", "vid", "device"),
    "pipeline_payloads": ("site", "time"),
    "rejects": ("site", "time"),
    "readings_15min": ("site", "period", "vid", "device", "field"),
    "energy_daily": ("site", "date", "vid", "field"),
    "completeness_daily": ("site", "date"),
}
# Hourly tables are partitioned by date and compacted a date at a time; the daily ones are a few
# rows per site and day, so a file a date would be mostly overhead for their readers: they are
# not partitioned (readers skip files by their date statistics) and compacted a month at a time
PARTITIONED = frozenset(layout.HOURLY_TABLES)
COMMIT_ATTEMPTS = 10
WRITER = WriterProperties(compression="ZSTD")
PROPERTIES = {
    # a checkpoint every 10 commits: a reader (DuckDB's delta_scan reads the log at every
    # query) replays at most 9 commits, not 99 (bench/bench_history.py: 60 commits past the
    # checkpoint doubled a query's fixed cost); two days of log are kept, older entries removed
    "delta.checkpointInterval": "10",
    "delta.logRetentionDuration": "interval 2 days",
    "delta.enableExpiredLogCleanup": "true",
}


def table_schema(table: str) -> pl.Schema:
    """The stored columns: the table's own, then date, bucket and (hourly tables) hour."""
    extra: dict[str, pl.DataType] = {"date": pl.Date(), "bucket": pl.Int16()}
    if table in layout.HOURLY_TABLES:
        extra["hour"] = pl.Int8()
    return pl.Schema({**SCHEMAS[table], **extra})


def s3_options() -> dict[str, str]:
    """The standard AWS_* settings as (endpoint, region, keys): DuckDB's secret and Delta's
    storage options are both made from them; without keys, the credential chain applies."""
    options = {
        "region": os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "",
        "endpoint": os.environ.get("AWS_ENDPOINT_URL_S3")
        or os.environ.get("AWS_ENDPOINT_URL")
        or "",
    }
    if os.environ.get("AWS_ACCESS_KEY_ID") and os.environ.get("AWS_SECRET_ACCESS_KEY"):
        options["key_id"] = os.environ["AWS_ACCESS_KEY_ID"]
        options["secret"] = os.environ["AWS_SECRET_ACCESS_KEY"]
        options["session_token"] = os.environ.get("AWS_SESSION_TOKEN", "")
    return {k: v for k, v in options.items() if v}


def storage_options(store: ObjectStore) -> dict[str, str]:
    """deltalake's options for the store (none for a local folder)."""
    if isinstance(store, LocalStore):
        return {}
    s3 = s3_options()
    options = {"AWS_REGION": s3.get("region", "us-east-1")}
    if "endpoint" in s3:
        options["AWS_ENDPOINT_URL"] = s3["endpoint"]
        options["AWS_ALLOW_HTTP"] = str(urlsplit(s3["endpoint"]).scheme == "http").lower()
    if "key_id" in s3:
        options |= {"AWS_ACCESS_KEY_ID": s3["key_id"], "AWS_SECRET_ACCESS_KEY": s3["secret"]}
        if "session_token" in s3:
            options["AWS_SESSION_TOKEN"] = s3["session_token"]
    return options


def location(store: ObjectStore, table: str) -> str:
    """The table's URI (an absolute path for a local folder)."""
    if isinstance(store, LocalStore):
        return str((store.root / layout.curated_prefix(table)).resolve())
    return store.url(layout.curated_prefix(table)).rstrip("/")


def _sql(value: Any) -> str:
    return f"'{value.isoformat()}'" if isinstance(value, date) else str(int(value))


def unit_predicate(day: date, bucket: int, hours: list[int] | None) -> str:
    """Delta's predicate for a unit's rows (of some hours)."""
    where = f"date = {_sql(day)} AND bucket = {_sql(bucket)}"
    if hours is not None:
        where += f" AND hour IN ({', '.join(_sql(h) for h in sorted(hours))})"
    return where


class CuratedTables:
    """The store's curated tables, opened once and kept up to date between commits (a reload
    reads only the commits since the last, not the whole log)."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store
        self.options = storage_options(store)
        self._open: dict[str, DeltaTable] = {}

    def table(self, name: str) -> DeltaTable:
        """The table, created (empty, with its schema) if it does not exist yet."""
        if name in self._open:
            self._open[name].update_incremental()
            return self._open[name]
        uri = location(self.store, name)
        try:
            opened = DeltaTable(uri, storage_options=self.options)
        except TableNotFoundError:
            if isinstance(self.store, LocalStore):
                self.store.check()
                os.makedirs(uri, exist_ok=True)
            schema = pl.DataFrame(schema=table_schema(name)).to_arrow().schema
            opened = DeltaTable.create(
                uri,
                schema,
                partition_by=["date"] if name in PARTITIONED else None,
                mode="ignore",  # another worker may create it at the same moment
                configuration=PROPERTIES,
                storage_options=self.options,
            )
        except OSError as exc:
            raise StorageError(f"curated table {uri}: {exc}") from None
        self._open[name] = opened
        return opened

    def create_all(self) -> None:
        for name in SCHEMAS:
            self.table(name)

    def replace(
        self,
        name: str,
        frame: pl.DataFrame,
        day: date,
        bucket: int,
        hours: list[int] | None = None,
    ) -> None:
        """Replace the unit's rows of `hours` (a daily table: of the day) with `frame`, in one
        commit: a reader sees the old rows or the new, never both or neither. A commit that
        loses a race (a compaction, a worker writing the same date) is made again on the
        table as it now is."""
        schema = table_schema(name)
        columns = {"date": pl.lit(day, pl.Date), "bucket": pl.lit(bucket, pl.Int16)}
        if "hour" in schema and "hour" not in frame.columns:
            if hours is None or len(hours) != 1:
                raise ValueError(f"{name}: rows of several hours need their own hour column")
            columns["hour"] = pl.lit(hours[0], pl.Int8)
        rows = frame.with_columns(**columns).select(
            pl.col(column).cast(dtype) for column, dtype in schema.items()
        )
        predicate = unit_predicate(day, bucket, hours if "hour" in schema else None)
        self._commit(name, rows, predicate)

    def _commit(self, name: str, rows: pl.DataFrame, predicate: str) -> None:
        for attempt in range(COMMIT_ATTEMPTS):
            try:
                rows.write_delta(
                    self.table(name),
                    mode="overwrite",
                    delta_write_options={
                        "predicate": predicate,
                        "schema_mode": "merge",
                        "writer_properties": WRITER,
                    },
                )
                return
            except CommitFailedError:
                if attempt == COMMIT_ATTEMPTS - 1:
                    raise

    def read(
        self,
        name: str,
        day: date,
        bucket: int | None = None,
        hour: int | None = None,
        where: pl.Expr | None = None,
    ) -> pl.DataFrame:
        """Rows of one date (of a bucket, of an hour, matching `where`), with the table's own
        columns and date: the filters reach the scan, so only files that may match are read."""
        condition = pl.col("date") == day
        if bucket is not None:
            condition &= pl.col("bucket") == bucket
        if hour is not None:
            condition &= pl.col("hour") == hour
        if where is not None:
            condition &= where
        return (
            pl.scan_delta(self.table(name))
            .filter(condition)
            .drop(UNIT_COLUMNS, strict=False)
            .collect()
        )
