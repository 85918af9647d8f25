"""Committed rows as Arrow, column-wise: the JSON text of a leaf (SPEC §4) or of a dedupe key,
and timestamp text, built for a whole table at once, byte for byte what the row-by-row rules of
core.leaf write (tests compare them on every hard value).

A leaf is SHA-256(0x00 || the record's JSON, keys sorted, as orjson writes it: see
core.leaf.leaf_function). For string, int64, bool and timestamp columns Arrow builds that text
for a whole table; values are escaped exactly as orjson escapes them.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import cache
from typing import Any

from pipeline.core.merkle import LEAF_PREFIX
from pipeline.datasets import Column

# --- committed values as Arrow ---------------------------------------------------------------


def _arrow_type(column_type: str) -> Any:
    import pyarrow as pa

    return {
        "string": pa.string(),
        "int64": pa.int64(),
        "float64": pa.float64(),
        "bool": pa.bool_(),
        "timestamp": pa.timestamp("us", tz="UTC"),
        "list<string>": pa.list_(pa.string()),
    }[column_type]


def arrow_schema(columns: tuple[Column, ...]) -> Any:
    import pyarrow as pa

    return pa.schema([pa.field(c.name, _arrow_type(c.type)) for c in columns])


def arrow_table(columns: tuple[Column, ...], data: dict[str, list[Any]], rows: list[int] | None = None) -> Any:
    """Committed values (timestamps in canonical string form) as an Arrow table, optionally
    only the rows at the given positions."""
    import pyarrow as pa

    arrays = []
    for c in columns:
        values = data[c.name] if rows is None else [data[c.name][i] for i in rows]
        if c.type == "timestamp":
            arrays.append(pa.array(values, pa.string()).cast(_arrow_type("timestamp")))
        else:
            arrays.append(pa.array(values, _arrow_type(c.type)))
    return pa.Table.from_arrays(arrays, schema=arrow_schema(columns))


# --- leaf text ---------------------------------------------------------------------------------

_YEAR_1, _YEAR_10000 = -62135596800 * 10**6, 253402300800 * 10**6  # microseconds since 1970
TEXT_BYTES = 1 << 30  # at most this much leaf text at once: an Arrow string array holds < 2 GiB


def leaf_hashes(table: Any, columns: tuple[Column, ...]) -> list[bytes] | None:
    """The leaf hashes of every row of `table`, column-wise; None if a column cannot be done
    column-wise."""
    leaves: list[bytes] = []
    for piece in text_slices(table):
        texts = leaf_texts(piece, columns)
        if texts is None:
            return None
        leaves += hash_each(texts)
    return leaves


def text_slices(table: Any) -> Iterator[Any]:
    """`table` in slices whose JSON text cannot reach TEXT_BYTES (escaping makes a byte at most 6)."""
    worst = 6 * table.nbytes + 64 * table.num_rows * max(1, table.num_columns)
    step = max(1, -(-table.num_rows // (1 + worst // TEXT_BYTES)))
    for first in range(0, table.num_rows, step):
        yield table.slice(first, step)


def leaf_texts(table: Any, columns: tuple[Column, ...]) -> Any:
    """LEAF_PREFIX + the JSON record of every row of `table`, as one Arrow string array; None when
    a column is missing, a float or a list, or not of the Arrow type a commit writes."""
    return record_texts(table, columns, LEAF_PREFIX.decode(), "")


def record_texts(table: Any, columns: tuple[Column, ...], before: str, after: str) -> Any:
    """`before` + the JSON record of every row of `table` (keys sorted, as a leaf writes it) +
    `after`, as one Arrow string array; None as for leaf_texts."""
    import orjson
    import pyarrow.compute as pc

    types = {c.name: c.type for c in columns}
    if any(name not in table.column_names for name in types):
        return None
    pieces: list[Any] = []
    literal = before + "{"
    for i, name in enumerate(orjson.loads(orjson.dumps(dict.fromkeys(types), option=orjson.OPT_SORT_KEYS))):
        value = value_text(table.column(name), types[name])
        if value is None:
            return None
        opening, text, closing = value
        pieces += [f"{literal}{',' if i else ''}{orjson.dumps(name).decode()}:{opening}", text]
        literal = closing
    return pc.binary_join_element_wise(*pieces, literal + "}" + after, "")


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
    return any(octets.min() < 0x20 or (octets == ord('"')).any() or (octets == ord("\\")).any()
               for octets in _value_octets(column))


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
    ends = np.frombuffer(offsets, dtype=np.int32, count=len(array) + 1, offset=array.offset * 4)
    bounds = (ends - ends[0]).tolist()
    data = values.slice(int(ends[0]), int(ends[-1] - ends[0])).to_pybytes()  # only the array's own values
    sha256 = hashlib.sha256  # slicing bytes is cheaper than slicing a memoryview
    return [sha256(data[a:b]).digest() for a, b in pairwise(bounds)]


def digests(hashes: list[bytes]) -> Any:
    """SHA-256 digests as one Arrow binary(32) array (copied once, not value by value)."""
    import pyarrow as pa

    return pa.Array.from_buffers(pa.binary(32), len(hashes), [None, pa.py_buffer(b"".join(hashes))])


_TIMESTAMP = b"0000-00-00T00:00:00.000000Z"
_DIGIT_PAIRS = (0, 2, 5, 8, 11, 14, 17, 20, 22, 24)  # where each two digits go: century, year, month, ...
_MICROS_PER_DAY = 86_400_000_000


@cache
def _digits() -> tuple[Any, Any]:
    """(the two ASCII digits of 0..99 as uint16, a record type whose fields are a timestamp's ten
    digit pairs)."""
    import numpy as np

    pairs = np.frombuffer("".join(f"{i:02d}" for i in range(100)).encode(), np.uint16)
    fields = np.dtype({"names": [f"f{at}" for at in _DIGIT_PAIRS], "formats": ["<u2"] * len(_DIGIT_PAIRS),
                       "offsets": list(_DIGIT_PAIRS), "itemsize": len(_TIMESTAMP)})
    return pairs, fields


def timestamp_texts(column: Any) -> Any:
    """core.leaf.timestamp_text of each value of an Arrow UTC microsecond timestamp array, as an Arrow
    string array (nulls kept), column-wise: every text is 27 bytes, so the digits are written into
    one fixed-width buffer by integer arithmetic (the civil date of a day number is H. Hinnant's
    civil_from_days). Requires years 1..9999 and fewer than 2**31 / 27 values."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    count, width = len(column), len(_TIMESTAMP)
    if count * width >= 2**31:
        raise ValueError(f"{count:,} timestamps are more than one string array holds")
    if not _common_era(column):
        raise ValueError("timestamps before year 1 or after 9999 have no 4-digit year")
    days, micros = np.divmod(column.cast(pa.int64()).fill_null(0).to_numpy(), _MICROS_PER_DAY)
    era, day_of_era = np.divmod(days.astype(np.int32) + 719_468, 146_097)  # eras of 400 years from 0000-03-01
    year_of_era = (day_of_era - day_of_era // 1460 + day_of_era // 36_524 - day_of_era // 146_096) // 365
    day_of_year = day_of_era - (365 * year_of_era + year_of_era // 4 - year_of_era // 100)
    month_from_march = (5 * day_of_year + 2) // 153
    day = day_of_year - (153 * month_from_march + 2) // 5 + 1
    month = np.where(month_from_march < 10, month_from_march + 3, month_from_march - 9)
    year = year_of_era + era * 400 + (month <= 2)
    seconds, micro = (part.astype(np.int32) for part in np.divmod(micros, 1_000_000))
    hour, seconds = np.divmod(seconds, 3600)
    minute, second = np.divmod(seconds, 60)
    pairs, fields = _digits()
    text = np.empty(count * width, np.uint8)
    text.reshape(count, width)[:] = np.frombuffer(_TIMESTAMP, np.uint8)
    record = text.view(fields)
    values = (year // 100, year % 100, month, day, hour, minute, second, micro // 10_000, micro // 100 % 100,
              micro % 100)
    for name, value in zip(fields.names, values, strict=True):
        record[name] = pairs[value]
    offsets = np.arange(0, width * (count + 1), width, dtype=np.int32)
    out = pa.StringArray.from_buffers(count, pa.py_buffer(offsets), pa.py_buffer(text))
    return out if column.null_count == 0 else pc.if_else(column.is_valid(), out, pa.scalar(None, pa.string()))


# --- dedupe key text ---------------------------------------------------------------------------

_WHITESPACE = "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f"  # what str.split() splits an ASCII string on, but the space


def key_hashes(table: Any, columns: tuple[Column, ...], key_columns: tuple[str, ...]) -> list[bytes | None] | None:
    """core.leaf.dedupe_key_function of every row of `table` (committed values), column-wise:
    None for a row whose text key values are not all ASCII (NFKC and case folding are left to the
    row-by-row rule), and None for all when a key column is a float or a list."""
    import pyarrow as pa
    import pyarrow.compute as pc

    types = {c.name: c.type for c in columns}
    ascii_rows = None
    pieces: list[Any] = []
    literal = "["
    for i, name in enumerate(key_columns):
        column, kind = table.column(name), types[name]
        if kind == "timestamp":  # committed as text, so normalised as text
            column, kind = timestamp_texts(column.combine_chunks()), "string"
        if kind == "string" and column.type == pa.string():
            plain = pc.string_is_ascii(column).fill_null(True)
            ascii_rows = plain if ascii_rows is None else pc.and_(ascii_rows, plain)
            column = _words(pc.ascii_lower(column))
        elif kind not in ("int64", "bool"):
            return None
        value = value_text(column, kind)
        if value is None:
            return None
        opening, text, closing = value
        pieces += [f"{literal}{',' if i else ''}{opening}", text]
        literal = closing
    hashes: list[bytes | None] = list(hash_each(pc.binary_join_element_wise(*pieces, literal + "]", "")))
    if ascii_rows is not None and not pc.all(ascii_rows).as_py():
        hashes = [h if plain else None for h, plain in zip(hashes, ascii_rows.to_pylist(), strict=True)]
    return hashes


def _words(column: Any) -> Any:
    """`" ".join(value.split())` of each ASCII string: every run of whitespace one space, none at
    either end (Arrow's regular expressions would take ten times as long)."""
    import pyarrow.compute as pc

    if _lowest_octet(column) < 0x20:  # every whitespace character but the space is below it
        octets = _octets(column)
        for code in _WHITESPACE:
            if code.encode() in octets:
                column = pc.replace_substring(column, code, " ")
    for _ in range(40):  # each pass halves every run of spaces: 2**40 bytes is more than a column holds
        if b"  " not in _octets(column):
            break
        column = pc.replace_substring(column, "  ", " ")
    return pc.utf8_trim(column, " ")


def _lowest_octet(column: Any) -> int:
    """The lowest byte behind a string column's values (one numpy pass, nothing copied); 0x100 for none."""
    return min((int(octets.min()) for octets in _value_octets(column)), default=0x100)


def _octets(column: Any) -> bytes:
    """The bytes behind a string column's values (a sliced column: perhaps more around them)."""
    return b"".join(octets.tobytes() for octets in _value_octets(column))


def _value_octets(column: Any) -> list[Any]:
    """The data buffers behind a string column's values, a numpy uint8 view of each chunk's that
    holds any (nothing copied; a sliced column: perhaps more around them)."""
    import numpy as np
    import pyarrow as pa

    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    buffers = [chunk.buffers()[2] for chunk in chunks]
    return [np.frombuffer(b, np.uint8) for b in buffers if b is not None and b.size]
