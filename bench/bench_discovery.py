"""Benchmark: finding new raw objects costs what is new, not what is old.

Raw storage is filled with N already-staged objects (one every 6 s: 100,000 is a week of one
drain's objects), the staging cursor is set to the newest, and then `new_raw_keys` -- what the
sensor and every staging run call -- is timed finding nothing new. The anchor is the way it was
done before the cursor: listing every raw key.

- locally: 10,000 and 100,000 objects (target: under 2 s at 100,000);
- on moto's S3 server (its own process, on a free port): 1,000 and 10,000 objects, counting the
  ListObjectsV2 requests (target: a number that does not grow with N).

    .venv/bin/python bench/bench_discovery.py
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

OUT_DIR = Path(__file__).resolve().parent / "out" / "discovery"
START = datetime(2024, 10, 1, tzinfo=UTC)
EVERY = timedelta(seconds=6)
TARGET_S = 2.0


def fill(store: object, count: int) -> list[str]:
    from data_acq.acquire.raw import encode_object, raw_key

    body = encode_object([b'{"topic":"a/s/u/data","received_at":"x","payload":{}}\n'])
    keys = []
    for n in range(count):
        key = raw_key(START + n * EVERY, "drain")
        store.put_new(key, body)  # type: ignore[attr-defined]
        keys.append(key)
    return keys


def timed(function: object, repeat: int = 3) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeat):
        started = time.perf_counter()
        result = function()  # type: ignore[operator]
        best = min(best, time.perf_counter() - started)
    return best, result


def local(count: int) -> None:
    from data_acq.curate.cursor import Cursor, new_raw_keys
    from data_acq.layout import RAW
    from data_acq.storage import LocalStore

    root = OUT_DIR / f"local-{count}"
    shutil.rmtree(root, ignore_errors=True)
    store = LocalStore(root)
    keys = fill(store, count)
    Cursor().advanced(keys).save(store)
    cursor_s, new = timed(lambda: new_raw_keys(store))
    listing_s, listed = timed(lambda: list(store.list_keys(RAW)))
    assert new == [] and len(listed) == count  # type: ignore[arg-type]
    verdict = "meets" if cursor_s < TARGET_S else "misses"
    print(
        f"local {count:>7,} objects: cursor {cursor_s:8.4f} s   full listing (anchor) "
        f"{listing_s:8.3f} s   ratio {cursor_s / listing_s:.4f}   ({verdict} the {TARGET_S:.0f} s target)"
    )
    shutil.rmtree(root, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def s3(count: int, endpoint: str) -> None:
    import boto3

    from data_acq.curate.cursor import Cursor, new_raw_keys
    from data_acq.layout import RAW
    from data_acq.storage import S3Store

    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="bench",
        aws_secret_access_key="bench",
    )
    bucket = f"discovery-{count}"
    client.create_bucket(Bucket=bucket)
    store = S3Store(client, bucket, "data")
    keys = fill(store, count)
    Cursor().advanced(keys).save(store)
    calls: list[str] = []
    client.meta.events.register("before-call.s3.ListObjectsV2", lambda **_: calls.append("list"))
    cursor_s, new = timed(lambda: new_raw_keys(store), repeat=1)
    cursor_calls = len(calls)
    calls.clear()
    listing_s, listed = timed(lambda: list(store.list_keys(RAW)), repeat=1)
    assert new == [] and len(listed) == count  # type: ignore[arg-type]
    print(
        f"moto  {count:>7,} objects: cursor {cursor_s:8.4f} s, {cursor_calls} LIST request(s)   "
        f"full listing (anchor) {listing_s:8.3f} s, {len(calls)} LIST requests"
    )


def main() -> None:
    print(
        f"new_raw_keys finding nothing new (python {sys.version.split()[0]}, {time.strftime('%Y-%m-%d')})"
    )
    for count in (10_000, 100_000):
        local(count)
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        for count in (1_000, 10_000):
            s3(count, f"http://127.0.0.1:{port}")
    finally:
        server.terminate()
        server.wait(timeout=10)


if __name__ == "__main__":
    main()
