"""Every storage key data-acq reads or writes, in one place.

```
raw/date=D/hour=H/<first receive time>-<client>-<random>.ndjson.gz   exact bytes (acquire.raw)
staging/<table>/date=D/bucket=BB/hour=HH/<batch>-<chunk>.parquet     flattened, by measurement hour
state/layout.json                                                     the bucket count data is filed by
state/cursor.json                                                     raw objects staged so far
state/staged/date=D/<batch>.json                                      the raw objects a batch staged
state/pending/date=D/bucket=BB/<batch>.hours-HH-HH                    hours a batch left to build
state/partials/<kind>/date=D/bucket=BB.parquet                        per-hour partial aggregates
state/sqs_sent/date=D/bucket=BB/HH.parquet                            documents sent to SQS
state/compacted/<table>.json                                          files each date was compacted into
curated/<table>/                                                      a Delta table: what analysts read
curated/<table>/date=D/<part>.parquet                                 (its files, named by Delta)
curated/<table>/_delta_log/                                           (its transaction log)
curated/charts/date=D/site=<site key>.png                             a chart per site and day
warehouse.duckdb                                                      views for analysts
```

A unit of work is a measurement date and a bucket of sites (`data_acq.sites.bucket_of`);
inside it, data is kept by hour, so a refresh rewrites only the hours new data touched. A site
id never appears in a key except as a `site_key` in a chart's name. Staging and state files are
filed in hive folders (`date=`, `bucket=`); the curated tables are Delta tables partitioned by
date (`data_acq.curate.tables`), whose files only their log names.
"""

from __future__ import annotations

from datetime import date

from data_acq.sites import site_key

RAW = "raw/"
STAGING = "staging/"
STATE = "state/"
CURSOR = f"{STATE}cursor.json"
LAYOUT = f"{STATE}layout.json"
JOURNAL = f"{STATE}staged/"
PENDING = f"{STATE}pending/"
CURATED = "curated/"
HOURLY_TABLES = ("readings", "device_status", "pipeline_payloads", "rejects", "readings_15min")
DAILY_TABLES = ("energy_daily", "completeness_daily")
WAREHOUSE_FILE = "warehouse.duckdb"
UNKNOWN_DATE = "unknown"  # rejects of input that has neither a payload time nor a receive time


def day_text(day: date | None) -> str:
    return day.isoformat() if day else UNKNOWN_DATE


def bucket_text(bucket: int) -> str:
    return f"bucket={bucket:02d}"


def unit_folder(day: date | None, bucket: int) -> str:
    return f"date={day_text(day)}/{bucket_text(bucket)}/"


def staging_prefix(table: str, day: date, bucket: int, hour: int | None = None) -> str:
    folder = f"{STAGING}{table}/{unit_folder(day, bucket)}"
    return folder if hour is None else f"{folder}hour={hour:02d}/"


def staging_key(
    table: str, day: date | None, bucket: int, hour: int, batch: str, chunk: int
) -> str:
    return f"{STAGING}{table}/{unit_folder(day, bucket)}hour={hour:02d}/{batch}-{chunk:04d}.parquet"


def batch_of(key: str) -> str:
    """The staging batch of a staging key (`<batch>-<chunk>.parquet`)."""
    return key.rsplit("/", 1)[1].rsplit("-", 1)[0]


def journal_key(batch: str) -> str:
    """A batch's journal entry, filed by the date it was staged (its name begins with it)."""
    return f"{JOURNAL}date={batch[:4]}-{batch[4:6]}-{batch[6:8]}/{batch}.json"


def staged_hour(key: str) -> int:
    """The measurement hour of a staging key."""
    return int(key.split("/hour=", 1)[1][:2])


def pending_prefix(day: date | None = None, bucket: int | None = None) -> str:
    if day is None:
        return PENDING
    return f"{PENDING}date={day.isoformat()}/" + (
        "" if bucket is None else f"{bucket_text(bucket)}/"
    )


def pending_key(day: date, bucket: int, batch: str, hours: set[int]) -> str:
    """The hours are in the name, so that listing the markers says everything about them."""
    return (
        f"{pending_prefix(day, bucket)}{batch}.hours-{'-'.join(f'{h:02d}' for h in sorted(hours))}"
    )


def pending_hours(key: str) -> set[int]:
    return {int(hour) for hour in key.rsplit(".hours-", 1)[1].split("-")}


def parse_unit(key: str) -> tuple[date, int]:
    """(date, bucket) of any key with `date=D/bucket=BB/` folders in it."""
    parts = dict(
        part.split("=", 1) for part in key.split("/") if part.startswith(("date=", "bucket="))
    )
    return date.fromisoformat(parts["date"]), int(parts["bucket"])


def partials_key(kind: str, day: date, bucket: int) -> str:
    return f"{STATE}partials/{kind}/date={day.isoformat()}/{bucket_text(bucket)}.parquet"


def curated_prefix(table: str, day: date | None = None) -> str:
    return f"{CURATED}{table}/" if day is None else f"{CURATED}{table}/date={day.isoformat()}/"


def compacted_key(table: str) -> str:
    return f"{STATE}compacted/{table}.json"


def sent_key(day: date, bucket: int, hour: int) -> str:
    return f"{STATE}sqs_sent/{unit_folder(day, bucket)}{hour:02d}.parquet"


def chart_key(day: date, site: str | None) -> str:
    return f"{curated_prefix('charts', day)}site={site_key(site)}.png"
