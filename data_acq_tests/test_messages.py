"""Input lines and raw records give back exactly the bytes received."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from data_acq.messages import (
    encode_record,
    line_blocks,
    line_spans,
    parse_line,
    read_block,
    read_lines,
    read_records,
    read_span,
    site_of,
)

NOW = datetime(2024, 10, 12, 12, 0, tzinfo=UTC)


def test_site_is_the_node_id_of_the_topic() -> None:
    assert site_of("a/b827eb2bb2a9/u/data") == "b827eb2bb2a9"
    assert site_of("a/b827eb2bb2a9/bridge_state") == "b827eb2bb2a9"
    assert site_of("other/topic") is None and site_of(None) is None


def test_lines_with_and_without_topic() -> None:
    assert parse_line(b'a/x/u/data\t{"t":1}\n', 3).topic == "a/x/u/data"
    bare = parse_line(b'{"t":\t1}\n')  # a tab inside a bare JSON payload
    assert bare.topic is None and bare.payload == b'{"t":\t1}'


# input files: blank lines, a bare `\r` (not a line end), lines longer than a block or span;
# with or without a last newline; blocks and spans of 1 to 50 bytes
LINES = given(
    st.lists(
        st.sampled_from([b"", b"x", b"a/s/u/data\t{}", b"{\r}", b"  ", b"y" * 40]), max_size=30
    ),
    st.booleans(),
    st.integers(min_value=1, max_value=50),
)


@LINES
def test_blocks_of_lines_read_as_the_lines_do(
    lines: list[bytes], last_newline: bool, size: int
) -> None:
    """Whatever the block size, blocks hold whole lines and number them as the stream does."""
    data = b"\n".join(lines) + (b"\n" if last_newline and lines else b"")
    expected = [(m.ref, m.topic, m.payload) for m in read_lines(io.BytesIO(data))]
    blocks = list(line_blocks(io.BytesIO(data), size))
    assert b"".join(block for block, _ in blocks) == data
    assert all(block.endswith(b"\n") for block, _ in blocks[:-1])
    got = [(m.ref, m.topic, m.payload) for b, first in blocks for m in read_block(b, first)]
    assert got == expected


@settings(deadline=None)
@LINES
def test_spans_of_lines_read_as_the_lines_do(
    tmp_path_factory: pytest.TempPathFactory, lines: list[bytes], last_newline: bool, size: int
) -> None:
    """Spans of a file cover it exactly, in whole lines, numbered as the file's lines."""
    data = b"\n".join(lines) + (b"\n" if last_newline and lines else b"")
    path = tmp_path_factory.mktemp("spans") / "input"
    path.write_bytes(data)
    expected = [(m.ref, m.topic, m.payload) for m in read_lines(io.BytesIO(data))]
    with path.open("rb") as stream:
        spans = list(line_spans(stream, size))
    bounds = [0] + [stop for _, stop, _ in spans]
    assert [start for start, _, _ in spans] == bounds[:-1] and bounds[-1] == len(data)
    assert all(data[stop - 1 : stop] == b"\n" for _, stop, _ in spans[:-1])
    got = [
        (m.ref, m.topic, m.payload)
        for start, stop, first in spans
        for m in read_span(str(path), start, stop, first)
    ]
    assert got == expected


def test_valid_json_is_embedded_verbatim() -> None:
    payload = b'{"t": 1728734580, "r": [{"_vid": "a", "x": 1.50}]}'
    line = encode_record("a/x/u/data", payload, NOW, qos=1)
    assert json.loads(line)["payload"] == json.loads(payload)
    assert payload in line
    assert next(read_records([line])).payload == payload


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200) | st.text(max_size=100).map(str.encode))
def test_any_bytes_round_trip(payload: bytes) -> None:
    line = encode_record("a/x/u/data", payload, NOW, qos=1, dup=True)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    message = next(read_records([line]))
    assert message.payload == payload
    assert message.received_at == NOW and message.topic == "a/x/u/data"
