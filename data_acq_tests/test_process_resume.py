"""Processing is resumable: `process` SIGKILLed while staging or while building, then run
again, leaves exactly what an uninterrupted run leaves."""

from __future__ import annotations

import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import polars as pl
import pytest

from data_acq.acquire.raw import encode_object, raw_key
from data_acq.curate.tables import SCHEMAS
from data_acq.curate.units import pending_units
from data_acq.devtools.simulate import SimulationSpec, simulate
from data_acq.layout import CURATED
from data_acq.messages import encode_record
from data_acq.pipeline import process
from data_acq.storage import LocalStore
from data_acq_tests.conftest import canonical

CHUNK = 400  # messages per staging chunk: several chunks, so there is a "while staging"

# Runs `process` in a child that SIGKILLs itself at the n-th write under a prefix: staging
# files while staging, a unit's partials (written once its hours are in the curated tables,
# before its daily tables) while refreshing units.
KILLER = """
import os, signal, sys
from pathlib import Path
from data_acq.pipeline import process
from data_acq.storage import LocalStore
prefix, n = sys.argv[2], int(sys.argv[3])
class Store(LocalStore):
    writes = 0
    def put(self, key, data):
        super().put(key, data)
        if key.startswith(prefix):
            Store.writes += 1
            if Store.writes == n:
                os.kill(os.getpid(), signal.SIGKILL)
process(Store(Path(sys.argv[1])), chunk_size=CHUNK)
""".replace("CHUNK", str(CHUNK))


def _raw(store: LocalStore) -> None:
    """Three sites across midnight, with duplicates, malformed messages and a late backlog, in
    several raw objects."""
    spec = SimulationSpec(
        sites=3,
        start=datetime(2024, 10, 12, 21, tzinfo=UTC),
        minutes=6 * 60,
        seed=4,
        duplicate_rate=0.05,
        outage_minutes=60,
        malformed_rate=0.02,
    )
    messages = list(simulate(spec))
    for number in range(0, len(messages), 250):
        received = datetime(2024, 10, 13, 4, tzinfo=UTC).replace(second=number // 250)
        lines = (encode_record(t, b, received, 1) for t, b in messages[number : number + 250])
        store.put_new(raw_key(received, "test"), encode_object(lines))


def _outputs(root: Path) -> dict[str, pl.DataFrame]:
    """Every curated table and warehouse table, in a canonical order."""
    out = {}
    for table in SCHEMAS:  # every stored column, bucket and hour included
        out[table] = canonical(pl.read_delta(str(root / CURATED / table)))
    with duckdb.connect(str(root / "warehouse.duckdb"), read_only=True) as con:
        for table in SCHEMAS:
            out[f"warehouse.{table}"] = canonical(con.sql(f'select * from "{table}"').pl())
    return out


@pytest.mark.parametrize(("prefix", "at"), [("staging/", 20), ("state/partials/", 3)])
def test_a_killed_process_finishes_its_work_when_run_again(
    tmp_path: Path, prefix: str, at: int
) -> None:
    reference = LocalStore(tmp_path / "uninterrupted")
    _raw(reference)
    interrupted = LocalStore(tmp_path / "interrupted")
    shutil.copytree(reference.root, interrupted.root)

    done = process(reference, chunk_size=CHUNK)

    killed = subprocess.run(
        [sys.executable, "-c", KILLER, str(interrupted.root), prefix, str(at)], timeout=120
    )
    assert killed.returncode == -9  # it really died there, mid-way
    left = set(pending_units(interrupted))
    if prefix == "state/partials/":
        assert left  # what it had not finished is still marked
    rerun = process(interrupted, chunk_size=CHUNK)
    refreshed = {(u.day, u.bucket) for u in rerun.units}
    # killed while staging: everything is staged and built again; while building: exactly the
    # units it had not finished
    assert refreshed == ({(u.day, u.bucket) for u in done.units} if prefix == "staging/" else left)
    assert not pending_units(interrupted)

    expected, got = _outputs(reference.root), _outputs(interrupted.root)
    assert expected.keys() == got.keys()
    for table, frame in expected.items():
        assert got[table].equals(frame), table
    assert process(interrupted).units == []  # and nothing is left to do
