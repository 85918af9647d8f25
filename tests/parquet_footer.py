"""Editing a Parquet file's footer (Thrift compact protocol), to write the lies a hostile
contributor can put there and pyarrow will not write: row group counts that disagree with the
file's, or with the rows the pages hold. Test support only."""

from __future__ import annotations

import struct
from typing import Any

_LIST, _SET, _MAP, _STRUCT = 9, 10, 11, 12


def _varint(b: bytes, i: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        c = b[i]
        i += 1
        result |= (c & 0x7F) << shift
        shift += 7
        if not c & 0x80:
            return result, i


def _unzigzag(n: int) -> int:
    return (n >> 1) ^ -(n & 1)


def _value(b: bytes, i: int, t: int) -> tuple[Any, int]:
    if t in (1, 2):
        return t == 1, i
    if t == 3:
        return b[i], i + 1
    if t in (4, 5, 6):
        v, i = _varint(b, i)
        return _unzigzag(v), i
    if t == 7:
        return struct.unpack("<d", b[i:i + 8])[0], i + 8
    if t == 8:
        n, i = _varint(b, i)
        return bytes(b[i:i + n]), i + n
    if t in (_LIST, _SET):
        head = b[i]
        i += 1
        n, kind = head >> 4, head & 15
        if n == 15:
            n, i = _varint(b, i)
        items = []
        for _ in range(n):
            if kind in (1, 2):
                items.append(b[i] == 1)
                i += 1
            else:
                v, i = _value(b, i, kind)
                items.append(v)
        return (kind, items), i
    if t == _MAP:
        n, i = _varint(b, i)
        if n == 0:
            return (0, 0, []), i
        kinds = b[i]
        i += 1
        pairs = []
        for _ in range(n):
            k, i = _value(b, i, kinds >> 4)
            v, i = _value(b, i, kinds & 15)
            pairs.append((k, v))
        return (kinds >> 4, kinds & 15, pairs), i
    if t == _STRUCT:
        return _struct(b, i)
    raise ValueError(f"Thrift type {t}")


def _struct(b: bytes, i: int) -> tuple[list[list[Any]], int]:
    fields: list[list[Any]] = []
    last = 0
    while True:
        head = b[i]
        i += 1
        if head == 0:
            return fields, i
        t, delta = head & 15, head >> 4
        if delta:
            fid = last + delta
        else:
            v, i = _varint(b, i)
            fid = _unzigzag(v)
        v, i = _value(b, i, t)
        fields.append([fid, t, v])
        last = fid


def _uvarint(n: int) -> bytes:
    out = bytearray()
    while True:
        if n < 0x80:
            out.append(n)
            return bytes(out)
        out.append((n & 0x7F) | 0x80)
        n >>= 7


def _zigzag(n: int) -> bytes:
    return _uvarint((n << 1) ^ (n >> 63))


def _encoded(t: int, v: Any) -> bytes:
    if t in (1, 2):
        return b""
    if t == 3:
        return bytes([v])
    if t in (4, 5, 6):
        return _zigzag(v)
    if t == 7:
        return struct.pack("<d", v)
    if t == 8:
        return _uvarint(len(v)) + v
    if t in (_LIST, _SET):
        kind, items = v
        out = bytes([(len(items) << 4) | kind]) if len(items) < 15 else bytes([0xF0 | kind]) + _uvarint(len(items))
        for x in items:
            out += bytes([1 if x else 2]) if kind in (1, 2) else _encoded(kind, x)
        return out
    if t == _MAP:
        kt, vt, pairs = v
        if not pairs:
            return b"\x00"
        return _uvarint(len(pairs)) + bytes([(kt << 4) | vt]) + b"".join(_encoded(kt, k) + _encoded(vt, x)
                                                                          for k, x in pairs)
    if t == _STRUCT:
        return _encoded_struct(v)
    raise ValueError(f"Thrift type {t}")


def _encoded_struct(fields: list[list[Any]]) -> bytes:
    out = bytearray()
    last = 0
    for fid, t, v in fields:
        if t in (1, 2):
            t = 1 if v else 2
        delta = fid - last
        out += bytes([(delta << 4) | t]) if 0 < delta <= 15 else bytes([t]) + _zigzag(fid)
        out += _encoded(t, v)
        last = fid
    return bytes(out + b"\x00")


def with_row_counts(data: bytes, groups: list[int] | None = None, total: int | None = None) -> bytes:
    """The Parquet file `data` with its footer saying `groups` rows in its row groups (in order)
    and `total` rows in all (None: as it was). FileMetaData field 3 is num_rows, 4 row_groups;
    RowGroup field 3 is num_rows."""
    size = struct.unpack("<I", data[-8:-4])[0]
    body, (meta, _) = data[:-8 - size], _struct(data[-8 - size:-8], 0)
    fields = {f[0]: f for f in meta}
    if total is not None:
        fields[3][2] = total
    for group, rows in zip(fields[4][2][1], groups or [], strict=False):
        next(f for f in group if f[0] == 3)[2] = rows
    footer = _encoded_struct(meta)
    return body + footer + struct.pack("<I", len(footer)) + b"PAR1"
