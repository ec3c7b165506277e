"""Benchmark: what one live refresh costs as the day fills up and the fleet grows.

For each fleet size, one simulated day is written to raw storage minute by minute, as drains
write it (one object a minute here, received five seconds after the minute). At the checkpoints
(the day filled to 1, 6, 12 and 23 hours) everything so far is processed untimed, then the next
10 minutes arrive and are processed timed -- `data_acq.pipeline.process`: discovery, staging,
refreshing every unit the tick touched, the warehouse check -- in a child process that reports its
time, its own peak RSS (VmHWM) and the storage requests it made (each list call counted once,
as one S3 LIST page), and the unit-hours it rebuilt. Each tick runs three times on copies of the
same storage; the median is reported.

Late data is part of every tick, in the same measure at every checkpoint: one site in a hundred
has a payload from three minutes before the tick delivered again within it (as after a
reconnect), so its unit rebuilds the previous, full hour as well. (The simulator's own random
redeliveries are off: whether one of them crosses the hour boundary into the tick is a draw, and
each that does costs a unit-hour rebuild, so they would make the checkpoints differ by chance,
not by the hour of the day.)

The anchor is the same tick early in the day: a tick late in the day should cost about the same
(target: the 23-hour tick at most 1.2x the 1-hour tick), and a 1,000-site tick under 60 s here.

    .venv/bin/python bench/bench_live.py                      # 300 and 1,000 sites
    .venv/bin/python bench/bench_live.py --sites 50 --keep    # smaller; keep bench/out/live
    .venv/bin/python bench/bench_live.py --sites 300 --history-days 7   # after a week stored
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

OUT_DIR = Path(__file__).resolve().parent / "out" / "live"
DAY = datetime(2024, 10, 12, tzinfo=UTC)
CHECKPOINTS_H = (1, 6, 12, 23)
TICK_MINUTES = 10
REPEAT = 3  # runs of each tick; the median is reported, with the fastest and slowest
LATE_EVERY = 100  # one site in this many has a payload delivered again in each tick ...
LATE_BY_MINUTES = 3  # ... from this many minutes before the tick
TARGET_RATIO = 1.2
TARGET_1000_S = 60.0


def vm_hwm_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def child(root: Path) -> dict[str, Any]:
    """Process whatever is new in `root`, counting storage requests."""
    from data_acq.pipeline import process
    from data_acq.storage import LocalStore

    requests: Counter[str] = Counter()

    class CountingStore(LocalStore):
        def get(self, key: str) -> bytes:
            requests["GET"] += 1
            return super().get(key)

        def put(self, key: str, data: bytes) -> None:
            requests["PUT"] += 1
            super().put(key, data)

        def put_file(self, key: str, path: Path) -> None:
            requests["PUT"] += 1
            super().put_file(key, path)

        def list_keys(self, prefix: str = "", start_after: str = "") -> Iterator[str]:
            requests["LIST"] += 1
            return super().list_keys(prefix, start_after)

        def delete(self, keys: list[str]) -> None:
            requests["DELETE"] += 1 if keys else 0
            super().delete(keys)

    started = time.perf_counter()
    result = process(CountingStore(root))
    return {
        "seconds": time.perf_counter() - started,
        "peak_rss": vm_hwm_bytes(),
        "requests": dict(requests),
        "messages": result.staged.messages if result.staged else 0,
        "units": len(result.units),
        "readings_written": sum(u.rows.get("readings", 0) for u in result.units),
        "unit_hours": sum(len(u.hours) for u in result.units),
    }


def run_child(root: Path) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", str(root)], capture_output=True, check=True
    )
    return json.loads(out.stdout.decode().strip().splitlines()[-1])


def fleet(sites: int, keep: bool, history_days: int = 0) -> list[dict[str, Any]]:
    from data_acq.acquire.raw import encode_object, raw_key
    from data_acq.devtools.simulate import SimulationSpec, simulate
    from data_acq.messages import encode_record
    from data_acq.storage import LocalStore

    root = OUT_DIR / f"{sites}-sites"
    shutil.rmtree(root, ignore_errors=True)
    store = LocalStore(root)
    spec = SimulationSpec(
        sites=sites,
        start=DAY - timedelta(days=history_days),
        minutes=(history_days + 1) * 24 * 60,
        outage_sites=0,
        duplicate_rate=0.0,
    )
    messages = simulate(spec)
    pending: tuple[str, bytes] | None = None
    topics: dict[str, int] = {}  # in the order they first appear
    recent: dict[int, list[tuple[str, bytes]]] = {}  # payload minute -> late sites' messages

    def write_until(end: datetime) -> None:
        """Raw objects, one a minute, for the payloads stamped before `end`."""
        nonlocal pending
        lines: list[bytes] = []
        minute: int | None = None
        while True:
            message = pending or next(messages, None)
            pending = None
            if message is None:
                break
            t = json.loads(message[1])["t"]
            if t >= end.timestamp():
                pending = message
                break
            if minute is not None and t // 60 != minute and lines:
                _put(minute, lines)
                lines = []
            minute = t // 60
            if topics.setdefault(message[0], len(topics)) % LATE_EVERY == 0:
                recent.setdefault(minute, []).append(message)
            received = datetime.fromtimestamp(t - t % 60 + 65, UTC)
            lines.append(encode_record(message[0], message[1], received, 1))
        if lines and minute is not None:
            _put(minute, lines)

    def _put(minute: int, lines: list[bytes]) -> None:
        received = datetime.fromtimestamp(minute * 60 + 65, UTC)
        store.put_new(raw_key(received, "bench"), encode_object(lines))

    if history_days:  # the days before, written and processed as they came, untimed
        write_until(DAY)
        run_child(root)
    rows = []
    for hours in CHECKPOINTS_H:
        filled = DAY + timedelta(hours=hours)
        write_until(filled)
        run_child(root)  # the day so far, untimed
        write_until(filled + timedelta(minutes=TICK_MINUTES))
        late = recent.pop(int(filled.timestamp()) // 60 - LATE_BY_MINUTES, [])
        received = filled + timedelta(minutes=2, seconds=30)
        store.put_new(
            raw_key(received, "bench"),
            encode_object([encode_record(*m, received, 1) for m in late]),
        )
        # the same tick REPEAT times, each on a hard-linked copy of the storage as it stands
        # (the store replaces files, never rewrites them, so the copies stay apart), at the
        # storage's own path: the warehouse's views name it, and a copy elsewhere would
        # rewrite them on every tick
        ticks = []
        base = root.with_name(f"{root.name}-base")
        root.rename(base)
        for _ in range(REPEAT):
            subprocess.run(["cp", "-al", str(base), str(root)], check=True)
            ticks.append(run_child(root))
            shutil.rmtree(root)
        base.rename(root)
        tick = sorted(ticks, key=lambda t: t["seconds"])[len(ticks) // 2]  # the median
        tick |= {
            "sites": sites,
            "filled_h": hours,
            "spread": (
                min(t["seconds"] for t in ticks),
                max(t["seconds"] for t in ticks),
            ),
        }
        run_child(root)  # and on, for the next checkpoint
        rows.append(tick)
        print(_row(tick), flush=True)
    if not keep:
        shutil.rmtree(root, ignore_errors=True)
    return rows


def _row(r: dict[str, Any]) -> str:
    requests = r["requests"]
    low, high = r["spread"]
    return (
        f"{r['sites']:>6} {r['filled_h']:>7} {r['seconds']:>8.2f} {low:>6.2f}-{high:<6.2f} "
        f"{r['peak_rss'] / 2**20:>8.0f} "
        f"{r['messages']:>9} {r['units']:>6} {r['unit_hours']:>6} {requests.get('GET', 0):>6} "
        f"{requests.get('PUT', 0):>6} {requests.get('LIST', 0):>6} {requests.get('DELETE', 0):>6}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sites", type=int, nargs="*", default=[300, 1_000])
    parser.add_argument("--keep", action="store_true", help="keep the generated storage")
    parser.add_argument(
        "--history-days",
        type=int,
        default=0,
        help="days of the same fleet stored and processed before the measured day (0)",
    )
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child)))
        return
    print(
        f"one {TICK_MINUTES}-minute tick after the day filled to N hours, "
        f"{args.history_days} day(s) of history before it "
        f"(python {sys.version.split()[0]}, {time.strftime('%Y-%m-%d')})"
    )
    print(
        "  sites filled_h  tick_s  (min-max)     peak_MiB  messages  units  hours    GET    PUT   LIST DELETE"
    )
    for sites in args.sites:
        rows = fleet(sites, args.keep, args.history_days)
        first, last = rows[0]["seconds"], rows[-1]["seconds"]
        ratio = last / first
        verdict = "meets" if ratio <= TARGET_RATIO else "misses"
        print(
            f"  {sites} sites: 23-hour tick / 1-hour tick = {ratio:.2f} "
            f"({verdict} the {TARGET_RATIO}x target)"
        )
        if sites == 1_000:
            worst = max(r["seconds"] for r in rows)
            verdict = "meets" if worst < TARGET_1000_S else "misses"
            print(
                f"  1,000 sites: slowest tick {worst:.1f} s ({verdict} the {TARGET_1000_S:.0f} s target)"
            )


if __name__ == "__main__":
    main()
