"""The command line as people meet it: help for every option, progress bars on a terminal only."""

from __future__ import annotations

import argparse
import fcntl
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import time
from datetime import UTC, datetime
from importlib import import_module
from importlib.metadata import entry_points
from pathlib import Path

from data_acq.cli import build_parser
from data_acq.devtools.simulate import SimulationSpec, simulate
from data_acq.storage import LocalStore
from data_acq_tests.test_process_dagster import _put_lines

CLI = [sys.executable, "-m", "data_acq.cli"]


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    [choices] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(choices.choices)


def test_every_option_has_a_description_and_help_shows_defaults() -> None:
    for name, command in _subcommands(build_parser()).items():
        for action in command._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help, f"{name} {action.option_strings or action.dest} has no help"
        text = command.format_help()
        for action in command._actions:
            if action.option_strings and action.default not in (None, False, argparse.SUPPRESS):
                assert f"(default: {action.default})" in " ".join(text.split()), (name, action)


def _store(tmp_path: Path) -> Path:
    store = LocalStore(tmp_path / "store")
    spec = SimulationSpec(sites=3, minutes=120, seed=3)
    _put_lines(store, list(simulate(spec)), datetime(2024, 10, 12, 3, tzinfo=UTC))
    return store.root


def _in_a_terminal(command: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run `command` with stdout and stderr on a pseudo-terminal; its exit code and output."""
    main, side = pty.openpty()
    fcntl.ioctl(side, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # 120 columns
    process = subprocess.Popen(command, env=env, stdout=side, stderr=side, stdin=subprocess.DEVNULL)
    os.close(side)
    output = b""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ready, _, _ = select.select([main], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(main, 65536)
            except OSError:  # the terminal closed: the command ended
                break
            if not chunk:
                break
            output += chunk
        elif process.poll() is not None:
            break
    os.close(main)
    return process.wait(timeout=30), output.decode(errors="replace")


def test_progress_bars_on_a_terminal_with_totals_and_rates_and_none_in_a_pipe(
    tmp_path: Path,
) -> None:
    env = {**os.environ, "DATA_ACQ_STORAGE": str(_store(tmp_path))}
    code, shown = _in_a_terminal([*CLI, "process"], env)
    assert code == 0, shown
    assert "raw objects staged" in shown and "1/1" in shown and "objects/s" in shown
    assert "units refreshed" in shown and "units/s" in shown
    piped = subprocess.run(
        [*CLI, "process", "--date", "2024-10-12"], env=env, capture_output=True, text=True
    )
    assert piped.returncode == 0, piped.stderr
    assert "%|" not in piped.stderr and "/s]" not in piped.stderr  # no bar


def test_the_command_script_imports_no_command_line_until_it_runs() -> None:
    """multiprocessing (`spawn`) runs the `data-acq` script again in every worker process of
    `transform`, as `__mp_main__`; the workers need none of the command line's dependencies."""
    [entry] = [e for e in entry_points(group="console_scripts") if e.name == "data-acq"]
    module, _, function = entry.value.partition(":")
    probe = (
        f"import runpy, sys; runpy.run_module({module!r}, run_name='__mp_main__'); "
        "print(sorted(m for m in ('data_acq.cli', 'boto3', 'duckdb', 'paho') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().strip() == "[]"
    assert callable(getattr(import_module(module), function))
