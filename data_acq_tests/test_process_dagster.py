"""Processing in Dagster: a live window's staging, refreshes and reports, its back-off, its
successor's take-over; a unit's run with its checks; units in parallel runs equal to a
sequential build -- on real temporary instances."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
from dagster import (
    AssetKey,
    DagsterEventType,
    DagsterInstance,
    DagsterRunStatus,
    Definitions,
    MultiPartitionKey,
    RunsFilter,
    SensorResult,
    build_sensor_context,
    instance_for_test,
)

from data_acq import backoff
from data_acq.acquire.raw import encode_object, raw_key
from data_acq.curate.cursor import new_raw_keys
from data_acq.curate.staging import stage
from data_acq.curate.tables import CuratedTables
from data_acq.curate.units import pending_units
from data_acq.defs.processing import CURATED_ASSETS
from data_acq.defs.resources import (
    CACertificate,
    LocalStorage,
    MQTTBroker,
    PipelineQueue,
    Storage,
)
from data_acq.defs.sensors import build_live_sensor
from data_acq.defs.windows import WORKER_TAG
from data_acq.devtools.simulate import SimulationSpec, simulate
from data_acq.layout import CURATED
from data_acq.messages import encode_record
from data_acq.pipeline import process
from data_acq.sites import bucket_of
from data_acq.storage import LocalStore, ObjectStore
from data_acq_tests.dagster_parts import (
    SETTINGS,
    charts_job,
    curate_job,
    curated,
    daily_charts,
    live_job,
    raw_messages,
    stage_job,
    staged_raw,
    warehouse,
)


def _put_raw(store: LocalStore, spec: SimulationSpec, received: datetime) -> None:
    lines = (encode_record(t, body, received, 1) for t, body in simulate(spec))
    store.put_new(raw_key(received, "test"), encode_object(lines))


def _defs(store: LocalStore, tmp_path: Path, storage: Storage | None = None) -> Definitions:
    return Definitions(
        assets=[raw_messages, staged_raw, curated, warehouse, daily_charts],
        jobs=[live_job, stage_job, curate_job, charts_job],
        resources={
            "storage": storage or LocalStorage(root=str(store.root)),
            "pipeline_queue": PipelineQueue(),  # no queue configured
            "mqtt": MQTTBroker(
                host="127.0.0.1",
                topics=["a/+/u/data"],
                client_id="unused",
                ca_certificate=CACertificate(cache_dir=str(tmp_path / "ca")),
            ),
        },
    )


def _live(
    defs: Definitions, instance: DagsterInstance, window_s: float, **config: object
) -> object:
    return defs.resolve_job_def("live_processing").execute_in_process(
        run_config={
            "ops": {"live_window": {"config": {"window_s": window_s, "interval_s": 1, **config}}}
        },
        tags={WORKER_TAG: "1"},
        instance=instance,
        raise_on_error=False,
    )


def test_a_live_window_reports_exactly_the_units_it_refreshed(tmp_path: Path) -> None:
    """One live run stages a late backlog and refreshes its units in-process; the UI sees each
    unit's partition materialized with row counts and previews, and its checks."""
    store = LocalStore(tmp_path / "store")
    defs = _defs(store, tmp_path)
    late = SimulationSpec(
        sites=2, start=datetime(2024, 10, 12, 22, tzinfo=UTC), minutes=180, seed=12
    )
    _put_raw(store, late, datetime(2024, 10, 15, 9, tzinfo=UTC))
    with instance_for_test() as instance:
        run = _live(defs, instance, window_s=3)
        assert run.success  # type: ignore[attr-defined]
        events = [r.event_log_entry for r in instance.get_records_for_run(run.run_id).records]  # type: ignore[attr-defined]
        kinds = Counter(e.dagster_event_type for e in events if e.dagster_event)
        materialized = {
            (e.dagster_event.asset_key.to_user_string(), e.dagster_event.partition)  # type: ignore[union-attr]
            for e in events
            if e.dagster_event_type == DagsterEventType.ASSET_MATERIALIZATION
        }
        # the backlog crosses midnight: both dates' units (one bucket), every curated table
        keys = {
            str(MultiPartitionKey({"date": day, "bucket": "00"}))
            for day in ("2024-10-12", "2024-10-13")
        }
        tables = set(CURATED_ASSETS)
        assert materialized == {(t, k) for t in tables for k in keys} | {
            ("staged_raw", None),
            ("warehouse", None),
        }
        # a materialization per table and unit, a result per check and unit, nothing per tick
        assert kinds[DagsterEventType.ASSET_MATERIALIZATION] == 2 * len(tables) + 2
        assert kinds[DagsterEventType.ASSET_CHECK_EVALUATION] == 2 * len(CHECKS)
        readings = instance.get_latest_materialization_event(AssetKey("readings"))
        metadata = readings.asset_materialization.metadata  # type: ignore[union-attr]
        assert metadata["dagster/row_count"].value > 0
        assert len(metadata["preview"].value.records) == 3
        evaluations = [
            e.dagster_event.event_specific_data  # type: ignore[union-attr]
            for e in events
            if e.dagster_event_type == DagsterEventType.ASSET_CHECK_EVALUATION
        ]
        assert {e.partition for e in evaluations} == keys  # the checks belong to the unit
        checks = {(e.check_name, e.partition): e.passed for e in evaluations}
        key = str(MultiPartitionKey({"date": "2024-10-13", "bucket": "00"}))
        assert checks[("duplicates_removed", key)] is True
        assert checks[("clock_skew", key)] is True  # the backlog is late, not early
        # the simulated data ends at 01:00 on the 13th for every site at once: none fell silent
        # while others went on (no data at all is the raw data's freshness alarm)
        assert checks[("sites_reporting", key)] is True
        assert pending_units(store) == {}  # all refreshed
        # the window's figures on the run
        [output] = [
            e.dagster_event.event_specific_data  # type: ignore[union-attr]
            for e in events
            if e.dagster_event_type == DagsterEventType.STEP_OUTPUT
        ]
        figures = {k: v.value for k, v in output.metadata.items()}
        assert figures["raw_objects_staged"] == 1 and figures["unit_refreshes"] == 2
        assert figures["failures"] == 0 and figures["ticks"] >= 2

        charts = defs.resolve_job_def("draw_charts").execute_in_process(
            instance=instance, partition_key="2024-10-13"
        )
    assert (store.root / "warehouse.duckdb").exists()
    pngs = sorted((store.root / CURATED / "charts" / "date=2024-10-13").glob("site=*.png"))
    assert len(pngs) >= 1 and all(p.read_bytes().startswith(b"\x89PNG") for p in pngs)
    metadata = charts.asset_materializations_for_node("daily_charts")[0].metadata
    # linked, not embedded: images stay out of Dagster's database
    assert str(pngs[0]) in str(metadata["first_charts"].value)
    assert "base64" not in str(metadata)


class FlakyStore(LocalStore):
    """A local store whose next `failures` writes under `prefix` fail, as S3 does in a hiccup."""

    def __init__(self, root: Path, prefix: str, failures: int) -> None:
        super().__init__(root)
        self.prefix, self.failures = prefix, failures

    def put(self, key: str, data: bytes) -> None:
        if key.startswith(self.prefix) and self.failures > 0:
            self.failures -= 1
            raise OSError(5, "Input/output error (injected)", key)
        super().put(key, data)


class FlakyStorage(Storage):
    root: str
    prefix: str
    failures: int

    def store(self) -> ObjectStore:
        return FlakyStore(Path(self.root), self.prefix, self.failures)


def test_staging_that_fails_once_resumes_by_itself_with_more_than_1000_objects_waiting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """1,200 raw objects wait (more than one staging takes) and the first staging fails: the
    window tries again after its back-off and stages them all, then refreshes the unit."""
    monkeypatch.setattr(backoff, "BASE_S", 1.0)
    store = LocalStore(tmp_path / "store")
    received = datetime(2024, 10, 12, 10, tzinfo=UTC)
    for number in range(1_200):
        line = encode_record(
            f"a/site-{number % 7}/u/data",
            _payload(received + timedelta(minutes=number), 1),
            received,
            1,
        )
        store.put_new(raw_key(received + timedelta(seconds=number), "test"), encode_object([line]))
    flaky = FlakyStorage(root=str(store.root), prefix="staging/", failures=1)
    defs = _defs(store, tmp_path, storage=flaky)
    with instance_for_test() as instance:
        run = _live(defs, instance, window_s=25)
        logs = [e.user_message for e in instance.all_logs(run.run_id)]  # type: ignore[attr-defined]
        assert any("staging failed (tried again after a back-off)" in m for m in logs)
        assert run.success  # type: ignore[attr-defined]  # nothing still failing at the end
    assert new_raw_keys(store) == []  # all 1,200 staged
    assert pending_units(store) == {}
    readings = pl.read_delta(str(store.root / CURATED / "readings"))
    assert readings.select("site", "time").n_unique() == 1_200


def test_the_successor_waits_for_its_predecessor_and_takes_over(tmp_path: Path) -> None:
    """The live sensor launches a worker's successor a handover before the window ends; the
    successor starts, waits until its predecessor has ended, then works; never a third run."""
    store = LocalStore(tmp_path / "store")
    defs = _defs(store, tmp_path)
    sensor = build_live_sensor(workers=1, window_s=6, interval_s=1, handover_s=4)
    with instance_for_test() as instance:
        first: list = []
        thread = threading.Thread(target=lambda: first.append(_live(defs, instance, window_s=6)))
        thread.start()
        deadline = time.monotonic() + 30
        while not instance.get_runs(filters=RunsFilter(statuses=[DagsterRunStatus.STARTED])):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        early = sensor(build_sensor_context(instance=instance, cursor='{"1": 1}'))
        assert isinstance(early, SensorResult) and early.run_requests == []
        time.sleep(2.5)  # now within the handover
        handover = sensor(build_sensor_context(instance=instance, cursor='{"1": 1}'))
        assert isinstance(handover, SensorResult)
        [request] = handover.run_requests
        assert request.run_key == "live-1-2" and request.tags == {WORKER_TAG: "1"}
        second = _live(defs, instance, window_s=2)  # starts while the first still runs
        thread.join(30)
        assert first[0].success and second.success  # type: ignore[attr-defined]
        records = {r.dagster_run.run_id: r for r in instance.get_run_records()}
        one, two = records[first[0].run_id], records[second.run_id]  # type: ignore[attr-defined]
        waited = [e.user_message for e in instance.all_logs(second.run_id)]  # type: ignore[attr-defined]
        assert any(f"waiting for run {first[0].run_id[:8]} to end its window" in m for m in waited)
        # it worked only once the first had ended: its first refresh came after that
        worked = [
            e.timestamp
            for e in instance.all_logs(second.run_id)  # type: ignore[attr-defined]
            if "live worker 1 of 1" in (e.user_message or "")
        ]
        assert worked and worked[0] >= one.end_time  # type: ignore[operator]
        assert two.start_time < one.end_time  # type: ignore[operator]  # started before: no gap


@pytest.mark.slow
def test_units_run_in_parallel_and_equal_a_sequential_build(tmp_path: Path) -> None:
    parallel = LocalStore(tmp_path / "parallel")
    spec = SimulationSpec(sites=3, start=datetime(2024, 10, 12, 21, tzinfo=UTC), minutes=5 * 60)
    _put_raw(parallel, spec, datetime(2024, 10, 13, 5, tzinfo=UTC))
    stage(parallel, new_raw_keys(parallel), 32)
    sequential = LocalStore(tmp_path / "sequential")
    shutil.copytree(parallel.root, sequential.root)
    keys = [
        str(MultiPartitionKey({"date": day.isoformat(), "bucket": f"{bucket:02d}"}))
        for day, bucket in sorted(pending_units(parallel))
    ]
    assert len(keys) >= 3
    home = tmp_path / "dagster_home"
    home.mkdir()
    DagsterInstance.from_config(str(home)).dispose()  # its databases, made once
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "DATA_ACQ_STORAGE": str(parallel.root),
        "DATA_ACQ_BUCKETS": "32",
    }
    in_process = tmp_path / "in_process.yaml"
    in_process.write_text("execution:\n  config:\n    in_process: {}\n")
    # one run per unit, all launched at once, each its own process (as `dagster dev` and the
    # ECS run launcher run them)
    runs = [
        subprocess.Popen(
            [
                *DAGSTER,
                "job",
                "execute",
                "-m",
                "data_acq.definitions",
                "-j",
                "curate_unit",
                "--tags",
                json.dumps({"dagster/partition": key}),
                "--config",  # the run's step in the run's process: one process per unit
                str(in_process),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for key in keys
    ]
    for run in runs:
        _, err = run.communicate(timeout=300)
        assert run.returncode == 0, err.decode()[-2000:]
    with DagsterInstance.from_config(str(home)) as instance:
        records = instance.get_run_records(RunsFilter(job_name="curate_unit"))
    assert sorted(r.dagster_run.tags["dagster/partition"] for r in records) == sorted(keys)
    assert all(r.dagster_run.status == DagsterRunStatus.SUCCESS for r in records)
    spans = [(r.start_time, r.end_time) for r in records]
    overlapping = sum(
        1
        for a, b in itertools.combinations(spans, 2)
        if a[0] < b[1] and b[0] < a[1]  # type: ignore[operator]
    )
    assert overlapping > 0  # runs ran side by side
    process(sequential, buckets=32)
    for table in ("readings", "pipeline_payloads", "energy_daily", "completeness_daily", "rejects"):
        both = [
            pl.read_delta(str(store.root / CURATED / table)).sort(pl.all())
            for store in (parallel, sequential)
        ]
        assert both[0].drop("gaps", strict=False).equals(both[1].drop("gaps", strict=False)), table


DAGSTER = [sys.executable, "-m", "dagster"]


def _payload(t: datetime, value: int) -> bytes:
    return json.dumps(
        {"t": int(t.timestamp()), "r": [{"_vid": "inv", "P_total": value, "E": 100 * value}]}
    ).encode()


def test_every_check_can_fail_and_each_passes_on_a_good_day(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    defs = _defs(store, tmp_path)
    good_day, bad_day = datetime(2024, 10, 10, tzinfo=UTC), datetime(2024, 10, 12, tzinfo=UTC)
    good = [("a/good/u/data", _payload(good_day + timedelta(minutes=m), m)) for m in range(1440)]
    # received after the day ended: late, which is fine
    _put_lines(store, good, good_day + timedelta(days=1, minutes=5))
    received = bad_day + timedelta(hours=12)
    bad = [
        # stamped an hour ahead of its arrival, one payload in ten minutes, silent after 13:00
        ("a/bad/u/data", _payload(bad_day + timedelta(hours=13, minutes=-10 * m), m))
        for m in range(40)
    ] + [("a/bad/u/data", b"{not json")] * 3
    # and a site in the same unit that goes on to the end of the day: the others are judged
    # against the data it covers
    bad.append(("a/steady/u/data", _payload(bad_day + timedelta(hours=23, minutes=59), 1)))
    # and the first payload again with another value: a clock that jumped back
    bad.append(("a/bad/u/data", _payload(bad_day + timedelta(hours=13), 99)))
    _put_lines(store, bad, received)
    with instance_for_test() as instance:
        assert defs.resolve_job_def("stage_raw").execute_in_process(instance=instance).success

        def checks(site: str, day: datetime) -> dict[str, bool]:
            key = MultiPartitionKey(
                {
                    "date": day.date().isoformat(),
                    "bucket": f"{bucket_of(site, SETTINGS.buckets):02d}",
                }
            )
            run = defs.resolve_job_def("curate_unit").execute_in_process(
                instance=instance, partition_key=str(key)
            )
            return {e.check_name: e.passed for e in run.get_asset_check_evaluations()}

        assert checks("good", good_day) == dict.fromkeys(CHECKS, True)
        assert checks("bad", bad_day) == {
            "rejected_share": False,  # 3 of 45 payloads
            "duplicates_removed": True,
            "conflicting_readings": False,  # the payload sent again with another value
            "completeness": False,  # 40 of the 1,050 minutes the unit's data covers
            "clock_skew": False,  # an hour ahead of arrival
            "sites_reporting": False,  # silent from 13:00, while "steady" went on to 23:59
        }
        # readings filed under another hour than their time's: a copy no refresh replaces
        tables = CuratedTables(store)
        bucket = bucket_of("bad", SETTINGS.buckets)
        misfiled = tables.read("readings", bad_day.date(), bucket, hour=12)
        assert misfiled.height > 0
        tables.replace("readings", misfiled, bad_day.date(), bucket, [20])
        assert checks("bad", bad_day)["duplicates_removed"] is False


CHECKS = (
    "rejected_share",
    "duplicates_removed",
    "conflicting_readings",
    "completeness",
    "clock_skew",
    "sites_reporting",
)


def _put_lines(store: LocalStore, messages: list[tuple[str, bytes]], received: datetime) -> None:
    lines = (encode_record(topic, body, received, 1) for topic, body in messages)
    store.put_new(raw_key(received, "test"), encode_object(lines))
