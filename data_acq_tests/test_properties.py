"""Property-based: arbitrary JSON and arbitrary bytes through the contract, `transform` and the
flattening. No exception escapes; every input is accepted or rejected with a reason."""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from data_acq.cli import main
from data_acq.contract import Payload, Rejection, parse_payload
from data_acq.curate.flatten import flatten
from data_acq.messages import Message

# every character, lone UTF-16 surrogates included (json.dumps escapes them as \udxxx)
any_text = st.text(st.characters(codec=None, categories=None), max_size=8)
scalars = (
    st.none()
    | st.booleans()
    | st.integers()  # unbounded: beyond 64 bits too
    | st.sampled_from([2**63, -(2**63) - 1, 10**400, 1e308])
    | st.floats(allow_nan=False)
    | any_text
)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.sampled_from(["_vid", "_d", "_s", "c", "l", "P"]) | any_text, children)
    ),
    max_leaves=25,
)
statuses = st.lists(st.fixed_dictionaries({}, optional={"c": json_values, "l": json_values}))
readings = st.dictionaries(
    st.sampled_from(["_vid", "_d", "P", "E"]) | any_text,
    json_values,
    max_size=5,
).flatmap(lambda r: st.just(r) | statuses.map(lambda s: {**r, "_s": s}))
payloads = st.fixed_dictionaries(
    {},
    optional={
        "t": st.integers(min_value=946_684_800, max_value=4_102_444_799) | json_values,
        "r": st.lists(readings, max_size=4) | json_values,
        "m": json_values,
    },
)
nested = st.integers(min_value=1, max_value=3_000).map(lambda n: "[" * n + "]" * n)
bodies = (
    payloads.map(lambda p: json.dumps(p).encode())
    | json_values.map(lambda v: json.dumps(v).encode())
    | nested.map(lambda n: f'{{"t": 1728734580, "r": [], "m": {n}}}'.encode())
    | st.binary(max_size=200)
)
topics = st.sampled_from(["a/site/u/data", "a//u/data", "x", ""]) | any_text.map(
    lambda s: f"a/{s}/u/data"
)


def _valid_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@settings(max_examples=300, deadline=None)
@given(bodies)
def test_the_contract_answers_every_input(body: bytes) -> None:
    result = parse_payload(body)
    if isinstance(result, Rejection):
        assert result.path.startswith("$") and result.reason
        return
    assert isinstance(result, Payload)
    for reading in result.readings:  # what is kept fits its column
        assert isinstance(reading["_vid"], str) and _valid_unicode(reading["_vid"])
        for key, value in reading.items():
            assert _valid_unicode(key)
            if isinstance(value, float | int) and not isinstance(value, bool):
                assert abs(float(value)) <= 1.7976931348623157e308
    for skipped in result.skipped:
        assert skipped.path.startswith("$.r[") and skipped.reason


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(topics, bodies), max_size=12))
def test_flattening_takes_every_batch(batch: list[tuple[str, bytes]]) -> None:
    messages = [Message(topic, body, i) for i, (topic, body) in enumerate(batch)]
    tables = flatten(messages, chunk_size=5, pipeline=True)
    assert tables.messages == len(batch)
    whole = tables.rejects.filter(tables.rejects["time"].is_null())
    assert tables.accepted + whole.height == len(batch)  # used, or rejected with a reason
    assert (tables.rejects["reason"].str.len_chars() > 0).all()
    assert tables.pipeline_payloads.height == tables.accepted
    for document in tables.pipeline_payloads["document"]:
        assert set(json.loads(document)) == {"time", "data"}


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(bodies.filter(lambda b: b"\n" not in b and b"\r" not in b), max_size=8))
def test_transform_answers_every_line(lines: list[bytes]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "in.txt"
        path.write_bytes(b"".join(line + b"\n" for line in lines))
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(["transform", str(path)])
    assert code == 0, err.getvalue()
    nonblank = [line for line in lines if line.strip()]
    accepted = [parse_payload(line) for line in nonblank]
    documents = out.getvalue().splitlines()
    assert len(documents) == sum(isinstance(p, Payload) for p in accepted)
    rejected = err.getvalue().count(": rejected: ")
    assert rejected == sum(isinstance(p, Rejection) for p in accepted)
    assert f"transform: {len(nonblank)} messages" in err.getvalue()
