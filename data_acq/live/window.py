"""One live window: every refresh interval, stage what the drains stored (the first worker does,
for everyone) and refresh the pending units of this worker's share, until the window ends.

A window is the live counterpart of a drain window: a bounded, restartable piece of work that
runs in one process, so a refresh costs its data and not the start of a process (in production
a Fargate task). Failures stay where they happen: a staging or a unit that fails is tried again
after a back-off (30 s, doubling to 15 min) while the other units go on; what still fails when
the window ends is reported, and left pending for the next window. Newest dates come first, so a
backlog of late data never holds today's refreshes back; a unit not reached when the window ends
stays pending for the successor.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

from data_acq.backoff import Retries
from data_acq.curate.cursor import new_raw_keys
from data_acq.curate.staging import MAX_OBJECTS, StageResult, check_buckets, stage
from data_acq.curate.tables import CuratedTables
from data_acq.curate.units import Unit, UnitResult, pending_units
from data_acq.curate.warehouse import refresh_warehouse
from data_acq.live.shares import Share
from data_acq.pipeline import refresh
from data_acq.storage import ObjectStore

log = logging.getLogger(__name__)

# what failed, beside the units' labels
STAGING = "staging"
PENDING = "listing pending units"
WAREHOUSE = "warehouse"


@dataclass(frozen=True, slots=True)
class WindowLimits:
    window_s: float = 600.0
    interval_s: float = 60.0


@dataclass
class Tick:
    """What one refresh did."""

    number: int
    at: datetime
    staged: StageResult | None = None
    backlog: bool = False  # more raw objects wait than one staging takes: no pause before the next
    units: list[UnitResult] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # "staging" or a unit's label -> why
    left: int = 0  # pending units of the share left for later (the window ended first)
    warehouse: str | None = None  # where the warehouse's views were written, if they changed
    seconds: float = 0.0
    cpu_s: float = 0.0  # CPU time of the whole process (Polars' threads included)


@dataclass
class WindowStats:
    ticks: int = 0
    raw_objects: int = 0
    messages: int = 0
    refreshes: int = 0
    failures: int = 0
    cpu_s: float = 0.0
    busy_s: float = 0.0  # time spent in ticks, not waiting for the next
    failing: dict[str, str] = field(default_factory=dict)  # still failing when it ended

    def add(self, tick: Tick, recovered: list[str]) -> None:
        self.ticks += 1
        if tick.staged:
            self.raw_objects += tick.staged.raw_objects
            self.messages += tick.staged.messages
        self.refreshes += len(tick.units)
        self.failures += len(tick.failed)
        self.cpu_s += tick.cpu_s
        self.busy_s += tick.seconds
        for label in recovered:
            self.failing.pop(label, None)
        self.failing |= tick.failed


def unit_label(unit: Unit) -> str:
    return f"{unit[0].isoformat()} bucket {unit[1]:02d}"


def _why(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def live_ticks(
    store: ObjectStore,
    share: Share,
    buckets: int,
    limits: WindowLimits = WindowLimits(),
    queue_url: str | None = None,
    stop: threading.Event | None = None,
    clock: Callable[[], float] = time.monotonic,
    stats: WindowStats | None = None,
) -> Iterator[Tick]:
    """The window's ticks, one every `interval_s` (at once while a backlog waits), until
    `window_s` has passed or `stop` is set. A bucket count other than the store's is refused
    before anything is done (data_acq.curate.staging.check_buckets)."""
    stop = stop or threading.Event()
    stats = stats if stats is not None else WindowStats()
    check_buckets(store, buckets)
    retries = Retries(clock)
    tables = CuratedTables(store)  # kept open: each commit reads only the log's new entries
    ends = clock() + limits.window_s
    number = 0
    while True:
        number += 1
        began, cpu = clock(), time.process_time()
        tick = Tick(number, datetime.now(UTC))
        recovered: list[str] = []
        if share.stages and retries.due(STAGING):
            try:
                keys = new_raw_keys(store, limit=MAX_OBJECTS)
                tick.staged = stage(store, keys, buckets) if keys else None
                tick.backlog = len(keys) == MAX_OBJECTS
                retries.succeeded(STAGING)
                recovered.append(STAGING)
            except Exception as exc:  # tried again after a back-off; the units go on
                tick.failed[STAGING] = _why(exc)
                retries.failed(STAGING)
        try:
            mine = [unit for unit in pending_units(store) if share.owns(unit[1])]
            recovered.append(PENDING)
        except Exception as exc:  # storage unreachable: the next tick looks again
            tick.failed[PENDING] = _why(exc)
            mine = []
        mine.sort(key=lambda unit: (-unit[0].toordinal(), unit[1]))  # today's first
        for position, unit in enumerate(mine):
            if stop.is_set() or clock() >= ends:
                tick.left = len(mine) - position
                break
            label = unit_label(unit)
            if not retries.due(unit):
                continue
            try:
                tick.units.append(refresh(store, *unit, queue_url=queue_url, tables=tables))
                retries.succeeded(unit)
                recovered.append(label)
            except Exception as exc:  # the unit stays pending; the others go on
                tick.failed[label] = _why(exc)
                retries.failed(unit)
        if tick.units:
            try:
                tick.warehouse = refresh_warehouse(store)
                recovered.append(WAREHOUSE)
            except Exception as exc:  # the views are written again at the next refresh
                tick.failed[WAREHOUSE] = _why(exc)
        tick.seconds = clock() - began
        tick.cpu_s = time.process_time() - cpu
        stats.add(tick, recovered)
        yield tick
        if stop.is_set() or clock() >= ends:
            return
        if not tick.backlog:
            stop.wait(max(0.0, min(began + limits.interval_s, ends) - clock()))
            if stop.is_set() or clock() >= ends:
                return
