"""The pipeline format, exactly as the contract describes it."""

from __future__ import annotations

import json

from data_acq.contract import Payload, parse_payload
from data_acq.pipeline_format import rfc3339, to_pipeline
from data_acq_tests.conftest import FIXTURES


def _pipeline(body: dict | bytes) -> dict:
    parsed = parse_payload(body if isinstance(body, bytes) else json.dumps(body).encode())
    assert isinstance(parsed, Payload)
    return to_pipeline(parsed)


def test_time_is_rfc3339_utc_with_offset() -> None:
    assert rfc3339(1625576100) == "2021-07-06T12:55:00+00:00"


def test_contract_example() -> None:
    doc = _pipeline((FIXTURES / "example_payload.json").read_bytes())
    assert doc["time"] == "2024-10-12T12:03:00+00:00"
    assert list(doc["data"]) == [
        "strato-1",
        "power-meter",
        "pv-inverter-1",
        "pv-inverter-2",
        "pv-inverter-3",
        "pv-inverter-4",
        "pv-inverter-5",
        "pv-inverter-6",
        "schneider-controller",
    ]
    # the two strato-1 readings (logger and logger_strato) are merged into one dict
    assert doc["data"]["strato-1"] == {
        "cpu_load": 0.04296875,
        "boot_time": 1702379385.0,
        "memory_usage": 27.4,
        "cpu_temp": 63.376,
        "disk_usage": 63.8,
    }
    assert doc["data"]["schneider-controller"] == {
        "pvinv_P_total": 72700.0,
        "pvinv_total_yield": 315410000.0,
    }
    inverter = doc["data"]["pv-inverter-1"]
    assert inverter["P_total"] == 14400 and type(inverter["P_total"]) is int
    assert inverter["freq"] == 499.0 and type(inverter["freq"]) is float
    assert "m" not in doc and set(doc) == {"time", "data"}


def test_json_text_keeps_integers_and_floats_apart() -> None:
    doc = _pipeline({"t": 1728734580, "r": [{"_vid": "a", "i": 14400, "f": 499.0, "b": True}]})
    assert json.dumps(doc, separators=(",", ":")) == (
        '{"time":"2024-10-12T12:03:00+00:00","data":{"a":{"i":14400,"f":499.0,"b":true}}}'
    )


def test_underscore_fields_nulls_and_unplaceable_readings_are_dropped() -> None:
    doc = _pipeline(
        {
            "t": 1728734580,
            "r": [
                {"_d": "inv", "_vid": "a", "_s": [{"c": "OK", "l": 0}], "_x": 1, "P": None, "Q": 2},
                {"_d": "orphan", "P": 9},
                {"_vid": "a", "Q": 3, "mode": "auto"},
            ],
            "m": {"snap_rev": 912},
        }
    )
    assert doc == {"time": "2024-10-12T12:03:00+00:00", "data": {"a": {"Q": 3, "mode": "auto"}}}


def test_a_payload_with_no_readings_has_empty_data() -> None:
    assert _pipeline({"t": 1728734580, "r": []}) == {
        "time": "2024-10-12T12:03:00+00:00",
        "data": {},
    }
