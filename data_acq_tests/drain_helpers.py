"""Helpers for the drain tests: unique payloads, a drain in a thread, what raw storage holds."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from data_acq.acquire.broker import publish_all
from data_acq.acquire.drain import Drain, DrainLimits, DrainStats
from data_acq.acquire.raw import raw_keys, read_raw
from data_acq.devtools.simulate import SimulationSpec, simulate
from data_acq.settings import BrokerSettings
from data_acq.storage import ObjectStore


def unique_messages(count: int, sites: int = 10, seed: int = 1) -> list[tuple[str, bytes]]:
    minutes = count // sites + 1
    spec = SimulationSpec(sites=sites, minutes=minutes, seed=seed, duplicate_rate=0, outage_sites=0)
    messages = list(simulate(spec))[:count]
    assert len({body for _, body in messages}) == count
    return messages


def stored(store: ObjectStore) -> Counter[tuple[str, bytes]]:
    """(topic, payload) of every message in raw storage, with how often it is there."""
    return Counter((m.topic or "", m.payload) for m in read_raw(store, raw_keys(store)))


def missing(sent: list[tuple[str, bytes]], store: ObjectStore) -> int:
    have = stored(store)
    return sum(1 for message in sent if message not in have)


@dataclass
class DrainThread:
    drain: Drain
    thread: threading.Thread
    error: list[BaseException] = field(default_factory=list)
    stats: DrainStats | None = None

    def join(self, timeout: float = 120) -> DrainStats:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the drain did not end"
        if self.error:
            raise self.error[0]
        assert self.stats is not None
        return self.stats


def start_drain(
    broker: BrokerSettings,
    store: ObjectStore,
    until: int | Callable[[DrainStats], bool] | None = None,
    **limits: object,
) -> DrainThread:
    """A drain in a thread, subscribed when this returns. With `until` (a number of messages
    stored, or a test of the drain's figures), it ends as soon as that holds -- its `on_flush`
    hook sets its `stop` -- rather than after waiting idle."""
    limits.setdefault("max_seconds", 120.0)  # a safety net, never the way a test ends
    drain = Drain(broker, None, store, DrainLimits(**limits))  # type: ignore[arg-type]
    if until is not None:
        done = until if callable(until) else lambda stats: stats.stored >= until

        def check(stats: DrainStats) -> None:
            if done(stats):
                drain.stop.set()

        drain.on_flush = check
    holder = DrainThread(drain, threading.Thread())

    def run() -> None:
        try:
            holder.stats = drain.run()
        except BaseException as exc:
            holder.error.append(exc)

    holder.thread = threading.Thread(target=run, daemon=True)
    holder.thread.start()
    assert drain.subscribed.wait(15), "the drain did not subscribe"
    return holder


def publish_in_background(
    port: int, messages: list[tuple[str, bytes]], rate: float | None = None
) -> threading.Thread:
    publisher = BrokerSettings(host="127.0.0.1", port=port, client_id=f"pub-{id(messages)}")
    thread = threading.Thread(
        target=publish_all, args=(publisher, None, iter(messages)), kwargs={"rate": rate}
    )
    thread.start()
    return thread
