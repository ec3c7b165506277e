"""Benchmark: what one live refresh costs as the day fills up, as the fleet grows, and what
that makes a month of live operation cost.

A refresh is one tick of a live window (`data_acq.live.window.live_ticks`, as the live runs do
it every DATA_ACQ_REFRESH_INTERVAL): discovery, staging, refreshing every unit the new data
touched, the warehouse check. Each tick runs in a child process that reports its wall time, its
CPU time (all threads), its own peak RSS (VmHWM) and the storage requests it made (each list
call counted once, as one S3 LIST page), and the unit-hours it rebuilt. Each tick runs three
times on hard-linked copies of the same storage; the median is reported.

**Through the day** (the default): for each fleet size, one simulated day is written to raw
storage minute by minute, as drains write it (one object a minute here, received five seconds
after the minute). At the checkpoints (the day filled to 1, 6, 12 and 23 hours) everything so
far is processed untimed, then the next `--tick-minutes` arrive and one refresh is timed. Late
data is part of every tick, in the same measure at every checkpoint: one site in a hundred has a
payload from three minutes before the tick delivered again within it (as after a reconnect), so
its unit rebuilds the previous, full hour as well. (The simulator's own random redeliveries are
off: whether one crosses the hour boundary into the tick is a draw, so they would make the
checkpoints differ by chance, not by the hour of the day.) The anchor is the same refresh early
in the day: a refresh late in the day should cost about the same (target: the 23-hour tick at
most 1.2x the 1-hour tick).

**The cost model** (`--cost`): for fleets of 300 to 10,000 sites, at about 1,000 sites a bucket
(docs/deploy.md), the current hour is written up to minute 29 (or 58) and processed untimed
(each minute staged on its own, as the live refreshes stage it: a staging file a minute per
table and unit), then the refresh of the next minute is timed: at :30 a refresh rebuilds half
an hour of the current hour (the average over the hour), at :59 nearly all of it (the most).
From the :30 figures, per refresh at a 60 s interval: CPU-seconds and requests, and per month
the vCPU they keep busy and the S3 requests' list price. 100,000 sites is not run here (an hour
of it does not fit this machine's time): it is the 10,000-site figures times ten, since a
bucket's refresh costs the same whatever the number of buckets (each is a unit of its own).

    .venv/bin/python bench/bench_live.py                      # 300 and 1,000 sites, through the day
    .venv/bin/python bench/bench_live.py --sites 50 --keep    # smaller; keep bench/out/live
    .venv/bin/python bench/bench_live.py --sites 300 --history-days 7   # after a week stored
    .venv/bin/python bench/bench_live.py --cost               # 300, 1,000, 3,000, 10,000 sites
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from peak_memory import vm_hwm_bytes

OUT_DIR = Path(__file__).resolve().parent / "out" / "live"
DAY = datetime(2024, 10, 12, tzinfo=UTC)
CHECKPOINTS_H = (1, 6, 12, 23)
TICK_MINUTES = 1  # a refresh at the default 60 s interval takes in a minute of data
REPEAT = 3  # runs of each tick; the median is reported, with the fastest and slowest
LATE_EVERY = 100  # one site in this many has a payload delivered again in each tick ...
LATE_BY_MINUTES = 3  # ... from this many minutes before the tick
TARGET_RATIO = 1.2
COST_SITES = (300, 1_000, 3_000, 10_000)
SITES_PER_BUCKET = 1_000
MODEL_SITES = (300, 10_000, 100_000)
# us-east-1 list prices: S3 Standard requests, per 1,000
PRICE_PER_1000 = {"PUT": 0.005, "LIST": 0.005, "GET": 0.0004, "DELETE": 0.0}
REFRESHES_PER_MONTH = 30 * 24 * 60  # at the default 60 s interval


def child(root: Path, mode: str, buckets: int) -> dict[str, Any]:
    """Process what is new in `root`, counting storage requests: everything (`catch-up`,
    untimed) or one live refresh (`tick`)."""
    from data_acq.acquire.raw import key_time, raw_keys
    from data_acq.live.shares import Share
    from data_acq.live.window import WindowLimits, live_ticks
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

    store = CountingStore(root)
    if mode == "catch-up-by-minute":  # each raw object its own staging, as live refreshes do
        from data_acq.curate.cursor import new_raw_keys
        from data_acq.curate.staging import stage

        for key in new_raw_keys(store):
            stage(store, [key], buckets)
    if mode.startswith("catch-up"):
        # dates close by the simulation's clock (its newest receive time), not today's: the
        # simulated day is live, the history days before it closed and compacted
        newest = max(filter(None, map(key_time, raw_keys(store))), default=None)
        process(store, buckets=buckets, now=newest)
        return {}
    started, cpu = time.perf_counter(), time.process_time()
    tick = next(live_ticks(store, Share(), buckets, WindowLimits(window_s=3600)))
    seconds, cpu_s = time.perf_counter() - started, time.process_time() - cpu
    if tick.failed:
        raise SystemExit(f"the refresh failed: {tick.failed}")
    return {
        "seconds": seconds,
        "cpu_s": cpu_s,
        "peak_rss": vm_hwm_bytes(),
        "requests": dict(requests),
        "messages": tick.staged.messages if tick.staged else 0,
        "units": len(tick.units),
        "readings_written": sum(u.rows.get("readings", 0) for u in tick.units),
        "unit_hours": sum(len(u.hours) for u in tick.units),
    }


def run_child(root: Path, mode: str = "tick", buckets: int = 1) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", str(root), mode, str(buckets)],
        capture_output=True,
        check=True,
    )
    return json.loads(out.stdout.decode().strip().splitlines()[-1])


def timed_tick(root: Path, buckets: int) -> dict[str, Any]:
    """The same refresh REPEAT times, each on a hard-linked copy of the storage as it stands
    (the store replaces files, never rewrites them, so the copies stay apart), at the storage's
    own path: the warehouse's views name it, and a copy elsewhere would rewrite them each time.
    The median, with the fastest and slowest."""
    ticks = []
    base = root.with_name(f"{root.name}-base")
    root.rename(base)
    for _ in range(REPEAT):
        subprocess.run(["cp", "-al", str(base), str(root)], check=True)
        ticks.append(run_child(root, "tick", buckets))
        shutil.rmtree(root)
    base.rename(root)
    tick = sorted(ticks, key=lambda t: t["seconds"])[len(ticks) // 2]
    return tick | {"spread": (min(t["seconds"] for t in ticks), max(t["seconds"] for t in ticks))}


class RawWriter:
    """A simulated fleet's payloads into raw storage, one object a minute as a drain writes
    them, up to a time; sites in `late_every` remembered for a late redelivery."""

    def __init__(self, root: Path, sites: int, start: datetime, minutes: int) -> None:
        from data_acq.devtools.simulate import SimulationSpec, simulate
        from data_acq.storage import LocalStore

        self.store = LocalStore(root)
        spec = SimulationSpec(
            sites=sites, start=start, minutes=minutes, outage_sites=0, duplicate_rate=0.0
        )
        self.messages = simulate(spec)
        self.pending: tuple[str, bytes] | None = None
        self.topics: dict[str, int] = {}  # in the order they first appear
        self.recent: dict[int, list[tuple[str, bytes]]] = {}  # payload minute -> late messages

    def until(self, end: datetime) -> None:
        """Raw objects, one a minute, for the payloads stamped before `end`."""
        from data_acq.messages import encode_record

        lines: list[bytes] = []
        minute: int | None = None
        while True:
            message = self.pending or next(self.messages, None)
            self.pending = None
            if message is None:
                break
            t = json.loads(message[1])["t"]
            if t >= end.timestamp():
                self.pending = message
                break
            if minute is not None and t // 60 != minute and lines:
                self._put(minute, lines)
                lines = []
            minute = t // 60
            if self.topics.setdefault(message[0], len(self.topics)) % LATE_EVERY == 0:
                self.recent.setdefault(minute, []).append(message)
            received = datetime.fromtimestamp(t - t % 60 + 65, UTC)
            lines.append(encode_record(message[0], message[1], received, 1))
        if lines and minute is not None:
            self._put(minute, lines)

    def late(self, filled: datetime) -> None:
        """The late sites' payloads from LATE_BY_MINUTES before `filled`, delivered again."""
        from data_acq.acquire.raw import encode_object, raw_key
        from data_acq.messages import encode_record

        late = self.recent.pop(int(filled.timestamp()) // 60 - LATE_BY_MINUTES, [])
        received = filled + timedelta(seconds=30)
        self.store.put_new(
            raw_key(received, "late"),
            encode_object([encode_record(*m, received, 1) for m in late]),
        )

    def _put(self, minute: int, lines: list[bytes]) -> None:
        from data_acq.acquire.raw import encode_object, raw_key

        received = datetime.fromtimestamp(minute * 60 + 65, UTC)
        self.store.put_new(raw_key(received, "bench"), encode_object(lines))


def fleet(
    sites: int, keep: bool, history_days: int = 0, tick_minutes: int = TICK_MINUTES
) -> list[dict[str, Any]]:
    root = OUT_DIR / f"{sites}-sites"
    shutil.rmtree(root, ignore_errors=True)
    raw = RawWriter(root, sites, DAY - timedelta(days=history_days), (history_days + 1) * 24 * 60)
    if history_days:  # the days before, written and processed as they came, untimed
        raw.until(DAY)
        run_child(root, "catch-up")
    rows = []
    for hours in CHECKPOINTS_H:
        filled = DAY + timedelta(hours=hours)
        raw.until(filled)
        run_child(root, "catch-up")  # the day so far, untimed
        raw.until(filled + timedelta(minutes=tick_minutes))
        raw.late(filled)
        tick = timed_tick(root, 1) | {"sites": sites, "label": f"{hours} h"}
        run_child(root, "catch-up")  # and on, for the next checkpoint
        rows.append(tick)
        print(_row(tick), flush=True)
    if not keep:
        shutil.rmtree(root, ignore_errors=True)
    return rows


def cost(sites: int, keep: bool) -> list[dict[str, Any]]:
    """Refreshes in the middle and at the end of an hour, at about 1,000 sites a bucket."""
    buckets = max(1, math.ceil(sites / SITES_PER_BUCKET))
    rows = []
    for minute in (29, 58):
        root = OUT_DIR / f"cost-{sites}-sites"
        shutil.rmtree(root, ignore_errors=True)
        hour = DAY + timedelta(hours=12)
        raw = RawWriter(root, sites, hour, minute + 1)
        raw.until(hour + timedelta(minutes=minute))
        run_child(root, "catch-up-by-minute", buckets)  # a staging file a minute, as live
        raw.until(hour + timedelta(minutes=minute + 1))
        tick = timed_tick(root, buckets)
        tick |= {"sites": sites, "buckets": buckets, "label": f":{minute + 1:02d}"}
        rows.append(tick)
        print(_row(tick), flush=True)
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
    return rows


def model(per_refresh: Callable[[int], dict[str, Any]]) -> None:
    """A month of live refreshes at a 60 s interval, from the measured mid-hour refreshes."""
    print("\ncost model: one refresh a minute, the mid-hour (:30) refresh as the hour's average")
    print(
        "  sites  buckets  CPU_s/refresh  vCPU_busy  requests/refresh (GET PUT LIST DELETE)  S3 $/month"
    )
    for sites in MODEL_SITES:
        row = per_refresh(sites)
        requests = row["requests"]
        dollars = sum(
            requests.get(kind, 0) * REFRESHES_PER_MONTH / 1000 * price
            for kind, price in PRICE_PER_1000.items()
        )
        counts = " ".join(f"{requests.get(k, 0):>5.0f}" for k in ("GET", "PUT", "LIST", "DELETE"))
        print(
            f"  {sites:>6} {row['buckets']:>7} {row['cpu_s']:>13.2f} {row['cpu_s'] / 60:>10.2f}  "
            f"{counts}{'':>16}{dollars:>10.0f}{'  (10,000 x 10)' if row.get('scaled') else ''}"
        )


def _row(r: dict[str, Any]) -> str:
    requests = r["requests"]
    low, high = r["spread"]
    return (
        f"{r['sites']:>6} {r['label']:>6} {r['seconds']:>8.2f} {low:>6.2f}-{high:<6.2f} "
        f"{r['cpu_s']:>6.2f} {r['peak_rss'] / 2**20:>8.0f} "
        f"{r['messages']:>9} {r['units']:>6} {r['unit_hours']:>6} {requests.get('GET', 0):>6} "
        f"{requests.get('PUT', 0):>6} {requests.get('LIST', 0):>6} {requests.get('DELETE', 0):>6}"
    )


HEADER = (
    "  sites     at   tick_s  (min-max)    cpu_s peak_MiB  messages  units  hours    GET    PUT"
    "   LIST DELETE"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sites", type=int, nargs="*", help="fleet sizes (300 and 1,000)")
    parser.add_argument("--keep", action="store_true", help="keep the generated storage")
    parser.add_argument(
        "--history-days",
        type=int,
        default=0,
        help="days of the same fleet stored and processed before the measured day (0)",
    )
    parser.add_argument(
        "--tick-minutes",
        type=int,
        default=TICK_MINUTES,
        help="minutes of data a refresh takes in: the refresh interval (1, as at 60 s)",
    )
    parser.add_argument(
        "--cost", action="store_true", help="the cost model: refreshes mid-hour, 300-10,000 sites"
    )
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        root, mode, buckets = args.child
        print(json.dumps(child(Path(root), mode, int(buckets))))
        return
    stamp = f"python {sys.version.split()[0]}, {time.strftime('%Y-%m-%d')}"
    if args.cost:
        print(f"one refresh of a minute's data at :30 and :59 of an hour ({stamp})")
        print(HEADER)
        measured = {sites: cost(sites, args.keep) for sites in args.sites or COST_SITES}

        def per_refresh(sites: int) -> dict[str, Any]:
            if sites in measured:
                return measured[sites][0]
            base = measured[max(measured)][0]
            factor = sites / max(measured)
            return base | {
                "buckets": int(base["buckets"] * factor),
                "cpu_s": base["cpu_s"] * factor,
                "requests": {k: v * factor for k, v in base["requests"].items()},
                "scaled": True,
            }

        model(per_refresh)
        return
    print(
        f"one {args.tick_minutes}-minute refresh after the day filled to N hours, "
        f"{args.history_days} day(s) of history before it ({stamp})"
    )
    print(HEADER)
    for sites in args.sites or [300, 1_000]:
        rows = fleet(sites, args.keep, args.history_days, args.tick_minutes)
        first, last = rows[0]["seconds"], rows[-1]["seconds"]
        ratio = last / first
        verdict = "meets" if ratio <= TARGET_RATIO else "misses"
        print(
            f"  {sites} sites: 23-hour tick / 1-hour tick = {ratio:.2f} "
            f"({verdict} the {TARGET_RATIO}x target)"
        )


if __name__ == "__main__":
    main()
