"""Benchmark: one simulated day of a fleet, from raw storage to every output.

The input is raw storage as the drain writes it (gzip NDJSON objects of raw records), made once
from the simulator: by default 1,000 sites x 24 h = 1.44 million payloads, with duplicate
deliveries, an outage backlog and malformed messages. Two contenders run in child processes, one
after the other, each reporting its own peak RSS (VmHWM from /proc):

- project: the steps of `data_acq.pipeline.process` in one process (stage: raw -> staging by
  unit and hour; refresh every unit: curated tables, partials, daily aggregates; the
  warehouse's views), with the time of each step;
- duckdb:  DuckDB's fastest SQL route for the flattening alone (`from_json` with
  `unnest(map_entries(...))` over the same raw objects, readings written to Parquet: the anchor
  for the project's staging step, which also de-duplicates nothing but does three more tables).

Run it from the project root:

    .venv/bin/python bench/bench_process.py                    # 1,000 sites x 24 h
    .venv/bin/python bench/bench_process.py --sites 3000 --no-anchor  # the memory target
    .venv/bin/python bench/bench_process.py --sites 50 --keep  # smaller, keep bench/out/process

Target (issue "Live at fleet scale"): a 3,000-site day processed within 2 GB of memory.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from duckdb_anchor import readings_sql
from peak_memory import vm_hwm_bytes

OUT_DIR = Path(__file__).resolve().parent / "out" / "process"
RECEIVED_AT = datetime(2024, 10, 13, 1, tzinfo=UTC)
PER_OBJECT = 5_000  # messages per raw object, as a drain batch
MEMORY_TARGET_BYTES = 2 * 1024**3
MIB = 1024 * 1024


def generate(root: Path, sites: int, hours: float, seed: int) -> dict[str, Any]:
    from data_acq.acquire.raw import encode_object, raw_key
    from data_acq.devtools.simulate import SimulationSpec, simulate
    from data_acq.messages import encode_record
    from data_acq.storage import LocalStore

    store = LocalStore(root)
    spec = SimulationSpec(
        sites=sites,
        start=datetime(2024, 10, 12, tzinfo=UTC),
        minutes=int(hours * 60),
        seed=seed,
        duplicate_rate=0.003,
        outage_sites=max(1, sites // 100),
        outage_minutes=180,
        malformed_rate=0.001,
    )
    batch: list[bytes] = []
    messages = payload_bytes = 0
    for topic, body in simulate(spec):
        batch.append(encode_record(topic, body, RECEIVED_AT, 1))
        messages += 1
        payload_bytes += len(body)
        if len(batch) == PER_OBJECT:
            store.put_new(raw_key(RECEIVED_AT, "bench"), encode_object(batch))
            batch = []
    if batch:
        store.put_new(raw_key(RECEIVED_AT, "bench"), encode_object(batch))
    return {"messages": messages, "mean_payload_bytes": payload_bytes / max(messages, 1)}


def child_project(root: Path) -> dict[str, Any]:
    """The processing sequence of `data_acq.pipeline.process`, in one process (its memory is
    one task's), each step timed."""
    from data_acq.curate.cursor import new_raw_keys
    from data_acq.curate.staging import MAX_OBJECTS, stage
    from data_acq.curate.units import pending_units
    from data_acq.curate.warehouse import refresh_warehouse
    from data_acq.pipeline import refresh_units
    from data_acq.storage import LocalStore

    store = LocalStore(root)
    started = time.perf_counter()
    messages = 0
    while keys := new_raw_keys(store, limit=MAX_OBJECTS):
        messages += stage(store, keys).messages
    stage_s = time.perf_counter() - started
    units = refresh_units(store, dict.fromkeys(pending_units(store), False))
    build_s = time.perf_counter() - started - stage_s
    refresh_warehouse(store)
    warehouse_s = time.perf_counter() - started - stage_s - build_s
    return {
        "stage_s": stage_s,
        "build_s": build_s,
        "warehouse_s": warehouse_s,
        "total_s": time.perf_counter() - started,
        "messages": messages,
        "readings": sum(u.readings for u in units),
        "duplicates_removed": sum(u.duplicates_removed for u in units),
        "units": len(units),
        "peak_rss": vm_hwm_bytes(),
    }


def child_duckdb(root: Path) -> dict[str, Any]:
    import duckdb

    output = root.parent / "duckdb-readings.parquet"
    started = time.perf_counter()
    con = duckdb.connect()
    con.execute(
        readings_sql(
            f"{(root / 'raw').as_posix()}/**/*.ndjson.gz", output.as_posix(), skip_bad=True
        )
    )
    elapsed = time.perf_counter() - started
    rows = con.execute(f"select count(*) from read_parquet('{output.as_posix()}')").fetchone()
    return {"flatten_s": elapsed, "rows": rows[0] if rows else 0, "peak_rss": vm_hwm_bytes()}


def run_child(contender: str, root: Path) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, __file__, "--child", contender, "--root", str(root)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise SystemExit(f"{contender} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sites", type=int, default=1000)
    parser.add_argument("--hours", type=float, default=24.0)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--keep", action="store_true", help="keep bench/out/process")
    parser.add_argument(
        "--no-anchor", action="store_true", help="skip DuckDB's flattening (the memory run)"
    )
    parser.add_argument("--child", choices=("project", "duckdb"), help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        run = child_project if args.child == "project" else child_duckdb
        print(json.dumps(run(args.root)))
        return 0

    root = OUT_DIR / "storage"
    shutil.rmtree(OUT_DIR, ignore_errors=True)
    started = time.perf_counter()
    made = generate(root, args.sites, args.hours, args.seed)
    raw_mb = sum(p.stat().st_size for p in (root / "raw").rglob("*.gz")) / MIB
    print(
        f"input: {made['messages']:,} messages from {args.sites} sites x {args.hours:g} h, mean payload "
        f"{made['mean_payload_bytes']:,.0f} B, raw {raw_mb:,.1f} MB gzip "
        f"(made in {time.perf_counter() - started:.0f} s)",
        flush=True,
    )
    duck = None if args.no_anchor else run_child("duckdb", root)
    if duck:
        print(
            f"duckdb flattening: {duck['flatten_s']:.1f} s, {duck['rows']:,} rows, "
            f"peak {duck['peak_rss'] / MIB:,.0f} MB",
            flush=True,
        )
    project = run_child("project", root)
    n = made["messages"]
    print()
    print(f"{'step':<34}{'seconds':>9}{'payloads/s':>12}")
    for label, key in (
        ("project: stage (flatten by unit)", "stage_s"),
        ("project: refresh units", "build_s"),
        ("project: warehouse", "warehouse_s"),
        ("project: all outputs", "total_s"),
    ):
        print(f"{label:<34}{project[key]:>9.1f}{n / project[key]:>12,.0f}")
    if duck:
        print(
            f"{'duckdb: flattening to readings':<34}{duck['flatten_s']:>9.1f}"
            f"{n / duck['flatten_s']:>12,.0f}"
        )
    print(
        f"\nproject readings (de-duplicated): {project['readings']:,}; duplicates removed "
        f"{project['duplicates_removed']:,}; units {project['units']}"
    )
    if duck:
        print(
            f"project stage / duckdb flattening: {project['stage_s'] / duck['flatten_s']:.2f} "
            "(one process; the stage also files status, pipeline documents and rejects by unit "
            "and hour; bench_flatten.py compares the flattening alone); "
            f"duckdb peak RSS: {duck['peak_rss'] / MIB:,.0f} MB"
        )
    print(
        f"project peak RSS: {project['peak_rss'] / MIB:,.0f} MB (target < 2 GB: "
        f"{'met' if project['peak_rss'] < MEMORY_TARGET_BYTES else 'NOT met'})"
    )
    if not args.keep:
        shutil.rmtree(OUT_DIR, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
