"""Parse contribution files into typed records or quarantine entries (SPEC §2).

Pure over bytes: `parse_source` takes a source's bytes and its declared dataset and returns one
`Record` per input record, each either typed values or a reason code. Nothing is dropped.
"""

from __future__ import annotations

import gzip
import json
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from eth_utils import is_checksum_address

from pipeline.datasets import Column, Dataset
from pipeline.jcs import MAX_SAFE_INTEGER

FORMATS = {".jsonl": "jsonl", ".jsonl.gz": "jsonl", ".ndjson": "jsonl", ".ndjson.gz": "jsonl"}
_ADDRESS = re.compile(r"^0x[0-9a-fA-F]{40}$")


@dataclass
class Record:
    """One input record: `values` when it parsed, else `reason` (a quarantine code)."""

    source: int  # index of the source in the batch
    line: int  # 1-based line (JSONL) or record number
    raw: str
    values: dict[str, Any] | None = None
    contributor: str | None = None
    reason: str | None = None
    detail: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def reject(self, reason: str, detail: str) -> Record:
        self.values, self.reason, self.detail = None, reason, detail
        return self


def source_format(key: str) -> str | None:
    lower = key.lower()
    for suffix, fmt in FORMATS.items():
        if lower.endswith(suffix):
            return fmt
    return None


def source_extension(key: str) -> str:
    lower = key.lower()
    for suffix in sorted(FORMATS, key=len, reverse=True):
        if lower.endswith(suffix):
            return suffix.lstrip(".")
    name = lower.rsplit("/", 1)[-1]
    return name.split(".", 1)[1] if "." in name else "bin"


def _coerce(column: Column, value: Any) -> tuple[Any, str | None]:
    """Return (typed value, None) or (None, problem)."""
    if value is None:
        return None, None
    t = column.type
    if t == "string":
        if not isinstance(value, str):
            return None, f"{column.name} must be a string"
        if column.max_length is not None and len(value) > column.max_length:
            return None, f"{column.name} is {len(value)} characters, over {column.max_length}"
        return value, None
    if t == "int64":
        if isinstance(value, bool) or not isinstance(value, int) or abs(value) > MAX_SAFE_INTEGER:
            return None, f"{column.name} must be an integer within +-(2^53-1)"
        return value, None
    if t == "float64":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None, f"{column.name} must be a number"
        return float(value), None
    if t == "bool":
        if not isinstance(value, bool):
            return None, f"{column.name} must be true or false"
        return value, None
    if t == "timestamp":
        if not isinstance(value, str):
            return None, f"{column.name} must be an ISO 8601 timestamp string"
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00") if value.endswith("Z") else value)
        except ValueError:
            return None, f"{column.name} is not an ISO 8601 timestamp"
        if parsed.tzinfo is None:
            return None, f"{column.name} has no time zone"
        return parsed.astimezone(UTC), None
    if t == "list<string>":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            return None, f"{column.name} must be a list of strings"
        if column.max_length is not None and len(value) > column.max_length:
            return None, f"{column.name} has {len(value)} items, over {column.max_length}"
        return value, None
    raise AssertionError(f"unknown type {t}")


def typed_record(dataset: Dataset, record: Record, obj: Any) -> Record:
    """Check an already-decoded object against the dataset schema."""
    if not isinstance(obj, dict):
        return record.reject("not_an_object", f"a record must be a JSON object, got {type(obj).__name__}")
    contributor = obj.get("contributor")
    if contributor is None:
        return record.reject("missing_contributor", "the record names no contributor")
    if not isinstance(contributor, str) or not _ADDRESS.match(contributor):
        return record.reject("invalid_contributor", "contributor must be 0x and 40 hex digits")
    if contributor != contributor.lower() and contributor[2:] != contributor[2:].upper():
        if not is_checksum_address(contributor):
            return record.reject("invalid_contributor", "mixed-case contributor fails its EIP-55 checksum")
    record.contributor = contributor.lower()
    known = {c.name for c in dataset.columns}
    unknown = sorted(k for k in obj if k not in known and k != "contributor")
    if "salt" in unknown:
        return record.reject("reserved_column", "'salt' is assigned by anchorlake, not by contributors")
    if unknown and dataset.unknown_columns == "quarantine":
        return record.reject("unknown_column", f"unknown columns: {', '.join(unknown)[:200]}")
    values: dict[str, Any] = {}
    for column in dataset.columns:
        typed, problem = _coerce(column, obj.get(column.name))
        if problem:
            reason = "field_too_long" if "over" in problem else "wrong_type"
            return record.reject(reason, problem)
        values[column.name] = typed
    values["contributor"] = record.contributor
    record.values = values
    return record


def _decompress(key: str, data: bytes) -> bytes:
    if key.lower().endswith(".gz"):
        return gzip.decompress(data)
    return data


def parse_source(dataset: Dataset, index: int, key: str, data: bytes) -> Iterator[Record]:
    """Yield one Record for every record in the source; a source that cannot be read at all
    yields a single quarantined Record naming why."""
    fmt = source_format(key)
    if fmt is None:
        yield Record(index, 0, "", reason="unsupported_format", detail=f"{key}: not JSONL (.jsonl, .jsonl.gz)")
        return
    try:
        text = _decompress(key, data)
    except (OSError, EOFError, zlib.error) as e:
        yield Record(index, 0, "", reason="corrupt_compression", detail=f"{key}: {e}")
        return
    if not text.strip():
        yield Record(index, 0, "", reason="empty_source", detail=f"{key} holds no records")
        return
    yield from _parse_jsonl(dataset, index, text)


def _parse_jsonl(dataset: Dataset, index: int, text: bytes) -> Iterator[Record]:
    for number, line in enumerate(text.split(b"\n"), start=1):
        if not line.strip():
            continue
        if len(line) > dataset.max_record_bytes:
            raw = line[:1024].decode("utf-8", "replace")
            yield Record(index, number, raw, reason="record_too_large",
                         detail=f"{len(line)} bytes, over {dataset.max_record_bytes}")
            continue
        try:
            decoded = line.decode("utf-8")
        except UnicodeDecodeError as e:
            yield Record(index, number, line.decode("utf-8", "replace"), reason="invalid_utf8", detail=str(e))
            continue
        record = Record(index, number, decoded)
        try:
            obj = json.loads(decoded, parse_constant=_reject_constant)
        except RecursionError:
            yield record.reject("nested_too_deep", "JSON nesting is too deep")
            continue
        except ValueError as e:
            yield record.reject("invalid_json", str(e))
            continue
        yield typed_record(dataset, record, obj)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")
