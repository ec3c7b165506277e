"""Messages as they arrive, and the line formats they are read from.

A `Message` is what the broker delivered: topic and exact payload bytes. `ref` points back to
where it came from (a line number, or a raw record's position) so a rejection can be traced.
A raw line that cannot be read at all still becomes a `Message`, with `error` saying why, so it
is rejected like any bad payload instead of stopping the batch it is in.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import IO

import msgspec

from data_acq.contract import too_deep


@dataclass(slots=True)
class Message:
    topic: str | None
    payload: bytes
    ref: int = 0  # line number in `source`
    received_at: datetime | None = None
    source: str | None = None  # the file or raw object it was read from
    error: str | None = None  # why the stored line could not be read back, if it could not


def site_of(topic: str | None) -> str | None:
    """The logger's node id from `a/<node_id>/...` (possibly empty: `a//u/data`), else None.

    The id is kept exactly as it is in the topic: it is data, never a path (see `data_acq.sites`).
    """
    if not topic or not topic.startswith("a/"):
        return None
    node, _, rest = topic[2:].partition("/")
    return node if rest else None


def parse_line(line: bytes, ref: int = 0) -> Message:
    """One input line: a bare payload, or `topic<TAB>payload` as `data-acq simulate` writes it.

    A topic never starts with `{`, `[` or white space, so a JSON payload that contains a tab
    between its tokens is still read as a bare payload.
    """
    line = line.rstrip(b"\r\n")
    if line[:1] not in (b"{", b"[", b" ", b"\t") and b"\t" in line:
        topic, payload = line.split(b"\t", 1)
        return Message(topic.decode("utf-8", "replace"), payload, ref)
    return Message(None, line, ref)


def read_lines(lines: Iterable[bytes], first_ref: int = 1) -> Iterator[Message]:
    """Messages from text lines, numbered from `first_ref`; blank lines are skipped."""
    for ref, line in enumerate(lines, start=first_ref):
        if line.strip():
            yield parse_line(line, ref)


def line_blocks(stream: IO[bytes], size: int) -> Iterator[tuple[bytes, int]]:
    """The stream in blocks of whole lines, about `size` bytes each, with the number of each
    block's first line: a worker process splits its block itself, so the reading process
    neither splits the input into lines nor hands them over one by one."""
    first = 1
    while block := stream.read(size):
        if not block.endswith(b"\n"):
            block += stream.readline()
        yield block, first
        first += block.count(b"\n")


def line_spans(stream: IO[bytes], size: int) -> Iterator[tuple[int, int, int]]:
    """A regular file as spans of whole lines, about `size` bytes each: (start, stop, number
    of the first line). Better than `line_blocks` where workers can open the file themselves:
    the reading process only counts lines, in one reused buffer, and hands over no bytes."""
    buffer = bytearray(size)
    start = end = 0  # the span being found; the bytes read so far
    first = 1
    while n := stream.readinto(buffer):
        end += n
        newlines = buffer.count(b"\n", 0, n)
        if newlines:  # else a line longer than the buffer: the span grows
            stop = end - n + buffer.rfind(b"\n", 0, n) + 1
            yield start, stop, first
            start, first = stop, first + newlines
    if start < end:  # a last line without its newline
        yield start, end, first


def read_block(block: bytes, first_ref: int = 1) -> Iterator[Message]:
    """Messages from a block of `line_blocks`, numbered as in the stream."""
    return read_lines(block.split(b"\n"), first_ref)


def read_span(path: str, start: int, stop: int, first_ref: int) -> Iterator[Message]:
    """Messages from a span of `line_spans`, numbered as in the file."""
    return read_block(read_bytes(path, start, stop), first_ref)


def read_bytes(path: str, start: int, stop: int) -> bytes:
    with open(path, "rb") as file:
        file.seek(start)
        return file.read(stop - start)


class RawRecord(msgspec.Struct, omit_defaults=True):
    """One message as raw storage keeps it (one JSON object per line).

    `payload` holds the payload JSON verbatim when it is valid single-line JSON, so reading raw
    takes one parse; otherwise `payload_text` (UTF-8) or `payload_b64` (anything else) keeps the
    exact bytes.
    """

    topic: str
    received_at: str
    qos: int = 0
    retain: bool = False
    dup: bool = False
    payload: msgspec.Raw = msgspec.Raw()
    payload_text: str | None = None
    payload_b64: str | None = None


_record_decoder = msgspec.json.Decoder(RawRecord)
_record_encoder = msgspec.json.Encoder()


def encode_record(
    topic: str,
    payload: bytes,
    received_at: datetime,
    qos: int = 0,
    retain: bool = False,
    dup: bool = False,
    is_json: bool | None = None,
) -> bytes:
    """One raw-storage line (with its newline) that gives back `payload` byte for byte.

    `is_json` saves a parse when the caller already knows whether the payload is valid JSON.
    """
    record = RawRecord(topic, received_at.isoformat(), qos, retain, dup)
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        record.payload_b64 = base64.b64encode(payload).decode("ascii")
        return _record_encoder.encode(record) + b"\n"
    # verbatim only when the line stays one line and the span decodes back to the same bytes
    if b"\n" not in payload and b"\r" not in payload and payload.strip() == payload:
        if is_json is None:
            is_json = embeddable_json(payload)
        if is_json:
            record.payload = msgspec.Raw(payload)
            return _record_encoder.encode(record) + b"\n"
    record.payload_text = text
    return _record_encoder.encode(record) + b"\n"


def embeddable_json(payload: bytes) -> bool:
    """Valid JSON that can be embedded in a raw record and read back by any JSON parser."""
    if too_deep(payload):
        return False
    try:
        msgspec.json.decode(payload)
    except (msgspec.DecodeError, RecursionError):
        return False
    return True


def record_payload(record: RawRecord) -> bytes:
    """The exact payload bytes a raw record holds."""
    if len(record.payload):
        return bytes(record.payload)
    if record.payload_text is not None:
        return record.payload_text.encode("utf-8")
    if record.payload_b64 is not None:
        return base64.b64decode(record.payload_b64)
    return b""


def read_records(
    lines: Iterable[bytes],
    first_ref: int = 0,
    source: str | None = None,
    received_at: datetime | None = None,
) -> Iterator[Message]:
    """Messages from raw-storage lines; a line that cannot be read is a message with `error`
    (received at `received_at`, the object's time, as far as anyone can tell)."""
    for ref, line in enumerate(lines, start=first_ref):
        try:
            record = _record_decoder.decode(line)
            message = Message(
                record.topic,
                record_payload(record),
                ref,
                datetime.fromisoformat(record.received_at),
                source,
            )
        except (msgspec.DecodeError, RecursionError, ValueError) as exc:
            message = Message(None, line, ref, received_at, source, f"unreadable raw record: {exc}")
        yield message
