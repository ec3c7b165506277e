"""The `data-acq` command (and `python -m data_acq`).

The command line is imported when the command runs, not when this module is imported: a
worker process that multiprocessing starts (`spawn`) imports the command's script again, and
needs none of the command line's dependencies (boto3, requests, DuckDB, paho).
"""

import sys


def main() -> int:
    """Run the command; Ctrl-C ends it with the shell's code for an interrupt (130), without
    a traceback, whenever it comes (commands that stop gracefully handle it themselves)."""
    try:
        from data_acq.cli import main as run

        return run()
    except KeyboardInterrupt:
        print("data-acq: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
