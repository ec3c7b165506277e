"""All configuration in one typed object, read from the environment.

The variable names of the original project keep working (`MQTT_BROKER`, `MQTT_PORT`, ...).
The password is kept out of `repr`, so printing the settings never shows it.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import date
from pathlib import Path
from typing import Literal

from paho.mqtt.client import topic_matches_sub

DEFAULT_TOPIC = "a/+/u/data"
TLS_PORT = 8883


class SettingsError(ValueError):
    """A configuration value that cannot be used; the message names the variable."""


@dataclass(frozen=True, slots=True)
class BrokerSettings:
    host: str = "localhost"
    port: int = 1883
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    topics: tuple[str, ...] = (DEFAULT_TOPIC,)
    client_id: str = field(default_factory=lambda: f"data-acq-{socket.gethostname()}")
    protocol: Literal["5", "3.1.1"] = "5"
    ca_cert_url: str | None = None
    ca_cert_file: str | None = None
    ca_cert_sha256: str | None = None  # the CA's expected SHA-256 fingerprint (hex), if pinned
    keepalive: int = 60

    @property
    def tls(self) -> bool:
        """TLS is on when a CA is configured or the port is the MQTT-over-TLS port."""
        return bool(self.ca_cert_url or self.ca_cert_file) or self.port == TLS_PORT

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def for_role(self, role: str) -> BrokerSettings:
        """The same broker under a client id of its own.

        The drain's persistent session is keyed on `client_id`; a listener or publisher that
        connected with it would take that session over (and a clean start would discard the
        messages queued in it).
        """
        return replace(self, client_id=f"{self.client_id}-{role}-{os.getpid()}")

    def for_subscription(self, subscription: Subscription) -> BrokerSettings:
        """The same broker for one drain: its topics, its persistent session."""
        return replace(self, topics=subscription.topics, client_id=subscription.client_id)


@dataclass(frozen=True, slots=True)
class Subscription:
    """One drain: its own persistent session (client id) over its own topics."""

    name: str
    topics: tuple[str, ...]
    client_id: str


@dataclass(frozen=True, slots=True)
class Settings:
    broker: BrokerSettings
    storage: str = "data"  # a local folder, or s3://bucket/prefix
    cache_dir: Path = Path.home() / ".cache" / "data-acq"
    subscriptions: tuple[Subscription, ...] = ()
    drain_window_s: float = 600.0
    sensors_running: bool = False  # whether Dagster's sensors start switched on
    pipeline_queue_url: str | None = None  # SQS queue for the pipeline-format documents
    buckets: int = 1  # sites are spread over this many buckets: the units of processing
    start_date: date = date(2024, 10, 1)  # the first day of the date partitions
    refresh_interval_s: int = 60  # how often a live worker stages and refreshes
    raw_freshness_minutes: int = 30  # raw_messages turns red when no data arrived for this long
    live_workers: int = 1  # live-processing runs at once, each owning a share of the buckets
    live_window_s: float = 600.0  # seconds per live-processing run
    # a window run's successor is launched this long before the window ends, so that its
    # start-up (a Fargate task: 30-90 s) is never in the data's path
    handover_s: float = 90.0
    # on ECS, the task definition drain runs use (deploy/cfn.yaml): the only one that gets the
    # MQTT credentials and may write raw/; other runs use the launcher's own
    drain_task_definition: str | None = None

    @property
    def on_ecs(self) -> bool:
        """Whether runs are ECS tasks: the deployment names the drains' task definition."""
        return self.drain_task_definition is not None

    def subscription(self, name: str) -> Subscription:
        for subscription in self.subscriptions:
            if subscription.name == name:
                return subscription
        raise SettingsError(f"no subscription named {name!r} in DATA_ACQ_SUBSCRIPTIONS")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env

        def get(name: str) -> str | None:
            value = env.get(name, "").strip()
            return value or None

        port_text = get("MQTT_PORT") or "1883"
        try:
            port = int(port_text)
        except ValueError:
            raise SettingsError(f"MQTT_PORT must be a port number, got {port_text!r}") from None
        if not 0 < port < 65536:
            raise SettingsError(f"MQTT_PORT must be between 1 and 65535, got {port}")
        protocol = get("MQTT_PROTOCOL") or "5"
        if protocol not in ("5", "3.1.1"):
            raise SettingsError(f"MQTT_PROTOCOL must be 5 or 3.1.1, got {protocol!r}")
        topics = _topics(get("MQTT_TOPIC") or DEFAULT_TOPIC, "MQTT_TOPIC")
        broker = BrokerSettings(
            host=get("MQTT_BROKER") or "localhost",
            port=port,
            username=get("MQTT_USERNAME"),
            password=env.get("MQTT_PASSWORD") or None,
            topics=topics,
            protocol=protocol,  # type: ignore[arg-type]
            ca_cert_url=get("CA_CERT_URL"),
            ca_cert_file=get("CA_CERT_FILE"),
            ca_cert_sha256=get("CA_CERT_SHA256"),
            **({"client_id": cid} if (cid := get("MQTT_CLIENT_ID")) else {}),
        )
        cache = get("DATA_ACQ_CACHE")
        workers = _whole(get("DATA_ACQ_DRAIN_WORKERS") or "1", "DATA_ACQ_DRAIN_WORKERS", 1, 64)
        start_text = get("DATA_ACQ_START_DATE") or "2024-10-01"
        try:
            start = date.fromisoformat(start_text)
        except ValueError:
            raise SettingsError(
                f"DATA_ACQ_START_DATE must be a date (YYYY-MM-DD), got {start_text!r}"
            ) from None
        buckets = _whole(get("DATA_ACQ_BUCKETS") or "1", "DATA_ACQ_BUCKETS", 1, 4096)
        live_workers = _whole(get("DATA_ACQ_LIVE_WORKERS") or "1", "DATA_ACQ_LIVE_WORKERS", 1, 256)
        if live_workers > buckets:
            raise SettingsError(
                f"DATA_ACQ_LIVE_WORKERS ({live_workers}) is more than DATA_ACQ_BUCKETS "
                f"({buckets}): each live worker owns whole buckets"
            )
        return cls(
            broker=broker,
            storage=_storage(get("DATA_ACQ_STORAGE") or "data"),
            subscriptions=_subscriptions(get("DATA_ACQ_SUBSCRIPTIONS"), broker, workers),
            drain_window_s=_seconds(get("DATA_ACQ_DRAIN_WINDOW") or "600", "DATA_ACQ_DRAIN_WINDOW"),
            sensors_running=(get("DATA_ACQ_SENSORS") or "stopped").lower() in ("running", "on"),
            pipeline_queue_url=get("PIPELINE_SQS_QUEUE_URL"),
            buckets=buckets,
            start_date=start,
            refresh_interval_s=_whole(
                get("DATA_ACQ_REFRESH_INTERVAL") or "60", "DATA_ACQ_REFRESH_INTERVAL", 5, 86_400
            ),
            raw_freshness_minutes=_whole(
                get("DATA_ACQ_RAW_FRESHNESS_MINUTES") or "30",
                "DATA_ACQ_RAW_FRESHNESS_MINUTES",
                2,
                100_000,
            ),
            live_workers=live_workers,
            live_window_s=_whole(
                get("DATA_ACQ_LIVE_WINDOW") or "600", "DATA_ACQ_LIVE_WINDOW", 60, 86_400
            ),
            handover_s=_whole(get("DATA_ACQ_HANDOVER") or "90", "DATA_ACQ_HANDOVER", 0, 3_600),
            drain_task_definition=get("DATA_ACQ_DRAIN_TASK_DEFINITION") or None,
            **({"cache_dir": Path(cache)} if cache else {}),
        )


def _seconds(text: str, variable: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise SettingsError(f"{variable} must be a number of seconds, got {text!r}") from None
    if not value > 0:
        raise SettingsError(f"{variable} must be more than 0 seconds, got {text!r}")
    return value


def _whole(text: str, variable: str, low: int, high: int) -> int:
    if not text.isdigit() or not low <= int(text) <= high:
        raise SettingsError(
            f"{variable} must be a whole number from {low:,} to {high:,}, got {text!r}"
        )
    return int(text)


SHARE_GROUP = "data-acq"


def _unshared(topic: str) -> str:
    """`a/+/u/data` for `$share/<group>/a/+/u/data`."""
    return (
        topic.split("/", 2)[2] if topic.startswith("$share/") and topic.count("/") >= 2 else topic
    )


def _storage(text: str) -> str:
    """A local folder, or `s3://bucket[/prefix]` with a bucket name S3 would accept."""
    if not text.startswith("s3://"):
        return text
    bucket = text[5:].partition("/")[0]
    if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", bucket):
        raise SettingsError(
            f"DATA_ACQ_STORAGE {text!r} names no valid bucket: expected s3://bucket[/prefix] "
            "(3 to 63 lower-case letters, digits, dots or hyphens)"
        )
    return text


def _filter_problem(topic: str) -> str | None:
    """Why `topic` is not a valid MQTT topic filter (MQTT 5.0, section 4.7), if it is not."""
    if "\0" in topic or len(topic.encode("utf-8", "surrogatepass")) > 65_535:
        return "contains NUL or is longer than 65,535 bytes"
    if topic.startswith("$share/"):
        parts = topic.split("/", 2)
        if len(parts) < 3 or not parts[1] or any(c in parts[1] for c in "+#"):
            return "is not $share/<group>/<filter>"
        topic = parts[2]
    levels = topic.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            return "uses '#' other than as the whole last level"
        if "+" in level and level != "+":
            return "uses '+' other than as a whole level"
    return None


def _topics(text: str, variable: str) -> tuple[str, ...]:
    topics = tuple(t.strip() for t in text.split(",") if t.strip())
    if not topics:
        raise SettingsError(f"{variable} names no topic")
    for topic in topics:
        problem = _filter_problem(topic)
        if problem:
            raise SettingsError(f"{variable} {topic!r} is not a valid topic filter: it {problem}")
        filter_ = _unshared(topic)
        if any(topic_matches_sub(filter_, f"a/node/d/{leaf}") for leaf in ("config", "command")):
            raise SettingsError(
                f"{variable} {topic!r} would consume downstream (cloud-to-logger) topics"
            )
    return topics


def _subscriptions(
    text: str | None, broker: BrokerSettings, workers: int = 1
) -> tuple[Subscription, ...]:
    """`name=topic,topic;name=topic`; without it, one subscription `main` over MQTT_TOPIC.

    Each named subscription gets the client id `<MQTT_CLIENT_ID>-<name>`, so each drain keeps
    a persistent session of its own. With `workers` > 1 every subscription becomes that many
    members of an MQTT v5 shared subscription (`$share/data-acq/<topic>`): the broker splits the
    messages between them, also while they are away, so they drain in parallel.
    """
    if not text:
        base: tuple[Subscription, ...] = (Subscription("main", broker.topics, broker.client_id),)
    else:
        base = _named_subscriptions(text, broker)
    if workers <= 1:
        return base
    return tuple(
        Subscription(
            f"{sub.name}-{n}",
            tuple(
                t if t.startswith("$share/") else f"$share/{SHARE_GROUP}/{t}" for t in sub.topics
            ),
            f"{sub.client_id}-{n}",
        )
        for sub in base
        for n in range(1, workers + 1)
    )


def _named_subscriptions(text: str, broker: BrokerSettings) -> tuple[Subscription, ...]:
    subscriptions = []
    for part in filter(None, (p.strip() for p in text.split(";"))):
        name, sep, topics = part.partition("=")
        name = name.strip()
        if not sep or not name.replace("-", "").replace("_", "").isalnum():
            raise SettingsError(
                f"DATA_ACQ_SUBSCRIPTIONS entry {part!r} is not name=topic[,topic...]"
            )
        subscriptions.append(
            Subscription(
                name, _topics(topics, "DATA_ACQ_SUBSCRIPTIONS"), f"{broker.client_id}-{name}"
            )
        )
    if len({s.name for s in subscriptions}) != len(subscriptions):
        raise SettingsError("DATA_ACQ_SUBSCRIPTIONS repeats a name")
    return tuple(subscriptions)
