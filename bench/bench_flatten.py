"""Benchmark: flattening one simulated day of payloads to the `readings` table.

Four contenders flatten the same raw-records NDJSON file (one `encode_record` line per simulated
message) to a Parquet `readings` table (site, time, vid, device, field, value, value_text):

- project: `data_acq.curate.flatten.iter_flatten_parallel` over 8 MiB spans of whole lines
  (`line_spans`; each worker reads its span and `read_records` its lines), one
  process per core (as `data-acq transform` and staging run it), streamed by `write_parquet`;
- duckdb:  the same flattening in SQL over `read_ndjson` with `json_each`, written by
  `COPY ... TO` Parquet;
- duckdb_from_json: DuckDB's fastest route found, one typed `from_json` per payload and
  `unnest(map_entries(...))` (the anchor is whichever DuckDB route is faster);
- python:  a plain per-message transform (`json.loads`, one dict per row, Polars, Parquet).

Each contender runs in its own subprocess, so its wall time and peak memory are its own: peak
RSS of the largest single process (`os.wait4`), and the sampled peak of the sum over the
contender's process and its worker processes. All must produce the same number of rows (and
the same value checksums), otherwise the run fails loudly with a non-zero exit code. Single
runs here vary by up to 10 %, so every contender runs `--repeat` rounds (3), each round starting
with the next contender; the table shows the median and the fastest-slowest range, and the
project's ratio to the anchor round by round.

Run it from the project root:

    .venv/bin/python bench/bench_flatten.py                 # 100 sites x 24 h (144,000 payloads)
    .venv/bin/python bench/bench_flatten.py --only project,duckdb_from_json --repeat 5
    .venv/bin/python bench/bench_flatten.py --sites 10 --hours 2 --only project,duckdb
    .venv/bin/python bench/bench_flatten.py --keep          # keep the input and outputs

The input and outputs go to `bench/out/` (git-ignored); they are removed at the end unless
`--keep` is given.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from duckdb_anchor import readings_sql

CONTENDERS = ("project", "duckdb", "duckdb_from_json", "python")
OUT_DIR = Path(__file__).resolve().parent / "out"
RECEIVED_AT = datetime(2024, 10, 13, tzinfo=UTC)  # fixed: the input is the same on every run
PYTHON_CHUNK = 50_000  # messages per chunk for the plain-Python contender
PROJECT_BLOCK = 8 << 20  # bytes of whole lines a worker process reads at once
MEMORY_TARGET_BYTES = 2_000_000_000  # peak RSS target: under 2 GB
MIB = 1024 * 1024

DUCKDB_SQL = """
copy (
    with src as (
        select topic, payload
        from read_ndjson('{input}', columns = {{topic: 'VARCHAR', payload: 'JSON'}})
    ),
    rd as (
        select
            split_part(topic, '/', 2) as site,
            to_timestamp(cast(payload ->> '$.t' as bigint)) as time,
            unnest(cast(payload -> '$.r' as JSON[])) as r
        from src
    ),
    kv as (
        select
            site, time, r ->> '$._vid' as vid, r ->> '$._d' as device,
            je.key as field, je.value as v, je.type as ty
        from rd, json_each(r) as je
    )
    select
        site, time, vid, device, field,
        case when ty in ('BIGINT', 'UBIGINT', 'DOUBLE') then cast(v as double) end as value,
        case when ty not in ('BIGINT', 'UBIGINT', 'DOUBLE') then v ->> '$' end as value_text
    from kv
    where not starts_with(field, '_') and ty <> 'NULL' and vid is not null
) to '{output}' (format parquet, compression zstd)
"""

# ---------------------------------------------------------------------------------------------
# The contenders (each runs in a child process; returns the number of rows written)
# ---------------------------------------------------------------------------------------------


def _records_of_span(path: str, start: int, stop: int, first_ref: int) -> Iterator[Any]:
    """A worker's share: its span of the file, read and split into lines by the worker, as a
    staging worker fetches and splits its own raw objects."""
    from data_acq.messages import read_bytes, read_records

    return read_records(read_bytes(path, start, stop).splitlines(), first_ref)


def run_project(input_path: Path, output_path: Path) -> int:
    from functools import partial

    from data_acq.curate.flatten import READINGS_SCHEMA, iter_flatten_parallel, write_parquet
    from data_acq.messages import line_spans

    with input_path.open("rb") as stream:
        sources = (
            partial(_records_of_span, str(input_path), start, stop, first)
            for start, stop, first in line_spans(stream, PROJECT_BLOCK)
        )
        tables = iter_flatten_parallel(sources, workers=os.cpu_count() or 1)
        return write_parquet((t.readings for t in tables), output_path, READINGS_SCHEMA)


def run_duckdb(input_path: Path, output_path: Path) -> int:
    import duckdb

    con = duckdb.connect()  # in memory, default threads
    con.execute("set enable_progress_bar = false")
    con.execute(DUCKDB_SQL.format(input=input_path.as_posix(), output=output_path.as_posix()))
    row = con.execute(f"select count(*) from read_parquet('{output_path.as_posix()}')").fetchone()
    con.close()
    return int(row[0]) if row else 0


def run_duckdb_from_json(input_path: Path, output_path: Path) -> int:
    import duckdb

    con = duckdb.connect()
    con.execute("set enable_progress_bar = false")
    sql = readings_sql(input_path.as_posix(), output_path.as_posix())
    con.execute(sql)
    row = con.execute(f"select count(*) from read_parquet('{output_path.as_posix()}')").fetchone()
    con.close()
    return int(row[0]) if row else 0


def _plain_rows(line: bytes) -> Iterator[dict[str, Any]]:
    """The readings rows of one raw record, the naive way: one dict per row."""
    record = json.loads(line)
    payload = record.get("payload")
    if payload is None:
        payload = json.loads(record.get("payload_text") or "null")
    if not isinstance(payload, dict):
        return
    parts = (record.get("topic") or "").split("/")
    site = parts[1] if len(parts) > 1 else None
    t = payload.get("t")
    if not isinstance(t, int) or isinstance(t, bool):
        return
    moment = datetime.fromtimestamp(t, UTC)
    for reading in payload.get("r") or []:
        if not isinstance(reading, dict):
            continue
        vid = reading.get("_vid")
        if not isinstance(vid, str):
            continue
        device = reading.get("_d")
        for key, value in reading.items():
            if key.startswith("_") or value is None:
                continue
            if isinstance(value, bool):
                number, text = None, "true" if value else "false"
            elif isinstance(value, int | float):
                number, text = float(value), None
            elif isinstance(value, str):
                number, text = None, value
            else:
                continue  # arrays and objects are not readings
            yield {
                "site": site,
                "time": moment,
                "vid": vid,
                "device": device,
                "field": key,
                "value": number,
                "value_text": text,
            }


def run_python(input_path: Path, output_path: Path) -> int:
    import polars as pl
    import pyarrow.parquet as pq

    from data_acq.curate.flatten import READINGS_SCHEMA

    rows_written = 0
    arrow_schema = READINGS_SCHEMA.to_frame().to_arrow().schema
    with (
        input_path.open("rb") as lines,
        pq.ParquetWriter(output_path, arrow_schema, compression="zstd") as out,
    ):
        rows: list[dict[str, Any]] = []
        messages = 0
        for line in lines:
            rows.extend(_plain_rows(line))
            messages += 1
            if messages == PYTHON_CHUNK:
                out.write_table(pl.DataFrame(rows, schema=READINGS_SCHEMA).to_arrow())
                rows_written += len(rows)
                rows, messages = [], 0
        if rows:
            out.write_table(pl.DataFrame(rows, schema=READINGS_SCHEMA).to_arrow())
            rows_written += len(rows)
    return rows_written


RUNNERS = {
    "project": run_project,
    "duckdb": run_duckdb,
    "duckdb_from_json": run_duckdb_from_json,
    "python": run_python,
}


def _tree_rss(pid: int) -> int:
    """Resident bytes of a process and all its descendants (worker processes included)."""
    total = 0
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            total += 1024 * int(status.split("VmRSS:")[1].split()[0])
            for task in Path(f"/proc/{current}/task").iterdir():
                pending.extend(int(c) for c in (task / "children").read_text().split())
        except (OSError, IndexError, ValueError):
            continue  # the process ended while we looked
    return total


def child(contender: str, input_path: Path, output_path: Path) -> None:
    """Run one contender and print its result as one JSON line.

    A thread samples the resident memory of this process and its descendants every 20 ms:
    `os.wait4` in the driver gives only the largest single process, not the workers' sum."""
    import threading

    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.wait(0.02):
            peak = max(peak, _tree_rss(os.getpid()))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.perf_counter()
    rows = RUNNERS[contender](input_path, output_path)
    seconds = time.perf_counter() - start
    done.set()
    sampler.join()
    report = {"contender": contender, "rows": rows, "seconds": seconds, "tree_rss": peak}
    print(json.dumps(report), flush=True)


# ---------------------------------------------------------------------------------------------
# The driver
# ---------------------------------------------------------------------------------------------


@dataclass(slots=True)
class InputStats:
    path: Path
    payloads: int
    payload_bytes: int
    file_bytes: int
    seconds: float


@dataclass(slots=True)
class Result:
    contender: str
    rows: int
    seconds: float  # the contender's own work: open input .. Parquet closed
    process_seconds: float  # the whole subprocess, interpreter start and imports included
    peak_rss_bytes: int  # the largest single process (os.wait4)
    tree_rss_bytes: int  # sampled sum over the contender's process and its workers
    output: Path


def generate_input(sites: int, hours: int, seed: int, path: Path) -> InputStats:
    from data_acq.devtools.simulate import SimulationSpec, simulate
    from data_acq.messages import encode_record

    spec = SimulationSpec(
        sites=sites, minutes=hours * 60, seed=seed, duplicate_rate=0.0, outage_sites=0
    )
    start = time.perf_counter()
    payloads = payload_bytes = 0
    with path.open("wb") as out:
        for topic, payload in simulate(spec):
            out.write(encode_record(topic, payload, RECEIVED_AT))
            payloads += 1
            payload_bytes += len(payload)
    return InputStats(
        path, payloads, payload_bytes, path.stat().st_size, time.perf_counter() - start
    )


def run_contender(contender: str, input_path: Path, output_path: Path) -> Result:
    output_path.unlink(missing_ok=True)
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--contender",
        contender,
        "--input",
        str(input_path),
        "--output",
        str(output_path),
    ]
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    stdout = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    process_seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    if proc.returncode != 0:
        sys.exit(f"contender {contender} failed with exit code {proc.returncode}")
    report = json.loads(stdout.decode().strip().splitlines()[-1])
    return Result(
        contender,
        int(report["rows"]),
        float(report["seconds"]),
        process_seconds,
        usage.ru_maxrss * 1024,  # Linux reports KiB
        int(report["tree_rss"]),
        output_path,
    )


def checksums(path: Path) -> dict[str, Any]:
    """Order-independent figures of one output, to check the contenders agree beyond row counts."""
    import polars as pl

    frame = (
        pl.scan_parquet(path)
        .select(
            rows=pl.len(),
            numbers=pl.col("value").count(),
            texts=pl.col("value_text").count(),
            value_sum=pl.col("value").sum(),
            fields=pl.col("field").n_unique(),
            sites=pl.col("site").n_unique(),
            first=pl.col("time").min(),
            last=pl.col("time").max(),
        )
        .collect()
    )
    figures = frame.row(0, named=True)
    figures["first"], figures["last"] = str(figures["first"]), str(figures["last"])
    return figures


def agree(a: dict[str, Any], b: dict[str, Any]) -> bool:
    for key, value in a.items():
        other = b[key]
        if key == "value_sum":
            if abs(value - other) > 1e-9 * max(1.0, abs(value)):
                return False
        elif value != other:
            return False
    return True


def versions() -> str:
    import duckdb
    import msgspec
    import polars as pl
    import pyarrow as pa

    return (
        f"python {platform.python_version()}, polars {pl.__version__}, "
        f"duckdb {duckdb.__version__}, msgspec {msgspec.__version__}, pyarrow {pa.__version__}"
    )


def fastest_duckdb(results: list[Result]) -> Result | None:
    """The anchor: the faster of the DuckDB routes that ran."""
    routes = [r for r in results if r.contender.startswith("duckdb")]
    return min(routes, key=lambda r: r.seconds) if routes else None


def summarize(contender: str, runs: list[Result]) -> Result:
    """One row per contender over its runs: the median times, the largest memory."""
    return Result(
        contender,
        runs[-1].rows,
        statistics.median(r.seconds for r in runs),
        statistics.median(r.process_seconds for r in runs),
        max(r.peak_rss_bytes for r in runs),
        max(r.tree_rss_bytes for r in runs),
        runs[-1].output,
    )


def print_table(results: list[Result], runs: dict[str, list[Result]], payloads: int) -> None:
    duck = fastest_duckdb(results)
    header = (
        f"{'contender':<16} {'seconds':>8} {'range s':>11} {'process s':>9} {'payloads/s':>11} "
        f"{'peak RSS MB':>11} {'all procs MB':>12} {'rows':>11} {'vs duckdb':>9}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        ratio = f"{r.seconds / duck.seconds:.2f}" if duck else "-"
        times = [run.seconds for run in runs[r.contender]]
        spread = f"{min(times):.2f}-{max(times):.2f}"
        print(
            f"{r.contender:<16} {r.seconds:>8.2f} {spread:>11} {r.process_seconds:>9.2f} "
            f"{payloads / r.seconds:>11,.0f} {r.peak_rss_bytes / MIB:>11,.0f} "
            f"{r.tree_rss_bytes / MIB:>12,.0f} {r.rows:>11,} {ratio:>9}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=100, help="simulated sites (100)")
    parser.add_argument("--hours", type=int, default=24, help="simulated hours (24)")
    parser.add_argument("--seed", type=int, default=42, help="simulator seed (42)")
    parser.add_argument(
        "--only", default=",".join(CONTENDERS), help="comma-separated contenders to run"
    )
    parser.add_argument(
        "--repeat", type=int, default=3, help="rounds of every contender; medians reported (3)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the input and outputs")
    # internal: run one contender in this process
    parser.add_argument("--contender", choices=CONTENDERS, help=argparse.SUPPRESS)
    parser.add_argument("--input", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--output", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.contender:
        if args.input is None or args.output is None:
            parser.error("--contender needs --input and --output")
        child(args.contender, args.input, args.output)
        return 0

    if args.repeat < 1:
        parser.error("--repeat takes a count of 1 or more")
    chosen = [c.strip() for c in args.only.split(",") if c.strip()]
    unknown = sorted(set(chosen) - set(CONTENDERS))
    if unknown or not chosen:
        parser.error(f"--only takes a subset of {','.join(CONTENDERS)}")
    chosen = [c for c in CONTENDERS if c in chosen]

    OUT_DIR.mkdir(parents=True, exist_ok=True)
    stem = f"raw_{args.sites}sites_{args.hours}h_seed{args.seed}"
    input_path = OUT_DIR / f"{stem}.ndjson"

    print(f"machine: {os.cpu_count()} cores, {platform.platform()}")
    print(f"versions: {versions()}")
    print(f"generating input: {args.sites} sites x {args.hours} h -> {input_path}")
    stats = generate_input(args.sites, args.hours, args.seed, input_path)
    print(
        f"input: {stats.payloads:,} payloads, mean payload {stats.payload_bytes / stats.payloads:,.0f} B, "
        f"file {stats.file_bytes / MIB:,.1f} MB (generated in {stats.seconds:.1f} s)"
    )

    runs: dict[str, list[Result]] = {c: [] for c in chosen}
    for round_number in range(args.repeat):
        # each round starts with the next contender, so none always runs first (or last)
        start = round_number % len(chosen)
        for contender in chosen[start:] + chosen[:start]:
            output_path = OUT_DIR / f"{stem}.{contender}.parquet"
            print(f"round {round_number + 1}: running {contender} ...", flush=True)
            result = run_contender(contender, input_path, output_path)
            print(
                f"  {contender}: {result.seconds:.2f} s, peak RSS "
                f"{result.peak_rss_bytes / MIB:,.0f} MB (all processes "
                f"{result.tree_rss_bytes / MIB:,.0f} MB), {result.rows:,} rows",
                flush=True,
            )
            runs[contender].append(result)
    results = [summarize(c, runs[c]) for c in chosen]

    failed = False
    row_counts = {f"{r.contender} #{i + 1}": r.rows for c in chosen for i, r in enumerate(runs[c])}
    if len(set(row_counts.values())) > 1:
        print(f"\n!!! ROW COUNT MISMATCH !!! {row_counts}")
        failed = True
    else:
        print(f"\nrow counts agree: {next(iter(row_counts.values())):,} rows")
    sums = {r.contender: checksums(r.output) for r in results}
    reference_name, reference = next(iter(sums.items()))
    for name, figures in sums.items():
        if not agree(reference, figures):
            print(f"!!! CHECKSUM MISMATCH !!! {reference_name}: {reference}\n    {name}: {figures}")
            failed = True
    if not failed:
        print(f"checksums agree: {reference}")

    print()
    print(f"median of {args.repeat} run(s) each; range: fastest-slowest run")
    print_table(results, runs, stats.payloads)
    by_name = {r.contender: r for r in results}
    project = by_name.get("project")
    if project:
        print()
        anchor = fastest_duckdb(results)
        if anchor:
            ratio = project.seconds / anchor.seconds
            verdict = "met" if ratio <= 1.0 else "NOT MET"
            print(f"project / {anchor.contender} time: {ratio:.2f} (target <= 1.0: {verdict})")
            pairs = zip(runs["project"], runs[anchor.contender], strict=True)
            print(
                "  round by round: " + ", ".join(f"{p.seconds / a.seconds:.2f}" for p, a in pairs)
            )
        if "python" in by_name:
            print(f"project / python time: {project.seconds / by_name['python'].seconds:.2f}")
        verdict = "met" if project.tree_rss_bytes < MEMORY_TARGET_BYTES else "NOT MET"
        print(
            f"project peak RSS, all processes: {project.tree_rss_bytes / MIB:,.0f} MB "
            f"(target < 2 GB: {verdict})"
        )

    if not args.keep:
        input_path.unlink(missing_ok=True)
        for r in results:
            r.output.unlink(missing_ok=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
