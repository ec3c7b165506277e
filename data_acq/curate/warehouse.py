"""The analysts' DuckDB file: views over the curated Parquet, never a copy of it.

Each curated table is a view reading `<storage>/curated/<table>/*/*/*.parquet` (the date comes
from the folder names), so every query sees what the files hold at that moment: processing never
opens this file, and an analyst's session never holds processing back. The file is written only
when the set of tables changes (a table gets its first file), into a new file that then replaces
the old one: a session still open on the old file goes on reading through the same views (a
table that was empty when it connected stays empty in it until it reconnects).

With S3 storage the views read `s3://` paths through DuckDB's httpfs extension. DuckDB cannot
download extensions where data-acq is built, so it loads them from their PyPI packages
(`duckdb-extension-httpfs`, `-aws`), which exist for DuckDB 1.5.x: hence the DuckDB pin.
"""

from __future__ import annotations

import importlib.resources
import json
import os
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

import duckdb
import polars as pl

from data_acq import layout
from data_acq.curate.flatten import (
    PAYLOADS_SCHEMA,
    READINGS_SCHEMA,
    REJECTS_SCHEMA,
    STATUS_SCHEMA,
    TIME,
)
from data_acq.layout import WAREHOUSE_FILE
from data_acq.storage import LocalStore, ObjectStore

STATE = f"{layout.STATE}warehouse.json"  # what the current file holds
_STATS = {"mean": pl.Float64, "min": pl.Float64, "max": pl.Float64, "last": pl.Float64}
# a table with no file yet is an empty table of this shape, until its first file appears
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
}


def view_sql(location: str) -> str:
    """The query behind one table's view; `location` is the table's curated folder."""
    return (
        f"select * exclude (bucket) from read_parquet('{location}*/*/*.parquet', "
        "hive_partitioning = true, hive_types = {'date': DATE, 'bucket': INTEGER}, "
        "union_by_name = true)"
    )


def _location(store: ObjectStore, table: str) -> str:
    if isinstance(store, LocalStore):  # absolute: the file answers from any working directory
        return f"{store.root.resolve() / layout.curated_prefix(table)}/"
    return store.url(layout.curated_prefix(table))


def wanted(store: ObjectStore) -> dict[str, str]:
    """Per table: the view's query, or "empty" while the table has no file."""
    return {
        table: view_sql(_location(store, table))
        if next(store.list_keys(layout.curated_prefix(table)), None)
        else "empty"
        for table in SCHEMAS
    }


def _load_extension(con: duckdb.DuckDBPyConnection, name: str) -> None:
    """LOAD an extension from its PyPI package's file (nothing is installed or downloaded)."""
    package = importlib.resources.files(f"duckdb_extension_{name}")
    path = package / "extensions" / f"v{duckdb.__version__}" / f"{name}.duckdb_extension"
    con.execute(f"load '{path}'")


def connect_s3(con: duckdb.DuckDBPyConnection) -> None:
    """Let `con` read s3:// paths with the standard AWS_* settings (AWS_ENDPOINT_URL for an
    S3-compatible server; otherwise the AWS credential chain, e.g. a task's IAM role). The
    secret lives in this session only, never in a file."""
    _load_extension(con, "httpfs")
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    options = {"TYPE": "s3", "REGION": region}
    if endpoint:
        url = urlsplit(endpoint)
        options |= {
            "ENDPOINT": url.netloc,
            "URL_STYLE": "path",
            "USE_SSL": str(url.scheme == "https").lower(),
        }
    if os.environ.get("AWS_ACCESS_KEY_ID") and os.environ.get("AWS_SECRET_ACCESS_KEY"):
        options |= {
            "KEY_ID": os.environ["AWS_ACCESS_KEY_ID"],
            "SECRET": os.environ["AWS_SECRET_ACCESS_KEY"],
        }
        if os.environ.get("AWS_SESSION_TOKEN"):
            options["SESSION_TOKEN"] = os.environ["AWS_SESSION_TOKEN"]
    else:
        _load_extension(con, "aws")
        options["PROVIDER"] = "credential_chain"
    values = ", ".join(
        f"{k} {v}" if k in ("TYPE", "PROVIDER", "USE_SSL") else f"{k} '{_quote(v)}'"
        for k, v in options.items()
    )
    con.execute(f"create or replace temporary secret data_acq_s3 ({values})")


def _quote(text: str) -> str:
    return text.replace("'", "''")


def _build(path: Path, views: dict[str, str], s3: bool) -> None:
    with duckdb.connect(str(path)) as con:
        if s3:
            connect_s3(con)  # a view is checked against its files when it is created
        for table, query in views.items():
            if query == "empty":
                empty = pl.DataFrame(schema={**SCHEMAS[table], "date": pl.Date()})  # noqa: F841
                con.execute(f'create table "{table}" as select * from empty')
            else:
                con.execute(f'create view "{table}" as {query}')


def refresh_warehouse(store: ObjectStore) -> str | None:
    """Write the warehouse file if the set of tables changed; where it is, when written."""
    views = wanted(store)
    try:
        current = json.loads(store.get(STATE))
    except FileNotFoundError:
        current = None
    present = next(store.list_keys(WAREHOUSE_FILE), None) == WAREHOUSE_FILE
    if current == views and present:
        return None
    with tempfile.TemporaryDirectory(prefix="data-acq-warehouse-") as tmp:
        built = Path(tmp) / WAREHOUSE_FILE
        _build(built, views, s3=not isinstance(store, LocalStore))
        if isinstance(store, LocalStore):  # replace, never rewrite: open sessions keep theirs
            store.check()
            staged = store.root / f".{WAREHOUSE_FILE}.incoming"
            staged.write_bytes(built.read_bytes())
            os.replace(staged, store.root / WAREHOUSE_FILE)
        else:
            store.put_file(WAREHOUSE_FILE, built)
    store.put(STATE, json.dumps(views, indent=1).encode())
    return store.url(WAREHOUSE_FILE)
