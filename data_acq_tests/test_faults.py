"""Faults found by injection, each on real parts: an SQS outage mid-run, a changed bucket count,
an empty cursor, a truncated staging file, a day that has not begun, a clock that jumps back."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
from dagster import (
    DagsterEventType,
    Definitions,
    MultiPartitionKey,
    instance_for_test,
)

from data_acq import layout
from data_acq.acquire.raw import encode_object, raw_key
from data_acq.curate.cursor import Cursor, new_raw_keys
from data_acq.curate.units import pending_units
from data_acq.defs.resources import LocalStorage, PipelineQueue
from data_acq.devtools.simulate import SimulationSpec, simulate
from data_acq.messages import encode_record
from data_acq.pipeline import process
from data_acq.storage import LocalStore
from data_acq_tests.conftest import MotoS3, receive_all
from data_acq_tests.dagster_parts import curate_job, curated, live_job

DAY = datetime(2024, 10, 12, tzinfo=UTC)


def _put(store: LocalStore, messages: list[tuple[str, bytes]], received: datetime) -> None:
    lines = (encode_record(topic, body, received, 1) for topic, body in messages)
    store.put_new(raw_key(received, "test"), encode_object(lines))


def _process(store: LocalStore, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`data-acq process` as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "data_acq.cli", "process", *args],
        env={**os.environ, "DATA_ACQ_STORAGE": str(store.root), **env},
        capture_output=True,
        text=True,
        timeout=180,
    )


def _one_line_failure(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    return done.stderr.strip().splitlines()[-1]


def _table(store: LocalStore, table: str) -> pl.DataFrame:
    """The curated table as its latest snapshot holds it."""
    return pl.read_delta(str(store.root / layout.CURATED / table))


# --- 1. pipeline documents when SQS fails mid-run -------------------------------------------


class CuttableProxy:
    """A TCP forwarder in front of moto's server that can be cut (every connection closed, new
    ones dropped at once) after a number of SendMessageBatch requests, and restored: an SQS
    outage that moto's state survives."""

    def __init__(self, target_port: int, cut_after_batches: int) -> None:
        self.target = target_port
        self.cut_after = cut_after_batches
        self.batches = 0
        self.tripped = False  # cut once; after `restore` everything passes
        self.cut = threading.Event()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.open: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            if self.cut.is_set():
                client.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target))
            with self.lock:
                self.open += [client, upstream]
            threading.Thread(target=self._pipe, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, requests: bool) -> None:
        try:
            while data := source.recv(65536):
                if requests and b"AmazonSQS.SendMessageBatch" in data:
                    with self.lock:
                        self.batches += 1
                        if self.batches > self.cut_after and not self.tripped:
                            self.tripped = True
                            self._cut()
                            return
                if self.cut.is_set():
                    return
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                end.close()

    def _cut(self) -> None:
        self.cut.set()
        for connection in self.open:
            connection.close()
        self.open.clear()

    def restore(self) -> None:
        self.cut.clear()

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def sqs_proxy(moto_s3: MotoS3) -> Iterator[CuttableProxy]:
    proxy = CuttableProxy(moto_s3.port, cut_after_batches=20)
    try:
        yield proxy
    finally:
        proxy.close()


def test_documents_are_sent_at_least_once_across_an_sqs_outage(
    sqs_proxy: CuttableProxy, tmp_path: Path
) -> None:
    import boto3

    endpoint = f"http://127.0.0.1:{sqs_proxy.port}"
    sqs = boto3.client("sqs", endpoint_url=endpoint, region_name="us-east-1")
    queue = sqs.create_queue(QueueName="pipeline")["QueueUrl"]
    store = LocalStore(tmp_path / "store")
    spec = SimulationSpec(sites=2, minutes=6 * 60, seed=3, duplicate_rate=0.05, outage_sites=0)
    _put(store, list(simulate(spec)), DAY + timedelta(hours=7))
    env = {"PIPELINE_SQS_QUEUE_URL": queue, "AWS_ENDPOINT_URL": endpoint}
    first = _process(store, **env)
    line = _one_line_failure(first)  # the outage: exit 1 and one line
    assert line.startswith("data-acq process: ") and endpoint in line, line
    assert sqs_proxy.batches > 20  # it was cut in the middle, not before the first send
    sqs_proxy.restore()
    second = _process(store, **env)
    assert second.returncode == 0, second.stderr
    got = receive_all(sqs, queue)
    # every document of the 720 payloads arrived, each site's at least once
    assert len(set(got)) == 2 * 6 * 60
    assert pending_units(store) == {}


# --- 2. a changed bucket count ----------------------------------------------------------------


def test_a_changed_bucket_count_is_refused_until_the_data_is_rebuilt(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    spec = SimulationSpec(sites=6, minutes=12 * 60, seed=8, outage_sites=0)
    messages = list(simulate(spec))
    _put(store, messages[: len(messages) // 2], DAY + timedelta(hours=6))
    assert _process(store, DATA_ACQ_BUCKETS="4").returncode == 0
    _put(store, messages[len(messages) // 2 :], DAY + timedelta(hours=13))
    refused = _one_line_failure(_process(store, DATA_ACQ_BUCKETS="2"))
    assert "processed with DATA_ACQ_BUCKETS=4, not 2" in refused
    assert "docs/deploy.md#change-buckets" in refused
    assert new_raw_keys(store)  # nothing was staged with the wrong count
    # the documented rebuild: the derived data goes, raw stays
    for derived in ("staging", "state", "curated"):
        shutil.rmtree(store.root / derived)
    (store.root / layout.WAREHOUSE_FILE).unlink()
    assert _process(store, DATA_ACQ_BUCKETS="2").returncode == 0
    fresh = LocalStore(tmp_path / "fresh")
    _put(fresh, messages, DAY + timedelta(hours=13))
    process(fresh, buckets=2)
    assert _table(store, "completeness_daily").height == 6  # one row per site and day
    for table in ("energy_daily", "completeness_daily"):
        rebuilt, expected = _table(store, table), _table(fresh, table)
        columns = [c for c in expected.columns if c not in ("gaps", "bucket")]
        assert (
            rebuilt.select(columns).sort(pl.all()).equals(expected.select(columns).sort(pl.all()))
        )


# --- 3. an empty cursor, a truncated staging file ----------------------------------------------


def _two_batches(store: LocalStore) -> list[tuple[str, bytes]]:
    spec = SimulationSpec(sites=3, minutes=4 * 60, seed=2, duplicate_rate=0, outage_sites=0)
    messages = list(simulate(spec))
    _put(store, messages[:400], DAY + timedelta(hours=3))
    assert process(store).staged is not None
    _put(store, messages[400:], DAY + timedelta(hours=5))
    return messages


def test_an_empty_cursor_is_rebuilt_from_the_journal(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    _two_batches(store)
    cursor = store.root / layout.CURSOR
    before = json.loads(cursor.read_text())
    cursor.write_bytes(b"")  # a crash mid-write, or an operator's mistake
    done = _process(store)
    assert done.returncode == 0, done.stderr
    assert "state/cursor.json was unreadable (empty): rebuilt from the staging journal" in (
        done.stderr
    )
    # only the second object was staged now: nothing was staged twice
    staged = pl.read_parquet(store.root / "staging" / "pipeline_payloads" / "**" / "*.parquet")
    assert staged.height == staged.select("site", "time").n_unique() == 3 * 4 * 60
    after = Cursor.load(store)
    assert after.watermark is not None and after.watermark > datetime.fromisoformat(
        before["watermark"]
    )
    # without the journal (a store staged before it existed) it cannot be rebuilt: one line
    # names the object and the repair
    cursor.write_bytes(b"")
    shutil.rmtree(store.root / layout.JOURNAL)
    line = _one_line_failure(_process(store))
    assert f"{cursor} is unreadable (empty)" in line and "delete it to stage all of raw" in line


def test_a_truncated_staging_file_is_staged_again_from_its_raw_objects(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    _two_batches(store)
    assert process(store).staged is not None
    expected = _table(store, "readings")
    damaged = sorted((store.root / "staging" / "readings").rglob("*.parquet"))[0]
    damaged.write_bytes(damaged.read_bytes()[:100])  # truncated
    done = _process(store, "--date", DAY.date().isoformat())
    assert done.returncode == 0, done.stderr
    assert "is unreadable" in done.stderr and "staging its 1 raw objects again" in done.stderr
    assert _table(store, "readings").sort(pl.all()).equals(expected.sort(pl.all()))
    # with no journal entry for its batch: one line names the file and the repair
    damaged = sorted((store.root / "staging" / "readings").rglob("*.parquet"))[0]
    damaged.write_bytes(b"")
    shutil.rmtree(store.root / layout.JOURNAL)
    line = _one_line_failure(_process(store, "--date", DAY.date().isoformat()))
    assert f"staging file {damaged} is unreadable" in line
    assert "delete it, then stage all of raw again" in line


# --- 4. a day that has not begun -----------------------------------------------------------------


def _payload(t: datetime, value: float, vid: str = "inv") -> bytes:
    return json.dumps(
        {"t": int(t.timestamp()), "r": [{"_vid": vid, "P_total": value, "E": 100 + value}]}
    ).encode()


def test_a_day_in_the_future_has_no_ratio_and_is_reported_once(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    future = datetime(2099, 12, 31, tzinfo=UTC)
    clock_ahead = [
        ("a/ahead/u/data", _payload(future + timedelta(minutes=m), m)) for m in range(30)
    ]
    today = datetime.now(UTC).replace(second=0, microsecond=0)
    # and today's minutes so far delivered, plus some stamped ahead of the clock
    now_and_ahead = [
        ("a/today/u/data", _payload(today + timedelta(minutes=m), m)) for m in range(-20, 40)
    ]
    _put(store, clock_ahead + now_and_ahead, today)
    defs = Definitions(
        jobs=[live_job],
        resources={
            "storage": LocalStorage(root=str(store.root)),
            "pipeline_queue": PipelineQueue(),
        },
    )
    with instance_for_test() as instance:
        run = defs.resolve_job_def("live_processing").execute_in_process(
            run_config={"ops": {"live_window": {"config": {"window_s": 3, "interval_s": 1}}}},
            instance=instance,
        )
        assert run.success
        warnings = [
            e.user_message
            for e in instance.all_logs(run.run_id)
            if "outside the date partitions" in (e.user_message or "")
        ]
        partitions = {
            e.dagster_event.partition  # type: ignore[union-attr]
            for e in instance.all_logs(run.run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION)
        }
    assert len(warnings) == 1 and "2099-12-31 bucket 00" in warnings[0]  # once, not every tick
    assert str(MultiPartitionKey({"date": "2099-12-31", "bucket": "00"})) not in partitions
    assert pending_units(store) == {}  # built, not tried again and again
    ratios = _table(store, "completeness_daily").select("site", "ratio", "expected")
    future_row = ratios.filter(pl.col("site") == "ahead").row(0, named=True)
    assert future_row["ratio"] is None and future_row["expected"] == 0
    assert ratios.filter(pl.col("ratio").is_not_null())["ratio"].is_between(0, 1).all()


# --- 5. a clock that jumps back ------------------------------------------------------------------


def test_a_clock_that_jumps_back_is_a_conflict_not_a_duplicate(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    start = DAY + timedelta(hours=10)
    before = [("a/jumpy/u/data", _payload(start + timedelta(minutes=m), m)) for m in range(30)]
    # the logger's clock jumps back 10 minutes: its next readings reuse 10:20..10:29, with
    # other values; and one payload is redelivered unchanged
    after = [
        ("a/jumpy/u/data", _payload(start + timedelta(minutes=m), 1000 + m)) for m in range(20, 40)
    ]
    _put(store, [*before, before[5]], start + timedelta(minutes=30))
    _put(store, after, start + timedelta(minutes=50))
    defs = Definitions(
        assets=[curated],
        jobs=[curate_job],
        resources={
            "storage": LocalStorage(root=str(store.root)),
            "pipeline_queue": PipelineQueue(),
        },
    )
    assert process(store).staged is not None
    key = str(MultiPartitionKey({"date": DAY.date().isoformat(), "bucket": "00"}))
    with instance_for_test() as instance:
        run = defs.resolve_job_def("curate_unit").execute_in_process(
            instance=instance, partition_key=key
        )
    checks = {e.check_name: e for e in run.get_asset_check_evaluations()}
    conflicts = checks["conflicting_readings"]
    assert conflicts.passed is False
    # 10 minutes of two fields sent again with other values; one payload redelivered
    assert conflicts.metadata["conflicts"].value == 10 * 2
    assert conflicts.metadata["redeliveries"].value == 2
    assert checks["duplicates_removed"].passed is True  # nothing twice in the files
    readings = _table(store, "readings").filter(pl.col("field") == "P_total").sort("time")
    # the first received wins: 10:20..10:29 keep the values sent before the jump
    assert readings["value"].to_list() == [*range(30), *(1000.0 + m for m in range(30, 40))]
