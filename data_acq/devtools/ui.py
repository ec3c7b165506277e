"""`data-acq ui`: the Dagster UI on local data, with simulated loggers publishing live.

A private Mosquitto (with persistence), a simulator that publishes the last day of a few sites
at an accelerated pace (an outage backlog and duplicates included), and `dagster dev` with the
sensors switched on: the drain sensor keeps a drain running, new raw objects are staged, and the
touched dates are curated -- runs, partitions, lineage and checks appear as they happen.
"""

from __future__ import annotations

import itertools
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

from data_acq.acquire.broker import publish_all
from data_acq.devtools.demo import BROKER_CONFIG
from data_acq.devtools.local_broker import LocalMosquitto
from data_acq.devtools.simulate import SimulationSpec, simulate
from data_acq.settings import BrokerSettings

log = logging.getLogger(__name__)


def ui_environment(folder: Path, broker_port: int, start: datetime) -> dict[str, str]:
    """The variables `dagster dev` runs with: everything points at the private broker and folder,
    and the data is refreshed every ten seconds."""
    return {
        "MQTT_BROKER": "127.0.0.1",
        "MQTT_PORT": str(broker_port),
        "MQTT_CLIENT_ID": "data-acq-ui",
        "DATA_ACQ_STORAGE": str(folder / "storage"),
        "DAGSTER_HOME": str(folder / "dagster_home"),
        "DATA_ACQ_SENSORS": "running",
        "DATA_ACQ_DRAIN_WINDOW": "120",
        "DATA_ACQ_START_DATE": start.date().isoformat(),
        "DATA_ACQ_REFRESH_INTERVAL": "10",
    }


def run_ui(
    folder: Path, sites: int = 5, hours: float = 24.0, speed: float = 2.0, port: int = 3000
) -> int:
    folder = folder.resolve()
    (folder / "dagster_home").mkdir(parents=True, exist_ok=True)
    (folder / "dagster_home" / "dagster.yaml").touch()
    broker = LocalMosquitto(folder / "mosquitto", persistence=True, extra=BROKER_CONFIG).start()
    start = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=hours)
    env = {**os.environ, **ui_environment(folder, broker.port, start)}
    stop = threading.Event()
    spec = SimulationSpec(sites=sites, start=start, minutes=int(hours * 60), outage_minutes=120)
    messages = itertools.takewhile(lambda _: not stop.is_set(), simulate(spec))
    publisher = threading.Thread(
        target=publish_all,
        args=(
            BrokerSettings(host="127.0.0.1", port=broker.port, client_id="ui-loggers"),
            None,
            messages,
        ),
        kwargs={"rate": sites * speed},
        daemon=True,
    )
    dagster = shutil.which("dagster", path=str(Path(sys.executable).parent)) or "dagster"
    command = [dagster, "dev", "-m", "data_acq.definitions", "-h", "127.0.0.1", "-p", str(port)]
    print(
        f"Dagster UI: http://127.0.0.1:{port}  (Ctrl-C stops everything)\n"
        f"  broker 127.0.0.1:{broker.port}; {sites} simulated sites publishing {speed:g} minutes of "
        f"data per second from {start:%Y-%m-%d %H:%M} UTC\n"
        f"  storage {folder / 'storage'}; Dagster instance {folder / 'dagster_home'}\n"
        "  sensors on: drain_sensor, new_raw_sensor, curation_sensor",
        flush=True,
    )
    publisher.start()
    process = subprocess.Popen(command, env=env)

    def interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)  # stop the same way on SIGTERM
    try:
        return process.wait()
    except KeyboardInterrupt:
        process.terminate()
        return process.wait(timeout=60)
    finally:
        signal.signal(signal.SIGTERM, previous)
        stop.set()
        publisher.join(timeout=10)
        broker.stop()
