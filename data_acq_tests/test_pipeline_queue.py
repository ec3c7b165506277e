"""Pipeline documents to SQS (moto's server): every site's documents arrive, once."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from pathlib import Path

from data_acq.acquire.raw import encode_object, raw_key
from data_acq.curate.feed import SendResult, send_new_documents
from data_acq.messages import encode_record
from data_acq.pipeline import process
from data_acq.storage import LocalStore
from data_acq_tests.conftest import MotoS3, receive_all

T0 = int(datetime(2024, 10, 12, 10, tzinfo=UTC).timestamp())


def _receive_all(sqs: object, queue: str) -> list[tuple[str | None, dict]]:
    return [(json.loads(site), json.loads(body)) for site, body in receive_all(sqs, queue)]


def test_identical_documents_of_two_sites_both_reach_the_queue(
    moto_s3: MotoS3, tmp_path: Path
) -> None:
    import boto3

    sqs = boto3.client("sqs", endpoint_url=moto_s3.endpoint, region_name="us-east-1")
    queue = sqs.create_queue(QueueName="pipeline")["QueueUrl"]
    store = LocalStore(tmp_path / "store")
    bodies = [
        {"t": T0 + 60 * i, "r": [{"_vid": "inv", "P": i, "note": "\uffff odd"}]} for i in range(3)
    ] + [{"t": T0 + 600, "r": [{"P": 1}]}]  # no placeable reading: the document has no data
    sites = ["site-a", "site-b", ""]  # the empty site id too: SQS attributes cannot be empty
    received = datetime(2024, 10, 12, 11, tzinfo=UTC)
    lines = [
        encode_record(f"a/{site}/u/data", json.dumps(body).encode(), received, 1)
        for site in sites
        for body in bodies
    ]
    store.put_new(raw_key(received, "test"), encode_object(lines + lines))  # and redelivered
    units = process(store).units
    assert {u.day for u in units} == {date(2024, 10, 12)}
    first = SendResult()
    for unit in units:
        sent = send_new_documents(store, unit.day, unit.bucket, unit.hours, sqs, queue)
        first.sent, first.already_sent = (
            first.sent + sent.sent,
            first.already_sent + sent.already_sent,
        )
        first.refused += sent.refused
    assert (first.sent, first.already_sent, first.refused) == (12, 0, 0)
    got = _receive_all(sqs, queue)
    expected = {
        "time": datetime.fromtimestamp(T0, UTC).isoformat(),
        "data": {"inv": {"P": 0, "note": "\uffff odd"}},
    }
    empty = {"time": datetime.fromtimestamp(T0 + 600, UTC).isoformat(), "data": {}}
    assert sorted(site for site, _ in got) == sorted(sites * 4)
    assert sorted(site for site, body in got if body == expected) == sorted(sites)
    assert sorted(site for site, body in got if body == empty) == sorted(sites)
    again = [send_new_documents(store, u.day, u.bucket, u.hours, sqs, queue) for u in units]
    assert (sum(a.sent for a in again), sum(a.already_sent for a in again)) == (0, 12)
    assert _receive_all(sqs, queue) == []
