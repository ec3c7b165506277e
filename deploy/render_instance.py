"""Render the production Dagster instance: deploy/dagster.yaml with its run queue sized from the
deployment's settings.

Dagster reads the run queue's limits (`concurrency.runs`: `max_concurrent_runs` and each tag
limit's `limit`) as plain numbers, not from the environment, so the image's entry point
(deploy/entrypoint.sh) runs this at every container start:

    python render_instance.py deploy/dagster.yaml "$DAGSTER_HOME/dagster.yaml"

It reads the same DATA_ACQ_* variables as the code (`data_acq.settings.Settings.from_env`), plus
DATA_ACQ_BACKFILL_RUNS, which only the run queue uses. Settings that cannot be used are refused
in one line on stderr with exit code 1, and the target is left as it was.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from data_acq.settings import Settings, SettingsError

# the run tags the jobs and sensors set (data_acq/defs/windows.py, data_acq/defs/jobs.py)
KIND_TAG = "data_acq/kind"
SUBSCRIPTION_TAG = "data_acq/subscription"
WORKER_TAG = "data_acq/live_worker"
PARTITION_TAG = "dagster/partition"

BACKFILL_RUNS = "DATA_ACQ_BACKFILL_RUNS"
DEFAULT_BACKFILL_RUNS = 4
MAX_BACKFILL_RUNS = 256
# places for the untagged small jobs (purge_old_runs, broker_check) on top of everything else
SMALL_JOB_RUNS = 4
# a window run and its successor, which waits inside its run until the first has ended
RUNS_PER_SLOT = 2


def backfill_runs(env: Mapping[str, str]) -> int:
    """DATA_ACQ_BACKFILL_RUNS: how many processing runs (backfills, rebuilds, runs launched by
    hand, the daily charts) may run at once; 4 when not set."""
    text = env.get(BACKFILL_RUNS, "").strip() or str(DEFAULT_BACKFILL_RUNS)
    if not text.isdigit() or not 1 <= int(text) <= MAX_BACKFILL_RUNS:
        raise SettingsError(
            f"{BACKFILL_RUNS} must be a whole number from 1 to {MAX_BACKFILL_RUNS}, got {text!r}"
        )
    return int(text)


def run_queue(settings: Settings, backfills: int) -> dict[str, Any]:
    """The `concurrency.runs` block for these settings.

    Drains (one per subscription and drain worker) and live workers each keep a window run
    going, whose successor is launched before it ends: two runs per slot, never three (the runs
    themselves make sure only one works at a time). Processing runs (`data_acq/kind:
    processing`: stage_raw, curate_unit, draw_charts) take at most `backfills` places, so a
    backfill of hundreds of units never keeps a drain or a live run waiting.
    """
    drains = len(settings.subscriptions)

    def per_value() -> dict[str, bool]:  # a mapping of its own each time: no YAML aliases
        return {"applyLimitPerUniqueValue": True}

    return {
        "max_concurrent_runs": RUNS_PER_SLOT * (drains + settings.live_workers)
        + backfills
        + SMALL_JOB_RUNS,
        "tag_concurrency_limits": [
            {"key": SUBSCRIPTION_TAG, "value": per_value(), "limit": RUNS_PER_SLOT},
            {"key": WORKER_TAG, "value": per_value(), "limit": RUNS_PER_SLOT},
            # a unit ("07|2024-10-12") or a day's charts is never built by two runs at once,
            # whoever launched them (a backfill, a retry, the UI)
            {"key": PARTITION_TAG, "value": per_value(), "limit": 1},
            {"key": KIND_TAG, "value": "processing", "limit": backfills},
        ],
    }


def render(template: str, env: Mapping[str, str]) -> str:
    """The instance file: `template` (deploy/dagster.yaml) with `concurrency.runs` replaced by
    the run queue for the settings in `env`. Raises SettingsError for unusable settings."""
    settings = Settings.from_env(env)
    backfills = backfill_runs(env)
    config = yaml.safe_load(template)
    if not isinstance(config, dict):
        raise SettingsError("the instance template is not a YAML mapping")
    config.setdefault("concurrency", {})["runs"] = run_queue(settings, backfills)
    header = (
        "# Rendered by deploy/render_instance.py from deploy/dagster.yaml at container start "
        f"(drains: {len(settings.subscriptions)}, live workers: {settings.live_workers}, "
        f"backfill runs: {backfills}).\n"
    )
    return header + yaml.safe_dump(config, sort_keys=False)


def main(argv: list[str] | None = None) -> int:
    """`render_instance.py TEMPLATE TARGET`: write TARGET atomically, or say why not."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: render_instance.py TEMPLATE TARGET", file=sys.stderr)
        return 2
    template, target = Path(args[0]), Path(args[1])
    try:
        text = render(template.read_text(), os.environ)
    except (SettingsError, OSError, yaml.YAMLError) as exc:
        why = " ".join(str(exc).split())  # one line, whatever the cause
        print(
            f"data-acq: cannot start, the Dagster instance was not written: {why}", file=sys.stderr
        )
        return 1
    partial = target.with_name(f".{target.name}.{os.getpid()}")
    try:
        partial.write_text(text)
        partial.replace(target)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        why = " ".join(str(exc).split())
        print(f"data-acq: cannot start, {target} was not written: {why}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
