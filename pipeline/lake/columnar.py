"""Committed rows as Arrow, column-wise: the JSON text of a leaf (SPEC §4) or of a dedupe key,
and timestamp text, built for a whole table at once, byte for byte what the row-by-row rules of
core.leaf write (tests compare them on every hard value).

A leaf is SHA-256(0x00 || the record's JSON, keys sorted, as orjson writes it: see
core.leaf.leaf_function). For string, int64, bool and timestamp columns Arrow builds that text
for a whole table; values are escaped exactly as orjson escapes them.
"""

from __future__ import annotations

from typing import Any

from pipeline.core.merkle import LEAF_PREFIX
from pipeline.datasets import Column

_YEAR_1, _YEAR_10000 = -62135596800 * 10**6, 253402300800 * 10**6  # microseconds since 1970
TEXT_BYTES = 1 << 30  # at most this much leaf text at once: an Arrow string array holds < 2 GiB


def leaf_hashes(table: Any, columns: tuple[Column, ...]) -> list[bytes] | None:
    """The leaf hashes of every row of `table`, column-wise, in slices whose text cannot reach
    TEXT_BYTES (escaping makes a byte at most 6); None if a column cannot be done column-wise."""
    worst = 6 * table.nbytes + 64 * table.num_rows * max(1, table.num_columns)
    step = max(1, -(-table.num_rows // (1 + worst // TEXT_BYTES)))
    leaves: list[bytes] = []
    for first in range(0, table.num_rows, step):
        texts = leaf_texts(table.slice(first, step), columns)
        if texts is None:
            return None
        leaves += hash_each(texts)
    return leaves


def leaf_texts(table: Any, columns: tuple[Column, ...]) -> Any:
    """LEAF_PREFIX + the JSON record of every row of `table`, as one Arrow string array; None when
    a column is missing, a float or a list, or not of the Arrow type a commit writes."""
    import orjson
    import pyarrow.compute as pc

    types = {c.name: c.type for c in columns}
    if any(name not in table.column_names for name in types):
        return None
    pieces: list[Any] = []
    literal = LEAF_PREFIX.decode() + "{"
    for i, name in enumerate(orjson.loads(orjson.dumps(dict.fromkeys(types), option=orjson.OPT_SORT_KEYS))):
        value = value_text(table.column(name), types[name])
        if value is None:
            return None
        opening, text, closing = value
        pieces += [f"{literal}{',' if i else ''}{orjson.dumps(name).decode()}:{opening}", text]
        literal = closing
    return pc.binary_join_element_wise(*pieces, literal + "}", "")


def value_text(column: Any, column_type: str) -> tuple[str, Any, str] | None:
    """(opening, JSON text of each value, closing) of a column; the quotes of a column without
    nulls are left to the literals around it (one Arrow pass fewer). None: not column-wise."""
    import pyarrow as pa
    import pyarrow.compute as pc

    kind = column.type
    if column_type == "string" and kind == pa.string():
        text, quote = _escaped(column), ('"', '"')
    elif column_type == "timestamp" and kind == pa.timestamp("us", tz="UTC") and _common_era(column):
        text, quote = timestamp_texts(column.combine_chunks()), ('"', '"')
    elif column_type == "int64" and kind == pa.int64():
        return "", pc.cast(column, pa.string()).fill_null("null"), ""
    elif column_type == "bool" and kind == pa.bool_():
        return "", pc.if_else(column, "true", "false").fill_null("null"), ""
    else:
        return None
    if column.null_count == 0:
        return quote[0], text, quote[1]
    return "", pc.binary_join_element_wise(quote[0], text, quote[1], "").fill_null("null"), ""


def _escaped(column: Any) -> Any:
    """String values escaped as orjson escapes them inside quotes: backslash, quote, and every
    control character below 0x20 (each replaced by orjson's own spelling of it)."""
    import orjson
    import pyarrow.compute as pc

    if not _may_need_escapes(column):
        return column
    column = pc.replace_substring(pc.replace_substring(column, "\\", "\\\\"), '"', '\\"')
    for code in range(0x20):
        if pc.any(pc.match_substring(column, chr(code))).as_py():
            column = pc.replace_substring(column, chr(code), orjson.dumps(chr(code)).decode()[1:-1])
    return column


def _may_need_escapes(column: Any) -> bool:
    """Whether the bytes behind a string column hold a control character, a quote or a backslash
    (a scan of its data buffers: bytes outside the values can only make it say True)."""
    import numpy as np

    for chunk in column.chunks:
        values = chunk.buffers()[2]
        if values is not None and values.size:
            octets = np.frombuffer(values, dtype=np.uint8)
            if octets.min() < 0x20 or (octets == ord('"')).any() or (octets == ord("\\")).any():
                return True
    return False


def _common_era(column: Any) -> bool:
    """Every timestamp is in years 1..9999 (what the row-by-row rule can write)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    bounds = pc.min_max(pc.cast(column, pa.int64())).as_py()
    return bounds["min"] is None or (_YEAR_1 <= bounds["min"] and bounds["max"] < _YEAR_10000)


def hash_each(texts: Any) -> list[bytes]:
    """SHA-256 of each value of an Arrow string array."""
    import hashlib
    from itertools import pairwise

    import numpy as np
    import pyarrow as pa

    array = texts.combine_chunks() if isinstance(texts, pa.ChunkedArray) else texts
    if len(array) == 0:
        return []
    _, offsets, values = array.buffers()
    bounds = np.frombuffer(offsets, dtype=np.int32, count=len(array) + 1, offset=array.offset * 4).tolist()
    view, sha256 = memoryview(values), hashlib.sha256
    return [sha256(view[a:b]).digest() for a, b in pairwise(bounds)]


def timestamp_texts(column: Any) -> Any:
    """core.leaf.timestamp_text of each value of an Arrow UTC microsecond timestamp array, as an Arrow
    string array (nulls kept), column-wise: numpy formats it several times faster than Arrow's
    strftime. Requires years 1..9999."""
    import numpy as np
    import pyarrow as pa

    micros = column.cast(pa.int64()).fill_null(0).to_numpy().astype("datetime64[us]")
    text = np.char.add(np.datetime_as_string(micros, unit="us"), "Z")
    return pa.array(text, pa.string(), mask=column.is_null().to_numpy(zero_copy_only=False))
