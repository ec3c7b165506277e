"""Progress of long work: one small protocol for the core; bars on a terminal, lines in a log.

The core says what it is doing, how far it is and out of how much (`progress("staging", 40,
120, "objects")`); the command line shows that as a tqdm bar with its rate (none when stderr is
not a terminal), Dagster runs as an occasional line in their event log.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Protocol

from tqdm import tqdm


class Progress(Protocol):
    def __call__(self, what: str, done: int, total: int | None, unit: str = "") -> None: ...


def logged(log: Callable[[str], None], every_s: float = 15.0) -> Progress:
    """Progress as log lines: the first, then at most one every `every_s` seconds per kind of
    work, and the last."""
    last: dict[str, float] = {}

    def report(what: str, done: int, total: int | None, unit: str = "") -> None:
        now = time.monotonic()
        finished = total is not None and done >= total
        if not finished and now - last.get(what, -every_s) < every_s:
            return
        last[what] = now
        out_of = f" of {total:,}" if total is not None else ""
        log(f"{what}: {done:,}{out_of} {unit}".rstrip())

    return report


class Bars:
    """A tqdm bar per kind of work, on stderr; silent when stderr is not a terminal."""

    def __init__(self) -> None:
        self._bars: dict[str, tqdm] = {}

    def __call__(self, what: str, done: int, total: int | None, unit: str = "") -> None:
        bar = self._bars.get(what)
        if bar is None:
            bar = self._bars[what] = tqdm(
                desc=what,
                total=total,
                unit=f" {unit}" if unit else "it",
                unit_scale=unit == "B",  # kB, MB for bytes; counts as they are
                file=sys.stderr,
                disable=None,  # None: only on a terminal
                dynamic_ncols=True,
            )
        if total is not None and bar.total != total:
            bar.total = total
        bar.update(done - bar.n)

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()
        self._bars.clear()

    def __enter__(self) -> Bars:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
