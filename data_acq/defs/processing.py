"""Processing: staging, the curated tables of each unit (a date and a bucket of sites), the
warehouse's views and the daily charts. Live runs (data_acq.defs.live) report the same assets;
the jobs here are for backfills, rebuilds and work launched by hand."""

from collections.abc import Iterator
from datetime import date

from dagster import (
    AssetCheckResult,
    AssetExecutionContext,
    AssetsDefinition,
    AssetSpec,
    MaterializeResult,
    MetadataValue,
    MultiPartitionKey,
    asset,
    multi_asset,
)

from data_acq import layout, pipeline
from data_acq.curate.cursor import new_raw_keys
from data_acq.curate.staging import MAX_OBJECTS, StageResult, stage
from data_acq.curate.units import UnitResult
from data_acq.curate.warehouse import refresh_warehouse
from data_acq.defs.checks import check_specs, unit_checks
from data_acq.defs.metadata import curated_schema, preview
from data_acq.defs.partitions import OWNERS, Partitions, unit_of
from data_acq.defs.resources import PipelineQueue, Storage
from data_acq.progress import logged
from data_acq.settings import Settings
from data_acq.storage import ObjectStore

CURATED_ASSETS = {
    "readings": "Tidy readings (site, time, vid, device, field, value, value_text, received_at), "
    "de-duplicated on site, time, vid, device and field.",
    "device_status": "The `_s` status readings (site, time, vid, device, content, level).",
    "pipeline_payloads": "Each accepted payload in the pipeline format (site, time, received_at, "
    "document), once per site and document.",
    "rejects": "Every payload, reading or value that could not be used: reason, path, the raw "
    "object and line it came from, and the payload's SHA-1 (one row however often delivered).",
    "readings_15min": "Per site, vid, device, field and quarter hour: mean, min, max, last, count.",
    "energy_daily": "The day's increase of each cumulative counter (E, E_exported, total_yield, "
    "runtime ...), the interval that crosses midnight included; a step down is a reset.",
    "completeness_daily": "Per site: payloads expected at one a minute, received, ratio, gaps.",
}
PREVIEW_CHARTS = 3  # charts linked from the metadata; all of them are in the folder


def build_processing(settings: Settings, partitions: Partitions) -> list[AssetsDefinition]:
    """The processing assets for one deployment's buckets and partitions."""

    @asset(
        group_name="processing",
        deps=["raw_messages"],
        kinds={"polars", "parquet"},
        owners=OWNERS,
        description="Raw objects not staged yet (found from a cursor, not by listing history), "
        "flattened and filed by unit and measurement hour under staging/. Each unit it touched "
        "is left pending; the live workers refresh exactly those. Materialized by live runs as "
        "they stage, or by the stage_raw job by hand.",
    )
    def staged_raw(context: AssetExecutionContext, storage: Storage) -> MaterializeResult:
        return stage_new(context, storage, settings.buckets)

    curated = multi_asset(
        name="curated",
        specs=CURATED_SPECS,
        partitions_def=partitions.units,
        check_specs=check_specs(partitions.units),
    )(curate_unit)
    daily_charts = asset(
        name="daily_charts",
        partitions_def=partitions.days,
        deps=["readings_15min", "energy_daily"],
        group_name="processing",
        kinds={"matplotlib"},
        owners=OWNERS,
        description="A daily chart per site (power through the day, counters' gain since "
        "midnight), PNG under curated/charts/date=D/site=KEY.png (KEY: the site's key, "
        "docs/analysts.md); drawn after the day ends (and on demand, e.g. after late data); the "
        "metadata links the first ones (images stay out of Dagster's database).",
    )(draw_charts)
    return [staged_raw, curated, warehouse, daily_charts]


def stage_new(context: AssetExecutionContext, storage: Storage, buckets: int) -> MaterializeResult:
    store = storage.store()
    keys = new_raw_keys(store, limit=MAX_OBJECTS)  # a backlog takes several runs
    progress = logged(context.log.info)
    result = stage(store, keys, buckets, progress=progress) if keys else None
    context.log.info(f"staged {len(keys)} raw objects")
    return MaterializeResult(metadata=staging_metadata(result))


def staging_metadata(result: StageResult | None) -> dict[str, object]:
    return {
        "dagster/row_count": result.messages if result else 0,
        "raw_objects": result.raw_objects if result else 0,
        "messages": result.messages if result else 0,
        "accepted": result.accepted if result else 0,
        "rejects": result.rejects if result else 0,
        "units_touched": len(result.units) if result else 0,
    }


CURATED_SPECS = [
    AssetSpec(
        name,
        description=text,
        deps=["staged_raw"],
        group_name="processing",
        kinds={"polars", "deltalake"},
        owners=OWNERS,
        metadata={"dagster/column_schema": curated_schema(name)},
    )
    for name, text in CURATED_ASSETS.items()
]


def curate_unit(
    context: AssetExecutionContext, storage: Storage, pipeline_queue: PipelineQueue
) -> Iterator[MaterializeResult | AssetCheckResult]:
    """One unit rebuilt (a backfill or a rebuild: every staged hour), its daily tables, its new
    documents sent, and its checks. Live data is refreshed by the live runs instead."""
    # a run launched with only the `dagster/partition` tag has the key as a plain string
    key = context.partition_key
    if not isinstance(key, MultiPartitionKey):
        key = context.assets_def.partitions_def.get_partition_key_from_str(key)  # type: ignore[union-attr]
    day, bucket = unit_of(key)  # type: ignore[arg-type]
    store = storage.store()
    result = pipeline.refresh(
        store,
        day,
        bucket,
        full=True,
        queue_url=pipeline_queue.queue_url,
        progress=logged(context.log.info),
    )
    for name, metadata in unit_metadata(store, result).items():
        yield MaterializeResult(asset_key=name, metadata=metadata)
    yield from unit_checks(result)


def unit_metadata(store: ObjectStore, result: UnitResult) -> dict[str, dict[str, object]]:
    """Each curated table's metadata for a unit's refresh (the column schema is the assets')."""
    tables: dict[str, dict[str, object]] = {}
    for name in CURATED_ASSETS:
        metadata: dict[str, object] = {
            "dagster/row_count": result.table_rows.get(name, 0),  # the unit's whole day
            "rows_written": result.rows.get(name, 0),
            "hours_rebuilt": ", ".join(f"{h:02d}:00" for h in result.hours) or "none",
            "table": MetadataValue.path(store.url(layout.curated_prefix(name))),
        }
        if name == "readings":
            metadata |= {
                "readings_today": result.readings,
                "sites": result.sites,
                "duplicates_removed": result.duplicates_removed,
                "conflicting_readings": result.conflicts,
            }
        if name == "pipeline_payloads" and result.sent_to_queue is not None:
            metadata["sent_to_sqs"] = result.sent_to_queue
        if name in result.previews:
            metadata["preview"] = preview(result.previews[name])
        tables[name] = metadata
    return tables


# No deps on the curated tables: the file holds views, not data, so a table's new rows never
# make it stale (with the tables upstream, Dagster would show it "Unsynced" after every refresh).
@asset(
    group_name="processing",
    kinds={"duckdb"},
    owners=OWNERS,
    output_required=False,
    description="DuckDB file <storage>/warehouse.duckdb: a view per curated Delta table (it "
    "creates the tables it needs), so it never holds a copy and never needs a refresh: every "
    "query reads the tables as they are. Written (and materialized) only when a view's "
    "definition changes; see docs/analysts.md.",
)
def warehouse(context: AssetExecutionContext, storage: Storage) -> Iterator[MaterializeResult]:
    location = refresh_warehouse(storage.store())
    if location is None:
        context.log.info("the warehouse's views are current")
        return
    yield MaterializeResult(metadata={"path": MetadataValue.path(location)})


def draw_charts(context: AssetExecutionContext, storage: Storage) -> MaterializeResult:
    from data_acq.curate.charts import write_charts  # matplotlib: only the charts' runs need it

    store = storage.store()
    day = date.fromisoformat(context.partition_key)
    charts = write_charts(store, day, progress=logged(context.log.info))
    links = "\n".join(
        f"- [{_markdown_text(site)}]({store.url(key)})" for site, key in charts[:PREVIEW_CHARTS]
    )
    return MaterializeResult(
        metadata={
            "dagster/row_count": len(charts),
            "charts": len(charts),
            "folder": MetadataValue.path(store.url(layout.curated_prefix("charts", day))),
            "first_charts": MetadataValue.md(links or "no data for this date"),
        }
    )


def _markdown_text(site: str | None) -> str:
    """A logger-chosen site id shown as text, not as Markdown or HTML."""
    text = "(no site)" if site is None else repr(site)[1:-1] or "(empty site id)"
    return "".join(f"\\{c}" if c in "\\`*_{}[]()<>#+-.!|~" else c for c in text[:80])
