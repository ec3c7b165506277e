"""The drain writing to S3 (moto's server), including S3 going away mid-drain."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from data_acq.acquire.drain import DrainWriteError
from data_acq.devtools.local_broker import LocalMosquitto
from data_acq.settings import BrokerSettings
from data_acq.storage import ObjectExists, S3Store, open_store
from data_acq_tests.conftest import MotoS3
from data_acq_tests.drain_helpers import (
    missing,
    publish_in_background,
    start_drain,
    unique_messages,
)


def test_s3_store_never_overwrites(moto_s3: MotoS3) -> None:
    client = moto_s3.client()
    client.create_bucket(Bucket="store-bucket")  # type: ignore[attr-defined]
    store = open_store("s3://store-bucket/acq")  # standard AWS_* variables, AWS_ENDPOINT_URL
    assert isinstance(store, S3Store)
    store.put_new("raw/x.ndjson.gz", b"first")
    with pytest.raises(ObjectExists):
        store.put_new("raw/x.ndjson.gz", b"second")
    assert store.get("raw/x.ndjson.gz") == b"first"
    with pytest.raises(FileNotFoundError, match="s3://store-bucket/acq/raw/missing"):
        store.get("raw/missing")
    assert list(store.list_keys("raw/")) == ["raw/x.ndjson.gz"]
    assert store.url("raw/") == "s3://store-bucket/acq/raw/"


def test_s3_outage_fails_the_run_without_acknowledging(moto_s3: MotoS3, tmp_path: Path) -> None:
    client = moto_s3.client()
    client.create_bucket(Bucket="outage-bucket")  # type: ignore[attr-defined]
    store = S3Store(client, "outage-bucket", "acq")
    sent = unique_messages(3_000)
    with LocalMosquitto(tmp_path / "mq", extra=("max_queued_messages 100000",)) as broker:
        settings = BrokerSettings(host="127.0.0.1", port=broker.port, client_id="drain-s3")
        drain = start_drain(settings, store, write_attempts=3, write_backoff_s=0.2)
        publisher = publish_in_background(broker.port, sent, rate=1000)
        deadline = time.monotonic() + 30
        while drain.drain.stats.objects == 0 and time.monotonic() < deadline:
            time.sleep(0.01)  # until the first object is in S3
        moto_s3.stop()  # S3 goes away mid-drain
        with pytest.raises(DrainWriteError, match="nothing of this batch was acknowledged"):
            drain.join()
        failed = drain.drain.stats
        assert failed.acknowledged == failed.stored < failed.messages
        publisher.join(60)
        moto_s3.start()  # S3 is back (moto keeps its buckets in this process)
        stats = start_drain(
            settings, store, until=lambda _: missing(sent, store) == 0, idle_exit_s=5
        ).join()
    assert missing(sent, store) == 0
    assert stats.redelivered > 0  # what the failed run had received came again
