"""The MQTT connection (paho-mqtt 2.x): TLS, credentials, protocol version, reconnects, errors.

The first connection is made synchronously so a wrong host, port, CA or password fails at once
with a message that says which; after that paho reconnects with backoff by itself.
"""

from __future__ import annotations

import logging
import signal
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from data_acq.settings import BrokerSettings

log = logging.getLogger(__name__)

RECONNECT_MIN_S = 1
RECONNECT_MAX_S = 60


class BrokerError(RuntimeError):
    """The broker cannot be used; the message says why and never holds the password."""


def make_client(
    broker: BrokerSettings,
    ca_file: Path | None,
    persistent: bool = False,
    manual_ack: bool = False,
) -> mqtt.Client:
    """A configured, unconnected client.

    `persistent` asks the broker to keep the session (subscriptions and queued QoS 1 messages)
    while the client is away: `clean_session=False` here on 3.1.1; on MQTT v5 `connect` sends
    `clean_start=False` with a session expiry.
    """
    v5 = broker.protocol == "5"
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=broker.client_id,
        protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
        clean_session=None if v5 else not persistent,
        manual_ack=manual_ack,
    )
    if broker.tls:
        client.tls_set(ca_certs=str(ca_file) if ca_file else None)  # verifies the host name
    if broker.username:
        client.username_pw_set(broker.username, broker.password)
    client.reconnect_delay_set(RECONNECT_MIN_S, RECONNECT_MAX_S)
    return client


def connect(
    client: mqtt.Client,
    broker: BrokerSettings,
    persistent: bool = False,
    session_expiry_s: int = 0,
    receive_maximum: int | None = None,
    timeout_s: float = 15.0,
) -> None:
    """Connect and wait for the broker's answer; raise BrokerError with a clear reason."""
    options: dict[str, object] = {}
    if broker.protocol == "5":
        options["clean_start"] = not persistent
        props = Properties(mqtt.PacketTypes.CONNECT)
        if persistent:
            props.SessionExpiryInterval = session_expiry_s
        if receive_maximum:
            props.ReceiveMaximum = receive_maximum  # unacknowledged deliveries we accept
        if persistent or receive_maximum:
            options["properties"] = props
    answer: dict[str, Any] = {}

    def on_connect(
        _c: mqtt.Client, _u: object, flags: object, reason: ReasonCode, _p: object
    ) -> None:
        answer["reason"] = reason
        answer["flags"] = flags

    previous = client.on_connect
    client.on_connect = on_connect
    where = broker.address
    try:
        client.connect(broker.host, broker.port, broker.keepalive, **options)  # type: ignore[arg-type]
    except socket.gaierror:
        raise BrokerError(f"cannot resolve broker host {broker.host!r}") from None
    except ConnectionRefusedError:
        raise BrokerError(
            f"connection refused by {where}: is the broker running on that port?"
        ) from None
    except ssl.SSLCertVerificationError as exc:
        raise BrokerError(
            f"TLS verification of {where} failed: {exc.verify_message} "
            "(check CA_CERT_URL / CA_CERT_FILE and MQTT_BROKER)"
        ) from None
    except ssl.SSLError as exc:
        raise BrokerError(f"TLS handshake with {where} failed: {exc.reason or exc}") from None
    except (TimeoutError, OSError) as exc:
        raise BrokerError(f"cannot reach {where}: {exc.strerror or type(exc).__name__}") from None
    deadline = time.monotonic() + timeout_s
    try:
        while "reason" not in answer:
            if time.monotonic() > deadline:
                raise BrokerError(f"no answer from {where} within {timeout_s:.0f} s")
            rc = client.loop(timeout=0.1)
            if rc not in (mqtt.MQTT_ERR_SUCCESS,) and "reason" not in answer:
                raise BrokerError(
                    f"connection to {where} dropped before the broker answered "
                    "(a TLS port spoken to in plain MQTT, or the other way round?)"
                )
    except BaseException:
        client.disconnect()
        raise
    finally:
        client.on_connect = previous
    reason = answer["reason"]
    if reason.is_failure:
        client.disconnect()
        hint = ""
        if reason.value in (0x86, 0x87, 4, 5):  # bad user name or password / not authorized
            hint = " (check MQTT_USERNAME and MQTT_PASSWORD)"
        raise BrokerError(f"broker {where} refused the connection: {reason}{hint}")
    if previous is not None:
        previous(client, client.user_data_get(), answer["flags"], reason, None)


def subscribe_on_connect(
    client: mqtt.Client,
    topics: tuple[str, ...],
    qos: int = 1,
    on_change: Callable[[bool, str], None] | None = None,
) -> None:
    """(Re)subscribe every time the connection comes up, and log connection changes.

    `on_change(up, reason)` is told of each connect (before subscribing) and each disconnect.
    """

    def on_connect(
        c: mqtt.Client, _u: object, flags: object, reason: ReasonCode, _p: object
    ) -> None:
        if reason.is_failure:
            log.error("broker refused the reconnection: %s", reason)
            return
        if on_change:
            on_change(True, "connected")
        c.subscribe([(topic, qos) for topic in topics])
        present = getattr(flags, "session_present", None)
        log.info("connected (session present: %s); subscribing to %s", present, ", ".join(topics))

    def on_subscribe(_c: mqtt.Client, _u: object, _mid: int, reasons: list, _p: object) -> None:
        # from here on the broker routes what is published to us; before, nothing was kept
        log.info("subscribed to %s (%s)", ", ".join(topics), ", ".join(map(str, reasons)))

    def on_disconnect(
        _c: mqtt.Client, _u: object, _f: object, reason: ReasonCode, _p: object
    ) -> None:
        if on_change:
            on_change(False, str(reason))
        if reason.is_failure:
            log.warning("connection lost (%s); reconnecting with backoff", reason)

    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    client.on_subscribe = on_subscribe


@contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """An event set by SIGINT or SIGTERM, with the previous handlers restored afterwards."""
    stop = threading.Event()
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum: int, _frame: object) -> None:
        log.info("received %s; stopping", signal.Signals(signum).name)
        stop.set()

    for sig in previous:
        signal.signal(sig, handler)
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def run_subscriber(
    broker: BrokerSettings,
    ca_file: Path | None,
    on_message: Callable[[mqtt.MQTTMessage], None],
    stop: threading.Event,
) -> None:
    """Subscribe to the configured topics and hand each message over until `stop` is set."""
    client = make_client(broker, ca_file)
    subscribe_on_connect(client, broker.topics)
    client.on_message = lambda _c, _u, message: on_message(message)
    connect(client, broker)
    client.loop_start()
    try:
        stop.wait()
    finally:
        client.disconnect()
        client.loop_stop()


def publish_all(
    broker: BrokerSettings,
    ca_file: Path | None,
    messages: Iterator[tuple[str, bytes]],
    qos: int = 1,
    rate: float | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> int:
    """Publish messages with QoS 1 (optionally at `rate` per second); return how many."""
    client = make_client(broker, ca_file)
    client.max_queued_messages_set(1000)
    connect(client, broker)
    client.loop_start()
    count = 0
    started = time.monotonic()
    info: mqtt.MQTTMessageInfo | None = None
    try:
        for topic, payload in messages:
            info = client.publish(topic, payload, qos=qos)
            while info.rc == mqtt.MQTT_ERR_QUEUE_SIZE:
                time.sleep(0.005)
                info = client.publish(topic, payload, qos=qos)
            count += 1
            if rate:
                ahead = started + count / rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
            if on_progress and count % 1000 == 0:
                on_progress(count)
        if info is not None:
            info.wait_for_publish(timeout=60)
    finally:
        client.disconnect()
        client.loop_stop()
    return count
