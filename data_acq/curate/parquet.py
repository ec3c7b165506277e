"""Parquet in and out of an object store (zstd, one file per object)."""

from __future__ import annotations

import io

import polars as pl

from data_acq.storage import ObjectStore


def to_parquet(frame: pl.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.write_parquet(buffer, compression="zstd")
    return buffer.getvalue()


def read_parquet(store: ObjectStore, key: str) -> pl.DataFrame | None:
    """The object's table, or None when there is no such object."""
    try:
        return pl.read_parquet(io.BytesIO(store.get(key)))
    except FileNotFoundError:
        return None


def read_parquets(store: ObjectStore, prefix: str) -> list[pl.DataFrame]:
    """Every Parquet object under `prefix`, in key order."""
    return [
        pl.read_parquet(io.BytesIO(store.get(key)))
        for key in store.list_keys(prefix)
        if key.endswith(".parquet")
    ]
