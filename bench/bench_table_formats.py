"""Benchmark: Delta Lake (deltalake, Polars write_delta) against Apache Iceberg (pyiceberg, a SQL
catalog on SQLite) for the curated `readings` table, both on moto's S3, in one run.

Why: the curated tables move to a table format so that live workers can replace slices in place
and readers always see whole commits. This measures the way data-acq would use one:

1. **Concurrent commits.** `--workers` processes (spawned), each owning one bucket, each replace
   the rows of (date, bucket, hour) `--commits` times with a freshly built frame (25 sites x 60
   minutes x 4 fields), cycling over 4 hours, all on the same date; and one worker alone, the
   same commits uncontended. Seconds per commit (p50/p95, retries included), retries (both
   libraries retry a lost commit themselves: Delta's show as S3 412 answers to its conditional
   PUTs, pyiceberg logs its own; around that, a retry loop of ours on their commit-conflict
   errors), failed commits, S3 requests per commit and their list price for a month of one
   commit a minute per worker, and that the table then holds exactly the rows of each slice's
   last commit (no duplicates, none missing, none stale).
2. **Compaction.** A date made of 24 hours x 4 buckets of small files (`--sites` sites, 4 fields a
   minute) is rewritten into one file sorted by site, time; Delta then vacuums (retention 0) and
   checkpoints, Iceberg expires the old snapshots. Seconds, files before and after (in the table
   and on S3), what a reader counting the date in a loop meanwhile saw, and whether a reader
   pinned to the snapshot before the compaction can still read it after the cleanup.
3. **Readers.** After `--days` compacted dates: DuckDB (delta_scan, iceberg_scan on the current
   metadata JSON, read_parquet) and Polars (scan_delta, scan_iceberg, scan_parquet), each query
   `--repeat` times cold (a new DuckDB database, a newly loaded Iceberg table), for (a) one site,
   one day, all readings, (b) the count of one day, (c) the count of all days. The anchor is the
   same data as plain Parquet, one sorted file per date under hive `date=` folders (the curated
   tables' plain-Parquet layout, read as its warehouse views read it).
4. **Notes** on what each format needs in production.

S3 requests are counted at the server: moto runs in a process of its own behind a WSGI
middleware that counts requests by kind (GET, LIST, HEAD, PUT, POST, DELETE), the bytes it
sends, and the 412s it answers; the benchmark reads and resets the counters through a path of the
middleware's own. All formats write zstd Parquet with row groups of at most ROW_GROUP_ROWS rows.

DuckDB's iceberg extension needs its avro extension (`duckdb-extension-avro`, in the dev
dependencies); without it the DuckDB-Iceberg rows say so.

    .venv/bin/python bench/bench_table_formats.py           # the full run (~8 min on 2 cores)
    .venv/bin/python bench/bench_table_formats.py --quick   # small sizes, a smoke test (~2.5 min)

The results are printed as markdown and written to bench/out/table_formats/results.md.
"""

from __future__ import annotations

import argparse
import importlib.resources
import importlib.util
import io
import json
import logging
import multiprocessing as mp
import os
import shutil
import statistics
import threading
import time
import urllib.request
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from s3_counting import CountingApp

OUT_DIR = Path(__file__).resolve().parent / "out" / "table_formats"
S3_BUCKET = "bench"
DAY0 = date(2024, 10, 1)
FIELDS = ("p_ac", "e_day", "u_dc", "t_inv")
BUCKETS = 4  # the compaction and reader dates: sites spread over this many buckets
COMMIT_SITES = 25  # sites in one worker's replace commit
COMMIT_HOURS = 4  # a worker cycles over this many hours, so each slice is replaced repeatedly
ROW_GROUP_ROWS = 128 * 1024  # the same for all formats, so that row-group skipping compares
# us-east-1 list prices per 1,000 S3 Standard requests (HEAD as GET; POST, i.e. multipart
# uploads and DeleteObjects, as PUT; DELETE is free)
PRICE_PER_1000 = {"PUT": 0.005, "POST": 0.005, "LIST": 0.005, "GET": 0.0004, "HEAD": 0.0004}
MAX_ATTEMPTS = 10  # a commit that still conflicts after this many attempts has failed
ICEBERG_NS = "bench"
# pl.scan_iceberg warns that its faster planner needs the polars_iceberg package (not installed)
os.environ.setdefault("POLARS_ICEBERG_PLANNER", "pyiceberg")


# --- moto's S3, counting requests ---------------------------------------------------------------


def _serve_moto(port_queue: Any) -> None:
    """The moto server's process: moto's own WSGI app behind CountingApp, on two ports sharing
    one S3: the measured clients' and the background reader's (not counted with them)."""
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    app = CountingApp(DomainDispatcherApplication(create_backend_app))
    servers = [
        make_server("127.0.0.1", 0, app, True, request_handler=MotoRequestHandler) for _ in range(2)
    ]
    threading.Thread(target=servers[1].serve_forever, daemon=True).start()
    port_queue.put([server.server_address[1] for server in servers])
    servers[0].serve_forever()


class Moto:
    """moto's S3 in a process of its own (not a thread of this one: the clients measured here
    would otherwise share one GIL with the server). `endpoint` is the measured one,
    `side_endpoint` the background reader's."""

    def __init__(self) -> None:
        ctx = mp.get_context("spawn")
        queue = ctx.Queue()
        self.process = ctx.Process(target=_serve_moto, args=(queue,), daemon=True)
        self.process.start()
        self.port, side_port = queue.get(timeout=120)
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.side_endpoint = f"http://127.0.0.1:{side_port}"

    def counts(self) -> Counter[str]:
        """The requests to `endpoint` since the last call (and reset its counters)."""
        with urllib.request.urlopen(f"{self.endpoint}/__bench__/counts") as response:
            return Counter(json.loads(response.read()))

    def cpu_seconds(self) -> float:
        """The server's CPU time so far: near the wall time, it was the bottleneck."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.process.terminate()
        self.process.join(10)


def storage_options(endpoint: str) -> dict[str, str]:
    """deltalake's and Polars' options for moto."""
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ALLOW_HTTP": "true",
        "AWS_ACCESS_KEY_ID": "k",
        "AWS_SECRET_ACCESS_KEY": "s",
        "AWS_REGION": "us-east-1",
    }


def s3_client(endpoint: str) -> Any:
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="k",
        aws_secret_access_key="s",
        region_name="us-east-1",
    )


def s3_objects(endpoint: str, prefix: str) -> tuple[int, int]:
    """Objects and bytes under `prefix` in the bench bucket (its requests count: call it outside
    a measured window)."""
    pages = (
        s3_client(endpoint)
        .get_paginator("list_objects_v2")
        .paginate(Bucket=S3_BUCKET, Prefix=prefix)
    )
    sizes = [obj["Size"] for page in pages for obj in page.get("Contents", [])]
    return len(sizes), sum(sizes)


# --- the data -----------------------------------------------------------------------------------


def readings_frame(
    day: date, sites: Sequence[int], hours: Sequence[int], seed: int, commit: int | None = None
) -> pl.DataFrame:
    """The curated readings of `sites` for `hours` of `day`, one per field and minute, sorted by
    site, time. With `commit`, every value's integer part is the commit's number, so that the
    final table shows which commit each slice holds."""
    rng = np.random.default_rng(seed)
    minutes = np.concatenate([np.arange(h * 60, h * 60 + 60) for h in hours])
    per_site = len(minutes) * len(FIELDS)
    n = len(sites) * per_site
    value = commit + rng.random(n) * 0.5 if commit is not None else rng.normal(500, 150, n)
    midnight = datetime(day.year, day.month, day.day, tzinfo=UTC)
    frame = pl.DataFrame(
        {
            "site_id": np.repeat(np.asarray(sites, dtype=np.int64), per_site),
            "minute": np.tile(np.repeat(minutes, len(FIELDS)), len(sites)),
            "field_id": np.tile(np.arange(len(FIELDS)), len(sites) * len(minutes)),
            "value": value,
        }
    )
    time_ = pl.lit(midnight) + pl.duration(minutes=pl.col("minute"))
    return frame.select(
        site=pl.concat_str(pl.lit("site-"), pl.col("site_id").cast(pl.String).str.zfill(4)),
        time=time_.cast(pl.Datetime("us", "UTC")),
        vid=pl.concat_str(pl.lit("vid-"), pl.col("site_id").cast(pl.String).str.zfill(4)),
        device=pl.lit("inverter-1"),
        field=pl.col("field_id").replace_strict(
            list(range(len(FIELDS))), list(FIELDS), return_dtype=pl.String
        ),
        value=pl.col("value"),
        received_at=(time_ + pl.duration(seconds=5)).cast(pl.Datetime("us", "UTC")),
        date=pl.lit(day, dtype=pl.Date),
        bucket=(pl.col("site_id") % BUCKETS).cast(pl.Int16),
        hour=(pl.col("minute") // 60).cast(pl.Int8),
    )


def bucket_sites(bucket: int, sites: int) -> list[int]:
    return [s for s in range(sites) if s % BUCKETS == bucket]


# --- the formats --------------------------------------------------------------------------------


def delta_uri(table: str) -> str:
    return f"s3://{S3_BUCKET}/delta/{table}"


def delta_options() -> dict[str, Any]:
    """write_delta's options shared by every write: one file per date where it fits."""
    from deltalake import WriterProperties

    return {
        "partition_by": ["date"],
        "writer_properties": WriterProperties(
            compression="ZSTD", max_row_group_size=ROW_GROUP_ROWS
        ),
        "target_file_size": 1 << 30,
    }


def delta_create(endpoint: str, table: str) -> None:
    from deltalake import DeltaTable

    schema = readings_frame(DAY0, [0], [0], 0).to_arrow().schema
    DeltaTable.create(
        delta_uri(table), schema, partition_by=["date"], storage_options=storage_options(endpoint)
    )


def delta_replace(endpoint: str, table: str, frame: pl.DataFrame, predicate: str) -> None:
    frame.write_delta(
        delta_uri(table),
        mode="overwrite",
        storage_options=storage_options(endpoint),
        delta_write_options={**delta_options(), "predicate": predicate},
    )


def delta_append(endpoint: str, table: str, frame: pl.DataFrame) -> None:
    frame.write_delta(
        delta_uri(table),
        mode="append",
        storage_options=storage_options(endpoint),
        delta_write_options=delta_options(),
    )


def iceberg_catalog(endpoint: str) -> Any:
    """The SQL catalog on a SQLite file: shared here by processes on one machine only."""
    from pyiceberg.catalog.sql import SqlCatalog

    return SqlCatalog(
        "bench",
        uri=f"sqlite:///{OUT_DIR / 'catalog.db'}",
        warehouse=f"s3://{S3_BUCKET}/iceberg",
        **{
            "s3.endpoint": endpoint,
            "s3.access-key-id": "k",
            "s3.secret-access-key": "s",
            "s3.region": "us-east-1",
        },
    )


def iceberg_create(endpoint: str, table: str) -> None:
    """Iceberg has no 8- or 16-bit integers: bucket and hour are ints. Partitioned by date
    (identity); the sort order is declared only (pyiceberg does not sort what it writes)."""
    from pyiceberg.partitioning import PartitionField, PartitionSpec
    from pyiceberg.schema import Schema
    from pyiceberg.table.sorting import SortField, SortOrder
    from pyiceberg.transforms import IdentityTransform
    from pyiceberg.types import (
        DateType,
        DoubleType,
        IntegerType,
        NestedField,
        StringType,
        TimestamptzType,
    )

    catalog = iceberg_catalog(endpoint)
    catalog.create_namespace_if_not_exists(ICEBERG_NS)
    types = [
        ("site", StringType()),
        ("time", TimestamptzType()),
        ("vid", StringType()),
        ("device", StringType()),
        ("field", StringType()),
        ("value", DoubleType()),
        ("received_at", TimestamptzType()),
        ("date", DateType()),
        ("bucket", IntegerType()),
        ("hour", IntegerType()),
    ]
    schema = Schema(
        *(NestedField(i, name, kind, required=False) for i, (name, kind) in enumerate(types, 1))
    )
    catalog.create_table(
        f"{ICEBERG_NS}.{table}",
        schema=schema,
        partition_spec=PartitionSpec(
            PartitionField(source_id=8, field_id=1000, transform=IdentityTransform(), name="date")
        ),
        sort_order=SortOrder(
            SortField(source_id=1, transform=IdentityTransform()),
            SortField(source_id=2, transform=IdentityTransform()),
        ),
        properties={
            "write.parquet.compression-codec": "zstd",
            "write.parquet.row-group-limit": str(ROW_GROUP_ROWS),
            # a commit a minute writes a metadata JSON a minute: keep the last few only
            "write.metadata.delete-after-commit.enabled": "true",
            "write.metadata.previous-versions-max": "10",
        },
    )


def iceberg_table(endpoint: str, table: str) -> Any:
    return iceberg_catalog(endpoint).load_table(f"{ICEBERG_NS}.{table}")


def iceberg_filter(day: date, bucket: int | None = None, hour: int | None = None) -> Any:
    from pyiceberg.expressions import And, EqualTo

    expr = EqualTo("date", day.isoformat())
    if bucket is not None and hour is not None:
        expr = And(expr, EqualTo("bucket", bucket), EqualTo("hour", hour))
    return expr


# --- 1. concurrent commits ----------------------------------------------------------------------


@dataclass
class CommitLog:
    """What one worker saw, sent back to the parent."""

    seconds: list[float] = field(default_factory=list)
    cpu_seconds: list[float] = field(default_factory=list)  # all the worker's threads
    retried: int = 0  # commits that needed more than one attempt
    attempts: int = 0  # attempts beyond the first, all commits
    failed: int = 0
    internal: int = 0  # pyiceberg's own retries (it logs each); Delta's show as 412s at the server
    errors: list[str] = field(default_factory=list)


class RetryLogCounter(logging.Handler):
    """Counts pyiceberg's own commit retries: it retries a conflicting commit up to
    commit.retry.num-retries times and only logs a warning for each."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "concurrent update" in record.getMessage():
            self.count += 1


def _is_delta_conflict(exc: Exception) -> bool:
    from deltalake.exceptions import CommitFailedError

    text = str(exc).lower()
    return isinstance(exc, CommitFailedError) or "conflict" in text or "version" in text


def commit_worker(
    fmt: str, endpoint: str, table: str, bucket: int, commits: int, barrier: Any, out: Any
) -> None:
    """One live worker: `commits` replace commits of its bucket's (date, bucket, hour) slices,
    started together with the others."""
    from pyiceberg.exceptions import CommitFailedException
    from sqlalchemy.exc import OperationalError

    log = CommitLog()
    retries = RetryLogCounter()
    iceberg_log = logging.getLogger("pyiceberg")
    iceberg_log.addHandler(retries)
    iceberg_log.propagate = False
    warnings.filterwarnings("ignore", message="Delete operation did not match any records")
    sites = bucket_sites(bucket, BUCKETS * COMMIT_SITES)
    frames = [
        readings_frame(DAY0, sites, [i % COMMIT_HOURS], seed=bucket * 1000 + i, commit=i)
        for i in range(commits)
    ]
    arrows = [f.to_arrow() for f in frames] if fmt == "iceberg" else []
    barrier.wait()
    for i, frame in enumerate(frames):
        hour = i % COMMIT_HOURS
        start, cpu_start = time.perf_counter(), time.process_time()
        for attempt in range(MAX_ATTEMPTS):
            try:
                if fmt == "delta":
                    predicate = f"date = '{DAY0}' AND bucket = {bucket} AND hour = {hour}"
                    delta_replace(endpoint, table, frame, predicate)
                else:
                    tbl = iceberg_table(endpoint, table)
                    tbl.overwrite(arrows[i], overwrite_filter=iceberg_filter(DAY0, bucket, hour))
                break
            except Exception as exc:
                log.errors.append(f"{type(exc).__name__}: {str(exc)[:160]}")
                conflict = isinstance(exc, CommitFailedException | OperationalError) or (
                    fmt == "delta" and _is_delta_conflict(exc)
                )
                if not conflict:  # not a lost race: retrying will not help
                    log.failed += 1
                    break
                log.attempts += 1
                if attempt == 0:
                    log.retried += 1
                time.sleep(0.05 * (attempt + 1))
        else:
            log.failed += 1
        log.seconds.append(time.perf_counter() - start)
        log.cpu_seconds.append(time.process_time() - cpu_start)
    log.internal = retries.count
    out.put(log)


def check_commits(fmt: str, endpoint: str, table: str, workers: int, commits: int) -> str:
    """Does every (bucket, hour) slice hold exactly the rows of its last commit?"""
    if fmt == "delta":
        frame = pl.read_delta(delta_uri(table), storage_options=storage_options(endpoint))
    else:
        frame = pl.from_arrow(iceberg_table(endpoint, table).scan().to_arrow())
    assert isinstance(frame, pl.DataFrame)
    per_slice = COMMIT_SITES * 60 * len(FIELDS)
    slices = frame.group_by("bucket", "hour").agg(
        rows=pl.len(),
        unique=pl.struct("site", "time", "field").n_unique(),
        commit_min=pl.col("value").floor().min(),
        commit_max=pl.col("value").floor().max(),
    )
    problems = []
    for b in range(workers):
        for h in range(min(COMMIT_HOURS, commits)):
            last = max(i for i in range(commits) if i % COMMIT_HOURS == h)
            row = slices.filter((pl.col("bucket") == b) & (pl.col("hour") == h))
            if row.height != 1:
                problems.append(f"b{b}h{h} missing")
                continue
            got = row.row(0, named=True)
            if got["rows"] != per_slice or got["unique"] != per_slice:
                problems.append(f"b{b}h{h} {got['rows']} rows ({got['unique']} unique)")
            if got["commit_min"] != last or got["commit_max"] != last:
                problems.append(f"b{b}h{h} holds commit {got['commit_min']:.0f}, not {last}")
    expected = workers * min(COMMIT_HOURS, commits) * per_slice
    if frame.height != expected:
        problems.append(f"{frame.height:,} rows, expected {expected:,}")
    return "exact" if not problems else "; ".join(problems[:4])


def bench_commits(moto: Moto, fmt: str, workers: int, commits: int) -> dict[str, Any]:
    table = f"commits_{workers}"
    if fmt == "delta":
        delta_create(moto.endpoint, table)
    else:
        iceberg_create(moto.endpoint, table)
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(workers + 1)
    out = ctx.Queue()
    procs = [
        ctx.Process(
            target=commit_worker, args=(fmt, moto.endpoint, table, b, commits, barrier, out)
        )
        for b in range(workers)
    ]
    for p in procs:
        p.start()
    barrier.wait(timeout=300)
    moto.counts()
    start, server_start = time.perf_counter(), moto.cpu_seconds()
    logs: list[CommitLog] = [out.get(timeout=600) for _ in procs]
    wall = time.perf_counter() - start
    server_cpu = moto.cpu_seconds() - server_start
    requests = moto.counts()
    for p in procs:
        p.join(30)
    seconds = sorted(s for log in logs for s in log.seconds)
    total = len(seconds)
    objects, size = s3_objects(moto.endpoint, table_prefix(fmt, table))
    meta = metadata_size(moto, fmt, table)
    return {
        "format": fmt,
        "workers": workers,
        "commits": total,
        "wall_s": wall,
        "p50": float(np.percentile(seconds, 50)),
        "p95": float(np.percentile(seconds, 95)),
        "cpu_p50": float(np.median([c for log in logs for c in log.cpu_seconds])),
        "server_cpu": server_cpu,
        "retried": sum(log.retried for log in logs),
        "attempts": sum(log.attempts for log in logs),
        "failed": sum(log.failed for log in logs),
        "internal": sum(log.internal for log in logs),
        "errors": [e for log in logs for e in log.errors][:3],
        "requests": requests,
        "check": check_commits(fmt, moto.endpoint, table, workers, commits),
        "objects": objects,
        "bytes": size,
        "metadata": meta,
    }


def metadata_size(moto: Moto, fmt: str, table: str) -> dict[str, int]:
    """What a reader must fetch before the data: Delta's log (since its last checkpoint; none
    yet below 100 commits), Iceberg's current metadata JSON (it lists every snapshot not yet
    expired) and its manifests."""
    if fmt == "delta":
        n, size = s3_objects(moto.endpoint, f"delta/{table}/_delta_log/")
        return {"log_objects": n, "log_bytes": size}
    tbl = iceberg_table(moto.endpoint, table)
    key = tbl.metadata_location.removeprefix(f"s3://{S3_BUCKET}/")
    head = s3_client(moto.endpoint).head_object(Bucket=S3_BUCKET, Key=key)
    snapshot = tbl.current_snapshot()
    return {
        "json_bytes": head["ContentLength"],
        "snapshots": len(tbl.metadata.snapshots),
        "manifests": len(snapshot.manifests(tbl.io)) if snapshot else 0,
    }


def metadata_text(fmt: str, meta: dict[str, int]) -> str:
    if fmt == "delta":
        return f"_delta_log: {meta['log_objects']} objects, {meta['log_bytes'] / 1024:,.0f} KiB"
    return (
        f"metadata JSON {meta['json_bytes'] / 1024:,.0f} KiB ({meta['snapshots']} snapshots), "
        f"{meta['manifests']} manifests"
    )


# --- 2. compaction ------------------------------------------------------------------------------


def reader_loop(fmt: str, endpoint: str, table: str, day: date, stop: Any, out: Any) -> None:
    """A reader counting one date over and over (Polars, a fresh snapshot each time), to see
    whether a compaction ever shows it a partial date, a doubled one, or missing files."""
    counts: list[int] = []
    errors: list[str] = []
    while not stop.is_set():
        try:
            if fmt == "delta":
                frame = pl.scan_delta(delta_uri(table), storage_options=storage_options(endpoint))
            else:
                frame = pl.scan_iceberg(
                    iceberg_table(endpoint, table), storage_options=storage_options(endpoint)
                )
            # summing a column reads the data, so a deleted file cannot go unnoticed
            got = frame.filter(pl.col("date") == day).select(pl.len(), pl.col("value").sum())
            counts.append(int(got.collect().item(0, 0)))
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {str(exc)[:200]}")
        time.sleep(0.05)
    out.put((counts, errors))


def live_files(moto: Moto, fmt: str, table: str, day: date) -> int:
    """Data files of `day` in the table's current snapshot."""
    if fmt == "delta":
        from deltalake import DeltaTable

        dt = DeltaTable(delta_uri(table), storage_options=storage_options(moto.endpoint))
        adds = pl.DataFrame(dt.get_add_actions(flatten=True))
        return adds.filter(pl.col("partition.date") == day).height
    tbl = iceberg_table(moto.endpoint, table)
    return sum(1 for _ in tbl.scan(row_filter=iceberg_filter(day)).plan_files())


def table_prefix(fmt: str, table: str) -> str:
    return f"delta/{table}/" if fmt == "delta" else f"iceberg/{ICEBERG_NS}/{table}/"


def data_prefix(fmt: str, table: str) -> str:
    return table_prefix(fmt, table) + ("date=" if fmt == "delta" else "data/")


def compact(moto: Moto, fmt: str, table: str, day: date) -> dict[str, float]:
    """Rewrite `day` into one file sorted by site, time; then drop what no snapshot needs."""
    steps: dict[str, float] = {}
    start = time.perf_counter()
    if fmt == "delta":
        from deltalake import DeltaTable

        options = storage_options(moto.endpoint)
        frame = (
            pl.scan_delta(delta_uri(table), storage_options=options)
            .filter(pl.col("date") == day)
            .collect()
            .sort("site", "time")
        )
        steps["read+sort"] = time.perf_counter() - start
        delta_replace(moto.endpoint, table, frame, f"date = '{day}'")
        steps["write"] = time.perf_counter() - start - sum(steps.values())
        dt = DeltaTable(delta_uri(table), storage_options=options)
        dt.vacuum(retention_hours=0, dry_run=False, enforce_retention_duration=False)
        steps["vacuum"] = time.perf_counter() - start - sum(steps.values())
        dt.create_checkpoint()
        steps["checkpoint"] = time.perf_counter() - start - sum(steps.values())
    else:
        tbl = iceberg_table(moto.endpoint, table)
        arrow = tbl.scan(row_filter=iceberg_filter(day)).to_arrow()
        frame = pl.from_arrow(arrow)
        assert isinstance(frame, pl.DataFrame)
        frame = frame.sort("site", "time")
        steps["read+sort"] = time.perf_counter() - start
        tbl.overwrite(frame.to_arrow(), overwrite_filter=iceberg_filter(day))
        steps["write"] = time.perf_counter() - start - sum(steps.values())
        expire_iceberg(tbl)
        steps["expire"] = time.perf_counter() - start - sum(steps.values())
    steps["total"] = time.perf_counter() - start
    return steps


def expire_iceberg(tbl: Any) -> None:
    """Expire every snapshot but the current one: metadata only (pyiceberg 0.12 deletes no
    data file or manifest, and has no orphan-file removal)."""
    tbl.refresh()
    tbl.maintenance.expire_snapshots().older_than(datetime.now(UTC) + timedelta(seconds=1)).commit()


def bench_compaction(moto: Moto, fmt: str, sites: int) -> dict[str, Any]:
    """Build DAY0 as 24 hours x BUCKETS small files (one append each, as the live replaces
    leave it), then compact it while a reader counts it."""
    table = "readings"
    if fmt == "delta":
        delta_create(moto.endpoint, table)
    else:
        iceberg_create(moto.endpoint, table)
    expected = 0
    start = time.perf_counter()
    for hour in range(24):
        for bucket in range(BUCKETS):
            frame = readings_frame(
                DAY0, bucket_sites(bucket, sites), [hour], seed=hour * 10 + bucket
            )
            expected += frame.height
            if fmt == "delta":
                delta_append(moto.endpoint, table, frame)
            else:
                iceberg_table(moto.endpoint, table).append(frame.to_arrow())
    build_s = time.perf_counter() - start
    files_before = live_files(moto, fmt, table, DAY0)
    objects_before = s3_objects(moto.endpoint, data_prefix(fmt, table))
    ctx = mp.get_context("spawn")
    stop = ctx.Event()
    out = ctx.Queue()
    reader = ctx.Process(target=reader_loop, args=(fmt, moto.side_endpoint, table, DAY0, stop, out))
    reader.start()
    time.sleep(3)  # the reader's imports, and a few reads of the small files
    old_snapshot = snapshot_reader(moto, fmt, table, DAY0)
    moto.counts()
    steps = compact(moto, fmt, table, DAY0)
    requests = moto.counts()
    time.sleep(1.5)  # a few reads of the compacted date
    stop.set()
    counts, errors = out.get(timeout=120)
    reader.join(30)
    try:
        old_read = f"reads {old_snapshot():,} rows"
    except Exception as exc:
        old_read = f"fails: {type(exc).__name__}: {str(exc).splitlines()[0][:90]}"
    return {
        "format": fmt,
        "rows": expected,
        "build_s": build_s,
        "steps": steps,
        "requests": requests,
        "files_before": files_before,
        "files_after": live_files(moto, fmt, table, DAY0),
        "objects_before": objects_before,
        "objects_after": s3_objects(moto.endpoint, data_prefix(fmt, table)),
        "reads": len(counts),
        "reads_exact": sum(c == expected for c in counts),
        "read_counts": sorted(set(counts)),
        "read_errors": errors[:3],
        "read_error_count": len(errors),
        "old_snapshot": old_read,
    }


def snapshot_reader(moto: Moto, fmt: str, table: str, day: date) -> Callable[[], int]:
    """A reader pinned to the current snapshot (a query planned before the compaction, or time
    travel): run after the cleanup, does it still find its files?"""
    options = storage_options(moto.endpoint)
    if fmt == "delta":
        from deltalake import DeltaTable

        version = DeltaTable(delta_uri(table), storage_options=options).version()
        lf = pl.scan_delta(delta_uri(table), version=version, storage_options=options)
    else:
        lf = pl.scan_iceberg(iceberg_table(moto.endpoint, table), storage_options=options)
    query = lf.filter(pl.col("date") == day).select(pl.len(), pl.col("value").sum())
    return lambda: int(query.collect().item(0, 0))


# --- 3. readers ---------------------------------------------------------------------------------


def parquet_key(day: date) -> str:
    return f"parquet/readings/date={day}/part-0.parquet"


def build_days(moto: Moto, days: int, sites: int) -> dict[str, Any]:
    """Dates DAY0+1 .. as compaction leaves them: one sorted file each (Delta and Iceberg one
    commit a date), DAY0 already compacted; the Parquet anchor gets every date. Then a Delta
    checkpoint and an Iceberg expiry, as after a compaction."""
    options = storage_options(moto.endpoint)
    s3 = s3_client(moto.endpoint)
    start = time.perf_counter()
    rows = 0
    for d in range(days):
        day = DAY0 + timedelta(days=d)
        frame = readings_frame(day, range(sites), range(24), seed=100_000 + d)
        rows += frame.height
        if d > 0:
            delta_append(moto.endpoint, "readings", frame)
            iceberg_table(moto.endpoint, "readings").append(frame.to_arrow())
        buffer = io.BytesIO()
        frame.drop("date").write_parquet(buffer, compression="zstd", row_group_size=ROW_GROUP_ROWS)
        s3.put_object(Bucket=S3_BUCKET, Key=parquet_key(day), Body=buffer.getvalue())
    from deltalake import DeltaTable

    DeltaTable(delta_uri("readings"), storage_options=options).create_checkpoint()
    expire_iceberg(iceberg_table(moto.endpoint, "readings"))
    return {"rows": rows, "build_s": time.perf_counter() - start}


def duckdb_connection(port: int) -> tuple[Any, str | None]:
    """A fresh in-memory DuckDB (nothing cached) with the S3 secret and the extensions loaded
    from their PyPI packages; the second item says why iceberg_scan is unavailable, if it is."""
    import duckdb

    con = duckdb.connect(config={"autoinstall_known_extensions": False})

    def load(name: str) -> None:
        package = importlib.resources.files(f"duckdb_extension_{name}")
        path = package / "extensions" / f"v{duckdb.__version__}" / f"{name}.duckdb_extension"
        con.execute(f"load '{path}'")

    for name in ("httpfs", "delta"):
        load(name)
    con.execute(
        "create secret (TYPE s3, KEY_ID 'k', SECRET 's', REGION 'us-east-1', "
        f"ENDPOINT '127.0.0.1:{port}', URL_STYLE 'path', USE_SSL false)"
    )
    if importlib.util.find_spec("duckdb_extension_avro") is None:
        return con, "needs duckdb-extension-avro (./dev setup installs it)"
    try:
        load("avro")
        load("iceberg")
    except duckdb.Error as exc:
        return con, f"iceberg extension: {str(exc)[:120]}"
    return con, None


QUERIES = {
    "a: one site, one day": "select * from {t} where date = DATE '{day}' and site = '{site}'",
    "b: count one day": "select count(*) from {t} where date = DATE '{day}'",
    "c: count all": "select count(*) from {t}",
}


def duckdb_sources(metadata_location: str) -> dict[str, str]:
    return {
        "delta": f"delta_scan('{delta_uri('readings')}')",
        "iceberg": f"iceberg_scan('{metadata_location}')",
        "parquet": f"read_parquet('s3://{S3_BUCKET}/parquet/readings/*/*.parquet', "
        "hive_partitioning = true, hive_types = {'date': DATE})",
    }


def polars_query(
    moto: Moto, fmt: str, query: str, day: date, site: str
) -> Callable[[], pl.DataFrame]:
    """The query as a Polars plan over a fresh scan (the Iceberg table loaded anew)."""
    from pyiceberg.manifest import clear_manifest_cache

    options = storage_options(moto.endpoint)

    def run() -> pl.DataFrame:
        if fmt == "delta":
            lf = pl.scan_delta(delta_uri("readings"), storage_options=options)
        elif fmt == "iceberg":
            clear_manifest_cache()  # pyiceberg's, process-wide: each run starts cold
            lf = pl.scan_iceberg(iceberg_table(moto.endpoint, "readings"), storage_options=options)
        else:
            lf = pl.scan_parquet(
                f"s3://{S3_BUCKET}/parquet/readings/**/*.parquet",
                hive_partitioning=True,
                hive_schema={"date": pl.Date},
                storage_options=options,
            )
        if query.startswith("a"):
            return lf.filter((pl.col("date") == day) & (pl.col("site") == site)).collect()
        if query.startswith("b"):
            return lf.filter(pl.col("date") == day).select(pl.len()).collect()
        return lf.select(pl.len()).collect()

    return run


def bench_readers(moto: Moto, days: int, sites: int, repeat: int) -> list[dict[str, Any]]:
    day = DAY0 + timedelta(days=days // 2)
    site = f"site-{min(123, sites - 1):04d}"
    metadata_location = iceberg_table(moto.endpoint, "readings").metadata_location
    rows: list[dict[str, Any]] = []
    for engine in ("duckdb", "polars"):
        for fmt in ("delta", "iceberg", "parquet"):
            for query, sql in QUERIES.items():
                runs: list[tuple[float, Counter[str], int]] = []
                unavailable = None
                for _ in range(repeat):
                    if engine == "duckdb":
                        con, unavailable = duckdb_connection(moto.port)
                        if fmt == "iceberg" and unavailable:
                            break
                        text = sql.format(
                            t=duckdb_sources(metadata_location)[fmt], day=day, site=site
                        )

                        def run(con: Any = con, text: str = text) -> Any:
                            return con.sql(text).to_arrow_table()
                    else:
                        run = polars_query(moto, fmt, query, day, site)
                    moto.counts()
                    start = time.perf_counter()
                    try:
                        result = run()
                    except Exception as exc:
                        unavailable = f"{type(exc).__name__}: {str(exc)[:150]}"
                        break
                    elapsed = time.perf_counter() - start
                    got = len(result) if query.startswith("a") else _scalar(result)
                    runs.append((elapsed, moto.counts(), got))
                rows.append(
                    {
                        "engine": engine,
                        "format": fmt,
                        "query": query,
                        "unavailable": unavailable if not runs else None,
                        "seconds": statistics.median(r[0] for r in runs) if runs else None,
                        "requests": runs[0][1] if runs else Counter(),
                        "result": runs[0][2] if runs else None,
                        "stable": len({_req_key(r[1]) for r in runs}) <= 1,
                    }
                )
    return rows


def _scalar(result: Any) -> int:
    if isinstance(result, pl.DataFrame):
        return int(result.item())
    return int(result.column(0)[0].as_py())


def _req_key(c: Counter[str]) -> tuple[int, ...]:
    return (c["GET"], c["LIST"], c["HEAD"])


# --- the report ---------------------------------------------------------------------------------


def table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def monthly_price(r: dict[str, Any]) -> float:
    """The S3 requests of a month of commits, one a minute by each of the run's workers."""
    per_commit = sum(r["requests"][k] * p / 1000 for k, p in PRICE_PER_1000.items())
    return per_commit / r["commits"] * 30 * 24 * 60 * r["workers"]


def growth_text(commits: list[dict[str, Any]]) -> str:
    """What a day of live commits would leave behind, extrapolated from the contended runs."""
    delta, iceberg = (
        max((r for r in commits if r["format"] == f), key=lambda r: r["workers"])
        for f in ("delta", "iceberg")
    )
    per_day = 24 * 60 * iceberg["workers"]
    meta = iceberg["metadata"]
    per_snapshot = meta["json_bytes"] / max(meta["snapshots"], 1)
    snapshots_per_commit = meta["snapshots"] / iceberg["commits"]
    log = delta["metadata"]
    return (
        f"A day of one commit a minute by each of {iceberg['workers']} workers is {per_day:,} "
        f"commits. Iceberg: {snapshots_per_commit:.1f} snapshots a commit here, "
        f"{per_snapshot:,.0f} B each in the metadata JSON, so without expiry that JSON reaches "
        f"~{per_day * snapshots_per_commit * per_snapshot / 1e6:.1f} MB by the end of the day, "
        "written anew by every commit and read first by every reader; and a manifest or more a "
        f"commit ({meta['manifests']} now). Delta: {per_day:,} log JSONs of "
        f"~{log['log_bytes'] / max(log['log_objects'], 1) / 1024:.1f} KiB, a checkpoint every "
        "100 commits, so a reader or writer opening the table reads the checkpoint and up to 99 "
        "JSONs."
    )


def requests_text(c: Counter[str], per: float = 1.0) -> str:
    kinds = [k for k in ("GET", "LIST", "HEAD", "PUT", "POST", "DELETE") if c[k]]
    return " ".join(f"{k} {c[k] / per:.1f}" for k in kinds) or "0"


def report(
    args: argparse.Namespace,
    commits: list[dict[str, Any]],
    compactions: list[dict[str, Any]],
    build: dict[str, Any],
    readers: list[dict[str, Any]],
    sizes: dict[str, tuple[int, int]],
    runtime: float,
) -> str:
    import deltalake
    import duckdb
    import pyiceberg

    out = [
        "# Delta Lake vs Iceberg on moto S3",
        "",
        f"polars {pl.__version__}, deltalake {deltalake.__version__}, pyiceberg "
        f"{pyiceberg.__version__} (SQL catalog on SQLite), duckdb {duckdb.__version__}; "
        f"zstd, row groups <= {ROW_GROUP_ROWS:,} rows; moto in its own process; "
        f"{os.cpu_count()} cores.",
        "",
        f"## 1. Concurrent replace commits ({COMMIT_SITES} sites x 60 min x {len(FIELDS)} "
        f"fields = {COMMIT_SITES * 60 * len(FIELDS):,} rows a commit, {COMMIT_HOURS} hours cycled)",
        "",
    ]
    out.append(
        table(
            [
                "format",
                "workers x commits",
                "wall s",
                "s/commit p50",
                "p95",
                "worker CPU s/commit p50",
                "moto CPU s",
                "library's own retries",
                "retried by our loop (extra attempts)",
                "failed",
                "S3 requests / commit",
                "S3 $ a month at 1 commit/min/worker",
                "final table",
                "after the commits",
            ],
            [
                (
                    r["format"],
                    f"{r['workers']} x {r['commits'] // r['workers']}",
                    f"{r['wall_s']:.1f}",
                    f"{r['p50']:.2f}",
                    f"{r['p95']:.2f}",
                    f"{r['cpu_p50']:.2f}",
                    f"{r['server_cpu']:.1f}",
                    f"{r['requests']['412']} (412s to its {r['requests']['PUT_conditional']} "
                    "conditional PUTs)"
                    if r["format"] == "delta"
                    else f"{r['internal']} (logged)",
                    f"{r['retried']} ({r['attempts']})",
                    r["failed"],
                    requests_text(r["requests"], r["commits"]),
                    f"{monthly_price(r):,.2f}",
                    r["check"],
                    f"{r['objects']} objects, {r['bytes'] / 1e6:.1f} MB; "
                    + metadata_text(r["format"], r["metadata"]),
                )
                for r in commits
            ],
        )
    )
    errors = [f"{r['format']}: {e}" for r in commits for e in r["errors"]]
    if errors:
        out += ["", "Retried errors (first few): " + " / ".join(errors)]
    out += ["", growth_text(commits)]
    rows_day = compactions[0]["rows"] if compactions else 0
    out += [
        "",
        f"## 2. Compaction of one date ({args.sites} sites, {rows_day:,} rows, "
        f"24 hours x {BUCKETS} buckets of small files -> one file sorted by site, time)",
        "",
        table(
            [
                "format",
                "build: 96 appends, s",
                "compaction s",
                "steps s",
                "files in table before -> after",
                "S3 data objects before -> after",
                "S3 requests",
                "reader during compaction",
                "reader of the snapshot before, after the cleanup",
            ],
            [
                (
                    c["format"],
                    f"{c['build_s']:.1f}",
                    f"{c['steps']['total']:.2f}",
                    ", ".join(f"{k} {v:.2f}" for k, v in c["steps"].items() if k != "total"),
                    f"{c['files_before']} -> {c['files_after']}",
                    f"{c['objects_before'][0]} ({c['objects_before'][1] / 1e6:.1f} MB) -> "
                    f"{c['objects_after'][0]} ({c['objects_after'][1] / 1e6:.1f} MB)",
                    requests_text(c["requests"]),
                    f"{c['reads_exact']}/{c['reads']} reads exact, counts seen "
                    f"{c['read_counts']}, {c['read_error_count']} errors"
                    + (f" ({c['read_errors'][0]})" if c["read_errors"] else ""),
                    c["old_snapshot"],
                )
                for c in compactions
            ],
        ),
    ]
    out += [
        "",
        f"## 3. Readers ({args.days} compacted dates, {build['rows']:,} rows; "
        f"built in {build['build_s']:.0f} s; cold, median of {args.repeat})",
        "",
        "Sizes on S3: "
        + ", ".join(f"{k} {n} objects {b / 1e6:.1f} MB" for k, (n, b) in sizes.items()),
        "",
        table(
            [
                "engine",
                "format",
                "query",
                "rows/count",
                "s",
                "GET (of table metadata)",
                "GET MB",
                "LIST+HEAD",
            ],
            [
                (
                    r["engine"],
                    r["format"],
                    r["query"],
                    "n/a" if r["unavailable"] else f"{r['result']:,}",
                    r["unavailable"] or f"{r['seconds']:.3f}" + ("" if r["stable"] else "*"),
                    ""
                    if r["unavailable"]
                    else f"{r['requests']['GET']} ({r['requests']['GET_meta']})",
                    "" if r["unavailable"] else f"{r['requests']['GET_bytes'] / 1e6:.2f}",
                    "" if r["unavailable"] else r["requests"]["LIST"] + r["requests"]["HEAD"],
                )
                for r in readers
            ],
        ),
        "",
        "(* the repeats' request counts differed; shown: the first run's.)",
        "",
        "## 4. What each needs in production",
        "",
        NOTES,
        "",
        "## Reading these figures",
        "",
        CAVEATS,
        "",
        f"Runtime: {runtime:.0f} s.",
    ]
    return "\n".join(out)


NOTES = """\
- **Catalog.** Delta needs none: the table is its `_delta_log/` on S3, and delta_scan, Polars
  and deltalake open it by URI. Iceberg needs a catalog that every writer and reader shares to
  find the current metadata JSON and to commit (compare-and-swap of its location): the SQLite
  file used here is one machine's, not shared between ECS tasks, so production needs AWS Glue
  (pyiceberg's GlueCatalog; no server to run) or PostgreSQL (the SQL catalog on RDS), or a REST
  catalog (S3 Tables). Readers that skip the catalog (DuckDB's iceberg_scan on a metadata JSON)
  must be told the current JSON; DuckDB's iceberg extension can instead ATTACH a REST catalog
  (Glue and S3 Tables offer one). Polars reads Iceberg through a pyiceberg catalog object.
- **Athena.** Iceberg: read and write (MERGE, OPTIMIZE, VACUUM), but only for tables in the
  Glue catalog (or S3 Tables): a PostgreSQL catalog would leave Athena out. Delta: read-only,
  through a Glue table registered on the Delta location (native Delta support in Athena
  engine v3), no writes; no catalog needed for anything else.
- **Concurrent writers on S3.** Delta (delta-rs 1.x): each commit PUTs `_delta_log/<n>.json`
  with `If-None-Match: *` (S3 conditional writes, since 2024): a writer that loses the race gets
  412, checks the winner's actions against its own predicate, and commits as n+1 when they do
  not overlap (the disjoint (date, bucket, hour) predicates here); no DynamoDB lock is needed any
  more. Iceberg: the catalog's atomic swap of the metadata location (here an UPDATE ... WHERE
  metadata_location = old in SQLite; Glue: an UpdateTable on the version id). pyiceberg 0.12
  retries a commit that lost by itself (commit.retry.num-retries, default 4, waits from 100 ms
  doubling): it refreshes the table, validates, rebuilds the snapshot and deletes what the lost
  attempt wrote; after the last retry it raises CommitFailedException, and the caller must
  reload and redo the overwrite (the retry loop here).
- **Maintenance.** Delta: vacuum (deletes unreferenced data files) and checkpoints (every 100
  commits by default, and after each compaction here); old log JSONs expire after
  delta.logRetentionDuration (30 days). Iceberg with pyiceberg 0.12: expire_snapshots only removes
  snapshots from the metadata; it deletes no data file or manifest, and there is no orphan-file
  removal, data-file or manifest rewrite: replaced files stay on S3 until something else
  (Athena's VACUUM, Spark, or our own listing-and-delete job) removes them, and manifests pile
  up, one or more a commit, unless commit.manifest-merge.enabled is set. Every commit writes a
  new metadata JSON listing all unexpired snapshots (up to two per overwrite), so per-minute
  commits need frequent expiry to keep that file, which every reader fetches first, small."""


def progress(start: float, what: str) -> None:
    print(f"[{time.perf_counter() - start:5.0f} s] {what} ...", flush=True)


CAVEATS = """\
- moto is one Python process spending milliseconds of CPU on each request (a few hundred
  requests a second at most; its CPU seconds are in table 1): under the contended commits it is
  a bottleneck of its own. S3 scales out but takes some 10-30 ms to a first byte, so there the
  request counts (above all the sequential metadata requests before any data) weigh more than
  these seconds suggest: the counts are the figures that carry over.
- DuckDB's delta_scan (delta-kernel) fetches the small checkpoint's footer and row group again
  and again (the table-metadata GETs in table 3), whatever the query.
- The workers commit back to back, each again as soon as its last commit is done: harsher
  contention than one commit a minute each, but workers ticking on the same minute meet the
  same race once a minute. A writer opening Delta by URI reads the log since the last
  checkpoint, so its GETs per commit grow with the log (here from an empty table: on average
  about as many as in steady state, where a checkpoint comes every 100 commits).
- Polars-Iceberg times include loading the table from the catalog; DuckDB's iceberg_scan is
  given the metadata JSON (a reader would first have to ask the catalog for it).
- This machine's cores (os.cpu_count() above) are shared by the workers and moto: with more
  workers than cores the contended seconds include waiting for a core (worker CPU s/commit and
  moto's CPU s against the wall time tell how much).
- Iceberg has no 8- or 16-bit integers: bucket and hour are stored as int (32-bit).
- File sizes differ by writer, not by format: Delta's (arrow-rs) and Iceberg's (pyarrow)
  writers dictionary-encode the float values (random here, so the dictionary fails and costs),
  Polars' writer (the Parquet anchor) does not.
- The compaction date was built with appends (one file per hour and bucket, as the live
  replaces leave it), not with a day of replace commits."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sites", type=int, default=300, help="sites of the compacted dates")
    parser.add_argument("--days", type=int, default=14, help="compacted dates for the readers")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--commits", type=int, default=20, help="replace commits per worker")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each reader query")
    parser.add_argument("--quick", action="store_true", help="40 sites, 3 days, 5 commits")
    args = parser.parse_args()
    if args.quick:
        args.sites, args.days, args.commits, args.repeat = 40, 3, 5, 2
    start = time.perf_counter()
    shutil.rmtree(OUT_DIR, ignore_errors=True)
    OUT_DIR.mkdir(parents=True)
    moto = Moto()
    try:
        s3_client(moto.endpoint).create_bucket(Bucket=S3_BUCKET)
        commits = []
        for fmt in ("delta", "iceberg"):
            for workers in sorted({1, args.workers}):  # 1: the same commits uncontended
                progress(start, f"commits: {fmt}, {workers} worker(s)")
                commits.append(bench_commits(moto, fmt, workers, args.commits))
        compactions = []
        for fmt in ("delta", "iceberg"):
            progress(start, f"compaction: {fmt}")
            compactions.append(bench_compaction(moto, fmt, args.sites))
        progress(start, "readers: building the dates")
        build = build_days(moto, args.days, args.sites)
        sizes = {
            "delta": s3_objects(moto.endpoint, table_prefix("delta", "readings")),
            "iceberg": s3_objects(moto.endpoint, table_prefix("iceberg", "readings")),
            "parquet": s3_objects(moto.endpoint, "parquet/readings/"),
        }
        progress(start, "readers: querying")
        readers = bench_readers(moto, args.days, args.sites, args.repeat)
    finally:
        moto.stop()
    text = report(args, commits, compactions, build, readers, sizes, time.perf_counter() - start)
    (OUT_DIR / "results.md").write_text(text + "\n")
    raw = {"commits": commits, "compactions": compactions, "build": build, "readers": readers}
    (OUT_DIR / "results.json").write_text(json.dumps(raw, indent=1, default=str) + "\n")
    print()
    print(text)


if __name__ == "__main__":
    main()
