"""The `data-acq` command line: simulate, transform, listen, demo."""

from __future__ import annotations

import argparse
import json
import logging
import os
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack
from datetime import date, timedelta
from functools import partial
from pathlib import Path
from typing import IO, Any, TypeVar

import paho.mqtt.client as mqtt
from botocore.exceptions import BotoCoreError, ClientError
from deltalake.exceptions import DeltaError
from tqdm import tqdm

from data_acq import layout
from data_acq.acquire.broker import BrokerError, publish_all, run_subscriber, stop_on_signals
from data_acq.acquire.ca_cert import CACertError, resolve_ca
from data_acq.acquire.drain import Drain, DrainError, DrainLimits, DrainWriteError
from data_acq.contract import Rejection, parse_payload
from data_acq.curate.compaction import RETAIN, CompactResult, upkeep
from data_acq.curate.feed import QueueError
from data_acq.curate.flatten import (
    READINGS_SCHEMA,
    STATUS_SCHEMA,
    Tables,
    iter_flatten_parallel,
    write_parquet,
)
from data_acq.curate.tables import CuratedTables
from data_acq.devtools.simulate import SimulationSpec, parse_start, simulate
from data_acq.messages import Message, line_blocks, line_spans, read_block, read_lines, read_span
from data_acq.pipeline import process
from data_acq.pipeline_format import to_pipeline
from data_acq.progress import Bars
from data_acq.settings import Settings, SettingsError
from data_acq.storage import StorageError, open_store

log = logging.getLogger("data_acq")


class CommandError(Exception):
    """A failure the user can act on: printed without a traceback, exit code 1."""


class UsageError(CommandError):
    """The command line itself is wrong: exit code 2, like argparse's own errors."""


# Failures printed as one line (exit code 1): configuration, broker, CA, storage, queue.
EXPECTED = (
    CommandError,
    SettingsError,
    CACertError,
    BrokerError,
    DrainError,
    DrainWriteError,
    StorageError,
    QueueError,
)


def _dumps(doc: Any) -> str:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False)


# --- simulate ---------------------------------------------------------------------------------


def cmd_simulate(args: argparse.Namespace) -> None:
    spec = SimulationSpec(
        sites=args.sites,
        start=parse_start(args.start),
        minutes=int(args.hours * 60),
        seed=args.seed,
        duplicate_rate=args.duplicate_rate,
        outage_sites=args.outage_sites,
        outage_minutes=args.outage_minutes,
        malformed_rate=args.malformed_rate,
    )
    messages = simulate(spec)
    if not args.publish:
        out = sys.stdout.buffer
        for topic, payload in messages:
            out.write(topic.encode() + b"\t" + payload.replace(b"\n", b" ") + b"\n")
        return
    settings = Settings.from_env()
    about = spec.sites * spec.minutes  # one a minute a site; duplicates and outages aside
    with Bars() as bars:
        count = publish_all(
            settings.broker.for_role("simulate"),
            resolve_ca(settings),
            messages,
            rate=args.rate,
            on_progress=lambda n: bars("published", n, max(n, about), "messages"),
        )
    log.info("published %d messages to %s", count, settings.broker.address)


# --- transform --------------------------------------------------------------------------------


def _open_inputs(names: list[str], stack: ExitStack) -> Iterator[tuple[str, IO[bytes]]]:
    for name in names or ["-"]:
        if name == "-":
            if sys.stdin is None:  # started with stdin closed (`<&-`)
                raise UsageError("no input: standard input is closed; give input files")
            yield "<stdin>", sys.stdin.buffer
            continue
        try:
            yield name, stack.enter_context(open(name, "rb"))  # noqa: SIM115
        except OSError as exc:
            raise CommandError(f"cannot read {name}: {exc.strerror}") from None


def _report(name: str, ref: int, rejection: Rejection | str, what: str = "rejected") -> None:
    tqdm.write(f"{name}:{ref}: {what}: {rejection}", file=sys.stderr)  # above any progress bar


Piece = TypeVar("Piece")


def _measured(
    name: str,
    stream: IO[bytes],
    bars: Bars,
    pieces: Iterable[Piece],
    length: Callable[[Piece], int],
    every: int = 1,
) -> Iterator[Piece]:
    """The stream's pieces (lines, blocks), with a bar of the bytes read (out of the file's
    size, if it has one), updated every `every` pieces."""
    try:
        size: int | None = os.fstat(stream.fileno()).st_size or None
    except (OSError, ValueError):
        size = None
    done = 0
    for number, piece in enumerate(pieces):
        done += length(piece)
        if number % every == 0:
            bars(f"reading {name}", done, size, "B")
        yield piece
    bars(f"reading {name}", done, size or done, "B")


def cmd_transform(args: argparse.Namespace) -> None:
    counts = {"messages": 0, "accepted": 0, "skipped": 0}
    with ExitStack() as stack:
        bars = stack.enter_context(Bars())
        inputs = _open_inputs(args.files, stack)
        if args.to == "pipeline":
            out = sys.stdout
            for name, stream in inputs:
                for message in read_lines(_measured(name, stream, bars, stream, len, 1000)):
                    counts["messages"] += 1
                    parsed = parse_payload(message.payload)
                    if isinstance(parsed, Rejection):
                        _report(name, message.ref, parsed)
                        continue
                    counts["accepted"] += 1
                    for skipped in parsed.skipped:
                        counts["skipped"] += 1
                        _report(name, message.ref, skipped, "skipped")
                    out.write(_dumps(to_pipeline(parsed)) + "\n")
            out.flush()
        else:
            if not args.output:
                raise CommandError(f"--to {args.to} writes Parquet: give --output PATH")
            schema = READINGS_SCHEMA if args.to == "readings" else STATUS_SCHEMA

            def frames() -> Iterator[Any]:
                for name, stream in inputs:
                    sources = _worker_sources(name, stream, bars)
                    for tables in iter_flatten_parallel(sources, args.workers):
                        _count_tables(tables, name, counts)
                        yield tables.readings if args.to == "readings" else tables.device_status

            try:
                rows = write_parquet(frames(), Path(args.output), schema)
            except OSError as exc:
                raise CommandError(f"cannot write {args.output}: {exc.strerror or exc}") from None
            print(f"wrote {rows} {args.to} rows to {args.output}", file=sys.stderr)
    rejected = counts["messages"] - counts["accepted"]
    print(
        f"transform: {counts['messages']} messages, {counts['accepted']} accepted, "
        f"{rejected} rejected, {counts['skipped']} readings or values skipped",
        file=sys.stderr,
    )


TRANSFORM_BLOCK = 8 << 20  # bytes of input lines a worker flattens at once


def _worker_sources(
    name: str, stream: IO[bytes], bars: Bars
) -> Iterator[Callable[[], Iterator[Message]]]:
    """The input in blocks of lines a worker process reads: by position in a regular file
    (the worker opens it), else the blocks' bytes themselves (a pipe, standard input)."""
    if name != "<stdin>" and stat.S_ISREG(os.fstat(stream.fileno()).st_mode):
        spans = line_spans(stream, TRANSFORM_BLOCK)
        for start, stop, first in _measured(name, stream, bars, spans, _span_length):
            yield partial(read_span, name, start, stop, first)
    else:
        blocks = line_blocks(stream, TRANSFORM_BLOCK)
        for block, first in _measured(name, stream, bars, blocks, _block_length):
            yield partial(read_block, block, first)


def _span_length(span: tuple[int, int, int]) -> int:
    return span[1] - span[0]


def _block_length(block: tuple[bytes, int]) -> int:
    return len(block[0])


def _count_tables(tables: Tables, name: str, counts: dict[str, int]) -> None:
    counts["messages"] += tables.messages
    counts["accepted"] += tables.accepted
    for ref, when, path, reason in tables.rejects.select(
        "ref", "time", "path", "reason"
    ).iter_rows():
        what = "rejected" if when is None else "skipped"
        if what == "skipped":
            counts["skipped"] += 1
        _report(name, ref, f"{path}: {reason}", what)


# --- listen -----------------------------------------------------------------------------------


def cmd_listen(args: argparse.Namespace) -> None:
    settings = Settings.from_env()
    ca_file = resolve_ca(settings)
    out = sys.stdout

    def show(message: mqtt.MQTTMessage) -> None:
        parsed = parse_payload(message.payload)
        if isinstance(parsed, Rejection):
            print(f"{message.topic}: rejected: {parsed}", file=sys.stderr)
            return
        for skipped in parsed.skipped:
            print(f"{message.topic}: skipped: {skipped}", file=sys.stderr)
        doc = to_pipeline(parsed)
        if args.raw:
            raw = message.payload.decode("utf-8", "replace")
            doc = {"topic": message.topic, "raw": raw, "pipeline": doc}
        out.write(_dumps(doc) + "\n")
        out.flush()

    log.info(
        "listening on %s (%s, MQTT %s) to %s",
        settings.broker.address,
        "TLS" if settings.broker.tls else "no TLS",
        settings.broker.protocol,
        ", ".join(settings.broker.topics),
    )
    with stop_on_signals() as stop:

        def on_message(message: mqtt.MQTTMessage) -> None:
            try:
                show(message)
            except BrokenPipeError:  # the reader went away (`| head`): stop quietly
                stop.set()
            except Exception as exc:  # one message must never silence the rest
                print(f"{message.topic}: could not be shown: {exc}", file=sys.stderr)

        run_subscriber(settings.broker.for_role("listen"), ca_file, on_message, stop)


# --- drain ------------------------------------------------------------------------------------


def cmd_drain(args: argparse.Namespace) -> None:
    settings = Settings.from_env()
    sub = (
        settings.subscription(args.subscription) if args.subscription else settings.subscriptions[0]
    )
    broker = settings.broker.for_subscription(sub)
    store = open_store(settings.storage)
    limits = DrainLimits(max_seconds=args.max_seconds, idle_exit_s=args.idle_exit)
    log.info(
        "draining %s from %s as %s into %s (window %.0f s%s)",
        ", ".join(broker.topics),
        broker.address,
        broker.client_id,
        store.url(layout.RAW),
        limits.max_seconds,
        f", idle exit {limits.idle_exit_s:.0f} s" if limits.idle_exit_s is not None else "",
    )
    with stop_on_signals() as stop, Bars() as bars:
        drain = Drain(broker, resolve_ca(settings), store, limits, stop)
        ticking = threading.Thread(target=_tick, args=(drain, limits, bars, stop), daemon=True)
        ticking.start()
        try:
            stats = drain.run()
        finally:
            drain.stop.set()
            ticking.join()
    print(json.dumps(stats.to_metadata()), file=sys.stderr)
    if summary := stats.unreachable(broker.address, limits.max_disconnected_share):
        raise CommandError(summary)
    if stats.unacknowledged:
        raise CommandError(
            f"{stats.unacknowledged} stored messages could not be acknowledged (the connection "
            "dropped before); the broker redelivers them to the next run"
        )


def _tick(drain: Drain, limits: DrainLimits, bars: Bars, stop: threading.Event) -> None:
    """The window's seconds as a bar, the messages stored so far beside it."""
    started = time.monotonic()
    while not drain.stop.wait(1.0):
        elapsed = min(int(time.monotonic() - started), int(limits.max_seconds))
        bars("drain window", elapsed, int(limits.max_seconds), "s")
        bars("messages stored", drain.stats.stored, None, "messages")


# --- process ----------------------------------------------------------------------------------


def cmd_process(args: argparse.Namespace) -> None:
    settings = Settings.from_env()
    store = open_store(settings.storage)
    with Bars() as bars:
        result = process(
            store,
            args.date or (),
            progress=bars,
            buckets=settings.buckets,
            workers=args.workers,
            opener=partial(open_store, settings.storage),
            queue_url=settings.pipeline_queue_url,
        )
    staged = result.staged
    if staged:
        log.info(
            "staged %d raw objects: %d messages, %d accepted, %d rejects; %d units touched",
            staged.raw_objects,
            staged.messages,
            staged.accepted,
            staged.rejects,
            len(staged.units),
        )
    else:
        log.info("no new raw objects")
    for day in result.dates:
        units = [u for u in result.units if u.day == day]
        written = sum(u.rows.get("readings", 0) for u in units)
        removed = sum(u.duplicates_removed for u in units)
        log.info(
            "%s: %d units refreshed, %d readings written; %d duplicates removed that day",
            day,
            len(units),
            written,
            removed,
        )
        sent = [u.sent_to_queue for u in units if u.sent_to_queue is not None]
        if sent:
            log.info("%s: sent %d new pipeline documents to SQS", day, sum(sent))
    if result.warehouse:
        log.info("warehouse views written: %s", result.warehouse)
    if result.compacted:
        _log_compaction(result.compacted)


def _log_compaction(result: CompactResult) -> None:
    for table, days in result.compacted.items():
        log.info(
            "%s: %d periods compacted (%s), %d files into %d",
            table,
            len(days),
            _date_span(days),
            result.files_before[table],
            result.files_after[table],
        )
    if result.removed_files:
        log.info("old files deleted: %d", sum(result.removed_files.values()))


def _date_span(days: list[date]) -> str:
    return str(days[0]) if len(days) == 1 else f"{days[0]} to {days[-1]}"


def cmd_compact(args: argparse.Namespace) -> None:
    settings = Settings.from_env()
    store = open_store(settings.storage)
    store.check()
    with Bars() as bars:
        result = upkeep(
            CuratedTables(store),
            retain=timedelta(hours=args.retain_hours),
            progress=bars,
        )
    if not result.compacted:
        log.info("no closed period needs compacting")
    _log_compaction(result)


# --- demo -------------------------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> None:
    from data_acq.devtools.demo import run_demo

    run_demo(Path(args.output), sites=args.sites, hours=args.hours, seed=args.seed)


def cmd_ui(args: argparse.Namespace) -> None:
    from data_acq.devtools.ui import UiError, run_ui

    try:
        run_ui(
            Path(args.folder), sites=args.sites, hours=args.hours, speed=args.speed, port=args.port
        )
    except UiError as exc:
        raise CommandError(str(exc)) from None


# --- entry point ------------------------------------------------------------------------------


class _Help(argparse.HelpFormatter):
    """Each option's help ends with its default, when it has one worth showing."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.option_strings and action.default not in (None, False, argparse.SUPPRESS):
            text += " (default: %(default)s)"
        return text


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Help)
        super().__init__(*args, **kwargs)


def _positive(kind: type[int] | type[float]) -> Callable[[str], int | float]:
    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
        return value

    return parse


def _share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be from 0 up to (not including) 1, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="data-acq",
        description="Acquire AMMP logger telemetry from MQTT. Broker settings come from the "
        "environment: MQTT_BROKER, MQTT_PORT, MQTT_USERNAME, MQTT_PASSWORD, MQTT_TOPIC, "
        "CA_CERT_URL or CA_CERT_FILE (and CA_CERT_SHA256), MQTT_CLIENT_ID, MQTT_PROTOCOL; "
        "storage from DATA_ACQ_STORAGE (see the README).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    sim = sub.add_parser("simulate", help="simulated site payloads, as lines or published")
    sim.add_argument("--sites", type=_positive(int), default=5, help="simulated sites")
    sim.add_argument("--start", default="2024-10-12", help="UTC start date or time (ISO 8601)")
    sim.add_argument("--hours", type=_positive(float), default=24.0, help="hours of data per site")
    sim.add_argument("--seed", type=int, default=42, help="seed: the same seed, the same data")
    sim.add_argument(
        "--duplicate-rate", type=_share, default=0.003, help="share of payloads delivered twice"
    )
    sim.add_argument(
        "--outage-sites", type=int, default=1, help="sites offline for a while, backlog sent late"
    )
    sim.add_argument("--outage-minutes", type=int, default=180, help="length of each outage")
    sim.add_argument(
        "--malformed-rate", type=_share, default=0.0, help="share of extra malformed messages"
    )
    sim.add_argument("--publish", action="store_true", help="publish to the broker with QoS 1")
    sim.add_argument(
        "--rate", type=_positive(float), help="messages per second when publishing (no limit)"
    )
    sim.set_defaults(func=cmd_simulate)

    tr = sub.add_parser("transform", help="raw payload lines to the pipeline format or Parquet")
    tr.add_argument("files", nargs="*", help="input files (default: stdin); '-' is stdin")
    tr.add_argument(
        "--to",
        choices=("pipeline", "readings", "status"),
        default="pipeline",
        help="pipeline-format NDJSON on stdout, or a Parquet table in --output",
    )
    tr.add_argument("--output", help="Parquet file for --to readings / status")
    tr.add_argument(
        "--workers",
        type=_positive(int),
        default=os.cpu_count() or 1,
        help="processes flattening at once for --to readings / status (the machine's CPUs)",
    )
    tr.set_defaults(func=cmd_transform)

    li = sub.add_parser("listen", help="print arriving payloads in the pipeline format")
    li.add_argument("--raw", action="store_true", help="print topic and raw payload too")
    li.set_defaults(func=cmd_listen)

    dr = sub.add_parser(
        "drain", help="one drain window: subscribed topics into raw storage, at least once"
    )
    dr.add_argument(
        "--max-seconds", type=_positive(float), default=600.0, help="length of the window"
    )
    dr.add_argument(
        "--idle-exit",
        type=_positive(float),
        help="end after this many seconds without messages (never)",
    )
    dr.add_argument(
        "--subscription", help="name from DATA_ACQ_SUBSCRIPTIONS (the first subscription)"
    )
    dr.set_defaults(func=cmd_drain)

    pr = sub.add_parser("process", help="raw into curated tables and the DuckDB warehouse")
    pr.add_argument(
        "--date",
        action="append",
        type=_iso_date,
        help="also rebuild every unit of this measurement date (YYYY-MM-DD); repeatable",
    )
    pr.add_argument(
        "--workers",
        type=_positive(int),
        default=1,
        help="processes at once: staging a backlog, and units (date x bucket of sites)",
    )
    pr.set_defaults(func=cmd_process)

    co = sub.add_parser(
        "compact",
        help="compact the curated tables' closed dates and delete files old snapshots held",
        description="Rewrite each closed date (an hour after it ended) of each curated table "
        "into few large files sorted by site and time, then delete the files that no snapshot "
        "younger than --retain-hours needs. `process` compacts as it goes; run this (or the "
        "compact_tables job) for the deletion.",
    )
    co.add_argument(
        "--retain-hours",
        type=_positive(int),
        default=int(RETAIN.total_seconds() // 3600),
        help="keep replaced files this long, for readers of older snapshots",
    )
    co.set_defaults(func=cmd_compact)

    de = sub.add_parser("demo", help="the main job on a private local broker")
    de.add_argument("--sites", type=_positive(int), default=5, help="simulated sites")
    de.add_argument("--hours", type=_positive(float), default=48.0, help="hours of data per site")
    de.add_argument("--seed", type=int, default=42, help="seed: the same seed, the same data")
    de.add_argument("--output", default="data/demo", help="folder for the demo's outputs")
    de.set_defaults(func=cmd_demo)

    ui = sub.add_parser("ui", help="the Dagster UI on local data, with loggers publishing live")
    ui.add_argument(
        "--folder", default="data/ui", help="broker state, storage and Dagster instance"
    )
    ui.add_argument("--sites", type=_positive(int), default=5, help="simulated sites")
    ui.add_argument(
        "--hours",
        type=float,
        default=24.0,
        help="hours of history the loggers publish first, fast; then they publish live, one "
        "payload per site a minute in real time, until the UI stops",
    )
    ui.add_argument(
        "--speed",
        type=_positive(float),
        default=2.0,
        help="simulated minutes per second while publishing the history",
    )
    ui.add_argument(
        "--port",
        type=int,
        default=3000,
        help="port of the Dagster UI on 127.0.0.1; when it is in use, ui stops with an error "
        "(0 picks a free port)",
    )
    ui.set_defaults(func=cmd_ui)
    return parser


def _iso_date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from None


def _one_line(exc: BaseException) -> str:
    """Storage and AWS failures as one line: what failed, and where."""
    if isinstance(exc, OSError) and exc.strerror:
        where = f": {exc.filename}" if exc.filename else ""
        return f"storage error: {exc.strerror}{where}"
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        return f"AWS error: {error.get('Code', '?')}: {error.get('Message', '')}".rstrip(": ")
    if isinstance(exc, DeltaError):
        return (
            f"curated table error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        )
    return f"{type(exc).__name__}: {exc}"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    try:
        args.func(args)
    except BrokenPipeError:
        return 0
    except UsageError as exc:
        print(f"data-acq {args.command}: {exc}", file=sys.stderr)
        return 2
    except EXPECTED as exc:
        print(f"data-acq {args.command}: {exc}", file=sys.stderr)
        return 1
    except (OSError, BotoCoreError, ClientError, DeltaError) as exc:
        print(f"data-acq {args.command}: {_one_line(exc)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
