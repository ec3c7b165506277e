"""Every storage key data-acq reads or writes, in one place.

```
raw/date=D/hour=H/<first receive time>-<client>-<random>.ndjson.gz   exact bytes (data_acq.raw)
staging/<table>/date=D/bucket=BB/<batch>-<chunk>.parquet             flattened, by measurement date
staging/index/<batch>.json                                           raw objects a batch staged
state/pending/date=D/bucket=BB/<batch>                               units a batch left to build
state/sqs_sent/date=D/bucket=BB.parquet                              documents sent to SQS
curated/<table>/date=D/bucket=BB/part-0.parquet                      what analysts read
curated/charts/date=D/site=<site key>.png                            a chart per site and day
warehouse.duckdb                                                     the analysts' DuckDB file
```

Sites are spread over buckets (`data_acq.sites.bucket_of`); a site id never appears in a key
except as a `site_key` in a chart's name. Dates and buckets are hive folders (`date=`,
`bucket=`), so DuckDB, Polars and Athena read them as columns.
"""

from __future__ import annotations

from datetime import date

from data_acq.sites import site_key

RAW = "raw/"
STAGING = "staging/"
INDEX = f"{STAGING}index/"
STATE = "state/"
PENDING = f"{STATE}pending/"
CURATED = "curated/"
WAREHOUSE_FILE = "warehouse.duckdb"
UNKNOWN_DATE = "unknown"  # rejects of input that has neither a payload time nor a receive time


def day_text(day: date | None) -> str:
    return day.isoformat() if day else UNKNOWN_DATE


def bucket_text(bucket: int) -> str:
    return f"bucket={bucket:02d}"


def staging_prefix(table: str, day: date, bucket: int | None = None) -> str:
    folder = f"{STAGING}{table}/date={day_text(day)}/"
    return folder if bucket is None else f"{folder}{bucket_text(bucket)}/"


def staging_key(table: str, day: date | None, bucket: int, batch: str, chunk: int) -> str:
    return (
        f"{STAGING}{table}/date={day_text(day)}/{bucket_text(bucket)}/{batch}-{chunk:04d}.parquet"
    )


def index_key(batch: str) -> str:
    return f"{INDEX}{batch}.json"


def pending_prefix(day: date | None = None) -> str:
    return PENDING if day is None else f"{PENDING}date={day.isoformat()}/"


def pending_key(day: date, bucket: int, batch: str) -> str:
    return f"{pending_prefix(day)}{bucket_text(bucket)}/{batch}"


def parse_unit(key: str) -> tuple[date, int]:
    """(date, bucket) of any key with `date=D/bucket=BB/` folders in it."""
    parts = dict(
        part.split("=", 1) for part in key.split("/") if part.startswith(("date=", "bucket="))
    )
    return date.fromisoformat(parts["date"]), int(parts["bucket"])


def curated_prefix(table: str, day: date | None = None) -> str:
    return f"{CURATED}{table}/" if day is None else f"{CURATED}{table}/date={day.isoformat()}/"


def curated_key(table: str, day: date, bucket: int) -> str:
    return f"{curated_prefix(table, day)}{bucket_text(bucket)}/part-0.parquet"


def sent_key(day: date, bucket: int) -> str:
    return f"{STATE}sqs_sent/date={day.isoformat()}/{bucket_text(bucket)}.parquet"


def chart_key(day: date, site: str | None) -> str:
    return f"{curated_prefix('charts', day)}site={site_key(site)}.png"
