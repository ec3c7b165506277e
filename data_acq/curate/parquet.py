"""Parquet in and out of an object store (zstd, one file per object)."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor

import polars as pl

from data_acq.storage import ObjectStore, StorageError


class DamagedObject(StorageError):
    """An object that is not readable Parquet (truncated, emptied): the message names it."""

    def __init__(self, store: ObjectStore, key: str, why: str) -> None:
        super().__init__(f"{store.url(key)} is not a readable Parquet file ({why})")
        self.key = key
        self.why = why


def to_parquet(frame: pl.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.write_parquet(buffer, compression="zstd")
    return buffer.getvalue()


def _parsed(store: ObjectStore, key: str, data: bytes) -> pl.DataFrame:
    try:
        return pl.read_parquet(io.BytesIO(data))
    except pl.exceptions.PolarsError as exc:
        raise DamagedObject(store, key, str(exc).splitlines()[0] or type(exc).__name__) from None


def read_parquet(store: ObjectStore, key: str) -> pl.DataFrame | None:
    """The object's table, or None when there is no such object."""
    try:
        data = store.get(key)
    except FileNotFoundError:
        return None
    return _parsed(store, key, data)


def read_parquets(store: ObjectStore, prefix: str, workers: int = 8) -> list[pl.DataFrame]:
    """Every Parquet object under `prefix`, in key order, fetched `workers` at a time: a live
    hour holds a staged object per tick, and on S3 each is a request's round trip."""
    keys = [key for key in store.list_keys(prefix) if key.endswith(".parquet")]
    if len(keys) <= 1:
        return [_parsed(store, key, store.get(key)) for key in keys]
    with ThreadPoolExecutor(max_workers=min(workers, len(keys))) as pool:
        # map yields in key order and raises the first key's failure (a DamagedObject names it)
        return list(pool.map(lambda key: _parsed(store, key, store.get(key)), keys))
