"""Discovery costs what is new: the staging cursor lists from its look-back window on, never
history, locally and on moto's S3 server."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from data_acq.acquire.raw import encode_object, raw_key
from data_acq.curate.cursor import LOOKBACK, Cursor, new_raw_keys
from data_acq.curate.staging import stage
from data_acq.messages import encode_record
from data_acq.storage import LocalStore, ObjectStore, S3Store
from data_acq_tests.conftest import MotoS3

START = datetime(2024, 10, 12, tzinfo=UTC)


def _history(
    store: ObjectStore, objects: int, every: timedelta, start: datetime = START
) -> list[str]:
    """`objects` raw objects, one every `every` from `start`, each with one message."""
    keys = []
    for n in range(objects):
        received = start + n * every
        line = encode_record("a/s/u/data", b'{"t": %d, "r": []}' % received.timestamp(), received)
        key = raw_key(received, "drain")
        store.put_new(key, encode_object([line]))
        keys.append(key)
    return keys


class CountingStore(LocalStore):
    """Counts the folders a listing enters."""

    folders = 0

    def _walk(self, folder: Path, *args: str):  # type: ignore[no-untyped-def]
        CountingStore.folders += 1
        return super()._walk(folder, *args)


def test_finding_nothing_new_enters_only_the_look_back_window(tmp_path: Path) -> None:
    store = CountingStore(tmp_path / "store")
    keys = _history(store, 3_000, timedelta(seconds=60))  # two days and a bit: 51 hour folders
    assert new_raw_keys(store) == keys  # no cursor yet: everything is new
    Cursor().advanced(keys).save(store)
    CountingStore.folders = 0
    assert new_raw_keys(store) == []
    assert CountingStore.folders <= 4  # raw/, its last date, at most two hours: not 51


def test_an_object_written_late_within_the_window_is_found(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    keys = _history(store, 100, timedelta(seconds=30))
    stage(store, keys)
    # a drain whose write was retried: named after its first message, written minutes later
    late = _history(store, 1, timedelta(0))  # at START: far before the window: not seen
    named = Cursor.load(store).watermark - LOOKBACK / 2  # type: ignore[operator]
    line = encode_record("a/s/u/data", b'{"t": 1, "r": []}', named)
    store.put_new(raw_key(named, "slow-drain"), encode_object([line]))
    [found] = new_raw_keys(store)
    assert "-slow-drain-" in found
    assert late[0] != found  # older than the window: the documented limit of the look-back


def test_staging_in_ticks_stages_every_object_once(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    keys = _history(store, 30, timedelta(minutes=1))
    seen: list[str] = []
    for tick in range(5):  # objects keep arriving between ticks
        new = new_raw_keys(store)
        assert new == keys[len(seen) :]
        stage(store, new)
        seen += new
        keys += _history(
            store, 4, timedelta(minutes=1), START + timedelta(hours=1, minutes=5 * tick)
        )
    assert new_raw_keys(store) == keys[len(seen) :] and len(seen) == 46


@pytest.mark.slow
def test_on_s3_nothing_new_is_one_listing_request(moto_s3: MotoS3) -> None:
    client = moto_s3.client()
    client.create_bucket(Bucket="raw-bucket")  # type: ignore[attr-defined]
    store = S3Store(client, "raw-bucket", "acq")
    keys = _history(store, 1_200, timedelta(seconds=20))  # more than one listing page
    calls: list[str] = []
    client.meta.events.register(  # type: ignore[attr-defined]
        "provide-client-params.s3.ListObjectsV2", lambda params, **_: calls.append(params["Prefix"])
    )
    assert len(new_raw_keys(store)) == 1_200
    # without a cursor: all pages of raw, and one look for a journal to rebuild it from
    assert calls == ["acq/state/staged/", "acq/raw/", "acq/raw/"]
    Cursor().advanced(keys).save(store)
    calls.clear()
    assert new_raw_keys(store) == []
    assert calls == ["acq/raw/"]


def test_a_backlog_is_staged_in_bounded_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from data_acq import pipeline

    store = LocalStore(tmp_path / "store")
    keys = _history(store, 10, timedelta(minutes=1))
    monkeypatch.setattr(pipeline, "MAX_OBJECTS", 3)
    assert len(new_raw_keys(store, limit=3)) == 3
    result = pipeline.process(store)
    assert result.staged is not None and result.staged.raw_objects == 10
    assert result.staged.messages == 10 and new_raw_keys(store) == []
    assert Cursor.load(store).watermark is not None and len(keys) == 10
