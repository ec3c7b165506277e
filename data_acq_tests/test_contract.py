"""The payload contract: every kind of bad input gets a precise rejection, never an exception."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from data_acq.contract import Payload, Rejection, parse_payload
from data_acq_tests.conftest import CONTRACT, FIXTURES

EXAMPLE = (FIXTURES / "example_payload.json").read_bytes()


def test_fixture_is_the_shared_contract_example() -> None:
    shared = CONTRACT / "example_payload.json"
    if not shared.exists():
        pytest.skip("shared/contract is not beside this checkout")
    assert json.loads(shared.read_bytes()) == json.loads(EXAMPLE)


def test_contract_example_is_accepted_whole() -> None:
    parsed = parse_payload(EXAMPLE)
    assert isinstance(parsed, Payload)
    assert parsed.t == 1728734580
    assert len(parsed.readings) == 10
    assert parsed.skipped == []
    assert parsed.readings[2]["E_exported"] == 1540509000


def _reject(data: bytes | str) -> Rejection:
    parsed = parse_payload(data)
    assert isinstance(parsed, Rejection), parsed
    return parsed


@pytest.mark.parametrize(
    ("data", "path", "reason"),
    [
        (b"\xff\xfe{}", "$", "not UTF-8: invalid byte 0xff at offset 0"),
        (b'{"t": 1728734580, "r": [', "$", "not JSON: Expecting value at line 1 column 25"),
        (b"", "$", "not JSON: Expecting value at line 1 column 1"),
        (b'{"t": NaN, "r": []}', "$", "not JSON: NaN is not valid JSON"),
        (b"[1, 2]", "$", "payload is an array, expected an object with t and r"),
        (b'"hello"', "$", "payload is a string, expected an object with t and r"),
        (b'{"r": []}', "$.t", "t is missing"),
        (
            b'{"t": "1728734580", "r": []}',
            "$.t",
            't is a string ("1728734580"), expected an integer',
        ),
        (b'{"t": true, "r": []}', "$.t", "t is a boolean (true), expected an integer"),
        (
            b'{"t": 1728734580.5, "r": []}',
            "$.t",
            "t is a number (1728734580.5), expected an integer",
        ),
        (
            b'{"t": 1728734580000, "r": []}',
            "$.t",
            "t=1728734580000 is outside 2000-01-01..2100-01-01 (Unix seconds expected)",
        ),
        (
            b'{"t": -5, "r": []}',
            "$.t",
            "t=-5 is outside 2000-01-01..2100-01-01 (Unix seconds expected)",
        ),
        (b'{"t": 1728734580}', "$.r", "r is missing"),
        (
            b'{"t": 1728734580, "r": {"_vid": "x"}}',
            "$.r",
            "r is an object, expected an array of readings",
        ),
    ],
)
def test_rejections_say_what_and_where(data: bytes, path: str, reason: str) -> None:
    rejection = _reject(data)
    assert (rejection.path, rejection.reason) == (path, reason)


def test_integral_float_time_is_the_same_instant() -> None:
    parsed = parse_payload(b'{"t": 1728734580.0, "r": []}')
    assert isinstance(parsed, Payload) and parsed.t == 1728734580


def test_bad_readings_are_skipped_and_the_rest_kept() -> None:
    body = {
        "t": 1728734580,
        "r": [
            {"_d": "meter", "_vid": "m-1", "P": 5},
            {"_d": "orphan", "P": 7},
            "not a reading",
            {"_vid": 35346907, "P": 1},
            {"_vid": "inv", "P": 3, "nested": {"a": 1}, "list": [1, 2]},
            {"_vid": "gen", "_s": "broken", "rpm": 1500},
            {"_vid": "gen2", "_s": [{"c": "Low Oil Pressure", "l": 3}, {"c": 5}]},
        ],
    }
    parsed = parse_payload(json.dumps(body))
    assert isinstance(parsed, Payload)
    assert [r["_vid"] for r in parsed.readings] == ["m-1", "inv", "gen", "gen2"]
    assert parsed.readings[1] == {"_vid": "inv", "P": 3}
    assert "_s" not in parsed.readings[2]
    assert [str(s) for s in parsed.skipped] == [
        "$.r[1]: reading has no _vid, so it cannot be placed",
        "$.r[2]: reading is a string, expected an object",
        "$.r[3]: _vid is an integer, expected a string",
        "$.r[4].nested: value is an object, expected a scalar",
        "$.r[4].list: value is an array, expected a scalar",
        "$.r[5]._s: _s is a string, expected an array",
        "$.r[6]._s[1]: status is not an object with string c and integer l",
    ]


def test_fast_route_drops_misplaced_arrays_too() -> None:
    """Arrays of status-like objects pass the typed decoder; they still do not become values."""
    body = b'{"t": 1728734580, "r": [{"_vid": "a", "x": [], "_s": [{"c": "OK", "l": 0}], "y": 1}]}'
    parsed = parse_payload(body)
    assert isinstance(parsed, Payload)
    assert parsed.readings[0]["y"] == 1 and "x" not in parsed.readings[0]
    assert [str(s) for s in parsed.skipped] == ["$.r[0].x: value is an array, expected a scalar"]


def test_hostile_strings_are_plain_values() -> None:
    hostile = '\'; DROP TABLE readings; --\u0000\u202e<script>"},{"_vid":"x"}'
    body = json.dumps({"t": 1728734580, "r": [{"_vid": hostile, hostile: hostile}]})
    parsed = parse_payload(body.encode())
    assert isinstance(parsed, Payload)
    assert parsed.readings == [{"_vid": hostile, hostile: hostile}]


def test_deeply_nested_json_is_rejected_not_crashed() -> None:
    rejection = _reject(b"[" * 100_000 + b"]" * 100_000)
    assert rejection.path == "$" and rejection.reason.startswith("not JSON")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4)
    ),
    max_leaves=20,
)
readings = st.dictionaries(
    st.sampled_from(["_vid", "_d", "_s", "P", "E", "mode"]) | st.text(max_size=6),
    json_values,
    max_size=6,
)
payload_like = st.fixed_dictionaries(
    {},
    optional={
        "t": st.integers(min_value=-(2**70), max_value=2**70) | json_values,
        "r": st.lists(readings, max_size=5) | json_values,
        "m": json_values,
    },
)


def _check(result: Payload | Rejection) -> None:
    if isinstance(result, Rejection):
        assert result.path.startswith("$") and result.reason
        return
    assert isinstance(result.t, int)
    for reading in result.readings:
        assert isinstance(reading["_vid"], str)
        for key, value in reading.items():
            if not key.startswith("_"):
                assert value is None or isinstance(value, str | int | float | bool)
    for skipped in result.skipped:
        assert skipped.path.startswith("$.r[") and skipped.reason


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_any_bytes_give_a_value(data: bytes) -> None:
    _check(parse_payload(data))


@settings(max_examples=400, deadline=None)
@given(payload_like)
def test_fuzz_payload_shaped_json_gives_a_value(body: dict) -> None:
    _check(parse_payload(json.dumps(body).encode()))


@settings(max_examples=200, deadline=None)
@given(payload_like, st.integers(min_value=0, max_value=200), st.binary(min_size=1, max_size=3))
def test_fuzz_corrupted_payloads_give_a_value(body: dict, at: int, junk: bytes) -> None:
    data = json.dumps(body).encode()
    _check(parse_payload(data[:at] + junk + data[at:]))


def test_schema_fixture_matches_the_shared_contract() -> None:
    shared = CONTRACT / "data.schema.json"
    if not shared.exists():
        pytest.skip("shared/contract is not beside this checkout")
    assert json.loads(shared.read_bytes()) == json.loads(
        Path(FIXTURES / "data.schema.json").read_bytes()
    )
