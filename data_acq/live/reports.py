"""How often a live worker tells Dagster about what it staged and the units it refreshed.

Each report of a unit is a dozen events in Dagster's database (a materialization per curated
table, a result per check). Reporting every refresh of every unit would make that database grow
with the number of buckets and the refresh cadence; instead a worker reports at most a fixed
number of units an hour (a token bucket), the units not reported for the longest first, each
with everything its refreshes since its last report did. The data itself is as fresh as the
refreshes; only the UI's metadata of a unit may be minutes older. Staging is reported the same
way: at most once a minute, whatever the refresh interval.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace

from data_acq.curate.staging import StageResult
from data_acq.curate.units import Unit, UnitResult

REPORTS_PER_HOUR = 60
BURST = 10
STAGING_REPORT_EVERY_S = 60.0


def merged(older: UnitResult, newer: UnitResult) -> UnitResult:
    """Two refreshes of a unit as one report: the newer's state of the day, both refreshes'
    hours and rows."""
    rows = {t: older.rows.get(t, 0) + newer.rows.get(t, 0) for t in {*older.rows, *newer.rows}}
    sent = (
        None
        if older.sent_to_queue is None and newer.sent_to_queue is None
        else (older.sent_to_queue or 0) + (newer.sent_to_queue or 0)
    )
    return replace(
        newer,
        hours=sorted({*older.hours, *newer.hours}),
        rows=rows,
        sent_to_queue=sent,
        previews={**older.previews, **newer.previews},
    )


class Reports:
    """Unit results waiting to be reported, and the budget that lets them out."""

    def __init__(
        self,
        per_hour: float = REPORTS_PER_HOUR,
        burst: int = BURST,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = per_hour / 3600.0
        self.burst = burst
        self.clock = clock
        # one report at once, the rest earned: a run per window, so a full burst at every start
        # would double the reports of a short refresh interval (measured: 123 MB a day at 10 s)
        self.tokens = 1.0
        self._filled = clock()
        self.waiting: dict[Unit, UnitResult] = {}
        self.reported_at: dict[Unit, float] = {}

    def add(self, result: UnitResult) -> None:
        unit = (result.day, result.bucket)
        older = self.waiting.get(unit)
        self.waiting[unit] = result if older is None else merged(older, result)

    def due(self) -> list[UnitResult]:
        """The units to report now, as many as the budget allows."""
        self._refill()
        return self._take(int(self.tokens))

    def last(self) -> list[UnitResult]:
        """At the window's end: what the budget allows, and at least one (the successor
        reports what is left, if it refreshes those units again)."""
        self._refill()
        return self._take(max(1, int(self.tokens)))

    def _refill(self) -> None:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self._filled) * self.rate)
        self._filled = now

    def _take(self, count: int) -> list[UnitResult]:
        order = sorted(self.waiting, key=lambda unit: self.reported_at.get(unit, float("-inf")))
        taken = [self.waiting.pop(unit) for unit in order[:count]]
        now = self.clock()
        for result in taken:
            self.reported_at[(result.day, result.bucket)] = now
        self.tokens = max(0.0, self.tokens - len(taken))
        return taken


class StagingReports:
    """What the refreshes staged, gathered and let out at most once every `every_s`."""

    def __init__(
        self, every_s: float = STAGING_REPORT_EVERY_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.every_s = every_s
        self.clock = clock
        self.waiting: StageResult | None = None
        self._reported = float("-inf")

    def add(self, result: StageResult) -> StageResult | None:
        """The staging to report now (all gathered since the last report), if one is due."""
        self.waiting = result if self.waiting is None else self.waiting.merged(result)
        if self.clock() - self._reported < self.every_s:
            return None
        return self.last()

    def last(self) -> StageResult | None:
        """What is gathered and not yet reported (at the window's end)."""
        taken, self.waiting = self.waiting, None
        if taken is not None:
            self._reported = self.clock()
        return taken
