"""The Dagster definitions load, and the broker check runs for real against TLS Mosquitto."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from dagster import DagsterInstance, DefaultSensorStatus, Definitions, MultiPartitionsDefinition

from data_acq.definitions import build_defs
from data_acq.defs.jobs import broker_check
from data_acq.defs.resources import build_resources
from data_acq.defs.sensors import build_drain_sensor, build_live_sensor
from data_acq.devtools.ui import ui_environment
from data_acq.settings import Settings
from data_acq_tests.conftest import MQTT_PASSWORD, MQTT_USER, SecureBroker


def test_definitions_load_and_validate() -> None:
    from data_acq.definitions import defs

    loaded = defs()
    Definitions.validate_loadable(loaded)
    assert loaded.resolve_job_def("broker_check").name == "broker_check"


def test_definitions_are_built_from_an_explicit_settings_object() -> None:
    settings = Settings.from_env(
        {
            "DATA_ACQ_BUCKETS": "4",
            "DATA_ACQ_START_DATE": "2025-01-01",
            "DATA_ACQ_LIVE_WINDOW": "120",
        }
    )
    built = build_defs(settings)
    Definitions.validate_loadable(built)
    units = built.get_assets_def("readings").partitions_def
    assert isinstance(units, MultiPartitionsDefinition)
    assert units.get_partitions_def_for_dimension("bucket").get_partition_keys() == [
        "00",
        "01",
        "02",
        "03",
    ]
    assert units.get_partitions_def_for_dimension("date").get_first_partition_key() == "2025-01-01"
    assert built.resolve_job_def("live_processing").tags["dagster/max_runtime"] == str(
        120 + 90 + 1800
    )
    # local runs carry no ECS task sizes; where runs are ECS tasks every job has its size
    jobs = ("drain", "live_processing", "stage_raw", "curate_unit", "draw_charts")
    for name in (*jobs, "compact_tables"):
        assert not [t for t in built.resolve_job_def(name).tags if t.startswith("ecs/")], name
    on_ecs = build_defs(Settings.from_env({"DATA_ACQ_DRAIN_TASK_DEFINITION": "data-acq-drain"}))
    for name in (*jobs, "compact_tables"):
        assert {"ecs/cpu", "ecs/memory"} <= set(on_ecs.resolve_job_def(name).tags), name


def test_importing_the_definitions_reads_no_environment() -> None:
    """Every module under data_acq/defs/ and data_acq.definitions import with a bad variable
    set (and with deprecation warnings as errors); only building the definitions refuses it,
    in one line."""
    script = (
        "import importlib, pkgutil, data_acq.defs as package\n"
        "for module in pkgutil.iter_modules(package.__path__):\n"
        "    importlib.import_module(f'data_acq.defs.{module.name}')\n"
        "from data_acq.definitions import defs\n"
        "print('imported')\n"
        "defs()\n"
    )
    env = {**os.environ, "DATA_ACQ_BUCKETS": "abc"}
    result = subprocess.run(
        [sys.executable, "-W", "error::DeprecationWarning", "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.stdout == "imported\n"
    assert result.returncode != 0
    assert "SettingsError: DATA_ACQ_BUCKETS must be a whole number" in result.stderr


def test_broker_check_job_runs_against_tls_broker(
    secure_mosquitto: SecureBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {
        "MQTT_BROKER": "localhost",
        "MQTT_PORT": str(secure_mosquitto.process.port),
        "MQTT_USERNAME": MQTT_USER,
        "MQTT_PASSWORD": MQTT_PASSWORD,
        "CA_CERT_FILE": str(secure_mosquitto.tls.ca),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with DagsterInstance.ephemeral() as instance:
        result = broker_check.execute_in_process(
            resources=build_resources(Settings.from_env()), instance=instance
        )
        assert result.success
        output = result.output_for_node("connect_to_broker")
        assert output == f"localhost:{secure_mosquitto.process.port}"
        logs = [str(record) for record in instance.all_logs(result.run_id)]
    assert any("connected to localhost" in line for line in logs)
    assert not any(MQTT_PASSWORD in line for line in logs)
    assert MQTT_PASSWORD not in str(result.dagster_run.run_config)


def test_broker_check_fails_clearly_with_a_wrong_password(
    secure_mosquitto: SecureBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MQTT_PASSWORD", "nope-wrong-1")
    settings = Settings.from_env(
        {
            "MQTT_BROKER": "localhost",
            "MQTT_PORT": str(secure_mosquitto.process.port),
            "MQTT_USERNAME": MQTT_USER,
            "MQTT_PASSWORD": "nope-wrong-1",
            "CA_CERT_FILE": str(secure_mosquitto.tls.ca),
        }
    )
    result = broker_check.execute_in_process(
        resources=build_resources(settings), raise_on_error=False
    )
    assert not result.success
    failure = result.failure_data_for_node("connect_to_broker")
    assert failure is not None
    text = str(failure.error)
    assert "refused the connection" in text and "nope-wrong-1" not in text


def test_ui_environment_switches_the_sensors_on(tmp_path: Path) -> None:
    env = ui_environment(tmp_path, 18830, datetime(2024, 10, 12, 9, tzinfo=UTC))
    settings = Settings.from_env(env)
    assert settings.sensors_running and settings.drain_window_s == settings.live_window_s == 300
    assert settings.start_date == date(2024, 10, 12) and settings.refresh_interval_s == 10
    assert (settings.buckets, settings.live_workers, settings.handover_s) == (1, 1, 20)
    assert (settings.broker.host, settings.broker.port) == ("127.0.0.1", 18830)
    assert settings.storage == str(tmp_path / "storage")
    sensors = [
        build_drain_sensor(
            settings.subscriptions, settings.drain_window_s, settings.sensors_running
        ),
        build_live_sensor(
            settings.live_workers,
            settings.live_window_s,
            settings.refresh_interval_s,
            settings.sensors_running,
        ),
    ]
    assert {s.name: s.default_status for s in sensors} == {
        "drain_sensor": DefaultSensorStatus.RUNNING,
        "live_sensor": DefaultSensorStatus.RUNNING,
    }
    assert Settings.from_env({}).sensors_running is False
