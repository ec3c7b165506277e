"""The analysts' DuckDB file: one table per curated dataset, refreshed date by date.

Tables, not views over Parquet paths: the file then answers SQL from any working directory and
keeps working when copied elsewhere, and the same file works for S3 storage without DuckDB's
httpfs extension. Refreshing a date deletes and re-inserts that date only.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterable
from datetime import date
from pathlib import Path

import duckdb
import polars as pl

from data_acq import layout
from data_acq.curate.flatten import READINGS_SCHEMA, REJECTS_SCHEMA, STATUS_SCHEMA, TIME
from data_acq.layout import WAREHOUSE_FILE
from data_acq.storage import LocalStore, ObjectStore

_STATS = {"mean": pl.Float64, "min": pl.Float64, "max": pl.Float64, "last": pl.Float64}
# every table exists from the first refresh on, even before it has rows
SCHEMAS: dict[str, dict[str, pl.DataType]] = {
    "readings": dict(READINGS_SCHEMA),
    "device_status": dict(STATUS_SCHEMA),
    "readings_15min": {
        "site": pl.String(),
        "vid": pl.String(),
        "device": pl.String(),
        "field": pl.String(),
        "period": TIME,
        **_STATS,
        "count": pl.UInt32(),
    },
    "energy_daily": {
        "site": pl.String(),
        "vid": pl.String(),
        "field": pl.String(),
        "energy": pl.Float64(),
        "resets": pl.UInt32(),
        "readings": pl.UInt32(),
    },
    "completeness_daily": {
        "site": pl.String(),
        "expected": pl.Int64(),
        "received": pl.UInt32(),
        "ratio": pl.Float64(),
        "largest_gap_minutes": pl.Int64(),
        "gaps": pl.List(pl.Struct({"start": TIME, "minutes": pl.Int64()})),
    },
    "rejects": dict(REJECTS_SCHEMA),
}


def _connect(path: Path, wait_s: float = 300.0) -> duckdb.DuckDBPyConnection:
    """A writable connection; another refresh (or an analyst's writable session) may hold the
    file's lock for a while, so wait for it instead of failing the run."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return duckdb.connect(str(path))
        except duckdb.IOException as exc:
            if "lock" not in str(exc).lower() or time.monotonic() > deadline:
                raise
            time.sleep(1.0)


def refresh_warehouse(root: Path, dates: Iterable[date]) -> Path:
    """Bring `root/warehouse.duckdb` up to date for `dates` from `root/curated/`."""
    path = root / WAREHOUSE_FILE
    days = sorted(set(dates))
    root.mkdir(parents=True, exist_ok=True)
    with _connect(path) as con:
        # a day of a large fleet is 100+ million readings: stream it instead of holding it
        con.execute("set memory_limit = '2GB'")
        con.execute("set preserve_insertion_order = false")
        for table, schema in SCHEMAS.items():
            empty = pl.DataFrame(schema={**schema, "date": pl.Date()})  # noqa: F841 - read by name
            con.execute(f'create table if not exists "{table}" as select * from empty')
        for table in SCHEMAS:
            for day in days:
                folder = root / layout.curated_prefix(table, day)
                files = sorted(folder.glob("bucket=*/*.parquet"))
                con.execute(f'delete from "{table}" where date = ?', [day])
                if not files:
                    continue
                # the date comes from the folder name; the bucket is storage detail, not data
                source = (
                    "select * exclude (bucket) from read_parquet(?, hive_partitioning = true, "
                    "hive_types = {'date': DATE, 'bucket': INTEGER}, union_by_name = true)"
                )
                con.execute(f'insert into "{table}" by name {source}', [[str(f) for f in files]])
    return path


def refresh_warehouse_in(store: ObjectStore, dates: Iterable[date]) -> str:
    """`refresh_warehouse` for any store: in place for a local folder; for S3, on a local copy
    of the file and of the dates' curated objects, uploaded back when done. Two refreshes of an
    S3 warehouse must not overlap (the curated assets share the `warehouse` pool for that)."""
    days = sorted(set(dates))
    if isinstance(store, LocalStore):
        return str(refresh_warehouse(store.root, days))
    with tempfile.TemporaryDirectory(prefix="data-acq-warehouse-") as tmp:
        root = Path(tmp)
        store.get_file(WAREHOUSE_FILE, root / WAREHOUSE_FILE)
        for table in SCHEMAS:
            for day in days:
                for key in store.list_keys(layout.curated_prefix(table, day)):
                    if key.endswith(".parquet"):
                        target = root / key
                        target.parent.mkdir(parents=True, exist_ok=True)
                        target.write_bytes(store.get(key))
        refresh_warehouse(root, days)
        store.put_file(WAREHOUSE_FILE, root / WAREHOUSE_FILE)
    return store.url(WAREHOUSE_FILE)
