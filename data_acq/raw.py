"""Raw storage layout: where the drain puts objects and how they are read back.

`raw/date=YYYY-MM-DD/hour=HH/<first receive time>-<client id>-<random>.ndjson.gz`, partitioned
by receive time; each object is gzip-compressed NDJSON, one raw record per message.
"""

from __future__ import annotations

import gzip
import uuid
from collections.abc import Iterable, Iterator
from datetime import datetime

from data_acq.messages import Message, read_records
from data_acq.storage import ObjectStore

RAW_PREFIX = "raw/"


def raw_key(first_received: datetime, client_id: str) -> str:
    """A unique, time-sorted key for a batch whose first message arrived at `first_received`."""
    safe_client = "".join(c if c.isalnum() or c in "-_" else "_" for c in client_id)[:64]
    return (
        f"{RAW_PREFIX}date={first_received:%Y-%m-%d}/hour={first_received:%H}/"
        f"{first_received:%Y%m%dT%H%M%S%fZ}-{safe_client}-{uuid.uuid4().hex[:12]}.ndjson.gz"
    )


def encode_object(lines: Iterable[bytes]) -> bytes:
    return gzip.compress(b"".join(lines), compresslevel=1, mtime=0)


def raw_keys(store: ObjectStore, prefix: str = RAW_PREFIX) -> list[str]:
    return [key for key in store.list_keys(prefix) if key.endswith(".ndjson.gz")]


def read_raw_object(store: ObjectStore, key: str) -> Iterator[Message]:
    """The messages of one raw object, each with `ref` = its line number in the object."""
    yield from read_records(gzip.decompress(store.get(key)).splitlines(), first_ref=1, source=key)


def read_raw(store: ObjectStore, keys: Iterable[str]) -> Iterator[Message]:
    for key in keys:
        yield from read_raw_object(store, key)
