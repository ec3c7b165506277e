"""The processing sequence, in one place: stage what is new in raw, refresh the units it left
pending, feed their new documents to SQS, compact the closed dates they touched, keep the
warehouse's views current.

`data-acq process` and the demo call `process`; the Dagster assets run the same steps as
separate runs (staging, then one run per unit, each its own ECS task in production).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from datetime import date, datetime
from functools import partial
from multiprocessing import get_context
from typing import Any

from data_acq.curate.compaction import CompactResult, upkeep
from data_acq.curate.cursor import new_raw_keys
from data_acq.curate.feed import send_new_documents
from data_acq.curate.staging import (
    CHUNK_MESSAGES,
    DEFAULT_BUCKETS,
    MAX_OBJECTS,
    StageResult,
    check_buckets,
    stage,
)
from data_acq.curate.tables import CuratedTables
from data_acq.curate.units import Unit, UnitResult, pending_units, refresh_unit, staged_units
from data_acq.curate.warehouse import refresh_warehouse
from data_acq.progress import Progress
from data_acq.storage import LocalStore, ObjectStore

log = logging.getLogger(__name__)

Opener = Callable[[], ObjectStore]


@dataclass
class ProcessResult:
    staged: StageResult | None
    units: list[UnitResult]
    warehouse: str | None  # where the warehouse file was written, if its views changed
    compacted: CompactResult | None = None

    @property
    def dates(self) -> list[date]:
        return sorted({unit.day for unit in self.units})


def sqs_client() -> Any:
    import boto3

    return boto3.client("sqs")


def refresh(
    store: ObjectStore,
    day: date,
    bucket: int,
    full: bool = False,
    queue_url: str | None = None,
    progress: Progress | None = None,
    tables: CuratedTables | None = None,
) -> UnitResult:
    """Refresh one unit and send the documents of the hours it rebuilt that are new, before the
    unit's pending markers are removed: a failed send leaves the unit pending (at least once)."""

    def feed(result: UnitResult) -> None:
        sent = send_new_documents(store, day, bucket, result.hours, sqs_client(), queue_url)
        result.sent_to_queue = sent.sent
        if sent.refused:
            log.warning("%s: SQS refused %d documents (too large)", result.unit, sent.refused)

    return refresh_unit(
        store,
        day,
        bucket,
        full=full,
        progress=progress,
        before_clearing=feed if queue_url else None,
        tables=tables,
    )


def _refresh_opened(opener: Opener, unit: Unit, full: bool, queue_url: str | None) -> UnitResult:
    return refresh(opener(), *unit, full=full, queue_url=queue_url)


def refresh_units(
    store: ObjectStore,
    units: dict[Unit, bool],
    workers: int = 1,
    opener: Opener | None = None,
    queue_url: str | None = None,
    progress: Progress | None = None,
) -> list[UnitResult]:
    """Refresh units (-> whether to rebuild every hour), in `workers` processes when more than
    one; each worker opens its own store with `opener`."""
    todo = sorted(units)
    if workers <= 1 or len(todo) <= 1:
        results = []
        tables = CuratedTables(store)  # opened once for all
        for number, unit in enumerate(todo, start=1):
            results.append(
                refresh(store, *unit, full=units[unit], queue_url=queue_url, tables=tables)
            )
            _report(progress, results[-1], number, len(todo))
        return results
    if opener is None:
        raise ValueError("refreshing in parallel needs an opener for the store")
    results = []
    # spawn, not fork: Polars' thread pool does not survive a fork
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        futures = [
            pool.submit(_refresh_opened, opener, unit, units[unit], queue_url) for unit in todo
        ]
        for number, future in enumerate(as_completed(futures), start=1):
            results.append(future.result())
            _report(progress, results[-1], number, len(todo))
    return sorted(results, key=lambda r: (r.day, r.bucket))


def _report(progress: Progress | None, result: UnitResult, number: int, total: int) -> None:
    log.debug("refreshed %s: hours %s", result.unit, result.hours)
    if progress:
        progress("units refreshed", number, total, "units")


def process(
    store: ObjectStore,
    dates: Iterable[date] = (),
    progress: Progress | None = None,
    *,
    buckets: int = DEFAULT_BUCKETS,
    chunk_size: int = CHUNK_MESSAGES,
    workers: int = 1,
    opener: Opener | None = None,
    queue_url: str | None = None,
    now: datetime | None = None,
) -> ProcessResult:
    """Stage whatever raw holds that is new, refresh every unit with pending hours (those just
    staged, and those a killed run left) and every unit of `dates` in full, compact whatever
    closed date needs it (a reader of a closed date finds it compacted; `now` is the clock a
    date is closed by, the real one unless a simulation runs its own), then the warehouse. Old
    files are left to `data-acq compact`'s expiry."""
    store.check()
    check_buckets(store, buckets)
    if opener is None and isinstance(store, LocalStore):
        opener = partial(LocalStore, store.root)
    staged = None
    while keys := new_raw_keys(store, limit=MAX_OBJECTS):  # a backlog in bounded stagings
        many = len(keys) > 4 * workers  # a live tick's few objects: not worth the processes
        batch = stage(store, keys, buckets, chunk_size, progress, workers if many else 1, opener)
        staged = batch if staged is None else staged.merged(batch)
    units = dict.fromkeys(pending_units(store), False)
    for day in dates:
        units |= dict.fromkeys(((day, bucket) for bucket in staged_units(store, day)), True)
    results = refresh_units(store, units, workers, opener, queue_url, progress)
    warehouse = refresh_warehouse(store)
    compacted = upkeep(CuratedTables(store), now=now, retain=None, progress=progress)
    return ProcessResult(staged, results, warehouse, compacted)
