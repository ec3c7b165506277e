"""The analysts' DuckDB file: a view per curated table, never a copy of it.

Each view reads its Delta table (`delta_scan` of `<storage>/curated/<table>`), so every query
sees the table's latest snapshot at that moment, whole: processing never opens this file, and
an analyst's session never holds processing back. The tables exist from the first processing
on (empty, with their schemas), so the file is written once, and again only if a view's
definition changes, into a new file that then replaces the old one (a session still open on
the old file goes on reading through the same views).

DuckDB cannot download its extensions where data-acq is built, so it installs `delta` (and,
for S3, `httpfs` and `aws`) from their PyPI packages (`duckdb-extension-delta`, ...), which
exist for DuckDB 1.5.x: hence the DuckDB pin. Installed once into DuckDB's extension folder,
they load by themselves in any later session, the `duckdb` command line's included.
"""

from __future__ import annotations

import importlib.resources
import json
import os
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

import duckdb

from data_acq import layout
from data_acq.curate.tables import SCHEMAS, UNIT_COLUMNS, CuratedTables, location, s3_options
from data_acq.layout import WAREHOUSE_FILE
from data_acq.storage import LocalStore, ObjectStore

STATE = f"{layout.STATE}warehouse.json"  # what the current file holds
EXTENSIONS = ("delta", "httpfs", "aws")


def view_sql(table_location: str, table: str) -> str:
    """The query behind one table's view (the unit columns are the writer's business)."""
    hidden = [c for c in UNIT_COLUMNS if c != "hour" or table in layout.HOURLY_TABLES]
    return f"select * exclude ({', '.join(hidden)}) from delta_scan('{table_location}')"


def wanted(store: ObjectStore) -> dict[str, str]:
    """Per table: the view's query."""
    return {table: view_sql(location(store, table), table) for table in SCHEMAS}


def _extension_file(name: str) -> Path:
    package = importlib.resources.files(f"duckdb_extension_{name}")
    return Path(str(package / "extensions" / f"v{duckdb.__version__}" / f"{name}.duckdb_extension"))


def install_extensions(con: duckdb.DuckDBPyConnection) -> None:
    """Install the extensions from their PyPI packages (nothing is downloaded) and load them."""
    installed = {
        name
        for (name,) in con.execute(
            "select extension_name from duckdb_extensions() where installed"
        ).fetchall()
    }
    for name in EXTENSIONS:
        if name not in installed:
            con.execute(f"install '{_extension_file(name)}'")
        con.execute(f"load {name}")


def connect(path: str | Path, store: ObjectStore | None = None) -> duckdb.DuckDBPyConnection:
    """A read-only session on a warehouse file, ready to query (S3 credentials when `store`
    is on S3)."""
    con = duckdb.connect(str(path), read_only=True)
    if store is not None and not isinstance(store, LocalStore):
        connect_s3(con)  # the extensions too
    else:
        install_extensions(con)
    return con


def connect_s3(con: duckdb.DuckDBPyConnection) -> None:
    """Let `con` read s3:// paths with the standard AWS_* settings (AWS_ENDPOINT_URL for an
    S3-compatible server; otherwise the AWS credential chain, e.g. a task's IAM role). The
    secret lives in this session only, never in a file."""
    install_extensions(con)
    s3 = s3_options()
    options = {"TYPE": "s3", "REGION": s3.get("region", "us-east-1")}
    if "endpoint" in s3:
        url = urlsplit(s3["endpoint"])
        options |= {
            "ENDPOINT": url.netloc,
            "URL_STYLE": "path",
            "USE_SSL": str(url.scheme == "https").lower(),
        }
    if "key_id" in s3:
        options |= {"KEY_ID": s3["key_id"], "SECRET": s3["secret"]}
        if "session_token" in s3:
            options["SESSION_TOKEN"] = s3["session_token"]
    else:
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
            connect_s3(con)  # the extensions too; a view is checked against its table
        else:
            install_extensions(con)
        for table, query in views.items():
            con.execute(f'create view "{table}" as {query}')


def refresh_warehouse(store: ObjectStore) -> str | None:
    """Write the warehouse file if its views changed (or it is missing); where it is, when
    written."""
    views = wanted(store)
    try:
        current = json.loads(store.get(STATE))
    except FileNotFoundError:
        current = None
    present = next(store.list_keys(WAREHOUSE_FILE), None) == WAREHOUSE_FILE
    if current == views and present:
        return None
    CuratedTables(store).create_all()  # a view needs its table
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
