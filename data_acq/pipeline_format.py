"""The data-pipeline format the original challenge asks for, one document per payload."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from data_acq.contract import Payload


def rfc3339(t: int) -> str:
    """Unix seconds as RFC 3339 in UTC with an explicit `+00:00` offset."""
    return datetime.fromtimestamp(t, tz=UTC).isoformat()


def to_pipeline(payload: Payload) -> dict[str, Any]:
    """`{"time": ..., "data": {vid: {field: value}}}`.

    Readings that share a `_vid` are merged (a later reading's field wins); `_`-fields and nulls
    are dropped and `m` is already gone. Values keep their JSON type.
    """
    data: dict[str, dict[str, Any]] = {}
    for reading in payload.readings:
        fields = data.setdefault(reading["_vid"], {})
        for key, value in reading.items():
            if value is not None and not key.startswith("_"):
                fields[key] = value
    return {"time": rfc3339(payload.t), "data": data}
