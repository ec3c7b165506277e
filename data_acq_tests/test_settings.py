"""Configuration from the environment, with the original project's names."""

from __future__ import annotations

import re

import pytest

from data_acq.settings import Settings, SettingsError


def test_defaults() -> None:
    settings = Settings.from_env({})
    broker = settings.broker
    assert (broker.host, broker.port, broker.topics, broker.protocol) == (
        "localhost",
        1883,
        ("a/+/u/data",),
        "5",
    )
    assert not broker.tls and settings.storage == "data"
    assert broker.client_id.startswith("data-acq-")


def test_original_names_and_topic_list() -> None:
    settings = Settings.from_env(
        {
            "MQTT_BROKER": "mqtt.stage.ammp.io",
            "MQTT_PORT": "8883",
            "MQTT_USERNAME": "user",
            "MQTT_PASSWORD": "hunter2-secret",
            "MQTT_TOPIC": "a/+/u/data, a/+/u/meta/#,a/+/bridge_state",
            "MQTT_CLIENT_ID": "data-acq-prod-1",
            "DATA_ACQ_STORAGE": "s3://bucket/prefix",
        }
    )
    broker = settings.broker
    assert broker.tls  # port 8883
    assert broker.topics == ("a/+/u/data", "a/+/u/meta/#", "a/+/bridge_state")
    assert broker.client_id == "data-acq-prod-1" and settings.storage == "s3://bucket/prefix"
    assert "hunter2-secret" not in repr(settings)


def test_tls_when_a_ca_is_configured() -> None:
    assert Settings.from_env({"CA_CERT_FILE": "/x/ca.crt"}).broker.tls


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"MQTT_PORT": "eighty"}, "MQTT_PORT must be a port number, got 'eighty'"),
        ({"MQTT_PORT": "70000"}, "MQTT_PORT must be between 1 and 65535, got 70000"),
        ({"MQTT_PROTOCOL": "4"}, "MQTT_PROTOCOL must be 5 or 3.1.1, got '4'"),
        ({"MQTT_TOPIC": "a/#"}, "MQTT_TOPIC 'a/#' would consume downstream"),
        ({"MQTT_TOPIC": "a/+/d/config"}, "MQTT_TOPIC 'a/+/d/config' would consume downstream"),
        ({"MQTT_TOPIC": "$share/g/a/#"}, "MQTT_TOPIC '$share/g/a/#' would consume downstream"),
        (
            {"DATA_ACQ_DRAIN_WORKERS": "0"},
            "DATA_ACQ_DRAIN_WORKERS must be a whole number from 1 to 64",
        ),
        ({"DATA_ACQ_DRAIN_WINDOW": "ten"}, "DATA_ACQ_DRAIN_WINDOW must be a number of seconds"),
        ({"DATA_ACQ_SUBSCRIPTIONS": "nameonly"}, "DATA_ACQ_SUBSCRIPTIONS entry 'nameonly' is not"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=re.escape(message)):
        Settings.from_env(env)
