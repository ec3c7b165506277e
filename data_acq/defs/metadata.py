"""Dagster's own metadata for tables: column schemas from the Polars schemas, previews."""

from collections.abc import Mapping
from datetime import date, datetime

import polars as pl
from dagster import MetadataValue, TableColumn, TableRecord, TableSchema

from data_acq.curate.tables import SCHEMAS

_DESCRIPTIONS = {
    "site": "the logger's node id, exactly as in the topic (a/<site>/...)",
    "time": "measurement time (the payload's t), UTC",
    "received_at": "when the drain received the message, UTC",
    "date": "measurement date (UTC), from the folder name",
    "vid": "the device's vendor id (_vid)",
    "device": "the device key (_d)",
    "value": "the value, if a number",
    "value_text": "the value, if text or a boolean",
}


PREVIEW_TEXT = 120  # characters of a text cell a preview keeps: previews live in Dagster's database


def column_schema(schema: Mapping[str, pl.DataType], described: bool = True) -> TableSchema:
    return TableSchema(
        columns=[
            TableColumn(
                name, str(dtype), description=_DESCRIPTIONS.get(name) if described else None
            )
            for name, dtype in schema.items()
        ]
    )


def curated_schema(table: str) -> TableSchema:
    """A curated table's columns as analysts see them (the date comes from the folders)."""
    return column_schema({**SCHEMAS[table], "date": pl.Date()})


def preview(frame: pl.DataFrame) -> MetadataValue:
    """A few rows as a table in the UI (values as Dagster's table records can hold them; long
    text cut, since every preview is kept in Dagster's database)."""
    return MetadataValue.table(
        records=[
            TableRecord({name: _cell(value) for name, value in row.items()})
            for row in frame.iter_rows(named=True)
        ],
        schema=column_schema(frame.schema, described=False),
    )


def _cell(value: object) -> str | int | float | bool | None:
    if value is None or isinstance(value, int | float | bool):
        return value
    text = value.isoformat() if isinstance(value, datetime | date) else str(value)
    return text if len(text) <= PREVIEW_TEXT else f"{text[: PREVIEW_TEXT - 1]}…"
