"""Hand pipeline-format documents to AMMP's downstream pipeline through an SQS queue.

A date is rebuilt whenever late data touches it, so what was already sent is remembered per date
(`curated/pipeline_payloads/date=D/_sent.parquet`, the SHA-1 of each document sent): a rebuild
sends only the documents that are new. A crash between sending and remembering re-sends a few
documents: delivery is at least once, like everything else here.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from datetime import date
from typing import Any

import polars as pl

from data_acq.process import CURATED, to_parquet
from data_acq.storage import ObjectStore

SQS_BATCH = 10  # SendMessageBatch takes at most ten messages


class QueueError(RuntimeError):
    pass


@dataclass
class SendResult:
    sent: int
    already_sent: int


def _documents(store: ObjectStore, day: date) -> pl.DataFrame:
    prefix = f"{CURATED}pipeline_payloads/date={day.isoformat()}/"
    rows: list[tuple[str, str]] = []
    for key in store.list_keys(prefix):
        if key.endswith("payloads.ndjson"):
            site = key.split("site=", 1)[1].split("/", 1)[0]
            rows += [(site, line) for line in store.get(key).decode().splitlines() if line]
    frame = pl.DataFrame(rows, schema={"site": pl.String, "document": pl.String}, orient="row")
    digests = [
        hashlib.sha1(doc.encode(), usedforsecurity=False).hexdigest() for doc in frame["document"]
    ]
    return frame.with_columns(sha1=pl.Series(digests, dtype=pl.String))


def send_new_documents(store: ObjectStore, day: date, sqs: Any, queue_url: str) -> SendResult:
    """Send the date's pipeline documents that were not sent before."""
    sent_key = f"{CURATED}pipeline_payloads/date={day.isoformat()}/_sent.parquet"
    try:
        already = pl.read_parquet(io.BytesIO(store.get(sent_key)))
    except FileNotFoundError:  # nothing sent for this date yet
        already = pl.DataFrame(schema={"sha1": pl.String})
    documents = _documents(store, day)
    new = documents.join(already, on="sha1", how="anti").unique("sha1", maintain_order=True)
    done: list[str] = []
    try:
        for batch in new.iter_slices(SQS_BATCH):
            entries = [
                {
                    "Id": str(i),
                    "MessageBody": document,
                    "MessageAttributes": {"site": {"DataType": "String", "StringValue": site}},
                }
                for i, (site, document, _) in enumerate(batch.iter_rows())
            ]
            answer = sqs.send_message_batch(QueueUrl=queue_url, Entries=entries)
            failed = answer.get("Failed", [])
            ok = {int(item["Id"]) for item in answer.get("Successful", [])}
            done += [sha for i, sha in enumerate(batch["sha1"]) if i in ok]
            if failed:
                reasons = json.dumps([f.get("Message", f.get("Code")) for f in failed][:3])
                raise QueueError(
                    f"SQS refused {len(failed)} of {len(entries)} documents: {reasons}"
                )
    finally:
        if done:
            remembered = pl.concat([already, pl.DataFrame({"sha1": done})])
            store.put(sent_key, to_parquet(remembered))
    return SendResult(sent=len(done), already_sent=documents.height - new.height)
