"""Benchmark: how long from a logger's publish until its payload is queryable in the warehouse,
with the live setup of `data-acq ui` (private Mosquitto, `dagster dev` with the sensors on: a
drain run kept going, and a live-processing run that stages and refreshes every
DATA_ACQ_REFRESH_INTERVAL = 10 s inside its window).

Simulated loggers publish one payload every `--every` seconds per site, stamped with the time of
publishing; every second a new read-only session asks the warehouse (its DuckDB views), and each
payload's latency is the time it first shows up in `pipeline_payloads` minus its publish time.
The first payloads of a run wait for the first drain, staging and views to exist: the first
`--warmup` seconds are left out of the figures. (bench/bench_rehearsal.py measures the same on
the production instance, with daemon, webserver and code server apart.)

    .venv/bin/python bench/bench_freshness.py                     # 5 sites, 6 minutes
    .venv/bin/python bench/bench_freshness.py --sites 20 --minutes 10

Target (issue "Lean live operation"): p95 at most 30 s at a 10 s refresh interval.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

OUT_DIR = Path(__file__).resolve().parent / "out" / "freshness"
TARGET_P95_S = 30.0


def publisher(port: int, sites: int, every: float, stop: threading.Event, sent: dict) -> None:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="freshness-loggers")
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        while not stop.is_set():
            t = int(time.time())
            for site in range(sites):
                body = {"t": t, "r": [{"_vid": "meter", "_d": "meter", "P": site}]}
                client.publish(f"a/fresh{site:03d}/u/data", json.dumps(body), qos=1)
                sent[(f"fresh{site:03d}", t)] = time.time()
            stop.wait(every)
    finally:
        client.disconnect()
        client.loop_stop()


def poll(warehouse: Path, sent: dict, seen: dict, stop: threading.Event, errors: list[str]) -> None:
    """Once a second, a new read-only session asks the warehouse for the payloads, as an analyst
    would: an open session keeps the warehouse file it opened, whose views may predate a table's
    first data (the file is replaced when the set of tables changes)."""
    import duckdb

    while not stop.wait(1.0):
        try:
            with duckdb.connect(str(warehouse), read_only=True) as con:
                rows = con.execute(
                    "select site, epoch(time)::bigint from pipeline_payloads "
                    "where site like 'fresh%'"
                ).fetchall()
        except duckdb.Error as exc:
            errors.append(str(exc).splitlines()[0])  # no warehouse, or no views yet
            continue
        now = time.time()
        for site, t in rows:
            if (site, t) in sent and (site, t) not in seen:
                seen[(site, t)] = now


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sites", type=int, default=5)
    parser.add_argument("--every", type=float, default=10.0, help="seconds between payloads")
    parser.add_argument("--minutes", type=float, default=6.0)
    parser.add_argument("--warmup", type=float, default=90.0)
    parser.add_argument("--port", type=int, default=3099, help="Dagster UI port")
    args = parser.parse_args()

    from data_acq.devtools.local_broker import LocalMosquitto
    from data_acq.devtools.ui import ui_environment

    shutil.rmtree(OUT_DIR, ignore_errors=True)
    OUT_DIR.mkdir(parents=True)
    (OUT_DIR / "dagster_home").mkdir()
    (OUT_DIR / "dagster_home" / "dagster.yaml").touch()
    sent: dict = {}
    seen: dict = {}
    errors: list[str] = []  # the warehouse's, while polling
    stop_publishing, stop_polling = threading.Event(), threading.Event()
    with LocalMosquitto(OUT_DIR / "mosquitto", persistence=True) as broker:
        env = {
            **__import__("os").environ,
            **ui_environment(OUT_DIR, broker.port, datetime.now(UTC)),
        }
        dagster = Path(sys.executable).parent / "dagster"
        command = [str(dagster), "dev", "-m", "data_acq.definitions", "-p", str(args.port)]
        log = (OUT_DIR / "dagster.log").open("wb")
        ui = subprocess.Popen(
            command,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        threads = [
            threading.Thread(
                target=publisher, args=(broker.port, args.sites, args.every, stop_publishing, sent)
            ),
            threading.Thread(
                target=poll,
                args=(OUT_DIR / "storage" / "warehouse.duckdb", sent, seen, stop_polling, errors),
            ),
        ]
        started = time.time()
        for thread in threads:
            thread.start()
        try:
            time.sleep(args.minutes * 60)
            stop_publishing.set()
            time.sleep(90)  # the last payloads still arrive; any that do not count as missing
        finally:
            stop_publishing.set()
            stop_polling.set()
            for thread in threads:
                thread.join(timeout=30)
            __import__("os").killpg(ui.pid, signal.SIGTERM)
            ui.wait(timeout=60)
    counted = {k: v for k, v in sent.items() if v - started >= args.warmup}
    latencies = sorted(seen[k] - v for k, v in counted.items() if k in seen)
    missing = len(counted) - len(latencies)
    if not latencies:
        print("no payload reached the warehouse; last errors:", *errors[-3:], sep="\n  ")
        sys.exit(1)
    p50 = statistics.median(latencies)
    p95 = latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))]
    verdict = "meets" if p95 <= TARGET_P95_S and not missing else "misses"
    print(
        f"publish -> queryable, {args.sites} sites, one payload each every {args.every:g} s, "
        f"{args.minutes:g} min after {args.warmup:g} s of warm-up "
        f"(python {sys.version.split()[0]}, {time.strftime('%Y-%m-%d')}):"
    )
    print(
        f"  payloads {len(counted)}, queryable {len(latencies)}, not yet {missing}; "
        f"p50 {p50:.1f} s, p95 {p95:.1f} s, max {latencies[-1]:.1f} s "
        f"({verdict} the p95 <= {TARGET_P95_S:.0f} s target)"
    )


if __name__ == "__main__":
    main()
