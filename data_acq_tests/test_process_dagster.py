"""Processing in Dagster: staging, the curation sensor's choice of dates, a curated partition
with its checks -- on a real temporary instance."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

from dagster import AssetKey, Definitions, SensorResult, build_sensor_context, instance_for_test

from data_acq.acquire.raw import encode_object, raw_key
from data_acq.defs.assets import curated, daily_charts, raw_messages, staged_raw
from data_acq.defs.jobs import curate_job, stage_job
from data_acq.defs.resources import CACertificate, LocalStorage, MQTTBroker, PipelineQueue
from data_acq.defs.sensors import build_processing_sensors
from data_acq.devtools.simulate import SimulationSpec, simulate
from data_acq.messages import encode_record
from data_acq.storage import LocalStore


def _put_raw(store: LocalStore, spec: SimulationSpec, received: datetime) -> None:
    lines = (encode_record(t, body, received, 1) for t, body in simulate(spec))
    store.put_new(raw_key(received, "test"), encode_object(lines))


def test_stage_sense_and_curate_exactly_the_touched_dates(tmp_path: Path) -> None:
    new_raw_sensor, curation_sensor = build_processing_sensors()
    store = LocalStore(tmp_path / "store")
    storage = LocalStorage(root=str(store.root))
    defs = Definitions(
        assets=[raw_messages, staged_raw, curated, daily_charts],
        jobs=[stage_job, curate_job],
        sensors=[new_raw_sensor, curation_sensor],
        resources={
            "storage": storage,
            "pipeline_queue": PipelineQueue(),  # no queue configured
            "mqtt": MQTTBroker(
                host="127.0.0.1",
                topics=["a/+/u/data"],
                client_id="unused",
                ca_certificate=CACertificate(cache_dir=str(tmp_path / "ca")),
            ),
        },
    )
    late = SimulationSpec(
        sites=2, start=datetime(2024, 10, 12, 22, tzinfo=UTC), minutes=180, seed=12
    )
    _put_raw(store, late, datetime(2024, 10, 15, 9, tzinfo=UTC))
    with instance_for_test() as instance:
        sensed = new_raw_sensor(
            build_sensor_context(instance=instance, resources={"storage": storage})
        )
        assert isinstance(sensed, SensorResult) and len(sensed.run_requests) == 1
        assert defs.resolve_job_def("stage_raw").execute_in_process(instance=instance).success

        context = build_sensor_context(
            instance=instance, definitions=defs, resources={"storage": storage}
        )
        tick = curation_sensor.evaluate_tick(context)
        assert sorted(r.partition_key for r in tick.run_requests or []) == [
            "2024-10-12",
            "2024-10-13",
        ]

        run = defs.resolve_job_def("curate_date").execute_in_process(
            instance=instance, partition_key="2024-10-13"
        )
        assert run.success
        materialized = {
            event.asset_key.to_user_string()  # type: ignore[union-attr]
            for event in run.get_asset_materialization_events()
        }
        assert materialized == {
            "readings",
            "device_status",
            "pipeline_payloads",
            "rejects",
            "readings_15min",
            "energy_daily",
            "completeness_daily",
            "warehouse",
            "daily_charts",
        }
        checks = {e.check_name: e.passed for e in run.get_asset_check_evaluations()}
        assert checks["duplicates_removed"] is True
        assert checks["clock_skew"] is True  # the backlog is late, not early
        assert set(checks) == {
            "rejected_share",
            "duplicates_removed",
            "completeness",
            "clock_skew",
            "freshness",
        }
        # the simulated data ends at 01:00 on the 13th: the day's sites went silent after that
        assert checks["freshness"] is False
        again = new_raw_sensor(
            build_sensor_context(instance=instance, resources={"storage": storage})
        )
        assert isinstance(again, SensorResult) and again.run_requests == []  # all staged
    assert (store.root / "warehouse.duckdb").exists()
    charts = sorted((store.root / "curated" / "charts" / "date=2024-10-13").glob("site=*.png"))
    assert len(charts) == 2 and all(c.read_bytes().startswith(b"\x89PNG") for c in charts)
    preview = run.asset_materializations_for_node("daily_charts")[0].metadata["preview"].value
    assert str(preview).count("data:image/png;base64,") == 2


def _payload(t: datetime, value: int) -> bytes:
    return json.dumps(
        {"t": int(t.timestamp()), "r": [{"_vid": "inv", "P_total": value, "E": 100 * value}]}
    ).encode()


def test_every_check_can_fail_and_each_passes_on_a_good_day(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    storage = LocalStorage(root=str(store.root))
    defs = Definitions(
        assets=[staged_raw, curated],
        resources={"storage": storage, "pipeline_queue": PipelineQueue()},
    )
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
        assert (
            defs.resolve_implicit_global_asset_job_def()
            .get_subset(asset_selection={AssetKey("staged_raw")})
            .execute_in_process(instance=instance)
            .success
        )

        def checks(day: str) -> dict[str, bool]:
            run = (
                defs.resolve_implicit_global_asset_job_def()
                .get_subset(asset_selection={AssetKey(name) for name in CURATED_OUTPUTS})
                .execute_in_process(instance=instance, partition_key=day)
            )
            return {e.check_name: e.passed for e in run.get_asset_check_evaluations()}

        assert checks("2024-10-10") == dict.fromkeys(CHECKS, True)
        assert checks("2024-10-12") == {
            "rejected_share": False,  # 3 of 43 payloads
            "duplicates_removed": True,
            "completeness": False,  # 40 of 1440 minutes
            "clock_skew": False,  # an hour ahead of arrival
            "freshness": False,  # silent from 13:00 to the end of the day
        }
        # a stray file beside a unit's own holds readings the unit already has
        folder = next((store.root / "curated" / "readings" / "date=2024-10-12").iterdir())
        shutil.copy(folder / "part-0.parquet", folder / "part-stray.parquet")
        assert checks("2024-10-12")["duplicates_removed"] is False


CHECKS = ("rejected_share", "duplicates_removed", "completeness", "clock_skew", "freshness")
CURATED_OUTPUTS = (
    "readings",
    "device_status",
    "pipeline_payloads",
    "rejects",
    "readings_15min",
    "energy_daily",
    "completeness_daily",
    "warehouse",
)


def _put_lines(store: LocalStore, messages: list[tuple[str, bytes]], received: datetime) -> None:
    lines = (encode_record(topic, body, received, 1) for topic, body in messages)
    store.put_new(raw_key(received, "test"), encode_object(lines))
