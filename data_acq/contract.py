"""The AMMP data-payload contract: raw MQTT bytes in, a validated payload or a precise rejection out.

Two routes, one answer. Well-formed payloads (nearly all of them) go through msgspec's typed
decoder, which parses and type-checks in C. Anything it refuses is re-read by a slower, careful
validator that says exactly what is wrong and keeps every reading that can be kept.
Whatever the bytes, the result is a value, never an exception: sizes and nesting are bounded
before any parser sees the bytes (Python's json and msgspec recurse, and raise RecursionError
near the interpreter's limit, which depends on how deep the caller's stack already is), and a
value that cannot be stored as what it claims to be (an integer beyond 64-bit floats, a number
that overflows to infinity, text with a lone UTF-16 surrogate) is skipped with its reason.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from itertools import repeat
from operator import methodcaller
from typing import Annotated, Any, Union

import msgspec

# Payload times outside this window are not measurements: 2000-01-01 .. 2100-01-01 UTC.
T_MIN = 946_684_800
T_MAX = 4_102_444_800
# A payload is a few KB; a site with hundreds of devices stays far below these.
MAX_PAYLOAD_BYTES = 1 << 20
MAX_DEPTH = 64  # nesting levels of arrays and objects; a payload needs 4
INT64 = (-(2**63), 2**63 - 1)  # a status level is stored as a 64-bit integer
FLOAT_MAX = 1.7976931348623157e308


# Numbers the columns can hold; the typed decoder refuses others (in C), sending the payload to
# the careful route, which skips just those values with a reason.
_Int64 = Annotated[int, msgspec.Meta(ge=INT64[0], le=INT64[1])]
_Float64 = Annotated[float, msgspec.Meta(ge=-FLOAT_MAX, le=FLOAT_MAX)]


class Status(msgspec.Struct, forbid_unknown_fields=False):
    """One `_s` status reading: `c` content, `l` level (0 OK .. 4 critical)."""

    c: str | None = None
    l: _Int64 | None = None  # noqa: E741 - the contract's name


class _TypedPayload(msgspec.Struct):
    t: int
    r: list[dict[str, Union[_Int64, _Float64, str, bool, list[Status], None]]]  # noqa: UP007
    m: msgspec.Raw = msgspec.Raw()  # discarded: kept raw to skip decoding it


_typed_decoder = msgspec.json.Decoder(_TypedPayload)
_TEXT = (str, type(None))  # allowed types of `_d`
_GET_STATUS = methodcaller("get", "_s")
_NO_STATUSES: list[Any] = []  # never changed


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why something could not be used, and where in the payload (a JSON path)."""

    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass(slots=True)
class Payload:
    """A payload that passed the contract.

    `readings` are the `r` objects that can be placed (they have a string `_vid`), as dicts with
    scalar values plus the `_`-keys; `skipped` says what was left out and why.
    """

    t: int
    readings: list[dict[str, Any]]
    skipped: list[Rejection] = field(default_factory=list)


_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKETS = bytes(range(256)).translate(None, b"[]{}")


def too_deep(data: bytes, limit: int = MAX_DEPTH) -> bool:
    """Whether arrays and objects nest more than `limit` levels deep.

    The number of opening brackets bounds the depth from above, so the scan (which skips
    strings) only runs for payloads with more than `limit` of them: rare, and then a few
    microseconds a kilobyte.
    """
    if data.count(b"[") + data.count(b"{") <= limit:
        return False
    depth = 0
    for char in _STRING.sub(b"", data).translate(None, _NOT_BRACKETS):
        if char == 0x5B or char == 0x7B:  # [ {
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


def size_problem(data: bytes) -> Rejection | None:
    """Why `data` must not go to a JSON parser at all (too large, nested too deeply), if so."""
    if len(data) > MAX_PAYLOAD_BYTES:
        return Rejection(
            "$", f"payload is {len(data):,} bytes, more than the limit of {MAX_PAYLOAD_BYTES:,}"
        )
    if too_deep(data):
        return Rejection("$", f"nested more than {MAX_DEPTH} levels deep")
    return None


def parse_payload(data: bytes | bytearray | memoryview | str) -> Payload | Rejection:
    """Parse and validate one message body."""
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogatepass")
    data = bytes(data)
    problem = size_problem(data)
    if problem is not None:
        return problem
    # an escaped UTF-16 surrogate (\\ud800 .. \\udfff) may be alone, and then it is not text
    # (a backslash is rare, and looking for one byte is many times faster than for three)
    suspect = b"\\" in data and (b"\\ud" in data or b"\\uD" in data)
    try:
        return _parse(data, suspect)
    except RecursionError:  # the caller's stack was already deep; the bound is far below
        return Rejection("$", "nested too deeply for the parser")


def _parse(data: bytes, suspect: bool) -> Payload | Rejection:
    try:
        typed = _typed_decoder.decode(data)
    except (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError):
        # UnicodeDecodeError: msgspec raises it for invalid UTF-8 inside an object key
        return _parse_carefully(data, suspect)
    if not T_MIN <= typed.t < T_MAX:
        return Rejection("$.t", _absurd_t(typed.t))
    readings: list[dict[str, Any]] = []
    skipped: list[Rejection] = []
    # Each `_s` array accounts for one `[` besides `r`'s own, and a status holds none. When the
    # payload has no other `[` (a string may hold one too), no other value is an array, and the
    # look at every value (a third of this loop's time) is spared.
    statuses = sum(map(isinstance, map(_GET_STATUS, typed.r), repeat(list)))
    other_arrays = data.count(b"[") != 1 + statuses
    for i, reading in enumerate(typed.r):
        if reading.get("_vid").__class__ is not str or reading.get("_d", "").__class__ not in _TEXT:
            # the same test as _reading_problem, inlined for the hot path
            skipped.append(Rejection(f"$.r[{i}]", _reading_problem(reading) or "invalid reading"))
            continue
        if other_arrays:
            look = "_s" in reading or list in map(type, reading.values())
        else:  # only a `_s` that is not an array
            look = reading.get("_s", _NO_STATUSES).__class__ is not list
        if look:
            _drop_misplaced_arrays(reading, f"$.r[{i}]", skipped)
        if suspect and not _storable(reading, f"$.r[{i}]", skipped):
            continue
        readings.append(reading)
    return Payload(typed.t, readings, skipped)


def _storable(reading: dict[str, Any], path: str, skipped: list[Rejection]) -> bool:
    """Drop what no column can hold: numbers beyond 64-bit floats, status levels beyond 64-bit
    integers, text that is not valid Unicode. False when the reading itself cannot be placed.
    Called on the careful route, and for payloads with escaped surrogates."""
    bad_id = next((k for k in ("_vid", "_d") if _unstorable(reading.get(k))), None)
    if bad_id is not None:
        skipped.append(Rejection(path, f"{bad_id} is not valid Unicode text"))
        return False
    for key, value in list(reading.items()):
        if key in ("_s", "_vid", "_d"):
            continue
        why = "field name is not valid Unicode text" if _unstorable(key) else _unstorable(value)
        if why:
            skipped.append(Rejection(f"{path}.{_printable(key)}", why))
            del reading[key]
    statuses = reading.get("_s")
    if statuses:
        kept = []
        for j, status in enumerate(statuses):
            why = _unstorable(status.c) or (
                None
                if status.l is None or INT64[0] <= status.l <= INT64[1]
                else "status level does not fit a 64-bit integer"
            )
            if why:
                skipped.append(Rejection(f"{path}._s[{j}]", why))
            else:
                kept.append(status)
        reading["_s"] = kept
    return True


def _unstorable(value: Any) -> str | None:
    if value.__class__ is str:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return "text is not valid Unicode (a lone UTF-16 surrogate)"
        return None
    if value.__class__ is float:
        return None if math.isfinite(value) else "number overflows a 64-bit float"
    if value.__class__ is int and not -FLOAT_MAX <= value <= FLOAT_MAX:
        return "integer does not fit a 64-bit float"
    return None


def _printable(key: str) -> str:
    return key.encode("utf-8", "backslashreplace").decode("ascii", "backslashreplace")


def _drop_misplaced_arrays(reading: dict[str, Any], path: str, skipped: list[Rejection]) -> None:
    for key, value in list(reading.items()):
        if isinstance(value, list) and not key.startswith("_"):
            skipped.append(Rejection(f"{path}.{key}", "value is an array, expected a scalar"))
            del reading[key]
    status = reading.get("_s")
    if status is not None and not isinstance(status, list):
        skipped.append(Rejection(f"{path}._s", f"_s is {_json_type(status)}, expected an array"))
        del reading["_s"]


def _reading_problem(reading: dict[str, Any]) -> str | None:
    """The reason a typed-decoded reading cannot be used, if any (the rest is already typed)."""
    vid = reading.get("_vid")
    if vid is None:
        return "reading has no _vid, so it cannot be placed"
    if not isinstance(vid, str):
        return f"_vid is {_json_type(vid)}, expected a string"
    device = reading.get("_d")
    if device is not None and not isinstance(device, str):
        return f"_d is {_json_type(device)}, expected a string"
    return None


def _absurd_t(t: int) -> str:
    return f"t={t} is outside 2000-01-01..2100-01-01 (Unix seconds expected)"


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


def _parse_carefully(data: bytes, suspect: bool) -> Payload | Rejection:
    """The slow route: explain what the typed decoder refused and keep what can be kept."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Rejection(
            "$", f"not UTF-8: invalid byte 0x{data[exc.start]:02x} at offset {exc.start}"
        )
    try:
        obj = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        return Rejection("$", f"not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}")
    except (ValueError, RecursionError) as exc:
        return Rejection(
            "$",
            f"not JSON: {exc}" if isinstance(exc, ValueError) else "not JSON: nested too deeply",
        )
    if not isinstance(obj, dict):
        return Rejection("$", f"payload is {_json_type(obj)}, expected an object with t and r")
    if "t" not in obj:
        return Rejection("$.t", "t is missing")
    t = obj["t"]
    if isinstance(t, bool) or not isinstance(t, int):
        if isinstance(t, float) and math.isfinite(t) and t.is_integer():
            t = int(t)  # 1660757423.0 is the same instant; JSON has one number type
        else:
            return Rejection("$.t", f"t is {_json_type(t)} ({_preview(t)}), expected an integer")
    if not T_MIN <= t < T_MAX:
        return Rejection("$.t", _absurd_t(t))
    if "r" not in obj:
        return Rejection("$.r", "r is missing")
    if not isinstance(obj["r"], list):
        return Rejection("$.r", f"r is {_json_type(obj['r'])}, expected an array of readings")
    readings: list[dict[str, Any]] = []
    skipped: list[Rejection] = []
    for i, reading in enumerate(obj["r"]):
        path = f"$.r[{i}]"
        if not isinstance(reading, dict):
            skipped.append(Rejection(path, f"reading is {_json_type(reading)}, expected an object"))
            continue
        problem = _reading_problem(reading)
        if problem is not None:
            skipped.append(Rejection(path, problem))
            continue
        kept: dict[str, Any] = {}
        for key, value in reading.items():
            if key == "_s":
                statuses = _status_list(value, f"{path}._s", skipped)
                if statuses is not None:
                    kept[key] = statuses
            elif key.startswith("_") or _is_scalar(value):
                kept[key] = value
            else:
                skipped.append(
                    Rejection(f"{path}.{key}", f"value is {_json_type(value)}, expected a scalar")
                )
        if not _storable(kept, path, skipped):  # the careful route checks every value
            continue
        readings.append(kept)
    return Payload(t, readings, skipped)


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | bool | int | float)


def _status_list(value: Any, path: str, skipped: list[Rejection]) -> list[Status] | None:
    if not isinstance(value, list):
        skipped.append(Rejection(path, f"_s is {_json_type(value)}, expected an array"))
        return None
    out: list[Status] = []
    for j, item in enumerate(value):
        c = item.get("c") if isinstance(item, dict) else None
        level = item.get("l") if isinstance(item, dict) else None
        if (
            not isinstance(item, dict)
            or not (c is None or isinstance(c, str))
            or not (level is None or (isinstance(level, int) and not isinstance(level, bool)))
        ):
            skipped.append(
                Rejection(f"{path}[{j}]", "status is not an object with string c and integer l")
            )
            continue
        out.append(Status(c=c, l=level))
    return out


def _preview(value: Any, limit: int = 40) -> str:
    text = json.dumps(value, ensure_ascii=True)
    return text if len(text) <= limit else text[: limit - 3] + "..."
