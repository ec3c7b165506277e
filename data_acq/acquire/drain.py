"""The drain: MQTT topics into immutable raw objects, at least once, with nothing lost.

One drain window is one persistent-session connection. Messages are collected in a batch by
paho's network thread; the calling thread flushes the batch to raw storage and only then
acknowledges its messages. Until then the broker holds them, so a crash at any point causes
redelivery, never loss.

Brokers cap unacknowledged deliveries (Mosquitto: 20 for MQTT 3.1.1 clients by default; on v5,
the client's Receive Maximum), so a batch must not wait to fill up: it is flushed when it is big
enough, when it is old enough, or when the stream goes quiet -- "quiet" meaning a silence ten
times the recent gap between messages, which is how a broker waiting for acknowledgements looks
from this side.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import paho.mqtt.client as mqtt

from data_acq.acquire.broker import BrokerError, connect, make_client, subscribe_on_connect
from data_acq.acquire.raw import BATCH_MESSAGES, encode_object, raw_key
from data_acq.contract import too_deep
from data_acq.messages import encode_record, site_of
from data_acq.settings import BrokerSettings
from data_acq.storage import ObjectExists, ObjectStore

log = logging.getLogger(__name__)


class DrainWriteError(RuntimeError):
    """Raw storage kept failing: nothing of the batch was acknowledged."""


class DrainError(RuntimeError):
    """The drain cannot go on (a callback on paho's network thread failed): the run fails, and
    whatever was not stored is redelivered to the next one."""


@dataclass(frozen=True, slots=True)
class DrainLimits:
    max_seconds: float = 600.0  # the window: a run ends after this long
    idle_exit_s: float | None = None  # ...or after this long without any message
    batch_messages: int = BATCH_MESSAGES
    batch_bytes: int = 16 * 2**20
    max_batch_age_s: float = 2.0
    min_quiet_s: float = 0.005
    session_expiry_s: int = 7 * 86_400  # how long the broker keeps the session while away
    write_attempts: int = 5
    write_backoff_s: float = 0.5
    # a window that spent more than this share of its time without a connection did not drain
    max_disconnected_share: float = 0.5


@dataclass(slots=True)
class _Received:
    mid: int
    connection: int
    qos: int
    line: bytes  # the raw record, encoded on arrival


@dataclass
class DrainStats:
    messages: int = 0
    bytes: int = 0
    objects: int = 0
    stored: int = 0
    acknowledged: int = 0
    unacknowledged: int = 0  # stored, but the connection they came on was gone: redelivered
    redelivered: int = 0  # messages the broker flagged as sent before (DUP)
    not_json: int = 0
    sites: set[str] = field(default_factory=set)
    topics: dict[str, int] = field(default_factory=dict)  # per topic kind: u/data, bridge_state...
    first_received: datetime | None = None
    last_received: datetime | None = None
    max_lag_s: float | None = None  # largest receive time minus payload `t`
    keys: list[str] = field(default_factory=list)
    window_s: float = 0.0  # how long the window lasted
    connection_losses: int = 0
    reconnects: int = 0
    disconnected_s: float = 0.0  # time in the window without a connection to the broker
    connection_events: list[str] = field(default_factory=list)  # "HH:MM:SS connection ... lost"

    @property
    def disconnected_share(self) -> float:
        return self.disconnected_s / self.window_s if self.window_s else 0.0

    def unreachable(self, address: str, max_share: float) -> str | None:
        """Why the window did not drain, when the broker was away for more than `max_share`
        of it (what was stored is stored; the broker keeps the rest for the next window)."""
        if self.disconnected_share <= max_share:
            return None
        return (
            f"the broker at {address} was unreachable for {self.disconnected_s:.0f} of "
            f"{self.window_s:.0f} s of the window ({self.connection_losses} connection losses); "
            f"{self.stored} messages stored"
        )

    def to_metadata(self) -> dict[str, object]:
        return {
            "messages": self.messages,
            "bytes": self.bytes,
            "objects": self.objects,
            "stored": self.stored,
            "acknowledged": self.acknowledged,
            "unacknowledged": self.unacknowledged,
            "redelivered": self.redelivered,
            "not_json": self.not_json,
            "sites": len(self.sites),
            "topics": ", ".join(f"{k}: {v}" for k, v in sorted(self.topics.items())) or "none",
            "first_received": self.first_received.isoformat() if self.first_received else "none",
            "last_received": self.last_received.isoformat() if self.last_received else "none",
            "max_lag_s": round(self.max_lag_s, 1) if self.max_lag_s is not None else "none",
            "window_s": round(self.window_s, 1),
            "connection_losses": self.connection_losses,
            "reconnects": self.reconnects,
            "disconnected_s": round(self.disconnected_s, 1),
        }


class _Probe(msgspec.Struct):
    t: object = None


_probe = msgspec.json.Decoder(_Probe)


def _payload_time(payload: bytes) -> tuple[bool, int | None]:
    """(is JSON that a raw record can hold verbatim, `t` when it is an integer): one fast pass.

    Whatever the bytes, this answers: a payload nested too deeply for a parser is stored as
    text (and rejected downstream), never decoded here.
    """
    if too_deep(payload):
        return False, None
    try:
        t = _probe.decode(payload).t
    except msgspec.ValidationError:
        return True, None  # valid JSON, not an object
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return False, None
    return True, t if isinstance(t, int) and not isinstance(t, bool) else None


def _topic(message: mqtt.MQTTMessage) -> str:
    """The topic; brokers refuse topics that are not UTF-8, but a bad one must not stop us."""
    try:
        return message.topic
    except UnicodeDecodeError:
        return bytes(message._topic).decode("utf-8", "replace")


class Drain:
    def __init__(
        self,
        broker: BrokerSettings,
        ca_file: Path | None,
        store: ObjectStore,
        limits: DrainLimits = DrainLimits(),
        stop: threading.Event | None = None,
        on_flush: Callable[[DrainStats], None] | None = None,
        on_connection: Callable[[str], None] | None = None,
        on_subscribed: Callable[[], None] | None = None,
    ) -> None:
        self.broker = broker
        self.ca_file = ca_file
        self.store = store
        self.limits = limits
        self.stop = stop or threading.Event()
        self.on_flush = on_flush
        self.on_connection = on_connection  # told of each loss and reconnect, as it happens
        # told each time the broker confirms the subscriptions: from then on, what is published
        # is kept for this session (before the first one, a new session holds nothing)
        self.on_subscribed = on_subscribed
        self.stats = DrainStats()
        self.subscribed = threading.Event()  # set once the broker confirmed the subscriptions
        self._cond = threading.Condition()
        self._batch: list[_Received] = []
        self._batch_bytes = 0
        self._batch_started = 0.0
        self._batch_first: datetime | None = None
        self._last_arrival = 0.0
        self._gap = limits.max_batch_age_s / 10  # recent gap between messages (EWMA)
        self._connection = 0  # bumped on every connect and disconnect
        self._connected = False
        self._closing = False
        self._refused: str | None = None  # subscriptions the broker refused
        self._failure: BaseException | None = None  # raised in a callback on paho's thread
        self._down_since: float | None = None  # when the connection was lost, if it is
        self._ever_connected = False

    # --- paho's network thread ----------------------------------------------------------------

    def _guarded(self, callback: Callable[..., None]) -> Callable[..., None]:
        """A callback whose failure ends the run with an error instead of silently stopping
        paho's network thread (which would leave the run waiting, and exiting 0)."""

        def run(*args: object) -> None:
            try:
                callback(*args)
            except BaseException as exc:
                log.exception("MQTT callback %s failed", getattr(callback, "__name__", "?"))
                with self._cond:
                    self._failure = self._failure or exc
                    self._cond.notify()

        return run

    def _connection_changed(self, up: bool, reason: str) -> None:
        now = time.monotonic()
        event = None
        with self._cond:
            self._connection += 1  # acknowledgements of earlier deliveries are void now
            self._connected = up
            stats = self.stats
            if not up and not self._closing:
                stats.connection_losses += 1
                self._down_since = now
                event = f"connection to {self.broker.address} lost ({reason}); reconnecting"
            elif up:
                if self._down_since is not None:
                    stats.disconnected_s += now - self._down_since
                    self._down_since = None
                if self._ever_connected:
                    stats.reconnects += 1
                    event = f"reconnected to {self.broker.address}"
                self._ever_connected = True
            if event:
                stats.connection_events.append(f"{datetime.now(UTC):%H:%M:%S} {event}")
        if event:
            log.warning(event)
            if self.on_connection:
                self.on_connection(event)

    def _on_subscribe(
        self, _c: mqtt.Client, _u: object, _mid: int, reasons: list, _p: object
    ) -> None:
        # a failure code, or QoS 0 granted instead of 1: either way no at-least-once delivery
        refused = [
            f"{topic} ({reason})"
            for topic, reason in zip(self.broker.topics, reasons, strict=False)
            if reason.is_failure or reason.value < 1
        ]
        with self._cond:
            self._refused = ", ".join(refused) or None
            self._cond.notify()
        if not refused:
            log.info("subscribed to %s", ", ".join(self.broker.topics))
            self.subscribed.set()
            if self.on_subscribed:
                self.on_subscribed()

    def _on_message(self, _c: mqtt.Client, _u: object, message: mqtt.MQTTMessage) -> None:
        received_at = datetime.now(UTC)
        payload = bytes(message.payload)
        topic = _topic(message)
        is_json, t = _payload_time(payload)
        line = encode_record(
            topic,
            payload,
            received_at,
            message.qos,
            message.retain,
            bool(message.dup),
            is_json=is_json,
        )
        now = time.monotonic()
        with self._cond:
            if self._closing:
                return  # not acknowledged: the broker redelivers it to the next run
            if not self._batch:
                self._batch_started = now
                self._batch_first = received_at
            else:
                self._gap = 0.8 * self._gap + 0.2 * min(now - self._last_arrival, 1.0)
            self._last_arrival = now
            self._batch.append(_Received(message.mid, self._connection, message.qos, line))
            self._batch_bytes += len(line)
            self._count(message, topic, payload, received_at, t, is_json)
            if len(self._batch) >= self.limits.batch_messages:
                self._cond.notify()

    def _count(
        self,
        message: mqtt.MQTTMessage,
        topic: str,
        payload: bytes,
        received_at: datetime,
        t: int | None,
        is_json: bool,
    ) -> None:
        stats = self.stats
        stats.messages += 1
        stats.bytes += len(payload)
        stats.redelivered += bool(message.dup)
        stats.not_json += not is_json
        site = site_of(topic)
        if site is not None:
            stats.sites.add(site)
        kind = topic.split("/", 2)[2] if topic.count("/") >= 2 else topic
        if kind.startswith("u/meta/"):
            kind = "u/meta/#"
        stats.topics[kind] = stats.topics.get(kind, 0) + 1
        stats.first_received = stats.first_received or received_at
        stats.last_received = received_at
        if t is not None and abs(t) < 2**53:
            lag = received_at.timestamp() - t
            if stats.max_lag_s is None or lag > stats.max_lag_s:
                stats.max_lag_s = lag

    # --- the calling thread -------------------------------------------------------------------

    def _due(self, now: float) -> bool:
        """Whether the current batch should be flushed now (called with the lock held)."""
        if not self._batch:
            return False
        quiet = min(max(10 * self._gap, self.limits.min_quiet_s), self.limits.max_batch_age_s)
        return (
            len(self._batch) >= self.limits.batch_messages
            or self._batch_bytes >= self.limits.batch_bytes
            or now - self._batch_started >= self.limits.max_batch_age_s
            or now - self._last_arrival >= quiet
        )

    def _flush(self, client: mqtt.Client) -> None:
        with self._cond:
            batch, first = self._batch, self._batch_first
            self._batch, self._batch_bytes, self._batch_first = [], 0, None
        if not batch or first is None:
            return
        data = encode_object(r.line for r in batch)
        key = self._write(first, data)
        self.stats.objects += 1
        self.stats.stored += len(batch)
        self.stats.keys.append(key)
        acked = void = 0
        with self._cond:  # a disconnect cannot slip in between the check and the ack
            for received in batch:
                if not received.qos:
                    continue
                if self._connected and received.connection == self._connection:
                    client.ack(received.mid, received.qos)
                    acked += 1
                else:
                    void += 1
        self.stats.acknowledged += acked
        self.stats.unacknowledged += void
        if self.on_flush:
            self.on_flush(self.stats)
        log.debug("stored %d messages in %s; acknowledged %d", len(batch), key, acked)

    def _write(self, first: datetime, data: bytes) -> str:
        attempts = self.limits.write_attempts
        for attempt in range(1, attempts + 1):
            key = raw_key(first, self.broker.client_id)
            try:
                self.store.put_new(key, data)
                return key
            except ObjectExists:
                continue  # a fresh random suffix next time round
            except Exception as exc:
                if attempt == attempts:
                    raise DrainWriteError(
                        f"raw storage failed {attempts} times, last with {type(exc).__name__}: "
                        f"{exc}; nothing of this batch was acknowledged, so the broker will "
                        "redeliver it to the next run"
                    ) from exc
                delay = self.limits.write_backoff_s * 2 ** (attempt - 1)
                log.warning(
                    "raw storage write failed (attempt %d of %d, %s: %s); retrying in %.1f s",
                    attempt,
                    attempts,
                    type(exc).__name__,
                    exc,
                    delay,
                )
                time.sleep(delay)
        raise DrainWriteError("could not find a free raw object name")  # pragma: no cover

    def run(self) -> DrainStats:
        limits = self.limits
        self.store.check()  # unusable storage fails the run now, not at the first message
        client = make_client(self.broker, self.ca_file, persistent=True, manual_ack=True)
        subscribe_on_connect(client, self.broker.topics, on_change=self._connection_changed)
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        for name in ("on_connect", "on_disconnect", "on_message", "on_subscribe"):
            setattr(client, name, self._guarded(getattr(client, name)))
        connect(
            client,
            self.broker,
            persistent=True,
            session_expiry_s=limits.session_expiry_s,
            receive_maximum=min(65_535, 2 * limits.batch_messages),
        )
        client.loop_start()
        started = time.monotonic()
        self._last_arrival = started
        try:
            return self._drain(client, started)
        finally:
            now = time.monotonic()
            with self._cond:
                self._closing = True
                if self._down_since is not None:
                    self.stats.disconnected_s += now - self._down_since
                    self._down_since = None
            self.stats.window_s = now - started
            client.disconnect()
            client.loop_stop()

    def _drain(self, client: mqtt.Client, started: float) -> DrainStats:
        limits = self.limits
        while True:
            now = time.monotonic()
            with self._cond:
                due = self._due(now)
                idle_for = now - self._last_arrival
                refused = self._refused
                failure = self._failure
            if failure is not None:
                self._flush(client)  # what was received before is fine: store and ack it
                raise DrainError(
                    f"an MQTT callback failed ({type(failure).__name__}: {failure}); "
                    "what was not stored is redelivered to the next run"
                ) from failure
            if refused:
                raise BrokerError(
                    f"broker refused the QoS 1 subscription to {refused}; "
                    "without it delivery is not at least once"
                )
            if due:
                self._flush(client)
                continue
            if (
                self.stop.is_set()
                or now - started >= limits.max_seconds
                or (limits.idle_exit_s is not None and idle_for >= limits.idle_exit_s)
            ):
                break
            with self._cond:
                self._cond.wait(timeout=limits.min_quiet_s if self._batch else 0.05)
        with self._cond:
            self._closing = True
        self._flush(client)
        return self.stats
