"""Benchmark: how long from a logger's publish until its payload is queryable in the warehouse,
with the live setup of `data-acq ui` (private Mosquitto, `dagster dev` with the sensors on:
drains kept running, staging and unit refreshes every DATA_ACQ_REFRESH_INTERVAL seconds).

Simulated loggers publish one payload every `--every` seconds per site, stamped with the time of
publishing; the warehouse (its DuckDB views, opened read-only) is polled every second, and each
payload's latency is the time it first shows up in `pipeline_payloads` minus its publish time.
The first payloads of a run wait for the first drain, staging and views to exist: the first
`--warmup` seconds are left out of the figures.

    .venv/bin/python bench/bench_freshness.py                     # 5 sites, 6 minutes
    .venv/bin/python bench/bench_freshness.py --sites 20 --minutes 10

Target (issue "Live at fleet scale"): p95 at most 60 s.
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
TARGET_P95_S = 60.0


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


def poll(warehouse: Path, sent: dict, seen: dict, stop: threading.Event) -> None:
    import duckdb

    while not stop.is_set():
        try:
            with duckdb.connect(str(warehouse), read_only=True) as con:
                while not stop.is_set():
                    rows = con.execute(
                        "select site, epoch(time)::bigint from pipeline_payloads "
                        "where site like 'fresh%'"
                    ).fetchall()
                    now = time.time()
                    for site, t in rows:
                        if (site, t) in sent and (site, t) not in seen:
                            seen[(site, t)] = now
                    stop.wait(1.0)
        except duckdb.Error:
            stop.wait(1.0)  # no warehouse, or no views yet


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
    stop = threading.Event()
    with LocalMosquitto(OUT_DIR / "mosquitto", persistence=True) as broker:
        env = {
            **__import__("os").environ,
            **ui_environment(OUT_DIR, broker.port, datetime.now(UTC)),
        }
        dagster = Path(sys.executable).parent / "dagster"
        command = [str(dagster), "dev", "-m", "data_acq.definitions", "-p", str(args.port)]
        ui = subprocess.Popen(
            command,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        threads = [
            threading.Thread(
                target=publisher, args=(broker.port, args.sites, args.every, stop, sent)
            ),
            threading.Thread(
                target=poll, args=(OUT_DIR / "storage" / "warehouse.duckdb", sent, seen, stop)
            ),
        ]
        started = time.time()
        for thread in threads:
            thread.start()
        try:
            time.sleep(args.minutes * 60)
            stop.set()
            time.sleep(60)  # let the last payloads arrive; they are not counted if they do not
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=30)
            __import__("os").killpg(ui.pid, signal.SIGTERM)
            ui.wait(timeout=60)
    counted = {k: v for k, v in sent.items() if v - started >= args.warmup}
    latencies = sorted(seen[k] - v for k, v in counted.items() if k in seen)
    missing = len(counted) - len(latencies)
    if not latencies:
        print("no payload reached the warehouse")
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
