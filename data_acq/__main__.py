"""The `data-acq` command (and `python -m data_acq`).

The command line is imported when the command runs, not when this module is imported: a
worker process that multiprocessing starts (`spawn`) imports the command's script again, and
needs none of the command line's dependencies (boto3, requests, DuckDB, paho).
"""

import sys


def main() -> int:
    from data_acq.cli import main as run

    return run()


if __name__ == "__main__":
    sys.exit(main())
