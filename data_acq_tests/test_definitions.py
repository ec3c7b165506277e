"""The Dagster definitions load, and the broker check runs for real against TLS Mosquitto."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from dagster import DagsterInstance, DefaultSensorStatus, Definitions

from data_acq.defs.jobs import broker_check
from data_acq.defs.resources import build_resources
from data_acq.defs.sensors import build_drain_sensor, build_live_sensor
from data_acq.devtools.ui import ui_environment
from data_acq.settings import Settings
from data_acq_tests.conftest import MQTT_PASSWORD, MQTT_USER, SecureBroker


def test_definitions_load_and_validate() -> None:
    from data_acq.definitions import defs

    Definitions.validate_loadable(defs)
    assert defs.resolve_job_def("broker_check").name == "broker_check"


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
