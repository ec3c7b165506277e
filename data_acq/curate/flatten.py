"""Flatten batches of payloads into tidy Polars tables: readings, status and rejects.

The route is chosen for speed (see docs/performance.md): msgspec decodes and type-checks each
payload in C; one tight loop per payload *reading* (not per field) extends flat column buffers;
Polars does the rest as column operations. No schema is inferred, so a field that first appears
deep in a batch is kept like any other. Large inputs go to worker processes, one per core, each
reading its own share (a span of a file, raw objects) and handing back Parquet bytes.
"""

from __future__ import annotations

import gc
import hashlib
import io
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import chain, islice
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import msgspec
import polars as pl
from polars.io.plugins import register_io_source

from data_acq.contract import Rejection, parse_payload
from data_acq.messages import Message, site_of
from data_acq.pipeline_format import to_pipeline

_encode = msgspec.json.Encoder().encode

TIME = pl.Datetime("us", "UTC")

READINGS_SCHEMA = pl.Schema(
    {
        "site": pl.String,
        "time": TIME,
        "vid": pl.String,
        "device": pl.String,
        "field": pl.String,
        "value": pl.Float64,
        "value_text": pl.String,
        "received_at": TIME,
    }
)
STATUS_SCHEMA = pl.Schema(
    {
        "site": pl.String,
        "time": TIME,
        "vid": pl.String,
        "device": pl.String,
        "content": pl.String,
        "level": pl.Int64,
    }
)
PAYLOADS_SCHEMA = pl.Schema(
    {
        "site": pl.String,
        "time": TIME,
        "received_at": TIME,
        "document": pl.String,  # the payload in the pipeline format, JSON
    }
)
REJECTS_SCHEMA = pl.Schema(
    {
        "source": pl.String,  # raw object (or file) ...
        "ref": pl.Int64,  # ... and line number in it
        "received_at": TIME,
        "topic": pl.String,
        "site": pl.String,
        "time": TIME,  # null when the whole payload was rejected
        "path": pl.String,
        "reason": pl.String,
        "payload_sha1": pl.String,  # the payload's bytes: a redelivery has the same
    }
)
REJECT_KEY = ("topic", "payload_sha1", "path", "reason")  # one reject, however often delivered


@dataclass(slots=True)
class Tables:
    """The tidy tables of one batch, and how many payloads it held and accepted."""

    readings: pl.DataFrame
    device_status: pl.DataFrame
    rejects: pl.DataFrame
    messages: int
    accepted: int
    pipeline_payloads: pl.DataFrame = field(default_factory=PAYLOADS_SCHEMA.to_frame)  # if asked


class _Columns:
    """Flat column buffers for one chunk.

    Payload-level and reading-level columns hold one entry per payload and per reading; Polars
    repeats them out to one row per field, so the Python loop does no per-field work.
    """

    def __init__(self, pipeline: bool = False) -> None:
        self.pipeline = pipeline
        self.p_site: list[str | None] = []
        self.p_time: list[int] = []
        self.p_received: list[datetime | None] = []
        self.p_document: list[str] = []
        self.p_width: list[int] = []  # readings per payload
        self.r_vid: list[str] = []
        self.r_device: list[str | None] = []
        self.r_width: list[int] = []  # fields per reading
        self.keys: list[str] = []
        self.values: list[Any] = []
        self.status: list[tuple[str | None, int, str, str | None, str | None, int | None]] = []
        self.rejects: list[tuple[Any, ...]] = []
        self.messages = 0
        self.accepted = 0

    def add(self, message: Message) -> None:
        self.messages += 1
        if message.topic is not None and not message.topic.isascii():
            message = _with_storable_topic(message)
        site = site_of(message.topic)
        if message.error is not None:
            self._reject(message, site, None, Rejection("$", message.error))
            return
        try:  # everything that could fail comes before the first append
            parsed = parse_payload(message.payload)
            document = (
                _encode(to_pipeline(parsed)).decode()
                if self.pipeline and not isinstance(parsed, Rejection)
                else None
            )
        except Exception as exc:  # a bug must cost one message, not the batch
            why = f"could not be processed ({type(exc).__name__}: {exc})"
            self._reject(message, site, None, Rejection("$", why))
            return
        if isinstance(parsed, Rejection):
            self._reject(message, site, None, parsed)
            return
        self.accepted += 1
        t = parsed.t
        for skipped in parsed.skipped:
            self._reject(message, site, t, skipped)
        if document is not None:
            self.p_document.append(document)
        self.p_site.append(site)
        self.p_time.append(t)
        self.p_received.append(message.received_at)
        self.p_width.append(len(parsed.readings))
        for reading in parsed.readings:  # ours to consume: the `_`-keys are popped, not copied
            vid = reading.pop("_vid")
            device = reading.pop("_d", None)
            statuses = reading.pop("_s", None)
            self.r_vid.append(vid)
            self.r_device.append(device)
            self.r_width.append(len(reading))
            self.keys.extend(reading)
            self.values.extend(reading.values())
            if statuses:
                self.status.extend((site, t, vid, device, s.c, s.l) for s in statuses)

    def _reject(self, message: Message, site: str | None, t: int | None, why: Rejection) -> None:
        digest = hashlib.sha1(message.payload, usedforsecurity=False).hexdigest()
        self.rejects.append(
            (
                message.source,
                message.ref,
                message.received_at,
                message.topic,
                site,
                t,
                why.path,
                why.reason,
                digest,
            )
        )

    def tables(self) -> Tables:
        return _tables(self.frames(), self.messages, self.accepted)

    def frames(self) -> dict[str, pl.DataFrame]:
        """The chunk's tables, readings still in two parts (`_tables` joins them): one row per
        reading, and one per field naming its reading. That is half the bytes to hand over
        from a worker process, and the repeating costs the same wherever it is done."""
        values = self.values
        numbers = pl.Series(
            "value",
            [v if v.__class__ is float or v.__class__ is int else None for v in values],
            dtype=pl.Float64,
            strict=False,  # integers beyond 64 bits become floats too
        )
        fields = pl.Series("field", self.keys, dtype=pl.String)
        named = ~fields.str.starts_with("_")  # the other `_`-keys are not fields
        # Only the few non-numeric positions (text, booleans, nulls) need a second look.
        others = (numbers.is_null() & named).arg_true()
        texts = (
            pl.repeat(None, len(values), dtype=pl.String, eager=True)
            .alias("value_text")
            .scatter(others, [_as_text(values[i]) for i in others.to_list()])
        )
        keep = named & (numbers.is_not_null() | texts.is_not_null())
        per_payload = pl.DataFrame(
            [
                pl.Series("site", self.p_site, pl.String),
                pl.Series("time", self.p_time, pl.Int64),
                _times("received_at", self.p_received),
            ]
        ).with_columns(_epoch_to_time("time"))
        per_reading = per_payload[_repeat_rows(self.p_width)].hstack(
            [pl.Series("vid", self.r_vid, pl.String), pl.Series("device", self.r_device, pl.String)]
        )
        per_field = pl.DataFrame(
            [_repeat_rows(self.r_width).alias("reading"), fields, numbers, texts]
        ).filter(keep)
        status = pl.DataFrame(
            self.status,
            schema={**STATUS_SCHEMA, "time": pl.Int64},
            orient="row",
        ).with_columns(_epoch_to_time("time"))
        rejects = pl.DataFrame(
            self.rejects, schema={**REJECTS_SCHEMA, "time": pl.Int64}, orient="row"
        ).with_columns(_epoch_to_time("time"))
        payloads = PAYLOADS_SCHEMA.to_frame()
        if self.pipeline:
            payloads = per_payload.with_columns(
                document=pl.Series(self.p_document, dtype=pl.String)
            )
        return {
            "per_reading": per_reading,
            "per_field": per_field,
            "status": status,
            "rejects": rejects,
            "payloads": payloads,
        }


def _tables(frames: dict[str, pl.DataFrame], messages: int, accepted: int) -> Tables:
    """`_Columns.frames` as tables: each field row joined to its reading's columns."""
    per_field = frames["per_field"]
    readings = (
        frames["per_reading"][per_field["reading"]]
        .hstack(per_field.drop("reading").get_columns())
        .select(READINGS_SCHEMA.names())
    )
    return Tables(
        readings, frames["status"], frames["rejects"], messages, accepted, frames["payloads"]
    )


def _with_storable_topic(message: Message) -> Message:
    """A topic that is not valid Unicode (a raw record's `\\ud800` escape) cannot be stored as
    text: the message is rejected, under the topic with that character escaped."""
    try:
        message.topic.encode("utf-8")  # type: ignore[union-attr]
    except UnicodeEncodeError:
        topic = message.topic.encode("utf-8", "backslashreplace").decode("utf-8")  # type: ignore[union-attr]
        error = message.error or "topic is not valid Unicode text (a lone UTF-16 surrogate)"
        return Message(
            topic, message.payload, message.ref, message.received_at, message.source, error
        )
    return message


def _repeat_rows(widths: list[int]) -> pl.Series:
    """Row numbers 0, 0, 1, 2, 2, 2 ... for widths 2, 1, 3: each row repeated by its width."""
    return (
        pl.int_range(len(widths), dtype=pl.UInt32, eager=True)
        .repeat_by(pl.Series(widths, dtype=pl.UInt32))
        .explode()
    )


def _as_text(value: Any) -> str | None:
    if value.__class__ is str:
        return value
    if value.__class__ is bool:
        return "true" if value else "false"
    return None  # null (`_`-keys, `_s` among them, are not looked at)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def _times(name: str, moments: list[datetime | None]) -> pl.Series:
    """Aware datetimes as a column, five times faster than Polars converts them one by one."""
    try:
        micros = [None if m is None else (m - _EPOCH) // _MICROSECOND for m in moments]
    except TypeError:  # a naive one: Polars' own conversion says what it means
        return pl.Series(name, moments, TIME)
    return pl.Series(name, micros, pl.Int64).cast(TIME)


def _epoch_to_time(column: str) -> pl.Expr:
    return pl.from_epoch(column, time_unit="s").dt.replace_time_zone("UTC").cast(TIME)


@contextmanager
def _gc_paused() -> Iterator[None]:
    """A chunk's million new objects (readings, values) hold no reference cycles, so the
    collections their allocation would trigger find nothing (3-4 % of a worker's CPU time)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def iter_flatten(
    messages: Iterable[Message], chunk_size: int = 20_000, pipeline: bool = False
) -> Iterator[Tables]:
    """Tables chunk by chunk, so memory stays bounded whatever the batch size.

    `pipeline` adds the `payloads` table: each accepted payload in the pipeline format.
    """
    iterator = iter(messages)
    while True:
        with _gc_paused():
            columns = _filled(islice(iterator, chunk_size), pipeline)
            if columns.messages == 0:
                return
            tables = columns.tables()
        yield tables


def _filled(messages: Iterable[Message], pipeline: bool) -> _Columns:
    columns = _Columns(pipeline)
    for message in messages:
        columns.add(message)
    return columns


def flatten(
    messages: Iterable[Message], chunk_size: int = 20_000, pipeline: bool = False
) -> Tables:
    """All tables of a batch at once (for batches that fit in memory)."""
    parts = list(iter_flatten(messages, chunk_size, pipeline))
    if not parts:
        return Tables(
            READINGS_SCHEMA.to_frame(), STATUS_SCHEMA.to_frame(), REJECTS_SCHEMA.to_frame(), 0, 0
        )
    return Tables(
        pl.concat([p.readings for p in parts]),
        pl.concat([p.device_status for p in parts]),
        pl.concat([p.rejects for p in parts]),
        sum(p.messages for p in parts),
        sum(p.accepted for p in parts),
        pl.concat([p.pipeline_payloads for p in parts]),
    )


Source = Callable[[], Iterable[Message]]


def _flatten_source(source: Source, pipeline: bool) -> Tables:
    return flatten(source(), chunk_size=1 << 30, pipeline=pipeline)


Packed = tuple[dict[str, bytes], int, int]


def _flatten_packed(source: Source, pipeline: bool) -> Packed:
    """In a worker: the frames as Parquet bytes (lz4) -- a pickled frame of a few million rows
    costs three times as much to hand over, and Parquet reads back faster than Arrow IPC,
    which matters in the one process that reads them all."""
    with _gc_paused():
        columns = _filled(source(), pipeline)
        packed = {}
        for name, frame in columns.frames().items():
            buffer = io.BytesIO()
            frame.write_parquet(buffer, compression="lz4", statistics=False)
            packed[name] = buffer.getvalue()
        return packed, columns.messages, columns.accepted


def _unpack(packed: Packed) -> Tables:
    frames, messages, accepted = packed
    return _tables(
        {name: pl.read_parquet(io.BytesIO(data)) for name, data in frames.items()},
        messages,
        accepted,
    )


def iter_flatten_parallel(
    sources: Iterable[Source], workers: int, pipeline: bool = False
) -> Iterator[Tables]:
    """The tables of each source (a picklable callable giving messages: lines to read, raw
    objects to fetch), in order, made by `workers` processes at once -- parsing is Python's
    work, and one interpreter uses one core. Memory is bounded by the sources in flight."""
    remaining = iter(sources)
    first = list(islice(remaining, 2))
    if workers <= 1 or len(first) < 2:  # for one source, starting processes is all cost
        for source in chain(first, remaining):
            yield _flatten_source(source, pipeline)
        return
    # spawn, not fork: Polars' thread pool does not survive a fork
    with (
        _worker_environment(),
        ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool,
    ):
        in_flight: deque[Future[Packed]] = deque()
        for source in chain(first, remaining):
            in_flight.append(pool.submit(_flatten_packed, source, pipeline))
            if len(in_flight) > 2 * workers:
                yield _unpack(in_flight.popleft().result())
        while in_flight:
            yield _unpack(in_flight.popleft().result())


# Polars' allocator (jemalloc) hands freed pages back to the system within half a second (the
# setting Polars makes at import); a worker, whose every chunk frees and allocates again the
# same few hundred MB, then takes a page fault for each page it touches again: 5 % of its time,
# measured. A worker lives for one batch and holds one chunk at a time, so it keeps its pages.
# Polars adds what this variable holds to its own setting when a process imports it.
_ALLOCATOR = ("_RJEM_MALLOC_CONF", "dirty_decay_ms:-1")


@contextmanager
def _worker_environment() -> Iterator[None]:
    """`_ALLOCATOR` in the environment while worker processes start (they copy it); other
    processes started meanwhile copy it too, harmlessly."""
    name, setting = _ALLOCATOR
    before = os.environ.get(name)
    os.environ[name] = f"{before},{setting}" if before else setting
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def write_parquet(frames: Iterable[pl.DataFrame], path: Path, schema: pl.Schema) -> int:
    """Stream frames into one Parquet file without holding them all; returns the row count.
    (Polars' streaming writer: it compresses in parallel, twice as fast as pyarrow's here.)

    The file is written beside `path` and renamed to it once complete, so a write that fails
    or is interrupted leaves no truncated file under that name (a special file such as
    /dev/stdout is written directly)."""
    rows = 0
    failure: list[Exception] = []

    def batches(*_: object) -> Iterator[pl.DataFrame]:
        # An error raised inside the source can reach the caller while Polars' writer is
        # still flushing, so the partial file could reappear after it was removed: end the
        # stream cleanly instead and raise once the writer has finished.
        nonlocal rows
        try:
            for frame in frames:
                rows += frame.height
                yield frame
        except Exception as error:
            failure.append(error)

    source = register_io_source(io_source=batches, schema=schema)
    if path.exists() and not path.is_file():
        source.sink_parquet(path, compression="zstd")
    else:
        partial = path.with_name(f".{path.name}.partial")
        try:
            source.sink_parquet(partial, compression="zstd")
            if not failure:
                partial.replace(path)
        finally:
            partial.unlink(missing_ok=True)
    if failure:
        raise failure[0]
    return rows
