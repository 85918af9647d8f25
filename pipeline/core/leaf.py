"""Row -> record -> leaf (SPEC §4), the dedupe key, and the one timestamp text rule. Pure.

A receipt's `record` is exactly the JSON object whose JCS bytes are the leaf, so anyone can
recompute a leaf from a receipt without knowing the schema.
"""

from __future__ import annotations

import hashlib
import unicodedata
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson

from pipeline.core.jcs import canonical_bytes, canonicalize
from pipeline.core.merkle import LEAF_PREFIX
from pipeline.datasets import Column


def timestamp_text(t: datetime) -> str:
    """The committed text of a timestamp: UTC, microseconds, `YYYY-MM-DDTHH:MM:SS.ffffffZ`.

    Requires an aware datetime."""
    t = t.astimezone(UTC)
    # Formatted by hand: strftime does not zero-pad years below 1000 on every platform.
    return (f"{t.year:04d}-{t.month:02d}-{t.day:02d}T{t.hour:02d}:{t.minute:02d}:"
            f"{t.second:02d}.{t.microsecond:06d}Z")


def json_value(column_type: str, value: Any) -> Any:
    """The JSON form of a committed value: timestamps become UTC strings with microseconds."""
    if value is None:
        return None
    if column_type == "timestamp":
        if not isinstance(value, datetime):
            raise TypeError(f"timestamp value {value!r} is not a datetime")
        return timestamp_text(value)
    if column_type == "list<string>":
        return list(value)
    if column_type == "float64":
        return float(value)
    return value


def record_object(columns: Sequence[Column], row: dict[str, Any]) -> dict[str, Any]:
    """The JSON record of a row read back from a data part (typed values, e.g. datetimes)."""
    return {c.name: json_value(c.type, row.get(c.name)) for c in columns}


def normalize_text(value: Any) -> Any:
    """Dedupe normalisation: NFKC, case-folded, whitespace collapsed."""
    if isinstance(value, str):
        if value.isascii():  # ASCII is NFKC-stable and case-folds to lower case
            return " ".join(value.lower().split())
        return " ".join(unicodedata.normalize("NFKC", value).casefold().split())
    if isinstance(value, list):
        return [normalize_text(v) for v in value]
    return value


def leaf_function(columns: Sequence[Column]) -> Callable[[dict[str, Any]], bytes]:
    """Leaf hash of a committed row (values in committed form: timestamps as canonical text).

    orjson with sorted keys is byte-identical to JCS for strings, safe integers, booleans, null
    and lists of those (tests check it against the rfc8785 package); rows with float columns
    take the general JCS path.
    """
    sha256 = hashlib.sha256
    if any(c.type == "float64" for c in columns):
        return lambda row: sha256(LEAF_PREFIX + canonical_bytes(row)).digest()
    dumps, option = orjson.dumps, orjson.OPT_SORT_KEYS
    return lambda row: sha256(LEAF_PREFIX + dumps(row, option=option)).digest()


def dedupe_key_function(columns: Sequence[Column], key_columns: Sequence[str]) -> Callable[[dict[str, Any]], bytes]:
    """SHA-256 of the JCS array of the normalised key values of a row in committed form."""
    types = {c.name: c.type for c in columns}
    sha256, dumps = hashlib.sha256, orjson.dumps
    if all(types[k] in ("string", "timestamp", "bool", "list<string>") for k in key_columns):
        keys = tuple(key_columns)
        return lambda row: sha256(dumps([normalize_text(row[k]) for k in keys])).digest()
    return lambda row: sha256(canonicalize([normalize_text(row.get(k)) for k in key_columns]).encode()).digest()
