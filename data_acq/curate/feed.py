"""Hand pipeline-format documents to AMMP's downstream pipeline through an SQS queue.

A refresh rebuilds the hours new data touched, and the feed reads only those hours' documents;
what was sent is remembered per unit and hour (`state/sqs_sent/...`: site and SHA-1 of each
document), so a rebuilt hour sends only what is new. A document is identified by its site *and* its content, so two sites that send the
same readings in the same minute both reach the queue.

Delivery is at least once: a crash between sending and remembering sends those documents again
(and a standard SQS queue may itself deliver a message twice), so consumers de-duplicate on
(site, time). Each message carries the site as the attribute `site`, JSON-encoded (data type
`String.json`), because SQS attributes cannot be empty and a site id can be.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass
from datetime import date
from typing import Any

import polars as pl

from data_acq import layout
from data_acq.curate.parquet import read_parquet, to_parquet
from data_acq.curate.tables import CuratedTables
from data_acq.storage import ObjectStore

log = logging.getLogger(__name__)

SQS_BATCH = 10  # SendMessageBatch takes at most ten messages ...
SQS_MAX_BYTES = 256 * 1024  # ... and at most this many bytes, as one message may
_NOT_SQS_TEXT = re.compile("[^\t\n\r\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
SENT_SCHEMA = {"site": pl.String, "sha1": pl.String, "outcome": pl.String}


class QueueError(RuntimeError):
    pass


@dataclass
class SendResult:
    sent: int = 0
    already_sent: int = 0
    refused: int = 0  # documents SQS will never take (too large): recorded, not retried


def _body(document: str) -> str:
    """The document as SQS accepts it: the same JSON, with any character SQS refuses escaped."""
    if _NOT_SQS_TEXT.search(document):
        return json.dumps(json.loads(document), ensure_ascii=True, separators=(",", ":"))
    return document


def _entry(number: int, site: str | None, document: str) -> dict[str, Any]:
    site_json = json.dumps(site, ensure_ascii=True)
    return {
        "Id": str(number),
        "MessageBody": _body(document),
        "MessageAttributes": {"site": {"DataType": "String.json", "StringValue": site_json}},
    }


def _size(entry: dict[str, Any]) -> int:
    attribute = entry["MessageAttributes"]["site"]
    return (
        len(entry["MessageBody"].encode())
        + len("site")
        + len(attribute["DataType"])
        + len(attribute["StringValue"])
    )


def _batches(entries: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Up to ten entries and SQS_MAX_BYTES per batch."""
    batches: list[list[dict[str, Any]]] = []
    size = 0
    for entry in entries:
        if not batches or len(batches[-1]) == SQS_BATCH or size + _size(entry) > SQS_MAX_BYTES:
            batches.append([])
            size = 0
        batches[-1].append(entry)
        size += _size(entry)
    return batches


def send_new_documents(
    store: ObjectStore, day: date, bucket: int, hours: list[int], sqs: Any, queue_url: str
) -> SendResult:
    """Send the documents of these hours of a unit that were not sent before."""
    result = SendResult()
    tables = CuratedTables(store)
    for hour in hours:
        _send_hour(store, tables, day, bucket, hour, sqs, queue_url, result)
    return result


def _send_hour(
    store: ObjectStore,
    tables: CuratedTables,
    day: date,
    bucket: int,
    hour: int,
    sqs: Any,
    queue_url: str,
    result: SendResult,
) -> None:
    sent_key = layout.sent_key(day, bucket, hour)
    already = read_parquet(store, sent_key)
    if already is None:  # nothing sent for this hour yet
        already = pl.DataFrame(schema=SENT_SCHEMA)
    documents = tables.read("pipeline_payloads", day, bucket, hour)
    if documents.is_empty():
        return
    documents = documents.select("site", "document")
    digests = [
        hashlib.sha1(doc.encode(), usedforsecurity=False).hexdigest()
        for doc in documents["document"]
    ]
    documents = documents.with_columns(sha1=pl.Series(digests, dtype=pl.String))
    new = documents.join(already, on=["site", "sha1"], how="anti", nulls_equal=True).unique(
        ["site", "sha1"], maintain_order=True
    )
    result.already_sent += documents.height - new.height
    outcomes: list[tuple[str | None, str, str]] = []
    entries, sha1s = [], {}
    for number, (site, document, sha1) in enumerate(new.iter_rows()):
        entry = _entry(number, site, document)
        if _size(entry) > SQS_MAX_BYTES:
            outcomes.append((site, sha1, f"refused: larger than {SQS_MAX_BYTES} bytes"))
            result.refused += 1
            continue
        entries.append(entry)
        sha1s[entry["Id"]] = (site, sha1)
    try:
        for batch in _batches(entries):
            answer = sqs.send_message_batch(QueueUrl=queue_url, Entries=batch)
            for item in answer.get("Successful", []):
                outcomes.append((*sha1s[item["Id"]], "sent"))
                result.sent += 1
            retry = []
            for item in answer.get("Failed", []):
                if item.get("SenderFault"):  # this document will never be taken: say so once
                    outcomes.append((*sha1s[item["Id"]], f"refused: {item.get('Code')}"))
                    result.refused += 1
                    log.warning("SQS refused a document: %s", item.get("Message", item.get("Code")))
                else:
                    retry.append(item.get("Message", item.get("Code")))
            if retry:
                raise QueueError(
                    f"SQS failed {len(retry)} of {len(batch)} documents: {json.dumps(retry[:3])}; "
                    "they are sent again by the next run"
                )
    finally:
        if outcomes:
            done = pl.DataFrame(outcomes, schema=SENT_SCHEMA, orient="row")
            store.put(sent_key, to_parquet(pl.concat([already, done])))
