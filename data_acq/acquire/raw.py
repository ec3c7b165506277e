"""Raw storage layout: where the drain puts objects and how they are read back.

`raw/date=YYYY-MM-DD/hour=HH/<first receive time>-<client id>-<random>.ndjson.gz`, partitioned
by receive time; each object is gzip-compressed NDJSON, one raw record per message.
"""

from __future__ import annotations

import gzip
import uuid
import zlib
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime

from data_acq.layout import RAW
from data_acq.messages import Message, read_records
from data_acq.storage import ObjectStore

BATCH_MESSAGES = 5_000  # messages a drain stores in one raw object, at most (by default)


def raw_key(first_received: datetime, client_id: str) -> str:
    """A unique, time-sorted key for a batch whose first message arrived at `first_received`."""
    safe_client = "".join(c if c.isalnum() or c in "-_" else "_" for c in client_id)[:64]
    return (
        f"{RAW}date={first_received:%Y-%m-%d}/hour={first_received:%H}/"
        f"{first_received:%Y%m%dT%H%M%S%fZ}-{safe_client}-{uuid.uuid4().hex[:12]}.ndjson.gz"
    )


def key_time(key: str) -> datetime | None:
    """The first receive time a raw key was named after (None for a foreign name)."""
    stamp = key.rsplit("/", 1)[-1].split("-", 1)[0]
    try:
        return datetime.strptime(stamp, "%Y%m%dT%H%M%S%fZ").replace(tzinfo=UTC)
    except ValueError:
        return None


def encode_object(lines: Iterable[bytes]) -> bytes:
    return gzip.compress(b"".join(lines), compresslevel=1, mtime=0)


def raw_keys(store: ObjectStore, prefix: str = RAW) -> list[str]:
    return [key for key in store.list_keys(prefix) if key.endswith(".ndjson.gz")]


def read_raw_object(store: ObjectStore, key: str) -> Iterator[Message]:
    """The messages of one raw object, each with `ref` = its line number in the object.

    An object that cannot be decompressed is one message with `error`, rejected downstream like
    a bad payload: it must not stop the objects around it from being processed.
    """
    data = store.get(key)  # a storage failure is not the object's fault: it propagates
    try:
        lines = gzip.decompress(data).splitlines()
    except (OSError, EOFError, zlib.error) as exc:
        yield Message(None, b"", 0, key_time(key), key, f"unreadable raw object: {exc}")
        return
    yield from read_records(lines, first_ref=1, source=key, received_at=key_time(key))


def read_raw(store: ObjectStore, keys: Iterable[str]) -> Iterator[Message]:
    for key in keys:
        yield from read_raw_object(store, key)
