"""Typing a run of JSONL records column-wise with Arrow: the common case, well-formed records.

Arrow reads the run against the schema and every value is checked as a column. A row any check
doubts (a mixed-case address, a timestamp in another time zone, a value over a limit, a missing
contributor) is left to the row-by-row rule of parse.RecordTyper, so a quarantine reason, and any
value the row-by-row rule would commit, is always that rule's. A run Arrow cannot read as the
row-by-row rule would (invalid UTF-8, a key twice, an undeclared key, a value of another type, two
records on a line) is left to that rule whole. tests/test_columns.py holds the two to the same
result on hostile runs.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

from pipeline.core.jcs import MAX_SAFE_INTEGER
from pipeline.core.leaf import dedupe_key_function
from pipeline.datasets import Column, Dataset
from pipeline.ingest.salts import salt_hex
from pipeline.lake.columnar import arrow_schema, digests, key_hashes, leaf_hashes

COLUMN_TYPES = ("string", "int64", "bool", "timestamp")  # what Arrow types here; others go row by row
_PLAIN_ADDRESS = r"^0x(?:[0-9a-f]{40}|[0-9A-F]{40})$"  # one case: no EIP-55 checksum to check
_UTC = (r"^[0-9]{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])T(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]"
        r"(?:\.[0-9]{1,6})?(?:Z|\+00:00)$")
_FRACTION = (r"^(?:\.([0-9]*))?(?:Z|\+00:00)$", r"\1")
_SOME_TIME = "2000-01-01T00:00:00Z"  # stands in for a doubted timestamp, so no cast fails on it


@dataclass
class Typed:
    """The rows of a run typed column-wise: `table` holds their committed values (salt included)
    for the run's positions `rows`, and `contributor`, `leaf` and `key` theirs (Arrow arrays);
    `doubtful` are the positions left to the row-by-row rule (numpy arrays of positions)."""

    table: Any
    rows: Any
    doubtful: Any
    contributor: Any
    leaf: Any
    key: Any


class ColumnTyper:
    """Types runs of one dataset's JSONL records column-wise (built once per worker)."""

    def __init__(self, dataset: Dataset) -> None:
        import pyarrow as pa
        import pyarrow.json as pj

        self.dataset = dataset
        self.columns = dataset.committed_columns
        read = {"string": pa.string(), "int64": pa.int64(), "bool": pa.bool_(), "timestamp": pa.string()}
        schema = pa.schema([(c.name, read[c.type]) for c in dataset.columns] + [("contributor", pa.string())])
        self.options = pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="error")
        self.key = dedupe_key_function(self.columns, dataset.dedupe_key)

    @staticmethod
    def usable(dataset: Dataset) -> bool:
        return all(c.type in COLUMN_TYPES for c in dataset.columns)

    def type(self, source: int, data: bytes, numbers: Any) -> Typed | None:
        """The lines of `data`, a run of source `source` whose lines that are not blank are numbered
        `numbers` and each shaped like one JSON object (see one_object), typed column-wise; or
        None: leave the run to the row-by-row rule."""
        import pyarrow as pa
        import pyarrow.compute as pc

        table = self._read(data, len(numbers))
        if table is None:
            return None
        doubt = pc.invert(pc.fill_null(pc.match_substring_regex(table.column("contributor"), _PLAIN_ADDRESS), False))
        values: dict[str, Any] = {"contributor": pc.ascii_lower(table.column("contributor"))}
        for column in self.dataset.columns:
            value, doubted = self._checked(column, table.column(column.name))
            values[column.name] = value
            if doubted is not None:
                doubt = pc.or_(doubt, pc.fill_null(doubted, False))
        keep = pc.invert(doubt)
        kept = int(pc.sum(keep).as_py() or 0)
        if kept == 0:
            return None
        values = {name: pc.filter(value, keep) for name, value in values.items()}
        flags = keep.to_numpy(zero_copy_only=False)
        rows = flags.nonzero()[0]
        values["salt"] = _salts(salt_hex(source, numbers[rows].tolist()))
        committed = pa.table([_committed(c, values[c.name]) for c in self.columns], schema=arrow_schema(self.columns))
        leaves = leaf_hashes(committed, self.columns)
        keys = key_hashes(committed, self.columns, self.dataset.dedupe_key)
        if leaves is None or keys is None:
            return None
        contributor = values["contributor"]
        return Typed(committed, rows, (~flags).nonzero()[0], contributor.combine_chunks(), digests(leaves),
                     digests(self._keys(keys, values)))

    def _read(self, data: bytes, rows: int) -> Any:
        import pyarrow as pa
        import pyarrow.json as pj

        try:
            data.decode("utf-8")  # Arrow would keep invalid UTF-8 as it is: the row-by-row rule names it
        except UnicodeDecodeError:
            return None
        try:
            table = pj.read_json(io.BytesIO(data), parse_options=self.options,
                                 read_options=pj.ReadOptions(use_threads=False, block_size=len(data) + 1))
        except (pa.ArrowException, ValueError):
            return None
        return table if table.num_rows == rows else None  # two records on one line read as two rows

    def _checked(self, column: Column, values: Any) -> tuple[Any, Any]:
        """(the column's committed values where not doubted, the rows it doubts or None)."""
        import pyarrow.compute as pc

        if column.type == "string":
            if column.max_length is None:
                return values, None
            return values, pc.greater(pc.utf8_length(values), column.max_length)
        if column.type == "int64":
            return values, pc.or_(pc.greater(values, MAX_SAFE_INTEGER), pc.less(values, -MAX_SAFE_INTEGER))
        if column.type == "bool":
            return values, None
        return _utc_text(values)

    def _keys(self, keys: list[bytes | None], values: dict[str, Any]) -> list[bytes]:
        """The keys found column-wise, the others (text beyond ASCII) by the row-by-row rule."""
        import pyarrow as pa

        missing = [i for i, k in enumerate(keys) if k is None]
        if missing:
            at = pa.array(missing, pa.int64())
            picked = pa.table({name: values[name].take(at) for name in self.dataset.dedupe_key})
            for i, row in zip(missing, picked.to_pylist(), strict=True):
                keys[i] = self.key(row)
        return keys  # type: ignore[return-value]


def one_object(line: bytes) -> bool:
    """Whether a line is shaped like one JSON object: `{` first and `}` last. Arrow reads a run as
    one stream of values, so without this an object could span two lines (each only a part of
    one, to the row-by-row rule), a byte order mark could be skipped, and a `null` first in the
    run crashes pyarrow 26's reader (a segmentation fault, not an error). A line that starts with
    `{` and ends with `}` cannot leave an object open for the next line, which starts with `{`;
    two objects on one line are still caught by the row count."""
    text = line.strip()
    return text[:1] == b"{" and text[-1:] == b"}"


def _utc_text(values: Any) -> tuple[Any, Any]:
    """(committed text `YYYY-MM-DDTHH:MM:SS.ffffffZ` of each timestamp written in UTC, the rows
    doubted: any other spelling, or a date that does not exist)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    plain = pc.fill_null(pc.match_substring_regex(values, _UTC), True)
    text = pc.if_else(plain, values, _SOME_TIME)
    year, month, day = (pc.cast(pc.utf8_slice_codeunits(text, a, b), pa.int64()).fill_null(1).to_numpy()
                        for a, b in ((0, 4), (5, 7), (8, 10)))
    leap = (year % 4 == 0) & ((year % 100 != 0) | (year % 400 == 0))
    days = np.array([0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31])[month] + (leap & (month == 2))
    exists = pa.array((year >= 1) & (day <= days))
    fraction = pc.utf8_rpad(pc.replace_substring_regex(pc.utf8_slice_codeunits(text, 19), *_FRACTION), 6, "0")
    canonical = pc.binary_join_element_wise(pc.utf8_slice_codeunits(text, 0, 19), ".", fraction, "Z", "")
    doubted = pc.invert(pc.and_(plain, exists))
    return canonical, pc.and_(pc.is_valid(values), doubted)


def _committed(column: Column, values: Any) -> Any:
    import pyarrow as pa

    if column.type == "timestamp":
        return values.cast(pa.timestamp("us", tz="UTC"))
    return values


def _salts(text: bytes) -> Any:
    """Salts of 32 hex characters each, one after another, as one Arrow string array."""
    import numpy as np
    import pyarrow as pa

    count = len(text) // 32
    offsets = np.arange(0, 32 * count + 1, 32, dtype=np.int32)
    return pa.StringArray.from_buffers(count, pa.py_buffer(offsets.tobytes()), pa.py_buffer(text))
