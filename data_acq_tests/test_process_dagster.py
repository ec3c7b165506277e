"""Processing in Dagster: staging, the curation sensor's choice of units, a unit's run with its
checks, units in parallel runs equal to a sequential build -- on real temporary instances."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
from dagster import (
    DagsterInstance,
    DagsterRun,
    DagsterRunStatus,
    Definitions,
    MultiPartitionKey,
    RunsFilter,
    SensorResult,
    build_sensor_context,
    instance_for_test,
)
from dagster._core.utils import make_new_run_id

from data_acq.acquire.raw import encode_object, raw_key
from data_acq.curate.flatten import READINGS_SCHEMA
from data_acq.curate.staging import new_raw_keys, stage
from data_acq.curate.units import pending_units
from data_acq.defs.acquisition import raw_messages
from data_acq.defs.jobs import charts_job, curate_job, stage_job
from data_acq.defs.processing import curated, daily_charts, staged_raw, warehouse
from data_acq.defs.resources import CACertificate, LocalStorage, MQTTBroker, PipelineQueue
from data_acq.defs.sensors import build_processing_sensors
from data_acq.devtools.simulate import SimulationSpec, simulate
from data_acq.layout import CURATED
from data_acq.messages import encode_record
from data_acq.pipeline import process
from data_acq.sites import bucket_of
from data_acq.storage import LocalStore


def _put_raw(store: LocalStore, spec: SimulationSpec, received: datetime) -> None:
    lines = (encode_record(t, body, received, 1) for t, body in simulate(spec))
    store.put_new(raw_key(received, "test"), encode_object(lines))


SENSORS = dict(zip(("new_raw", "curation"), build_processing_sensors(), strict=True))


def _defs(store: LocalStore, tmp_path: Path) -> Definitions:
    new_raw_sensor, curation_sensor = SENSORS.values()
    return Definitions(
        assets=[raw_messages, staged_raw, curated, warehouse, daily_charts],
        jobs=[stage_job, curate_job, charts_job],
        sensors=[new_raw_sensor, curation_sensor],
        resources={
            "storage": LocalStorage(root=str(store.root)),
            "pipeline_queue": PipelineQueue(),  # no queue configured
            "mqtt": MQTTBroker(
                host="127.0.0.1",
                topics=["a/+/u/data"],
                client_id="unused",
                ca_certificate=CACertificate(cache_dir=str(tmp_path / "ca")),
            ),
        },
    )


def _unit(key: str) -> tuple[str, str]:
    bucket, day = key.split("|")
    return day, bucket


def test_stage_sense_and_refresh_exactly_the_touched_units(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    defs = _defs(store, tmp_path)
    new_raw_sensor, curation_sensor = SENSORS.values()
    resources = {"storage": LocalStorage(root=str(store.root))}
    late = SimulationSpec(
        sites=2, start=datetime(2024, 10, 12, 22, tzinfo=UTC), minutes=180, seed=12
    )
    _put_raw(store, late, datetime(2024, 10, 15, 9, tzinfo=UTC))
    with instance_for_test() as instance:
        sensed = new_raw_sensor(build_sensor_context(instance=instance, resources=resources))
        assert isinstance(sensed, SensorResult) and len(sensed.run_requests) == 1
        staged = defs.resolve_job_def("stage_raw").execute_in_process(instance=instance)
        assert staged.success
        # the first staging writes the warehouse's views (empty tables until files exist)
        assert staged.asset_materializations_for_node("warehouse")

        context = build_sensor_context(instance=instance, definitions=defs, resources=resources)
        tick = curation_sensor.evaluate_tick(context)
        keys = sorted(str(r.partition_key) for r in tick.run_requests or [])
        # both sites, both dates (the backlog crosses midnight): one run per unit
        assert sorted({day for day, _ in map(_unit, keys)}) == ["2024-10-12", "2024-10-13"]
        assert len(keys) == len(set(keys)) and 2 <= len(keys) <= 4

        key = next(k for k in keys if k.endswith("2024-10-13"))
        run = defs.resolve_job_def("curate_unit").execute_in_process(
            instance=instance, partition_key=key
        )
        assert run.success
        materialized = {
            (event.asset_key.to_user_string(), event.partition)  # type: ignore[union-attr]
            for event in run.get_asset_materialization_events()
        }
        assert materialized == {
            (name, key)
            for name in (
                "readings",
                "device_status",
                "pipeline_payloads",
                "rejects",
                "readings_15min",
                "energy_daily",
                "completeness_daily",
            )
        }
        # Dagster's own metadata: the unit's row count, its columns, a preview
        [readings] = [
            e.materialization  # type: ignore[union-attr]
            for e in run.get_asset_materialization_events()
            if e.asset_key.to_user_string() == "readings"  # type: ignore[union-attr]
        ]
        metadata = readings.metadata
        assert metadata["dagster/row_count"].value > 0
        columns = [c.name for c in metadata["dagster/column_schema"].value.columns]
        assert columns == [*READINGS_SCHEMA.names(), "date"]
        assert len(metadata["preview"].value.records) == 5
        evaluations = run.get_asset_check_evaluations()
        assert {e.partition for e in evaluations} == {key}  # the checks belong to the unit
        checks = {e.check_name: e.passed for e in evaluations}
        assert checks["duplicates_removed"] is True
        assert checks["clock_skew"] is True  # the backlog is late, not early
        # the simulated data ends at 01:00 on the 13th: the day's sites went silent after that
        assert checks["sites_reporting"] is False
        # the unit is no longer pending; the others still are
        again = curation_sensor.evaluate_tick(context)
        assert sorted(str(r.partition_key) for r in again.run_requests or []) == sorted(
            set(keys) - {key}
        )
        nothing = new_raw_sensor(build_sensor_context(instance=instance, resources=resources))
        assert isinstance(nothing, SensorResult) and nothing.run_requests == []  # all staged

        charts = defs.resolve_job_def("draw_charts").execute_in_process(
            instance=instance, partition_key="2024-10-13"
        )
    assert (store.root / "warehouse.duckdb").exists()
    pngs = sorted((store.root / CURATED / "charts" / "date=2024-10-13").glob("site=*.png"))
    assert len(pngs) >= 1 and all(p.read_bytes().startswith(b"\x89PNG") for p in pngs)
    preview = charts.asset_materializations_for_node("daily_charts")[0].metadata["preview"].value
    assert str(preview).count("data:image/png;base64,") == len(pngs)


def test_a_queued_or_running_unit_is_not_requested_again_and_failures_back_off(
    tmp_path: Path,
) -> None:
    store = LocalStore(tmp_path / "store")
    defs = _defs(store, tmp_path)
    spec = SimulationSpec(sites=1, start=datetime(2024, 10, 12, tzinfo=UTC), minutes=30)
    _put_raw(store, spec, datetime(2024, 10, 12, 1, tzinfo=UTC))
    stage(store, new_raw_keys(store))
    sensor = SENSORS["curation"]
    resources = {"storage": LocalStorage(root=str(store.root))}
    with instance_for_test() as instance:
        context = build_sensor_context(instance=instance, definitions=defs, resources=resources)
        [request] = sensor.evaluate_tick(context).run_requests or []
        tags = {"dagster/partition": str(request.partition_key)}
        for status in (DagsterRunStatus.NOT_STARTED, DagsterRunStatus.STARTED):
            run = DagsterRun(
                job_name="curate_unit", run_id=make_new_run_id(), tags=tags, status=status
            )
            instance.add_run(run)
            # a run that has not finished yet takes everything staged before it starts
            assert sensor.evaluate_tick(context).run_requests == []
            instance.delete_run(run.run_id)
        failed = DagsterRun(job_name="curate_unit", run_id=make_new_run_id(), tags=tags)
        instance.add_run(failed)
        instance.report_run_failed(failed)
        tick = sensor.evaluate_tick(context)
        assert tick.run_requests == [] and "failed recently; next try in" in str(tick.skip_message)


@pytest.mark.slow
def test_units_run_in_parallel_and_equal_a_sequential_build(tmp_path: Path) -> None:
    parallel = LocalStore(tmp_path / "parallel")
    spec = SimulationSpec(sites=3, start=datetime(2024, 10, 12, 21, tzinfo=UTC), minutes=5 * 60)
    _put_raw(parallel, spec, datetime(2024, 10, 13, 5, tzinfo=UTC))
    stage(parallel, new_raw_keys(parallel))
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
    env = {**os.environ, "DAGSTER_HOME": str(home), "DATA_ACQ_STORAGE": str(parallel.root)}
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
    process(sequential)
    for table in ("readings", "pipeline_payloads", "energy_daily", "completeness_daily", "rejects"):
        both = [
            pl.read_parquet(store.root / CURATED / table / "**" / "*.parquet").sort(pl.all())
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
    _put_lines(store, bad, received)
    with instance_for_test() as instance:
        assert defs.resolve_job_def("stage_raw").execute_in_process(instance=instance).success

        def checks(site: str, day: datetime) -> dict[str, bool]:
            key = MultiPartitionKey(
                {"date": day.date().isoformat(), "bucket": f"{bucket_of(site, 32):02d}"}
            )
            run = defs.resolve_job_def("curate_unit").execute_in_process(
                instance=instance, partition_key=str(key)
            )
            return {e.check_name: e.passed for e in run.get_asset_check_evaluations()}

        assert checks("good", good_day) == dict.fromkeys(CHECKS, True)
        assert checks("bad", bad_day) == {
            "rejected_share": False,  # 3 of 43 payloads
            "duplicates_removed": True,
            "completeness": False,  # 40 of 1440 minutes
            "clock_skew": False,  # an hour ahead of arrival
            "sites_reporting": False,  # silent from 13:00 to the end of the day
        }
        # a stray file beside a unit's own holds readings the unit already has
        folder = store.root / CURATED / "readings" / "date=2024-10-12"
        [unit] = list(folder.iterdir())
        hour_file = next(unit.glob("*.parquet"))
        shutil.copy(hour_file, unit / "copy-of-an-hour.parquet")
        assert checks("bad", bad_day)["duplicates_removed"] is False


CHECKS = ("rejected_share", "duplicates_removed", "completeness", "clock_skew", "sites_reporting")


def _put_lines(store: LocalStore, messages: list[tuple[str, bytes]], received: datetime) -> None:
    lines = (encode_record(topic, body, received, 1) for topic, body in messages)
    store.put_new(raw_key(received, "test"), encode_object(lines))
