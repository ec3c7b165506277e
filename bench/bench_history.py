"""Benchmark: the analysts' queries (issue 16) over 30 and 365 days of curated history, the
project's Delta tables and warehouse views against plain Parquet read by DuckDB.

What it builds (cached under bench/out/history/; `--fresh` rebuilds it all):

1. A processed day through the project: 300 simulated sites x 24 h (seed 1) in raw storage as
   the drain writes it (three sites miss a few stretches of minutes for good, so that
   completeness_daily lists gaps), then `data_acq.pipeline.process` with 2 workers: staging,
   the curated Delta tables, the closed date compacted.
2. History of N days (`--days 30 365`), the newest date being the processed day, for the tables
   the queries read, every date the processed day's rows with `date` and every timestamp
   (`time`, `received_at`, `period`, `gaps[].start`) moved by whole days:
   - project, hourly tables (readings, device_status, readings_15min): per table and date one
     commit adding one file sorted by bucket, site, time, oldest date first, and compaction's
     record of the files it left, as compaction leaves closed dates; daily tables
     (energy_daily, completeness_daily): each date written by `CuratedTables.replace`, as a
     refresh does. Then `compaction.upkeep(retain=0)`, which must not touch the hourly tables
     and compacts the daily ones as the project does, and `refresh_warehouse`
     (`warehouse.duckdb`);
   - anchor: the same rows written by Polars as plain Parquet (zstd, Polars' defaults), one
     file per table and date sorted like the project's, `anchor/<table>/date=D/data.parquet`,
     behind views `read_parquet('.../anchor/<table>/*/*.parquet', hive_partitioning = true)`
     in `anchor.duckdb`: the same output columns as the project's views (checked).
   Writing a day of readings (43 M rows) takes ~15 s of CPU per writer, hours for a year, so an
   hourly table's shifted file is made from the processed day's file by rewriting only what the
   shift changes: the timestamp columns' dictionary pages (their data pages are indexes into the
   dictionary, which a shift leaves as they are), statistics, page headers, page indexes and the
   footer (a small Thrift compact-protocol codec below), in 2 processes. Checked on every build:
   a shifted readings file is byte-identical to what the project's own write (Polars
   `write_delta` with compaction's writer properties) makes of the shifted rows, and the
   anchor's holds exactly the rows Polars writes (Polars orders its dictionaries by hash, so
   its bytes differ slightly). The 30-day tables have their own logs; their files are hard
   links to the 365-day ones' (no extra disk).
3. Queries, the same SQL text on both sides, fixed ranges counted back from the newest date
   (the same rows at 30 and 365 days); see QUERIES.

What it measures, per query, side and size:
- time: the median of `--runs` warm runs after a warm-up, in one process with one read-only
  session per side and size (`warehouse.connect`), the sessions' order rotating from run to
  run; the warm-up's results are compared between the sides (floats to 1e-9 relative);
- files and bytes read: each query in a fresh session in a child process under `strace -f`:
  the distinct files of the history it opens (data and Delta log; `openat` calls also counted),
  the /proc/self/io `rchar` delta around it (read syscalls, page-cache hits included), and the
  scan operators' 'Total Files Read' from DuckDB's JSON profile;
- S3 requests: moto's S3 server (ThreadedMotoServer on a free port, stopped at the end) behind
  a WSGI middleware counting requests and response bytes per method (a GET on the bucket is a
  LIST); each query once per side in a fresh session (`warehouse.connect` with an S3 secret
  from AWS_* variables pointing at moto) over the project's S3 warehouse (`refresh_warehouse`
  on an `S3Store`, downloaded) and over the anchor's views on s3:// paths. The 30-day history is
  uploaded with PUTs; the 365-day one (45 GB) would not fit on the disk twice, so its objects
  are made in moto's backend with the local file as their buffer. Either way moto answers GETs
  through its own handlers, reading only the requested range (FileValue).

Run it from the project root (about 40 min from nothing on 2 cores; a re-run reuses the
history and takes about 20):

    .venv/bin/python bench/bench_history.py                  # 30 and 365 days, local and S3
    .venv/bin/python bench/bench_history.py --days 30 --no-s3 --runs 3   # quicker
    .venv/bin/python bench/bench_history.py --fresh          # rebuild the processed day too

The results are printed and written to bench/out/bench_history.md. Targets (issue 16): every
query within 2x the anchor at 30 days (goal 1.2x); fixed-range queries as costly at 365 days as
at 30.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import json
import logging
import os
import re
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import uuid
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from functools import partial
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
from s3_counting import CountingApp

BENCH_DIR = Path(__file__).resolve().parent
OUT_DIR = BENCH_DIR / "out" / "history"
REPORT = BENCH_DIR / "out" / "bench_history.md"
SITES, SEED = 300, 1
START = datetime(2024, 10, 12, tzinfo=UTC)
RECEIVED_AT = datetime(2024, 10, 13, 1, tzinfo=UTC)
PER_OBJECT = 5_000  # messages per raw object, as a drain batch
# the tables the queries read, and their timestamp columns (first, last element of the path)
# the tables the queries read; hourly ones: their timestamp columns (first, last path element)
SHIFTED: dict[str, set[tuple[str, str]]] = {
    "readings": {("time", "time"), ("received_at", "received_at")},
    "device_status": {("time", "time")},
    "readings_15min": {("period", "period")},
}
HOURLY = tuple(SHIFTED)
DAILY = ("energy_daily", "completeness_daily")
TABLES = HOURLY + DAILY
DAY_US = 86_400_000_000
LAYOUT = 2  # bump when the generated files change
S3_BUCKET = "bench-history"
MB = 1e6
MARKER = "/nonexistent-bench-history-marker"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# --- Thrift compact protocol (Parquet's metadata), generic --------------------------------------
# a struct is a list of [field id, type, value]; a list is (element type, [values])

T_STOP, T_TRUE, T_FALSE, T_BYTE, T_I16, T_I32, T_I64, T_DOUBLE, T_BINARY = range(9)
T_LIST, T_SET, T_MAP, T_STRUCT = 9, 10, 11, 12
Struct = list[list[Any]]


class ThriftReader:
    def __init__(self, data: bytes, pos: int = 0) -> None:
        self.data = data
        self.pos = pos

    def varint(self) -> int:
        shift = result = 0
        while True:
            byte = self.data[self.pos]
            self.pos += 1
            result |= (byte & 0x7F) << shift
            if byte < 0x80:
                return result
            shift += 7

    def zigzag(self) -> int:
        n = self.varint()
        return (n >> 1) ^ -(n & 1)

    def value(self, kind: int) -> Any:
        if kind in (T_TRUE, T_FALSE, T_BYTE):  # booleans in lists are a byte
            self.pos += 1
            return self.data[self.pos - 1]
        if kind in (T_I16, T_I32, T_I64):
            return self.zigzag()
        if kind in (T_DOUBLE, T_BINARY):
            size = 8 if kind == T_DOUBLE else self.varint()
            self.pos += size
            return self.data[self.pos - size : self.pos]
        if kind in (T_LIST, T_SET):
            head = self.data[self.pos]
            self.pos += 1
            size, element = head >> 4, head & 0x0F
            if size == 15:
                size = self.varint()
            return (element, [self.value(element) for _ in range(size)])
        if kind == T_STRUCT:
            return self.struct()
        raise ValueError(f"thrift type {kind} not supported")

    def struct(self) -> Struct:
        fields: Struct = []
        last = 0
        while True:
            head = self.data[self.pos]
            self.pos += 1
            if head == T_STOP:
                return fields
            kind, delta = head & 0x0F, head >> 4
            last = last + delta if delta else self.zigzag()
            if kind in (T_TRUE, T_FALSE):
                fields.append([last, kind, kind == T_TRUE])
            else:
                fields.append([last, kind, self.value(kind)])


class ThriftWriter:
    def __init__(self) -> None:
        self.out = bytearray()

    def varint(self, n: int) -> None:
        while n >= 0x80:
            self.out.append((n & 0x7F) | 0x80)
            n >>= 7
        self.out.append(n)

    def value(self, kind: int, value: Any) -> None:
        if kind in (T_TRUE, T_FALSE, T_BYTE):
            self.out.append(value)
        elif kind in (T_I16, T_I32, T_I64):
            self.varint((value << 1) ^ (value >> 63))
        elif kind == T_DOUBLE:
            self.out += value
        elif kind == T_BINARY:
            self.varint(len(value))
            self.out += value
        elif kind in (T_LIST, T_SET):
            element, items = value
            if len(items) < 15:
                self.out.append(len(items) << 4 | element)
            else:
                self.out.append(0xF0 | element)
                self.varint(len(items))
            for item in items:
                self.value(element, item)
        elif kind == T_STRUCT:
            self.struct(value)
        else:
            raise ValueError(f"thrift type {kind} not supported")

    def struct(self, fields: Struct) -> None:
        last = 0
        for fid, kind, value in fields:
            if kind in (T_TRUE, T_FALSE):
                kind = T_TRUE if value else T_FALSE
            if 0 < fid - last <= 15:
                self.out.append((fid - last) << 4 | kind)
            else:
                self.out.append(kind)
                self.varint((fid << 1) ^ (fid >> 63))
            last = fid
            if kind not in (T_TRUE, T_FALSE):
                self.value(kind, value)
        self.out.append(T_STOP)


def thrift_encode(fields: Struct) -> bytes:
    writer = ThriftWriter()
    writer.struct(fields)
    return bytes(writer.out)


def tget(fields: Struct, fid: int) -> Any:
    for f in fields:
        if f[0] == fid:
            return f[2]
    return None


def tput(fields: Struct, fid: int, value: Any) -> None:
    for f in fields:
        if f[0] == fid:
            f[2] = value
            return
    raise KeyError(fid)


# --- shifting a Parquet file's timestamps ---------------------------------------------------------
# parquet.thrift field ids used: FileMetaData 4 row_groups; RowGroup 1 columns, 2 total_byte_size,
# 5 file_offset, 6 total_compressed_size; ColumnChunk 2 file_offset, 3 meta_data, 4/5 offset
# index offset/length, 6/7 column index offset/length; ColumnMetaData 1 type, 3 path, 4 codec,
# 6/7 total uncompressed/compressed size, 9 data page, 10 index page, 11 dictionary page,
# 12 statistics, 14 bloom filter offset; Statistics 1/2/5/6 max/min; PageHeader 1 type,
# 2/3 uncompressed/compressed size, 4 crc, 5 data page header (2 encoding, 5 statistics),
# 7 dictionary page header (2 encoding), 8 data page v2 header (4 encoding, 8 statistics);
# ColumnIndex 2/3 min/max values; OffsetIndex 1 page locations (1 offset, 2 size).

INT64, ZSTD = 2, 6
DICTIONARY_ENCODINGS = (2, 8)  # PLAIN_DICTIONARY, RLE_DICTIONARY


def _shift_int64(value: bytes, delta: int) -> bytes:
    return struct.pack("<q", struct.unpack("<q", value)[0] + delta) if len(value) == 8 else value


def _shift_stats(stats: Struct | None, delta: int) -> None:
    for f in stats or ():
        if f[0] in (1, 2, 5, 6):
            f[2] = _shift_int64(f[2], delta)


@dataclass
class Region:
    """A byte range of the old file replaced by `new` (pages: old offset -> offset in new)."""

    start: int
    end: int
    new: bytes
    pages: dict[int, int]
    new_start: int = 0


class OffsetMap:
    """Old file offsets -> new ones, given the replaced regions (disjoint)."""

    def __init__(self, regions: Iterable[Region]) -> None:
        self.regions = sorted(regions, key=lambda r: r.start)
        shift = 0
        for region in self.regions:
            region.new_start = region.start + shift
            shift += len(region.new) - (region.end - region.start)
        self.starts = [r.start for r in self.regions]

    def __call__(self, offset: int) -> int:
        i = bisect.bisect_right(self.starts, offset) - 1
        if i < 0:
            return offset
        region = self.regions[i]
        if offset < region.end:  # a page that moved (KeyError: an offset inside a page)
            return region.new_start + region.pages[offset]
        return offset + region.new_start + len(region.new) - region.end


def _rewrite_chunk(
    data: bytes, meta: Struct, path: list[str], delta: int, codec: pa.Codec
) -> tuple[Region, int, dict[int, int]]:
    """The chunk's pages with the dictionary's values shifted; the change of the chunk's
    uncompressed size (headers) and each page's new size (header included)."""
    start = tget(meta, 11) if tget(meta, 11) is not None else tget(meta, 9)
    end = start + tget(meta, 7)
    out = bytearray()
    pages: dict[int, int] = {}
    sizes: dict[int, int] = {}
    uncompressed_delta = 0
    pos = start
    while pos < end:
        reader = ThriftReader(data, pos)
        header = reader.struct()
        old_header, old_size = reader.pos - pos, tget(header, 3)
        body = data[reader.pos : reader.pos + old_size]
        kind = tget(header, 1)
        if kind == 2:  # the dictionary: the column's distinct values
            if tget(tget(header, 7), 2) not in (0, 2):
                raise ValueError(f"{path}: dictionary page not PLAIN")
            raw = codec.decompress(body, decompressed_size=tget(header, 2), asbytes=True)
            body = codec.compress((np.frombuffer(raw, "<i8") + delta).tobytes(), asbytes=True)
            tput(header, 3, len(body))
        elif kind in (0, 3):  # data pages: indexes into the dictionary, left as they are
            page = tget(header, 5 if kind == 0 else 8)
            if tget(page, 2 if kind == 0 else 4) not in DICTIONARY_ENCODINGS:
                raise ValueError(f"{path}: a data page is not dictionary-encoded")
            _shift_stats(tget(page, 5 if kind == 0 else 8), delta)
        else:
            raise ValueError(f"{path}: page type {kind}")
        if tget(header, 4) is not None:
            crc = zlib.crc32(body)
            tput(header, 4, crc - (1 << 32) if crc >= 1 << 31 else crc)
        new_header = thrift_encode(header)
        uncompressed_delta += len(new_header) - old_header
        pages[pos] = len(out)
        sizes[pos] = len(new_header) + len(body)
        out += new_header + body
        pos = reader.pos + old_size
    if pos != end:
        raise ValueError(f"{path}: pages overrun the column chunk")
    return Region(start, end, bytes(out), pages), uncompressed_delta, sizes


def shift_parquet(data: bytes, columns: set[tuple[str, str]], delta: int, level: int) -> bytes:
    """`data` with `delta` added to every value of the INT64 `columns` (by their path's first
    and last element): dictionary pages re-compressed (zstd `level`), statistics, page headers,
    page indexes and footer updated, every other byte as it was."""
    if data[:4] != b"PAR1" or data[-4:] != b"PAR1":
        raise ValueError("not a Parquet file")
    footer_start = len(data) - 8 - struct.unpack("<I", data[-8:-4])[0]
    meta = ThriftReader(data, footer_start).struct()
    codec = pa.Codec("zstd", compression_level=level)
    row_groups = tget(meta, 4)[1]
    changed: dict[int, tuple[Region, int, dict[int, int]]] = {}
    for row_group in row_groups:
        compressed_delta = uncompressed_delta = 0
        for chunk in tget(row_group, 1)[1]:
            cmeta = tget(chunk, 3)
            path = [bytes(p).decode() for p in tget(cmeta, 3)[1]]
            stats = tget(cmeta, 12) or []
            if (path[0], path[-1]) not in columns or tget(stats, 6) is None:
                continue  # not shifted, or no value at all (nothing to shift)
            if tget(cmeta, 1) != INT64 or tget(cmeta, 4) != ZSTD:
                raise ValueError(f"{path}: not a zstd INT64 column")
            entry = _rewrite_chunk(data, cmeta, path, delta, codec)
            changed[id(chunk)] = entry
            compressed_delta += len(entry[0].new) - (entry[0].end - entry[0].start)
            uncompressed_delta += entry[1]
        tput(row_group, 2, tget(row_group, 2) + uncompressed_delta)
        if tget(row_group, 6) is not None:
            tput(row_group, 6, tget(row_group, 6) + compressed_delta)
    data_map = OffsetMap(entry[0] for entry in changed.values())
    last_data = max((r.end for r in data_map.regions), default=0)
    index_regions: list[Region] = []
    for row_group in row_groups:
        for chunk in tget(row_group, 1)[1]:
            entry = changed.get(id(chunk))
            if tget(chunk, 4) is not None:  # offset index: every page's offset, maybe moved
                start = tget(chunk, 4)
                if start < last_data:
                    raise ValueError("an offset index before column data")
                index = ThriftReader(data, start).struct()
                for location in tget(index, 1)[1]:
                    old = tget(location, 1)
                    if entry is not None:
                        tput(location, 2, entry[2][old])
                    tput(location, 1, data_map(old))
                end = start + tget(chunk, 5)
                index_regions.append(Region(start, end, thrift_encode(index), {start: 0}))
            if tget(chunk, 6) is not None and entry is not None:  # column index: min, max
                start = tget(chunk, 6)
                if start < last_data:
                    raise ValueError("a column index before column data")
                index = ThriftReader(data, start).struct()
                for fid in (2, 3):
                    values = tget(index, fid)[1]
                    values[:] = [_shift_int64(v, delta) for v in values]
                end = start + tget(chunk, 7)
                index_regions.append(Region(start, end, thrift_encode(index), {start: 0}))
    full_map = OffsetMap([*data_map.regions, *index_regions])
    index_sizes = {r.start: len(r.new) for r in index_regions}
    for row_group in row_groups:
        if tget(row_group, 5) is not None:
            tput(row_group, 5, full_map(tget(row_group, 5)))
        for chunk in tget(row_group, 1)[1]:
            cmeta = tget(chunk, 3)
            old_data_page, old_total = tget(cmeta, 9), tget(cmeta, 7)
            entry = changed.get(id(chunk))
            if entry is not None:
                tput(cmeta, 7, len(entry[0].new))
                tput(cmeta, 6, tget(cmeta, 6) + entry[1])
                _shift_stats(tget(cmeta, 12), delta)
            for fid in (9, 10, 11, 14):
                if tget(cmeta, fid) is not None:
                    tput(cmeta, fid, full_map(tget(cmeta, fid)))
            offset = tget(chunk, 2)
            if offset == old_data_page + old_total:  # Polars: data page offset + chunk size
                tput(chunk, 2, tget(cmeta, 9) + tget(cmeta, 7))
            elif offset:
                tput(chunk, 2, full_map(offset))
            for fid_offset, fid_length in ((4, 5), (6, 7)):
                old = tget(chunk, fid_offset)
                if old is not None:
                    tput(chunk, fid_offset, full_map(old))
                    if old in index_sizes:
                        tput(chunk, fid_length, index_sizes[old])
    out = bytearray()
    pos = 0
    for region in full_map.regions:
        if region.start < pos or region.end > footer_start:
            raise ValueError("overlapping regions")
        out += data[pos : region.start]
        out += region.new
        pos = region.end
    out += data[pos:footer_start]
    footer = thrift_encode(meta)
    out += footer + struct.pack("<I", len(footer)) + b"PAR1"
    return bytes(out)


def zstd_level(data: bytes, columns: set[tuple[str, str]]) -> int:
    """The zstd level that reproduces the file's first shifted dictionary page (1 if none)."""
    meta = ThriftReader(data, len(data) - 8 - struct.unpack("<I", data[-8:-4])[0]).struct()
    for row_group in tget(meta, 4)[1]:
        for chunk in tget(row_group, 1)[1]:
            cmeta = tget(chunk, 3)
            path = [bytes(p).decode() for p in tget(cmeta, 3)[1]]
            if (path[0], path[-1]) not in columns or tget(cmeta, 11) is None:
                continue
            reader = ThriftReader(data, tget(cmeta, 11))
            header = reader.struct()
            body = data[reader.pos : reader.pos + tget(header, 3)]
            raw = pa.Codec("zstd").decompress(body, decompressed_size=tget(header, 2))
            for level in (1, 3, *range(2, 23)):
                if pa.Codec("zstd", compression_level=level).compress(raw, asbytes=True) == body:
                    return level
            return 1
    return 1


# --- the processed day and the templates ----------------------------------------------------------

# sites that miss some minutes for good (a logger off, no backlog): gaps for completeness_daily;
# site (by the order the simulator first publishes them) -> [(first minute, minutes)]
GAPS = {10: [(600, 20)], 20: [(780, 60)], 30: [(360, 10), (1080, 45)]}


def make_processed_day(root: Path) -> dict[str, Any]:
    """300 sites' day in raw storage (as bench_process.py makes it, minus a few sites' minutes
    that never arrive: GAPS), then `process` with 2 workers."""
    from data_acq.acquire.raw import encode_object, raw_key
    from data_acq.devtools.simulate import SimulationSpec, simulate
    from data_acq.messages import encode_record
    from data_acq.pipeline import process
    from data_acq.storage import LocalStore

    shutil.rmtree(root, ignore_errors=True)
    store = LocalStore(root)
    started = time.perf_counter()
    batch: list[bytes] = []
    messages = dropped = 0
    order: dict[str, int] = {}
    start = int(START.timestamp())
    for topic, body in simulate(SimulationSpec(sites=SITES, start=START, minutes=1440, seed=SEED)):
        index = order.setdefault(topic, len(order))
        if index in GAPS and (found := re.match(rb'\{"t":(\d+)', body)):
            minute = (int(found.group(1)) - start) // 60
            if any(first <= minute < first + length for first, length in GAPS[index]):
                dropped += 1
                continue
        batch.append(encode_record(topic, body, RECEIVED_AT, 1))
        messages += 1
        if len(batch) == PER_OBJECT:
            store.put_new(raw_key(RECEIVED_AT, "bench"), encode_object(batch))
            batch = []
    if batch:
        store.put_new(raw_key(RECEIVED_AT, "bench"), encode_object(batch))
    simulated = time.perf_counter() - started
    log(f"raw: {messages:,} messages ({dropped} dropped for gaps) in {simulated:.0f} s; process")
    result = process(store, workers=2, opener=partial(LocalStore, root))
    return {
        "messages": messages,
        "dropped": dropped,
        "simulate_s": simulated,
        "process_s": time.perf_counter() - started - simulated,
        "units": len(result.units),
    }


@dataclass
class Template:
    """An hourly table's newest date: the project's compacted file (its add action's stats) and
    the anchor's Polars file, with the zstd level each writer used."""

    table: str
    project: Path
    stats: str
    project_level: int
    anchor: Path
    anchor_level: int
    rows: int


def _add_actions(table_dir: Path) -> dict[str, dict[str, Any]]:
    """The latest add action per path in the table's JSON log."""
    adds: dict[str, dict[str, Any]] = {}
    for entry in sorted((table_dir / "_delta_log").glob("*.json")):
        for line in entry.read_text().splitlines():
            action = json.loads(line)
            if "add" in action:
                adds[action["add"]["path"]] = action["add"]
    return adds


def daily_rows(name: str) -> Path:
    return OUT_DIR / "templates" / f"{name}.rows.parquet"


def make_templates(processed: Path, folder: Path) -> tuple[date, dict[str, Template]]:
    """Each hourly table's newest date from the processed day (one compacted file each), the
    same rows written by Polars for the anchor; the daily tables' rows of that date."""
    from data_acq.curate.tables import SORT, CuratedTables, table_schema
    from data_acq.storage import LocalStore

    tables = CuratedTables(LocalStore(processed))
    newest = max(
        date.fromisoformat(p["date"]) for p in tables.table("readings").partitions() if p["date"]
    )
    folder.mkdir(parents=True, exist_ok=True)
    templates = {}
    for name in HOURLY:
        table = tables.table(name)
        files = [u for u in table.file_uris() if f"date={newest.isoformat()}/" in u]
        if len(files) != 1:
            raise SystemExit(f"{name}: {len(files)} files on {newest}, expected one (compacted)")
        source = Path(files[0])
        stats = _add_actions(source.parent.parent)[f"date={newest}/{source.name}"]["stats"]
        project = folder / f"{name}.project.parquet"
        shutil.copyfile(source, project)
        rows = pl.read_parquet(project)
        if rows["bucket"].n_unique() != 1:
            raise SystemExit(f"{name}: several buckets: the anchor's order would differ")
        anchor = folder / f"{name}.anchor.parquet"
        rows.drop("bucket", "hour").sort(list(SORT[name]), nulls_last=True).write_parquet(
            anchor, compression="zstd"
        )
        templates[name] = Template(
            name,
            project,
            stats,
            zstd_level(project.read_bytes(), SHIFTED[name]),
            anchor,
            zstd_level(anchor.read_bytes(), SHIFTED[name]),
            rows.height,
        )
    for name in DAILY:
        rows = pl.scan_delta(tables.table(name)).filter(pl.col("date") == newest).collect()
        rows.select(list(table_schema(name))).write_parquet(daily_rows(name))
    return newest, templates


def shift_stats(stats: str, days: int) -> str:
    """A Delta add action's stats with the timestamps' min and max shifted."""
    parsed = json.loads(stats)
    for key in ("minValues", "maxValues"):
        for column, value in parsed.get(key, {}).items():
            if isinstance(value, str) and re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", value):
                moment = datetime.fromisoformat(value[:19]) + timedelta(days=days)
                parsed[key][column] = moment.strftime("%Y-%m-%dT%H:%M:%S") + value[19:]
    return json.dumps(parsed, separators=(",", ":"))


def shift_daily(rows: pl.DataFrame, days: int) -> pl.DataFrame:
    """A daily table's rows moved by whole days: date and the gaps' starts."""
    delta = timedelta(days=days)
    shifted = rows.with_columns(pl.col("date") + delta)
    if "gaps" in rows.columns:
        shifted = shifted.with_columns(
            pl.col("gaps").list.eval(pl.element().struct.with_fields(pl.field("start") + delta))
        )
    return shifted


# --- the files of every date (a pool, hard-linked into each history) ------------------------------


def project_file(table: str, day: date) -> Path:
    name = uuid.uuid5(uuid.NAMESPACE_URL, f"bench-history/{table}/{day}")
    return (
        OUT_DIR
        / "files"
        / "project"
        / table
        / f"date={day}"
        / f"part-00000-{name}-c000.zstd.parquet"
    )


def anchor_file(table: str, day: date) -> Path:
    return OUT_DIR / "files" / "anchor" / table / f"date={day}" / "data.parquet"


_TEMPLATE_BYTES: dict[Path, bytes] = {}


def _write(target: Path, data: bytes) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    staged = target.with_suffix(".incoming")
    staged.write_bytes(data)
    os.replace(staged, target)


def _make_files(jobs: list[tuple[str, str, str, int, int]]) -> int:
    """Write shifted files: (table, side, day, days shifted, zstd level) each."""
    for table, side, day_text, days, level in jobs:
        day = date.fromisoformat(day_text)
        target = project_file(table, day) if side == "project" else anchor_file(table, day)
        source = OUT_DIR / "templates" / f"{table}.{side}.parquet"
        if source not in _TEMPLATE_BYTES:
            _TEMPLATE_BYTES[source] = source.read_bytes()
        _write(target, shift_parquet(_TEMPLATE_BYTES[source], SHIFTED[table], days * DAY_US, level))
    return len(jobs)


def make_files(newest: date, days: int, templates: dict[str, Template], workers: int) -> int:
    """The shifted files of the last `days` dates that the pool lacks (hourly tables: both
    sides, in `workers` processes; daily tables: the anchor's, written by Polars)."""
    jobs = []
    for back in range(days):
        day = newest - timedelta(days=back)
        for name, template in templates.items():
            if not project_file(name, day).exists():
                jobs.append((name, "project", day.isoformat(), -back, template.project_level))
            if not anchor_file(name, day).exists():
                jobs.append((name, "anchor", day.isoformat(), -back, template.anchor_level))
    made = 0
    for name in DAILY:
        rows = pl.read_parquet(daily_rows(name))
        for back in range(days):
            day = newest - timedelta(days=back)
            if not anchor_file(name, day).exists():
                anchor_file(name, day).parent.mkdir(parents=True, exist_ok=True)
                staged = anchor_file(name, day).with_suffix(".incoming")
                shift_daily(rows, -back).drop("date", "bucket").write_parquet(
                    staged, compression="zstd"
                )
                os.replace(staged, anchor_file(name, day))
                made += 1
    if not jobs:
        return made
    batches = [jobs[i : i + 8] for i in range(0, len(jobs), 8)]
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        for count in pool.map(_make_files, batches):
            made += count
            if made % 500 < 8:
                log(f"  shifted files: {made:,}")
    return made


def verify_shift(newest: date, templates: dict[str, Template]) -> dict[str, Any]:
    """A shifted readings file against the real writers: the project's (Polars write_delta with
    compaction's writer properties into the project's table) must give the same bytes; Polars'
    anchor write the same rows."""
    from data_acq.curate import compaction
    from data_acq.curate.tables import CuratedTables, table_schema
    from data_acq.storage import LocalStore

    day = newest - timedelta(days=1)
    template = templates["readings"]
    shifted = pl.read_parquet(template.project).with_columns(
        pl.col("time") - timedelta(days=1),
        pl.col("received_at") - timedelta(days=1),
        date=pl.lit(day, pl.Date),
    )
    with tempfile.TemporaryDirectory(dir=OUT_DIR) as tmp:
        tables = CuratedTables(LocalStore(Path(tmp)))
        shifted.select(list(table_schema("readings"))).write_delta(
            tables.table("readings"),
            mode="append",
            delta_write_options={
                "writer_properties": compaction.WRITER,
                "target_file_size": 2 * compaction.TARGET_BYTES,
            },
        )
        (real,) = tables.table("readings").file_uris()
        project_same = Path(real).read_bytes() == project_file("readings", day).read_bytes()
        anchor_rows = shifted.drop("date", "bucket", "hour")
        anchor_path = Path(tmp) / "anchor.parquet"
        anchor_rows.write_parquet(anchor_path, compression="zstd")
        ours = pl.read_parquet(anchor_file("readings", day))
        anchor_same = ours.equals(anchor_rows) and ours.equals(pl.read_parquet(anchor_path))
        size_difference = anchor_file("readings", day).stat().st_size - anchor_path.stat().st_size
    result = {
        "day": day.isoformat(),
        "project_bytes_identical": project_same,
        "anchor_rows_identical": anchor_same,
        "anchor_size_difference_bytes": size_difference,
    }
    if not (project_same and anchor_same):
        raise SystemExit(f"shifted files differ from the writers' own: {result}")
    return result


# --- a history: the project's Delta tables and the anchor -----------------------------------------


def history_root(days: int) -> Path:
    return OUT_DIR / f"days-{days}"


def _link(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        os.link(source, target)


def build_history(days: int, newest: date, templates: dict[str, Template]) -> dict[str, Any]:
    """The project's tables holding the last `days` dates, left as the project leaves closed
    dates, the warehouse, and the anchor.

    Hourly tables: a commit per table and date, oldest first, adding its one sorted file, and
    compaction's record of the files it left (`state/compacted/`), so that upkeep sees them
    compacted. Daily tables: each date's rows written by `CuratedTables.replace` (a refresh's
    write), then compacted by upkeep as the project does (by date or by month)."""
    from deltalake.transaction import AddAction

    from data_acq import layout
    from data_acq.curate.compaction import needs_compaction, upkeep
    from data_acq.curate.tables import CuratedTables, location
    from data_acq.curate.warehouse import install_extensions, refresh_warehouse
    from data_acq.storage import LocalStore

    root = history_root(days)
    shutil.rmtree(root, ignore_errors=True)
    store = LocalStore(root)
    store.check()
    tables = CuratedTables(store)
    started = time.perf_counter()
    dates = [newest - timedelta(days=back) for back in range(days - 1, -1, -1)]
    for name in TABLES:
        for day in dates:
            _link(anchor_file(name, day), root / "anchor" / name / f"date={day}" / "data.parquet")
    for name, template in templates.items():
        table = tables.table(name)
        table_dir = Path(location(store, name))
        for day in dates:
            source = project_file(name, day)
            relative = f"date={day}/{source.name}"
            _link(source, table_dir / relative)
            stat = source.stat()
            action = AddAction(
                relative,
                stat.st_size,
                {"date": day.isoformat()},
                int(stat.st_mtime * 1000),
                True,
                shift_stats(template.stats, (day - newest).days),
            )
            table.create_write_transaction(
                [action], mode="append", schema=table.schema(), partition_by=["date"]
            )
        compacted = {
            day.isoformat(): [f"date={day}/{project_file(name, day).name}"] for day in dates
        }
        store.put(layout.compacted_key(name), json.dumps(compacted, indent=0).encode())
    for name in DAILY:
        rows = pl.read_parquet(daily_rows(name))
        for day in dates:
            shifted = shift_daily(rows, (day - newest).days)
            for bucket in shifted["bucket"].unique().sort():
                own = shifted.filter(pl.col("bucket") == bucket).drop("date", "bucket")
                tables.replace(name, own, day, int(bucket))
    committed = time.perf_counter() - started
    refresh_warehouse(store)
    todo = needs_compaction(CuratedTables(store), datetime.now(UTC))
    if any(name in todo for name in HOURLY):
        raise SystemExit(f"upkeep would compact hourly tables again: {todo}")
    kept = upkeep(CuratedTables(store), retain=timedelta(0))
    import duckdb

    with duckdb.connect(str(root / "anchor.duckdb")) as con:
        install_extensions(con)
        for name in TABLES:
            glob = (root / "anchor" / name).as_posix() + "/*/*.parquet"
            con.execute(
                f'create view "{name}" as select * from '
                f"read_parquet('{glob}', hive_partitioning = true)"
            )
    files = {name: len(CuratedTables(store).table(name).file_uris()) for name in TABLES}
    if any(files[name] != days for name in HOURLY):
        raise SystemExit(f"files per table {files}, expected {days} in each hourly table")
    manifest = {
        "key": [LAYOUT, newest.isoformat()],
        "days": days,
        "newest": newest.isoformat(),
        "commit_s": committed,
        "upkeep_compacted": {n: len(d) for n, d in kept.compacted.items()},
        "files": files,
        "readings_log": sorted(p.name for p in (root / "curated/readings/_delta_log").iterdir()),
    }
    (root / "history.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def disk_usage(path: Path) -> int:
    """Bytes under path, each inode once."""
    seen: set[int] = set()
    total = 0
    for entry in path.rglob("*"):
        if entry.is_file():
            stat = entry.stat()
            if stat.st_ino not in seen:
                seen.add(stat.st_ino)
                total += stat.st_size
    return total


# --- the queries ----------------------------------------------------------------------------------


@dataclass
class Query:
    key: str
    title: str
    sql: str
    fixed: bool = True  # a fixed date range: its cost should not grow with the history


QUERIES = [
    Query(
        "o",
        "count of a date with no data (the per-query overhead)",
        "select count(*) as n from readings where date = '{d1}'",
    ),
    Query(
        "a",
        "one site, one day, all readings",
        "select * from readings where site = '{site}' and date = '{d0}' "
        "order by time, vid, device, field",
    ),
    Query(
        "a2",
        "one site, one day by time (no date filter)",
        "select * from readings where site = '{site}' "
        "and time >= '{d0} 00:00:00+00' and time < '{d1} 00:00:00+00' "
        "order by time, vid, device, field",
    ),
    Query(
        "b",
        "one site, hourly mean P_total, a week",
        "select device, date_trunc('hour', time) as hour, avg(value) as p_mean from readings "
        "where site = '{site}' and field = 'P_total' and date between '{d6}' and '{d0}' "
        "group by all order by all",
    ),
    Query(
        "c",
        "alarms (level > 0), last 30 days",
        "select site, device, content, level, count(*) as minutes, min(time) as first_seen, "
        "max(time) as last_seen from device_status "
        "where level > 0 and date between '{d29}' and '{d0}' group by all order by all",
    ),
    Query(
        "d", "count of one day's readings", "select count(*) as n from readings where date = '{d0}'"
    ),
    Query(
        "e",
        "15-min mean P_total per site, a week (readings)",
        "select site, time_bucket(interval 15 minutes, time) as period, avg(value) as p_mean "
        "from readings where field = 'P_total' and date between '{d6}' and '{d0}' "
        "group by all order by all",
    ),
    Query(
        "e2",
        "the same from readings_15min",
        "select site, period, sum(mean * count) / sum(count) as p_mean from readings_15min "
        "where field = 'P_total' and date between '{d6}' and '{d0}' group by all order by all",
    ),
    Query(
        "f",
        "fleet PV energy per day, all days",
        "select date, round(sum(energy) / 1000, 1) as kwh from energy_daily "
        "where field = 'total_yield' group by all order by all",
        fixed=False,
    ),
    Query(
        "g",
        "latest P_total per site and device (last 2 days)",
        "select site, device, max(time) as time, arg_max(value, time) as value from readings "
        "where field = 'P_total' and date >= '{d1_ago}' group by all order by all",
    ),
    Query(
        "h",
        "gaps, last week (completeness_daily)",
        "select site, date, ratio, unnest(gaps) as gap from completeness_daily "
        "where gaps is not null and date between '{d6}' and '{d0}' order by all",
    ),
]


def query_sql(newest: date, site: str) -> dict[str, str]:
    """Each query's SQL text, its date range counted back from the newest date."""
    values = {
        "site": site,
        "d0": newest.isoformat(),
        "d1": (newest + timedelta(days=1)).isoformat(),
        "d1_ago": (newest - timedelta(days=1)).isoformat(),
        "d6": (newest - timedelta(days=6)).isoformat(),
        "d29": (newest - timedelta(days=29)).isoformat(),
    }
    return {q.key: q.sql.format(**values) for q in QUERIES}


def pick_site(templates: dict[str, Template]) -> str:
    """A site in the middle of the sort order (not the first row group's)."""
    sites = pl.read_parquet(templates["readings"].anchor, columns=["site"])["site"].unique().sort()
    return str(sites[len(sites) // 2])


def same_result(left: pa.Table, right: pa.Table) -> bool:
    from polars.testing import assert_frame_equal

    try:
        assert_frame_equal(
            pl.from_arrow(left), pl.from_arrow(right), check_exact=False, rel_tol=1e-9
        )
    except AssertionError:
        return False
    return True


def run(con: Any, sql: str) -> pa.Table:
    return con.execute(sql).to_arrow_table()


@dataclass
class Timing:
    project: list[float] = field(default_factory=list)
    anchor: list[float] = field(default_factory=list)
    rows: int = 0
    same: bool = True


def time_all(sizes: list[int], sql: dict[str, str], runs: int) -> dict[int, dict[str, Timing]]:
    """Per query: a warm-up run in every session (its results compared between the sides), then
    `runs` rounds of one run per session, the sessions' order rotating from round to round, so
    that both sides and both sizes meet the same moments of a shared machine."""
    from data_acq.curate.warehouse import connect
    from data_acq.storage import LocalStore

    sessions: dict[tuple[int, str], Any] = {}
    for days in sizes:
        root = history_root(days)
        for side, database in (("project", "warehouse.duckdb"), ("anchor", "anchor.duckdb")):
            sessions[days, side] = connect(root / database, LocalStore(root))
        columns = {
            side: {n: sessions[days, side].execute(f'describe "{n}"').fetchall() for n in TABLES}
            for side in ("project", "anchor")
        }
        if columns["project"] != columns["anchor"]:
            raise SystemExit(f"the views' columns differ: {columns}")
    timings: dict[int, dict[str, Timing]] = {days: {} for days in sizes}
    order = list(sessions)
    for query in QUERIES:
        text = sql[query.key]
        results = {key: run(con, text) for key, con in sessions.items()}
        for days in sizes:
            project, anchor = results[days, "project"], results[days, "anchor"]
            timings[days][query.key] = Timing(
                rows=project.num_rows, same=same_result(project, anchor)
            )
        for i in range(runs):
            shift = i % len(order)
            for days, side in order[shift:] + order[:shift]:
                started = time.perf_counter()
                run(sessions[days, side], text)
                getattr(timings[days][query.key], side).append(time.perf_counter() - started)
        for days in sizes:
            t = timings[days][query.key]
            log(
                f"  {days} d {query.key}: project {statistics.median(t.project):.3f} s, "
                f"anchor {statistics.median(t.anchor):.3f} s, {t.rows:,} rows"
                + ("" if t.same else "  RESULTS DIFFER")
            )
    for con in sessions.values():
        con.close()
    return timings


# --- files and bytes read: a child process under strace -------------------------------------------


def rchar() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    return 0


def _scan_files(profile: dict[str, Any]) -> int:
    """'Total Files Read' summed over the profile's scan operators."""
    found = 0
    info = profile.get("extra_info") or {}
    if "Total Files Read" in info:
        found += int(info["Total Files Read"])
    for child in profile.get("children", []):
        found += _scan_files(child)
    return found


def io_child(database: Path, queries_file: Path, output: Path) -> None:
    """Each query in a fresh session: rchar delta and the profile's files, between markers
    that the parent finds in strace's log."""
    from data_acq.curate.warehouse import connect

    queries = json.loads(queries_file.read_text())
    results = {}
    for key, text in queries.items():
        con = connect(database)
        profile_path = output.with_suffix(f".{key}.profile.json")
        con.execute("pragma enable_profiling = 'json'")
        con.execute(f"pragma profiling_output = '{profile_path}'")
        marker(f"{key}/begin")
        before = rchar()
        con.execute(text).to_arrow_table()
        read = rchar() - before
        marker(f"{key}/end")
        con.close()
        profile = json.loads(profile_path.read_text())
        profile_path.unlink()
        results[key] = {"rchar": read, "scan_files": _scan_files(profile)}
    output.write_text(json.dumps(results))


def marker(name: str) -> None:
    """An openat of a path that does not exist: a line in strace's log."""
    with contextlib.suppress(OSError):
        os.close(os.open(f"{MARKER}/{name}", os.O_RDONLY))


OPENAT = re.compile(r'^(\d+)\s+openat\([^,]+, "([^"]*)", ([A-Z_|]+)(?:, \d+)?(\)\s+=\s+(-?\d+))?')
RESUMED = re.compile(r"^(\d+)\s+<\.\.\. openat resumed>.*\)\s+=\s+(-?\d+)")


def opened_files(log_text: str, root: Path) -> dict[str, Counter[str]]:
    """Per query: the regular files under root opened between its markers, and how often."""
    per_query: dict[str, Counter[str]] = {}
    current: Counter[str] | None = None
    pending: dict[str, tuple[str, str]] = {}
    prefix = str(root) + "/"

    def opened(path: str, flags: str, result: int) -> None:
        nonlocal current
        if path.startswith(MARKER):
            key, edge = path[len(MARKER) + 1 :].rsplit("/", 1)
            if edge == "begin":
                current = Counter()
            else:
                per_query[key] = current or Counter()
                current = None
        elif (
            current is not None
            and result >= 0
            and path.startswith(prefix)
            and ("O_DIRECTORY" not in flags)
        ):
            current[path[len(prefix) :]] += 1

    for line in log_text.splitlines():
        match = OPENAT.match(line)
        if match:
            pid, path, flags, finished, result = match.groups()
            if finished:
                opened(path, flags, int(result))
            elif "<unfinished" in line:
                pending[pid] = (path, flags)
            continue
        match = RESUMED.match(line)
        if match and match.group(1) in pending:
            path, flags = pending.pop(match.group(1))
            opened(path, flags, int(match.group(2)))
    return per_query


@dataclass
class IoResult:
    files: dict[str, Counter[str]]  # per query: file -> times opened
    rchar: dict[str, int]
    scan_files: dict[str, int]


def measure_io(days: int, sql: dict[str, str], side: str) -> IoResult:
    root = history_root(days)
    database = root / ("warehouse.duckdb" if side == "project" else "anchor.duckdb")
    with tempfile.TemporaryDirectory(dir=OUT_DIR) as tmp:
        queries, output, trace = Path(tmp) / "q.json", Path(tmp) / "out.json", Path(tmp) / "st"
        queries.write_text(json.dumps(sql))
        command = [sys.executable, __file__, "--io-child", str(database), str(queries), str(output)]
        strace = shutil.which("strace")
        if strace:
            command = [
                strace,
                "-f",
                "-qq",
                "-s",
                "1024",
                "-e",
                "trace=openat",
                "-o",
                str(trace),
                *command,
            ]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"io child failed:\n{done.stderr[-3000:]}")
        measured = json.loads(output.read_text())
        files = opened_files(trace.read_text(), root.resolve()) if strace else {}
    return IoResult(
        files,
        {k: v["rchar"] for k, v in measured.items()},
        {k: v["scan_files"] for k, v in measured.items()},
    )


# --- moto's S3, counting requests ---------------------------------------------------------------


class Moto:
    """moto's S3 server on a free port of 127.0.0.1, behind s3_counting.CountingApp."""

    def __init__(self) -> None:
        from moto.moto_server.threaded_moto_server import ThreadedMotoServer
        from moto.moto_server.werkzeug_app import (
            DomainDispatcherApplication,
            MotoRequestHandler,
            create_backend_app,
        )
        from werkzeug.serving import make_server

        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
        counter = CountingApp(DomainDispatcherApplication(create_backend_app))
        self.counter = counter

        class Server(ThreadedMotoServer):
            def _server_entry(self) -> None:
                self._server = make_server(
                    self._ip_address, self._port, counter, True, request_handler=MotoRequestHandler
                )
                self._server_ready_event.set()
                self._server.serve_forever()

        self.server = Server(ip_address="127.0.0.1", port=0, verbose=False)
        self.server.start()
        self.port = self.server.get_host_and_port()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id="k",
            aws_secret_access_key="s",
            region_name="us-east-1",
        )

    def stop(self) -> None:
        self.server.stop()


class FileValue:
    """An object's bytes as moto's GET handler uses them (length, slices, iteration), read from
    its buffer on demand: moto reads a whole object for every ranged GET otherwise (50 MB per
    column chunk fetched), which makes a query minutes long; what it answers is the same."""

    CHUNK = 1 << 20

    def __init__(self, key: Any) -> None:
        self.key = key

    def __len__(self) -> int:
        return int(self.key.contentsize)

    def __bool__(self) -> bool:
        return len(self) > 0

    def __getitem__(self, part: slice) -> bytes:
        start, stop, _ = part.indices(len(self))
        with self.key.lock:
            self.key._value_buffer.seek(start)
            return bytes(self.key._value_buffer.read(max(0, stop - start)))

    def __iter__(self) -> Iterator[bytes]:
        for start in range(0, len(self), self.CHUNK):
            yield self[start : start + self.CHUNK]


def serve_lazily(keys: Iterable[Any]) -> None:
    """Make moto's keys serve GETs through FileValue."""
    from moto.s3.models import FakeKey

    class FileKey(FakeKey):
        __module__ = "moto.s3.bench_history"  # moto's model registry keys on the module

        @property
        def value(self) -> Any:
            return FileValue(self)

        @value.setter
        def value(self, new_value: bytes) -> None:
            FakeKey.value.fset(self, new_value)  # type: ignore[attr-defined]

    for key in keys:
        key.__class__ = FileKey


def _history_files(root: Path) -> list[Path]:
    return sorted(
        p for sub in ("curated", "anchor") for p in (root / sub).rglob("*") if p.is_file()
    )


def upload(moto: Moto, days: int) -> tuple[int, int]:
    """Every file of the history (Delta tables with their logs, the anchor) PUT to moto."""
    root = history_root(days)
    client = moto.client()
    files = _history_files(root)

    def put(path: Path) -> int:
        with path.open("rb") as body:
            client.put_object(
                Bucket=S3_BUCKET, Key=f"days-{days}/{path.relative_to(root)}", Body=body
            )
        return path.stat().st_size

    with ThreadPoolExecutor(4) as pool:
        size = sum(pool.map(put, files))
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
    serve_lazily(
        backend.get_object(S3_BUCKET, f"days-{days}/{path.relative_to(root)}") for path in files
    )
    return len(files), size


def link(days: int) -> tuple[int, int]:
    """Every file of the history as a moto object whose value buffer is the local file (the
    same objects as `upload` makes, without a second copy on disk)."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
    root = history_root(days)
    size = 0
    files = _history_files(root)
    keys = []
    for path in files:
        key = backend.put_object(S3_BUCKET, f"days-{days}/{path.relative_to(root)}", b"")
        keys.append(key)
        key._value_buffer.close()
        key._value_buffer = path.open("rb")
        stat = path.stat()
        key.contentsize = stat.st_size
        key._etag = uuid.uuid5(uuid.NAMESPACE_URL, f"{path}:{stat.st_size}:{stat.st_mtime_ns}").hex
        size += stat.st_size
    serve_lazily(keys)
    return len(files), size


def s3_env(moto: Moto) -> dict[str, str]:
    return {
        "AWS_ACCESS_KEY_ID": "k",
        "AWS_SECRET_ACCESS_KEY": "s",
        "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": moto.endpoint,
    }


def s3_databases(moto: Moto, days: int, folder: Path) -> tuple[Path, Path, Any]:
    """The project's S3 warehouse (refresh_warehouse on an S3Store, downloaded) and the anchor's
    views over s3:// paths, each a DuckDB file; and the store."""
    import duckdb

    from data_acq.curate.warehouse import connect_s3, refresh_warehouse
    from data_acq.layout import WAREHOUSE_FILE
    from data_acq.storage import S3Store

    store = S3Store(moto.client(), S3_BUCKET, f"days-{days}")
    refresh_warehouse(store)
    folder.mkdir(parents=True, exist_ok=True)
    project = folder / f"s3-warehouse-{days}.duckdb"
    anchor = folder / f"s3-anchor-{days}.duckdb"
    for path in (project, anchor):
        path.unlink(missing_ok=True)
    project.write_bytes(store.get(WAREHOUSE_FILE))
    with duckdb.connect(str(anchor)) as con:
        connect_s3(con)
        for name in TABLES:
            glob = f"s3://{S3_BUCKET}/days-{days}/anchor/{name}/*/*.parquet"
            con.execute(
                f'create view "{name}" as select * from '
                f"read_parquet('{glob}', hive_partitioning = true)"
            )
    return project, anchor, store


@dataclass
class S3Result:
    counts: dict[str, dict[str, Counter[str]]] = field(default_factory=dict)  # query -> side
    seconds: dict[str, dict[str, float]] = field(default_factory=dict)
    same: dict[str, bool] = field(default_factory=dict)
    loaded: str = ""


def measure_s3(moto: Moto, days: int, sql: dict[str, str], uploaded: bool) -> S3Result:
    """Each query once per side in a fresh session, the requests it made."""
    from data_acq.curate.warehouse import connect

    started = time.perf_counter()
    count, size = upload(moto, days) if uploaded else link(days)
    result = S3Result(
        loaded=f"{count:,} objects, {size / 1e9:.1f} GB "
        f"{'uploaded (PUT)' if uploaded else 'linked'} in {time.perf_counter() - started:.0f} s"
    )
    log(f"  S3 {days} d: {result.loaded}")
    project, anchor, store = s3_databases(moto, days, OUT_DIR / "s3")
    for query in QUERIES:
        tables = {}
        for side, database in (("project", project), ("anchor", anchor)):
            con = connect(database, store)
            moto.counter.take(moto.port)
            began = time.perf_counter()
            tables[side] = run(con, sql[query.key])
            result.seconds.setdefault(query.key, {})[side] = time.perf_counter() - began
            result.counts.setdefault(query.key, {})[side] = moto.counter.take(moto.port)
            con.close()
        result.same[query.key] = same_result(tables["project"], tables["anchor"])
        c = result.counts[query.key]
        log(
            f"  S3 {days} d {query.key}: GET {c['project']['GET']}/{c['anchor']['GET']}, "
            f"HEAD {c['project']['HEAD']}/{c['anchor']['HEAD']}, "
            f"LIST {c['project']['LIST']}/{c['anchor']['LIST']}"
        )
    return result


# --- the report -----------------------------------------------------------------------------------


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b else "-"


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _s3_bytes(counts: Counter[str]) -> int:
    return sum(v for k, v in counts.items() if k.endswith("_bytes"))


def report(
    sizes: list[int],
    timings: dict[int, dict[str, Timing]],
    io: dict[int, dict[str, IoResult]],
    s3: dict[int, S3Result],
    notes: list[str],
) -> str:
    """The results as markdown: the main table, growth with the history, details, notes."""
    lines = [
        "| query | days | project s | anchor s | ratio | files (project/anchor) "
        "| MB read (project/anchor) | S3 GETs (project/anchor) | S3 MB (project/anchor) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for query in QUERIES:
        for days in sizes:
            t = timings[days][query.key]
            p, a = _median(t.project), _median(t.anchor)
            pi, ai = io[days]["project"], io[days]["anchor"]
            files = f"{len(pi.files.get(query.key, {}))}/{len(ai.files.get(query.key, {}))}"
            read = f"{pi.rchar[query.key] / MB:.1f}/{ai.rchar[query.key] / MB:.1f}"
            gets = s3mb = "-"
            if days in s3:
                c = s3[days].counts[query.key]
                gets = f"{c['project']['GET']}/{c['anchor']['GET']}"
                s3mb = f"{_s3_bytes(c['project']) / MB:.1f}/{_s3_bytes(c['anchor']) / MB:.1f}"
            flag = "" if t.same else " (results differ!)"
            lines.append(
                f"| {query.key}. {query.title}{flag} | {days} | {p:.3f} | {a:.3f} | {_ratio(p, a)} "
                f"| {files} | {read} | {gets} | {s3mb} |"
            )
    out = ["## Results", "", *lines, ""]
    if len(sizes) > 1:
        small, large = sizes[0], sizes[-1]
        out += [
            f"### From {small} to {large} days (median time at {large} / at {small})",
            "",
            "| query | fixed range | project | anchor | project files | anchor files "
            "| project S3 GETs | anchor S3 GETs |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for query in QUERIES:
            ts, tl = timings[small][query.key], timings[large][query.key]
            cells = []
            for side in ("project", "anchor"):
                before = len(io[small][side].files.get(query.key, {}))
                after = len(io[large][side].files.get(query.key, {}))
                cells.append(f"{before} -> {after}")
            for side in ("project", "anchor"):
                if small in s3 and large in s3:
                    before = s3[small].counts[query.key][side]["GET"]
                    after = s3[large].counts[query.key][side]["GET"]
                    cells.append(f"{before} -> {after}")
                else:
                    cells.append("-")
            out.append(
                f"| {query.key} | {'yes' if query.fixed else 'no'} "
                f"| {_ratio(_median(tl.project), _median(ts.project))} "
                f"| {_ratio(_median(tl.anchor), _median(ts.anchor))} | " + " | ".join(cells) + " |"
            )
        out.append("")
    out += [
        "### Details",
        "",
        "Runs in seconds; opens: openat calls on the history's files (a file opened twice counts "
        "twice); log: the project's Delta log files (distinct / opens); S3 log GETs: the "
        "project's GETs of `_delta_log/` objects; S3 s: moto's wall time (local, no network).",
        "",
        "| query | days | project runs | anchor runs | data files (profile) p/a | opens p/a "
        "| log files (opens) | S3 HEAD p/a | S3 LIST p/a | S3 log GETs | S3 s p/a |",
        "| --- | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for query in QUERIES:
        for days in sizes:
            t = timings[days][query.key]
            pf = io[days]["project"].files.get(query.key, Counter())
            af = io[days]["anchor"].files.get(query.key, Counter())
            logs = {f: n for f, n in pf.items() if "/_delta_log/" in f}
            head = listing = log_gets = secs = "-"
            if days in s3:
                c = s3[days].counts[query.key]
                head = f"{c['project']['HEAD']}/{c['anchor']['HEAD']}"
                listing = f"{c['project']['LIST']}/{c['anchor']['LIST']}"
                log_gets = str(c["project"]["GET_meta"])
                sec = s3[days].seconds[query.key]
                secs = f"{sec['project']:.2f}/{sec['anchor']:.2f}"
            scans = f"{io[days]['project'].scan_files[query.key]}/"
            scans += f"{io[days]['anchor'].scan_files[query.key]}"
            out.append(
                f"| {query.key} | {days} | {' '.join(f'{x:.3f}' for x in t.project)} "
                f"| {' '.join(f'{x:.3f}' for x in t.anchor)} | {scans} "
                f"| {sum(pf.values())}/{sum(af.values())} | {len(logs)} ({sum(logs.values())}) "
                f"| {head} | {listing} | {log_gets} | {secs} |"
            )
    out += ["", "### Notes", "", *[f"- {n}" for n in notes], ""]
    return "\n".join(out)


def sql_listing(sql: dict[str, str]) -> str:
    lines = ["### Queries (the same text on both sides)", "", "```sql"]
    for query in QUERIES:
        lines += [f"-- {query.key}. {query.title}", sql[query.key] + ";"]
    return "\n".join([*lines, "```", ""])


# --- main -----------------------------------------------------------------------------------------


def data_acq_version() -> str:
    """The commit the project is at, and whether data_acq/ has changes beyond it."""

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", *args], cwd=BENCH_DIR.parent, capture_output=True, text=True, check=False
        )
        return done.stdout.strip()

    changed = git("status", "--porcelain", "data_acq")
    return git("rev-parse", "--short", "HEAD") + (" with uncommitted changes" if changed else "")


def prepare(
    sizes: list[int], fresh: bool, workers: int
) -> tuple[date, dict[str, Template], dict[str, Any]]:
    """The processed day, the templates, the shifted files and each history (cached)."""
    if fresh:
        shutil.rmtree(OUT_DIR, ignore_errors=True)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    state_path = OUT_DIR / "state.json"
    state = json.loads(state_path.read_text()) if state_path.exists() else {}
    if state.get("layout") != LAYOUT or not (OUT_DIR / "processed").exists():
        shutil.rmtree(OUT_DIR / "files", ignore_errors=True)
        log(f"making the processed day: {SITES} sites x 24 h through data_acq.pipeline.process")
        state = {"layout": LAYOUT, "processed": make_processed_day(OUT_DIR / "processed")}
        state_path.write_text(json.dumps(state, indent=1))
    newest, templates = load_templates(state)
    if "templates" not in state:
        log("templates: the processed day's compacted files, and the anchor's written by Polars")
        started = time.perf_counter()
        newest, templates = make_templates(OUT_DIR / "processed", OUT_DIR / "templates")
        state["templates"] = {
            "newest": newest.isoformat(),
            "made_s": time.perf_counter() - started,
            "tables": {
                n: {
                    "stats": t.stats,
                    "project_level": t.project_level,
                    "anchor_level": t.anchor_level,
                    "rows": t.rows,
                }
                for n, t in templates.items()
            },
        }
        state_path.write_text(json.dumps(state, indent=1))
    started = time.perf_counter()
    made = make_files(newest, max(sizes), templates, workers)
    if made:
        log(f"shifted files: {made:,} made in {time.perf_counter() - started:.0f} s")
        state.setdefault("shift_s", {})[str(max(sizes))] = time.perf_counter() - started
    if "verify" not in state:
        state["verify"] = verify_shift(newest, templates)
        state_path.write_text(json.dumps(state, indent=1))
        log(f"shifted files checked against the writers: {state['verify']}")
    for days in sizes:
        manifest = history_root(days) / "history.json"
        if manifest.exists() and json.loads(manifest.read_text()).get("key") == [
            LAYOUT,
            newest.isoformat(),
        ]:
            continue
        started = time.perf_counter()
        built = build_history(days, newest, templates)
        log(
            f"history of {days} days: committed and checked in {time.perf_counter() - started:.0f} s"
        )
        state.setdefault("history", {})[str(days)] = built
    state_path.write_text(json.dumps(state, indent=1))
    return newest, templates, state


def load_templates(state: dict[str, Any]) -> tuple[date, dict[str, Template]]:
    if "templates" not in state:
        return START.date(), {}
    folder = OUT_DIR / "templates"
    saved = state["templates"]
    templates = {
        name: Template(
            name,
            folder / f"{name}.project.parquet",
            info["stats"],
            info["project_level"],
            folder / f"{name}.anchor.parquet",
            info["anchor_level"],
            info["rows"],
        )
        for name, info in saved["tables"].items()
    }
    return date.fromisoformat(saved["newest"]), templates


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--days", type=int, nargs="+", default=[30, 365])
    parser.add_argument("--runs", type=int, default=5, help="timed runs per query and side")
    parser.add_argument("--fresh", action="store_true", help="rebuild everything under out/history")
    parser.add_argument("--no-s3", action="store_true", help="skip the S3 (moto) measurements")
    parser.add_argument(
        "--s3-days", type=int, nargs="*", help="sizes measured on S3 (default: all)"
    )
    parser.add_argument("--workers", type=int, default=2, help="processes shifting files")
    parser.add_argument("--io-child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.io_child:
        io_child(*(Path(a) for a in args.io_child))
        return 0
    if args.runs < 3:
        parser.error("--runs must be at least 3")
    began = time.perf_counter()
    sizes = sorted(set(args.days))
    load = os.getloadavg()
    newest, templates, state = prepare(sizes, args.fresh, args.workers)
    prepared = time.perf_counter() - began
    site = pick_site(templates)
    sql = query_sql(newest, site)
    log(f"history ready in {prepared:.0f} s; newest date {newest}, site {site}")
    log(f"local: {', '.join(map(str, sizes))} days, {args.runs} runs per query and session")
    timings = time_all(sizes, sql, args.runs)
    log("local: files and bytes read (a fresh session per query, under strace)")
    io = {
        days: {side: measure_io(days, sql, side) for side in ("project", "anchor")}
        for days in sizes
    }
    local_s = time.perf_counter() - began - prepared
    s3: dict[int, S3Result] = {}
    if not args.no_s3:
        s3_sizes = sizes if args.s3_days is None else sorted(set(args.s3_days) & set(sizes))
        moto = Moto()
        saved = {k: os.environ.get(k) for k in s3_env(moto)}
        os.environ.update(s3_env(moto))
        try:
            moto.client().create_bucket(Bucket=S3_BUCKET)
            for days in s3_sizes:
                s3[days] = measure_s3(moto, days, sql, uploaded=days == min(s3_sizes))
        finally:
            moto.stop()
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    total = time.perf_counter() - began
    import deltalake
    import duckdb

    notes = [
        f"{SITES} sites, newest date {newest} (the processed day), site '{site}'; history "
        f"{', '.join(map(str, sizes))} days; readings {templates['readings'].rows:,} rows a day "
        f"({templates['readings'].project.stat().st_size / MB:.0f} MB as the project's file, "
        f"{templates['readings'].anchor.stat().st_size / MB:.0f} MB as the anchor's).",
        f"time: median of {args.runs} warm runs after a warm-up, in one process with one "
        "read-only session per side and size (warehouse.connect on warehouse.duckdb and on "
        "anchor.duckdb), the sessions' order rotating from run to run.",
        "files: distinct regular files under the history opened (openat, strace -f) by a fresh "
        "session running the query in a child process; MB read: /proc/self/io rchar delta around "
        "it (read syscalls, page-cache hits included); 'data files (profile)': the scan "
        "operators' 'Total Files Read' in DuckDB's JSON profile.",
        "S3: moto ThreadedMotoServer, requests counted at the server (GET on an object; LIST = "
        "GET on the bucket), S3 MB = all response bytes; one run per query and side in a fresh "
        "session (cold). "
        + (
            "; ".join(f"{d} days: {r.loaded}" for d, r in s3.items())
            if s3
            else "Not measured (--no-s3)."
        ),
        f"shifted files checked: {state.get('verify')}.",
        f"histories: {json.dumps({d: state.get('history', {}).get(str(d), {}).get('files') for d in sizes})} "
        "files per table (daily tables compacted by upkeep as the project does); "
        f"data_acq at {data_acq_version()}.",
        f"duckdb {duckdb.__version__}, deltalake {deltalake.__version__}, polars {pl.__version__}; "
        f"{os.cpu_count()} CPUs; load average at start {load[0]:.1f}, at the end "
        f"{os.getloadavg()[0]:.1f} (other work on the machine shares it).",
        f"runtime: {total / 60:.1f} min (history {prepared / 60:.1f} min, local queries "
        f"{local_s / 60:.1f} min, S3 {(total - prepared - local_s) / 60:.1f} min).",
    ]
    text = "\n".join(
        [
            "# bench_history: analysts' queries over 30 and 365 days",
            "",
            f"`{' '.join([Path(sys.executable).name, 'bench/bench_history.py', *sys.argv[1:]])}`",
            "",
            report(sizes, timings, io, s3, notes),
            sql_listing(sql),
        ]
    )
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(text)
    print()
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
