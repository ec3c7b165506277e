"""The payload contract: every kind of bad input gets a precise rejection, never an exception."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from data_acq.contract import MAX_PAYLOAD_BYTES, Payload, Rejection, parse_payload
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


@pytest.mark.parametrize(
    ("readings", "expected"),
    [
        # a `_s` that is not an array leaves the `[` count matching the status arrays
        (
            '[{"_vid": "a", "_s": 5}, {"_vid": "b", "x": []}]',
            ["$.r[0]._s: _s is an integer, expected an array", "$.r[1].x: " + "{array}"],
        ),
        ('[{"_vid": "a", "_s": [{"c": "OK"}]}, {"_vid": "b", "x": [{}]}]', ["$.r[1].x: {array}"]),
        ('[{"_vid": "a", "_s": []}, {"_vid": "b", "x": []}]', ["$.r[1].x: {array}"]),
        ('[{"_vid": "a", "_s": [{"c": "[x"}]}, {"_vid": "b", "x": []}]', ["$.r[1].x: {array}"]),
        ('[{"_vid": "a", "x": "["}, {"_vid": "b", "y": []}]', ["$.r[1].y: {array}"]),
        ('[{"_vid": "a", "_s": [{"c": "OK", "l": 0}], "x": 1}]', []),
    ],
)
def test_misplaced_arrays_are_found_whatever_else_the_payload_holds(
    readings: str, expected: list[str]
) -> None:
    """The typed route skips its look at every value when the payload's `[` are all accounted
    for by `r` and the `_s` arrays; these are the payloads that must not fool that count."""
    parsed = parse_payload(f'{{"t": 1728734580, "r": {readings}}}'.encode())
    assert isinstance(parsed, Payload)
    array = "value is an array, expected a scalar"
    assert [str(s) for s in parsed.skipped] == [e.format(array=array) for e in expected]
    assert all(
        not isinstance(value, list) for r in parsed.readings for k, value in r.items() if k != "_s"
    )


def test_hostile_strings_are_plain_values() -> None:
    hostile = '\'; DROP TABLE readings; --\u0000\u202e<script>"},{"_vid":"x"}'
    body = json.dumps({"t": 1728734580, "r": [{"_vid": hostile, hostile: hostile}]})
    parsed = parse_payload(body.encode())
    assert isinstance(parsed, Payload)
    assert parsed.readings == [{"_vid": hostile, hostile: hostile}]


@pytest.mark.parametrize("depth", [65, 999, 1_000, 5_000, 100_000])
@pytest.mark.parametrize("where", ["whole", "m", "value", "status"])
def test_deep_nesting_anywhere_is_rejected_before_any_parser(depth: int, where: str) -> None:
    deep = b"[" * depth + b"]" * depth
    body = {
        "whole": deep,
        "m": b'{"t": 1728734580, "r": [], "m": {"x": ' + deep + b"}}",
        "value": b'{"t": 1728734580, "r": [{"_vid": "a", "P": ' + deep + b"}]}",
        "status": b'{"t": 1728734580, "r": [{"_vid": "a", "_s": [{"c": "x", "l": 1, "z": '
        + deep
        + b"}]}]}",
    }[where]
    assert str(_reject(body)) == "$: nested more than 64 levels deep"


def test_nesting_within_the_bound_and_brackets_in_strings_are_fine() -> None:
    inside_m = b"[" * 60 + b"]" * 60
    text = "[" * 5_000  # brackets inside a string are text, not nesting
    body = b'{"t": 1728734580, "r": [{"_vid": "a", "s": "%s"}], "m": %s}' % (
        text.encode(),
        inside_m,
    )
    parsed = parse_payload(body)
    assert isinstance(parsed, Payload) and parsed.readings == [{"_vid": "a", "s": text}]


def test_a_payload_beyond_the_size_limit_is_rejected() -> None:
    body = b'{"t": 1728734580, "r": [], "m": "%s"}' % (b"x" * MAX_PAYLOAD_BYTES)
    assert (
        str(_reject(body)) == f"$: payload is {len(body):,} bytes, more than the limit of 1,048,576"
    )


HUGE = str(10**400)


@pytest.mark.parametrize(
    ("reading", "kept", "skipped"),
    [
        (
            '{"_vid": "a", "P": 1, "x": ' + HUGE + "}",
            {"_vid": "a", "P": 1},
            "$.r[0].x: integer does not fit a 64-bit float",
        ),
        (
            '{"_vid": "a", "P": 1, "x": -1e400}',
            {"_vid": "a", "P": 1},
            "$.r[0].x: number overflows a 64-bit float",
        ),
        ('{"_vid": "a", "x": 1180591620717411303424}', {"_vid": "a", "x": 2**70}, None),
        (
            f'{{"_vid": "a", "_s": [{{"c": "x", "l": {2**63}}}]}}',
            {"_vid": "a", "_s": []},
            "$.r[0]._s[0]: status level does not fit a 64-bit integer",
        ),
        (
            '{"_vid": "a", "_s": [{"c": "x", "l": ' + HUGE + "}]}",
            {"_vid": "a", "_s": []},
            "$.r[0]._s[0]: status level does not fit a 64-bit integer",
        ),
        ('{"_vid": ' + HUGE + ', "P": 1}', None, "$.r[0]: _vid is an integer, expected a string"),
        ('{"_vid": "a", "_d": ' + HUGE + "}", None, "$.r[0]: _d is an integer, expected a string"),
        ('{"_vid": "a\\ud800", "P": 1}', None, "$.r[0]: _vid is not valid Unicode text"),
        (
            '{"_vid": "a", "P": "\\udfff"}',
            {"_vid": "a"},
            "$.r[0].P: text is not valid Unicode (a lone UTF-16 surrogate)",
        ),
        (
            '{"_vid": "a", "\\ud800": 1}',
            {"_vid": "a"},
            "$.r[0].\\ud800: field name is not valid Unicode text",
        ),
        (
            '{"_vid": "a", "_s": [{"c": "\\udc00", "l": 1}]}',
            {"_vid": "a", "_s": []},
            "$.r[0]._s[0]: text is not valid Unicode (a lone UTF-16 surrogate)",
        ),
        ('{"_vid": "a", "smile": "\\ud83d\\ude00"}', {"_vid": "a", "smile": "\U0001f600"}, None),
    ],
)
def test_values_no_column_can_hold_are_skipped_with_a_reason(
    reading: str, kept: dict | None, skipped: str | None
) -> None:
    parsed = parse_payload('{"t": 1728734580, "r": [' + reading + '], "m": {"n": ' + HUGE + "}}")
    assert isinstance(parsed, Payload)
    readings = [
        {k: (v if k != "_s" else [(s.c, s.l) for s in v]) for k, v in r.items()}
        for r in parsed.readings
    ]
    assert readings == ([] if kept is None else [kept])
    assert [str(s) for s in parsed.skipped] == ([skipped] if skipped else [])


@pytest.mark.parametrize("t", [HUGE, "1e400", "-" + HUGE, str(2**64)])
def test_huge_times_are_rejected(t: str) -> None:
    assert _reject('{"t": ' + t + ', "r": []}').path in ("$", "$.t")


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
