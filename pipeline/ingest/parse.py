"""Parse contribution files into typed, sealed records or quarantine entries (SPEC §2).

`parse_source` streams one source (JSONL, CSV or Parquet, optionally gzip-compressed) and yields
one `Record` per input record: typed values, or a reason code with the raw text. Nothing is
dropped and memory stays bounded by the longest allowed record, whatever the file's size.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import math
import re
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import IO, Any, cast

import orjson
from eth_utils import is_checksum_address

from pipeline.core.jcs import MAX_SAFE_INTEGER
from pipeline.core.leaf import dedupe_key_function, leaf_function, timestamp_text
from pipeline.datasets import Column, Dataset
from pipeline.errors import CheckFailed
from pipeline.ingest.columns import ColumnTyper, Typed, one_object
from pipeline.ingest.partitions import read_shuffled_bytes, write_shuffled_bytes
from pipeline.ingest.salts import salt_hex
from pipeline.lake.columnar import arrow_table
from pipeline.lake.sources import read_checked
from pipeline.lake.storage import Lake

_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
_UTC_TEXT = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.(\d{1,6}))?(?:Z|\+00:00)")
_BOM = b"\xef\xbb\xbf"
MAX_DEPTH = 64  # deeper JSON is a nesting bomb, not a record
PARQUET_BATCH_BYTES = 64 << 20  # rows of a Parquet source decoded at once, at most, at the record size limit


@dataclass(slots=True)
class Record:
    """One input record: `values` when it parsed, else `reason` (a quarantine code)."""

    source: int  # index of the source in the batch
    line: int  # 1-based line (JSONL, CSV) or row number (Parquet); 0 for the source as a whole
    raw: bytes | str
    values: dict[str, Any] | None = None
    contributor: str | None = None
    reason: str | None = None
    detail: str | None = None
    duplicate_of: str | None = None
    leaf: bytes | None = None  # set with a fresh salt once the record is typed (see seal)
    key: bytes | None = None  # dedupe key

    def reject(self, reason: str, detail: str) -> Record:
        self.values, self.reason, self.detail = None, reason, detail
        return self


@dataclass
class Block:
    """Records of one source in columns, as Arrow arrays: what workers send back, cheap to pickle.

    `table` holds the committed values of every record (a null row where the record was rejected);
    `reason` is null while a record stands; `leaf` and `key` are set for typed records once sealed.
    """

    source: int
    line: Any  # int64: 1-based line or row number, 0 for the source as a whole
    raw: Any  # binary: the record's text as read
    reason: Any  # string
    detail: Any  # string
    contributor: Any  # string
    table: Any
    leaf: Any  # binary(32)
    key: Any  # binary(32)

    def __len__(self) -> int:
        return len(self.line)

    @classmethod
    def concat(cls, source: int, blocks: list[Block]) -> Block:
        """The blocks of one source, one after another, as one."""
        import pyarrow as pa

        return cls(source, table=pa.concat_tables([b.table for b in blocks]),
                   **{name: pa.concat_arrays([getattr(b, name) for b in blocks]) for name in block_types()})


@cache
def block_types() -> dict[str, Any]:
    """The Arrow type of each column of a Block but its table."""
    import pyarrow as pa

    return {"line": pa.int64(), "raw": pa.binary(), "reason": pa.string(), "detail": pa.string(),
            "contributor": pa.string(), "leaf": pa.binary(32), "key": pa.binary(32)}


def to_block(source: int, records: list[Record], columns: tuple[Column, ...]) -> Block:
    import pyarrow as pa

    types = block_types()
    lists = {"line": [r.line for r in records], "raw": [_raw_bytes(r.raw) for r in records],
             "reason": [r.reason for r in records], "detail": [r.detail for r in records],
             "contributor": [r.contributor for r in records], "leaf": [r.leaf for r in records],
             "key": [r.key for r in records]}
    return Block(source, table=_values(records, columns),
                 **{name: pa.array(values, types[name]) for name, values in lists.items()})


def _raw_bytes(raw: bytes | str) -> bytes:
    """A record's text as bytes (a CSV record is read as text; lone surrogates kept as they were)."""
    return raw if isinstance(raw, bytes) else raw.encode("utf-8", "surrogatepass")


def _values(records: list[Record], columns: tuple[Column, ...]) -> Any:
    """The committed values of records as an Arrow table, a null row for each rejected one."""
    return arrow_table(columns, {c.name: [r.values[c.name] if r.values is not None else None for r in records]
                                 for c in columns})


def source_format(key: str) -> tuple[str | None, bool]:
    """(format, gzip) from the key's suffix: jsonl, csv or parquet, optionally .gz."""
    lower = key.lower()
    compressed = lower.endswith(".gz")
    if compressed:
        lower = lower[:-3]
    for suffix, fmt in ((".jsonl", "jsonl"), (".ndjson", "jsonl"), (".json", "jsonl"), (".csv", "csv"),
                        (".parquet", "parquet")):
        if lower.endswith(suffix):
            return fmt, compressed
    return None, compressed


def source_extension(key: str) -> str:
    fmt, compressed = source_format(key)
    if fmt is None:
        name = key.rsplit("/", 1)[-1].lower()
        ext = name.split(".", 1)[1] if "." in name else "bin"
        return re.sub(r"[^a-z0-9.]", "_", ext)[:32] or "bin"
    return fmt + (".gz" if compressed else "")


# --- typing values against the schema -------------------------------------------------------

Checker = Callable[[Any], tuple[Any, str | None]]


def _checker(column: Column) -> Checker:
    """Return a function mapping a decoded value to (committed value, None) or (None, problem).

    Timestamps are committed in their canonical string form `YYYY-MM-DDTHH:MM:SS.ffffffZ`.
    """
    name, limit = column.name, column.max_length

    def string(v: Any) -> tuple[Any, str | None]:
        if not isinstance(v, str):
            return None, f"{name} must be a string"
        if limit is not None and len(v) > limit:
            return None, f"{name} is {len(v)} characters, over the limit of {limit}"
        return v, None

    def int64(v: Any) -> tuple[Any, str | None]:
        if isinstance(v, bool) or not isinstance(v, int) or abs(v) > MAX_SAFE_INTEGER:
            return None, f"{name} must be an integer within +-(2^53-1)"
        return v, None

    def float64(v: Any) -> tuple[Any, str | None]:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            return None, f"{name} must be a finite number"
        return float(v), None

    def boolean(v: Any) -> tuple[Any, str | None]:
        return (v, None) if isinstance(v, bool) else (None, f"{name} must be true or false")

    def timestamp(v: Any) -> tuple[Any, str | None]:
        if isinstance(v, str):
            try:
                parsed = datetime.fromisoformat(v)
            except ValueError:
                return None, f"{name} is not an ISO 8601 timestamp"
            # Fast path for the common UTC forms: the canonical text is a re-spelling of the input.
            match = _UTC_TEXT.fullmatch(v)
            if match is not None:
                return f"{v[:19]}.{(match.group(1) or '').ljust(6, '0')}Z", None
            v = parsed
        if not isinstance(v, datetime):
            return None, f"{name} must be an ISO 8601 timestamp"
        if v.tzinfo is None:
            return None, f"{name} has no time zone"
        try:
            return timestamp_text(v), None
        except (OverflowError, ValueError):  # e.g. 9999-12-31T23:00:00-05:00 is past year 9999 in UTC
            return None, f"{name} is outside the years 1 to 9999 in UTC"

    def string_list(v: Any) -> tuple[Any, str | None]:
        if not isinstance(v, list) or not all(isinstance(item, str) for item in v):
            return None, f"{name} must be a list of strings"
        if limit is not None and len(v) > limit:
            return None, f"{name} has {len(v)} items, over the limit of {limit}"
        return v, None

    return {"string": string, "int64": int64, "float64": float64, "bool": boolean, "timestamp": timestamp,
            "list<string>": string_list}[column.type]


class RecordTyper:
    """Checks decoded objects against one dataset's schema (built once per batch)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset
        self.checkers = [(c.name, _checker(c)) for c in dataset.columns]
        self.known = {c.name for c in dataset.columns} | {"contributor"}
        self.quarantine_unknown = dataset.unknown_columns == "quarantine"

    def type(self, record: Record, obj: Any) -> Record:
        """The record typed against the schema, or rejected with its reason. Nothing a record
        holds can raise out of here: one record never stops its source, or the batch."""
        try:
            return self._type(record, obj)
        except Exception as e:  # a value no check foresaw: that record is quarantined, not the batch
            return record.reject("wrong_type", f"cannot be typed: {type(e).__name__}")

    def _type(self, record: Record, obj: Any) -> Record:
        if not isinstance(obj, dict):
            return record.reject("not_an_object", f"a record must be a JSON object, got {type(obj).__name__}")
        contributor = obj.get("contributor")
        if contributor is None:
            return record.reject("missing_contributor", "the record names no contributor")
        if not isinstance(contributor, str) or not _ADDRESS.fullmatch(contributor):
            return record.reject("invalid_contributor", "contributor must be 0x and 40 hex digits")
        lower = contributor.lower()
        if contributor != lower and contributor[2:] != contributor[2:].upper() and not is_checksum_address(contributor):
            return record.reject("invalid_contributor", "mixed-case contributor fails its EIP-55 checksum")
        record.contributor = lower
        if len(obj) > len(self.known) or not self.known.issuperset(obj):
            unknown = sorted(k for k in obj if k not in self.known)
            if "salt" in unknown:
                return record.reject("reserved_column", "'salt' is assigned by anchorlake, not by contributors")
            if unknown and self.quarantine_unknown:
                return record.reject("unknown_column", f"{len(unknown)} column(s) the dataset does not declare")
        values: dict[str, Any] = {}
        for name, check in self.checkers:
            value = obj.get(name)
            if value is None:
                values[name] = None
                continue
            typed, problem = check(value)
            if problem is not None:
                return record.reject("field_too_long" if "over the limit" in problem else "wrong_type", problem)
            values[name] = typed
        values["contributor"] = lower
        record.values = values
        return record


# --- reading sources ------------------------------------------------------------------------


class Sealer:
    """Gives typed records their salt, leaf hash and dedupe key (CPU-heavy; runs in workers)."""

    def __init__(self, dataset: Dataset) -> None:
        self.columns = dataset.committed_columns
        self.leaf = leaf_function(self.columns)
        self.key = dedupe_key_function(self.columns, dataset.dedupe_key)

    def seal(self, records: list[Record]) -> list[Record]:
        typed = [r for r in records if r.values is not None]
        salts = salt_hex(typed[0].source, [r.line for r in typed]).decode() if typed else ""
        for n, r in enumerate(typed):
            values = r.values
            assert values is not None
            r.key = self.key(values)
            values["salt"] = salts[32 * n: 32 * n + 32]
            r.leaf = self.leaf(values)
        return records


@dataclass
class _State:
    """What a worker builds once per dataset."""

    typer: RecordTyper
    sealer: Sealer
    columns: ColumnTyper | None  # None when the schema has a type Arrow does not type here


_WORKER_STATE: dict[str, _State] = {}


def _state(dataset: Dataset) -> _State:
    state = _WORKER_STATE.get(dataset.name)
    if state is None or state.typer.dataset != dataset:
        columns = ColumnTyper(dataset) if ColumnTyper.usable(dataset) else None
        state = _WORKER_STATE[dataset.name] = _State(RecordTyper(dataset), Sealer(dataset), columns)
    return state


def _blocks(dataset: Dataset, index: int, records: Iterator[Record]) -> Iterator[Block]:
    """Group records read in this process into sealed blocks."""
    sealer = _state(dataset).sealer
    pending: list[Record] = []
    size = 0
    failure: BaseException | None = None
    try:
        for record in records:
            pending.append(record)
            size += len(record.raw)
            if len(pending) >= BLOCK_LINES or size >= BLOCK_BYTES:
                yield to_block(index, sealer.seal(pending), sealer.columns)
                pending, size = [], 0
    except (OSError, EOFError, zlib.error, _CorruptSource) as e:
        failure = e  # the source breaks off here: keep what was read before it
    if pending:
        yield to_block(index, sealer.seal(pending), sealer.columns)
    if failure is not None:
        raise failure


BLOCK_LINES = 20_000  # records of a CSV or Parquet source per block, at most
BLOCK_BYTES = 32 << 20  # and their text, at most (records of up to the size limit)


# --- JSONL: runs of lines, typed column-wise where they can be --------------------------------

RUN_BYTES = 4 << 20  # JSONL bytes a worker types at once
HEAD_BYTES = 1024  # what is kept of a line over the size limit


@dataclass(frozen=True)
class LineRun:
    """Lines `first` .. `first + count - 1` of a JSONL source as read: `data` is their bytes, each
    line ended by a newline but perhaps the last. A line over the size limit is cut to its head,
    and its number is in `long`. `at`: where `data` starts in the source's stored bytes, when it is
    exactly those bytes (no line cut, not decompressed); else None."""

    first: int
    count: int
    data: bytes
    long: frozenset[int]
    at: int | None = None

    def lines(self) -> list[tuple[int, bytes, bool]]:
        """(number, line without its end, over the limit) of each line that is not blank."""
        found = []
        for number, line in enumerate(self.data.split(b"\n")[:self.count], self.first):
            if number in self.long:
                found.append((number, line, True))
            elif line.strip():
                found.append((number, line.rstrip(b"\r"), False))
        return found

    def blank(self) -> bool:
        return not self.long and (not self.data or self.data.isspace())

    def columns(self) -> Lines:
        """The lines that are not blank as columns. Read with numpy in the common case (no blank
        line, no line over the limit, every line `{...}` with nothing around it); else from lines()."""
        import numpy as np
        import pyarrow as pa

        found = self._plain_lines()
        if found is not None:
            starts, values = found
            offsets = np.append(starts - np.arange(self.count), len(values)).astype(np.int32)
            texts = pa.Array.from_buffers(pa.binary(), self.count, [None, pa.py_buffer(offsets), pa.py_buffer(values)])
            return Lines(np.arange(self.first, self.first + self.count, dtype=np.int64), texts, True)
        lines = [(number, line) for number, line, _ in self.lines()]
        return Lines(np.array([number for number, _ in lines], np.int64), pa.array([line for _, line in lines], pa.binary()),
                     not self.long and all(one_object(line) for _, line in lines))

    def _plain_lines(self) -> tuple[Any, bytes] | None:
        """(where each line starts, the lines' bytes without their newlines), if every line is
        `{` .. `}` with nothing around it: then the lines are their own text. Else None."""
        import numpy as np

        if self.long or not self.count or len(self.data) >= 1 << 31:
            return None
        octets = np.frombuffer(self.data, np.uint8)
        ends = np.flatnonzero(octets == 0x0A)
        if len(ends) == self.count - 1:
            ends = np.append(ends, len(self.data))  # the last line has no newline
        if len(ends) != self.count or ends[-1] < len(self.data) - 1:  # no more lines than `count`, nothing after them
            return None
        starts = np.concatenate(([0], ends[:-1] + 1))
        if (starts >= ends).any() or (octets[starts] != 0x7B).any() or (octets[ends - 1] != 0x7D).any():
            return None
        return starts, self.data.replace(b"\n", b"")


@dataclass(frozen=True)
class Lines:
    """A run's lines that are not blank, as columns: their numbers (numpy int64), their text
    without its line end (Arrow binary), and whether each is shaped like one JSON object."""

    numbers: Any
    texts: Any
    shaped: bool

    def at(self, positions: Any) -> Iterator[tuple[int, bytes, bool]]:
        """(number, text, over the limit: never) of the lines at `positions`."""
        texts = self.texts.take(positions).to_pylist()
        return ((int(self.numbers[i]), text, False) for i, text in zip(positions, texts, strict=True))


def _line_runs(body: IO[bytes], limit: int, max_lines: int, size: int = RUN_BYTES) -> Iterator[LineRun]:
    """The lines of a JSONL source in runs of about `size` bytes, holding at most `limit` bytes of
    a line over the limit; _CorruptSource("too_many_rows") after the run that reaches `max_lines`.
    A UTF-8 byte order mark before the first line is dropped. Each run's `at` counts the bytes
    read from `body` before it (what `data` held ends where the bytes read so far end)."""
    run = _RunBuilder(limit, max_lines)
    tail = b""  # the start of the line being read: at most `limit` bytes
    head: bytes | None = None  # the head of a line over the limit whose rest is being skipped
    read = getattr(body, "read1", body.read)  # what one step gives: a corrupt gzip tail loses no more
    first_read, position = True, 0
    try:
        while not run.full and (data := read(size)):
            position += len(data)
            if first_read:  # the mark may come in reads of fewer than its three bytes
                while len(data) < len(_BOM) and (more := read(size)):
                    data += more
                    position += len(more)
                data, first_read = data.removeprefix(_BOM), False
            if head is not None:  # skip to the end of the long line
                cut = data.find(b"\n")
                if cut < 0:
                    continue
                run.add_long(head)
                head, data = None, data[cut + 1:]
            data = tail + data if tail else data
            cut = data.rfind(b"\n") + 1
            run.add(data[:cut], at=position - len(data))
            tail = data[cut:]
            if len(tail) > limit:
                head, tail = tail[:min(HEAD_BYTES, limit + 1)], b""
            if run.held >= size:
                yield run.take()
    except (OSError, EOFError, zlib.error, _CorruptSource):
        if run.count:  # the source breaks off here: the whole lines before it are kept
            yield run.take()
        raise
    if not run.full:
        if head is not None:
            run.add_long(head)
        elif tail:
            run.add(tail, ended=False, at=position - len(tail))
    if run.count:
        yield run.take()
    if run.full:
        raise _CorruptSource(f"more than {max_lines} lines (limits.source_rows)", "too_many_rows")


class _RunBuilder:
    """Gathers whole lines into a LineRun, counting them against the source's line limit."""

    def __init__(self, limit: int, max_lines: int) -> None:
        self.limit, self.max_lines = limit, max_lines
        self.read = 0  # lines before this run
        self.full = False  # a line past max_lines was read
        self._reset()

    def _reset(self) -> None:
        self.pieces: list[bytes] = []
        self.count = self.held = 0
        self.long: set[int] = set()
        self.at: int | None = None  # where the run's bytes start in the source, while they are its own
        self.verbatim = True

    def add(self, lines: bytes, ended: bool = True, at: int | None = None) -> None:
        """Whole lines, each ended by a newline (the last not, at the end of the source), found at
        byte `at` of the source (None: not known)."""
        if not lines:
            return
        if self.pieces:
            self.verbatim = self.verbatim and at is not None and at == cast(int, self.at) + self.held
        else:
            self.at, self.verbatim = at, at is not None
        count = lines.count(b"\n") + (0 if ended else 1)
        if _has_long_line(lines, self.limit):
            lines, self.verbatim = self._cut_long(lines), False
        room = self.max_lines - self.read - self.count
        if count > room:  # the source has more lines than it may: keep those it may have
            self.full, self.verbatim = True, False
            if room <= 0:
                return
            lines, count = b"".join(line + b"\n" for line in lines.split(b"\n")[:room]), room
        self.pieces.append(lines)
        self.count += count
        self.held += len(lines)

    def add_long(self, head: bytes) -> None:
        if self.read + self.count >= self.max_lines:
            self.full = True
            return
        self.long.add(self.read + self.count + 1)
        self.add(head + b"\n")
        self.verbatim = False

    def _cut_long(self, lines: bytes) -> bytes:
        parts = lines.split(b"\n")
        for k, line in enumerate(parts):
            if len(line) > self.limit:
                self.long.add(self.read + self.count + k + 1)
                parts[k] = line[:min(HEAD_BYTES, self.limit + 1)]
        return b"\n".join(parts)

    def take(self) -> LineRun:
        run = LineRun(self.read + 1, self.count, b"".join(self.pieces), frozenset(self.long),
                      self.at if self.verbatim else None)
        self.read += self.count
        self._reset()
        return run


def _has_long_line(data: bytes, limit: int) -> bool:
    """Whether a line of `data` (whole lines) is over `limit` bytes, without splitting it."""
    at = 0
    while len(data) - at > limit + 1:
        cut = data.rfind(b"\n", at, at + limit + 1)
        if cut < 0:
            return True
        at = cut + 1
    return False


@dataclass(frozen=True)
class Stored:
    """Where a source's bytes are kept, read again by whoever parses a run of them: the lake's
    object, and a private local copy (`path`, for Parquet) if one was made."""

    lake: Lake
    key: str
    path: str | None = None


@dataclass(frozen=True)
class RunRef:
    """A run of lines by reference: bytes [at, at + length) of a stored source, which hash to
    `sha256` (the reader that planned the run hashed them), lines `first` .. `first + count - 1`."""

    stored: Stored
    at: int
    length: int
    sha256: str
    first: int
    count: int

    @classmethod
    def of(cls, stored: Stored, run: LineRun) -> RunRef:
        assert run.at is not None
        return cls(stored, run.at, len(run.data), hashlib.sha256(run.data).hexdigest(), run.first, run.count)

    def read(self) -> LineRun:
        """The run's lines, read from the store; CheckFailed unless they are the bytes planned."""
        data = read_checked(self.stored.lake, self.stored.key, self.at, self.length, self.sha256,
                            f"lines {self.first}..{self.first + self.count - 1}")
        return LineRun(self.first, self.count, data, frozenset(), self.at)


@dataclass(frozen=True)
class RunFile:
    """A run of lines that went with its bytes (decompressed, or with a long line cut to its
    head), kept in a file of the commit's shuffle directory (see LineRun)."""

    path: str
    first: int
    count: int
    long: frozenset[int]
    size: int  # the bytes of the lines (the file holds them zstd-compressed)

    @classmethod
    def write(cls, path: Path, run: LineRun) -> RunFile:
        """Keep `run` at `path`, zstd-compressed: a run decompressed from a small upload (lines of
        one text repeated) stays small on disk."""
        import pyarrow as pa

        write_shuffled_bytes(path, cast(bytes, pa.compress(run.data, codec="zstd", asbytes=True)))
        return cls(str(path), run.first, run.count, run.long, len(run.data))

    def read(self) -> LineRun:
        import pyarrow as pa

        packed = read_shuffled_bytes(Path(self.path))
        data = pa.decompress(packed, decompressed_size=self.size, codec="zstd", asbytes=True)
        return LineRun(self.first, self.count, data, self.long)


def _jsonl_run(dataset: Dataset, index: int, run: LineRun | RunRef | RunFile) -> Block:
    """Worker: parse, type and seal a run of JSONL lines, column-wise where it can be; a run by
    reference, or in a file, is read first."""
    if not isinstance(run, LineRun):
        run = run.read()
    state = _state(dataset)
    lines = run.columns() if state.columns is not None and not run.long else None  # a cut line goes row by row
    typed = state.columns.type(index, run.data, lines.numbers) if state.columns and lines and lines.shaped else None
    if lines is None or typed is None:
        return to_block(index, state.sealer.seal(list(_jsonl_lines(dataset, state.typer, index, iter(run.lines())))),
                        state.sealer.columns)
    doubted = state.sealer.seal(list(_jsonl_lines(dataset, state.typer, index, lines.at(typed.doubtful))))
    return _merged(index, lines, typed, to_block(index, doubted, state.sealer.columns))


def _merged(index: int, lines: Lines, typed: Typed, doubted: Block) -> Block:
    """One block of a run's lines: those typed column-wise, and the doubted ones typed row by row."""
    import numpy as np
    import pyarrow as pa

    size = len(lines.numbers)
    line = pa.array(lines.numbers)
    if not len(doubted):
        nothing = pa.nulls(size, pa.string())
        return Block(index, line, lines.texts, nothing, nothing, typed.contributor, typed.table, typed.leaf, typed.key)
    order = pa.array(np.argsort(np.concatenate([typed.rows, typed.doubtful])), pa.int64())
    nothing = pa.nulls(len(typed.rows), pa.string())

    def merged(column: Any, rest: Any) -> Any:
        return pa.concat_arrays([column, rest]).take(order)

    return Block(index, line, lines.texts, merged(nothing, doubted.reason), merged(nothing, doubted.detail),
                 merged(typed.contributor, doubted.contributor), pa.concat_tables([typed.table, doubted.table]).take(order),
                 merged(typed.leaf, doubted.leaf), merged(typed.key, doubted.key))


def _jsonl_runs(dataset: Dataset, index: int, body: IO[bytes], pool: Executor,
                stored: Stored | None) -> Iterator[tuple[Future[Block], int]]:
    """The source's runs of lines, each sent to `pool` (the commit's is ingest.chunks.Deferring:
    a chunk task parses them); yields (future, last line number) in order. A run that is the
    source's bytes as `stored` keeps them goes by reference (the task reads it), any other with
    its bytes. Lines read before a read error are sent before it is raised."""
    failure: BaseException | None = None
    runs = _line_runs(body, dataset.max_record_bytes, dataset.limits.source_rows)
    try:
        for run in runs:
            if run.blank():
                continue
            sent = run if stored is None or run.at is None else RunRef.of(stored, run)
            yield pool.submit(_jsonl_run, dataset, index, sent), run.first + run.count - 1
    except (OSError, EOFError, zlib.error, _CorruptSource) as e:
        failure = e  # the source breaks off here: keep what was read before it
    if failure is not None:
        raise failure


def parse_source(dataset: Dataset, index: int, key: str, stream: IO[bytes], pool: Executor,
                 stored: Stored | None = None) -> Iterator[Block | Future[Block]]:
    """Yield every record of the source, typed and sealed: blocks parsed here, or futures of
    blocks `pool` parses (the commit's defers them to its chunk tasks). Given where the source is
    `stored` (as `stream` gives it), JSONL runs and small CSV sources go to `pool` by reference
    when not compressed, and Parquet row groups from the private copy; without it, only JSONL
    runs go to `pool`, with their bytes. A source that cannot be read at all, or breaks off
    part-way, ends with a quarantined record saying why; records before it are kept."""
    state = _state(dataset)
    columns = state.sealer.columns
    produced = 0
    last_line = 0
    try:
        for item in _parse_blocks(dataset, state.typer, index, key, stream, pool, stored):
            if isinstance(item, Block):
                produced += len(item)
                last_line = item.line[-1].as_py() if len(item) else last_line
                yield item
            else:
                future, last_line = item
                produced += 1  # a block of at least one record, parsed by the pool
                yield future
    except _SourceBroken as e:
        produced += 1
        yield to_block(index, [Record(index, last_line + 1 if e.reason == "corrupt_compression" else 0, b"",
                                      reason=e.reason, detail=str(e))], columns)
    if produced == 0:
        yield to_block(index, [Record(index, 0, b"", reason="empty_source", detail=f"{key} holds no records")], columns)


class _SourceBroken(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def _parse_blocks(dataset: Dataset, typer: RecordTyper, index: int, key: str, stream: IO[bytes],
                  pool: Executor, stored: Stored | None) -> Iterator[Block | tuple[Future[Block], int]]:
    fmt, compressed = source_format(key)
    if fmt is None:
        raise _SourceBroken("unsupported_format", f"{key}: not .jsonl, .csv or .parquet (optionally .gz)")
    body: IO[bytes] = gzip.GzipFile(fileobj=stream, mode="rb") if compressed else stream  # type: ignore[assignment]
    if fmt != "parquet":  # Parquet is checked against its footer, and read by row groups
        body = _Capped(body, dataset.limits.source_bytes)  # type: ignore[assignment]
    try:
        if fmt == "jsonl":
            yield from _jsonl_runs(dataset, index, body, pool, None if compressed else stored)
        elif fmt == "parquet":
            local = stored.path if stored is not None and not compressed else None
            yield from _parquet_items(dataset, typer, index, key, body, pool, local)
        else:
            yield from _csv_items(dataset, typer, index, key, body, pool, None if compressed else stored)
    except (OSError, EOFError, zlib.error) as e:
        reason = "corrupt_compression" if compressed else "corrupt_source"
        raise _SourceBroken(reason, f"{key}: unreadable part-way: {e}") from None
    except _CorruptSource as e:
        raise _SourceBroken(e.reason, f"{key}: {e}") from None


CSV_TASK_BYTES = RUN_BYTES  # a CSV source up to this size is parsed whole by a chunk task


def _csv_items(dataset: Dataset, typer: RecordTyper, index: int, key: str, body: IO[bytes], pool: Executor,
               stored: Stored | None) -> Iterator[Block | tuple[Future[Block], int]]:
    """A CSV source: one that the lake keeps as read and is at most CSV_TASK_BYTES goes whole to
    `pool` by reference (RFC 4180 lets a record run over lines, so it is not cut); a larger one
    is parsed here (in the commit, by the worker that reads the source: see chunks.plan_source)."""
    if stored is None or dataset.limits.source_bytes <= CSV_TASK_BYTES:
        yield from _blocks(dataset, index, _csv(dataset, typer, index, body))
        return
    head = body.read(CSV_TASK_BYTES + 1)
    if len(head) <= CSV_TASK_BYTES:
        run = LineRun(1, head.count(b"\n") + 1, head, frozenset(), 0)  # at most that many records
        yield pool.submit(_csv_source, dataset, index, key, RunRef.of(stored, run)), run.count
        return
    rest = io.BufferedReader(_Prefixed(head, body), 1 << 20)
    yield from _blocks(dataset, index, _csv(dataset, typer, index, rest))  # type: ignore[arg-type]


def _csv_source(dataset: Dataset, index: int, key: str, ref: RunRef) -> Block:
    """Worker: parse, type and seal a whole CSV source, read from the store by reference."""

    data = ref.read().data  # parsed here, as a whole: nothing of it goes to a pool
    blocks = cast(list[Block], list(parse_source(dataset, index, key, io.BytesIO(data), Executor())))
    return blocks[0] if len(blocks) == 1 else Block.concat(index, blocks)


class _Prefixed(io.RawIOBase):
    """A stream of `head`, then what `rest` holds."""

    def __init__(self, head: bytes, rest: IO[bytes]) -> None:
        self.head, self.rest = memoryview(head), rest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.head:
            n = min(len(buffer), len(self.head))
            buffer[:n], self.head = self.head[:n], self.head[n:]
            return n
        data = self.rest.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)


class _CorruptSource(Exception):
    """The source cannot be read on from here; `reason` is its quarantine code."""

    def __init__(self, detail: str, reason: str = "corrupt_source") -> None:
        super().__init__(detail)
        self.reason = reason


class _Capped:
    """A read-only stream that stops a source at `limit` decompressed bytes (a gzip bomb, an
    endless file): reading past it raises _CorruptSource("source_too_large")."""

    def __init__(self, inner: IO[bytes], limit: int) -> None:
        self.inner, self.limit, self.read_so_far = inner, limit, 0

    def _count(self, data: bytes) -> bytes:
        self.read_so_far += len(data)
        if self.read_so_far > self.limit:
            raise _CorruptSource(f"more than {self.limit} bytes once decompressed (limits.source_bytes)",
                                 "source_too_large")
        return data

    def read(self, size: int = -1) -> bytes:
        """Up to the limit, what the source holds; past it, _CorruptSource."""
        room = self.limit - self.read_so_far
        return self._count(self.inner.read(1 if room <= 0 else room if size < 0 else min(size, room)))

    def read1(self, size: int = -1) -> bytes:
        inner = getattr(self.inner, "read1", self.inner.read)
        room = self.limit - self.read_so_far
        return self._count(inner(1 if room <= 0 else room if size < 0 else min(size, room)))

    def readline(self, size: int = -1) -> bytes:
        return self._count(self.inner.readline(size))

    def seekable(self) -> bool:
        return False


def _depth_ok(obj: Any, depth: int = 0) -> bool:
    if depth > MAX_DEPTH:
        return False
    if isinstance(obj, dict):
        return all(_depth_ok(v, depth + 1) for v in obj.values())
    if isinstance(obj, list):
        return all(_depth_ok(v, depth + 1) for v in obj)
    return True


def _jsonl_lines(dataset: Dataset, typer: RecordTyper, index: int,
                 lines: Iterator[tuple[int, bytes, bool]]) -> Iterator[Record]:
    limit = dataset.max_record_bytes
    loads = orjson.loads
    for number, line, too_long in lines:
        if too_long:
            yield Record(index, number, line, reason="record_too_large", detail=f"line is over {limit} bytes")
            continue
        if not line.strip():
            continue
        record = Record(index, number, line)
        try:
            obj = loads(line)
        except orjson.JSONDecodeError as e:
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as u:
                yield record.reject("invalid_utf8", f"byte {u.start}: {u.reason}")
                continue
            message = str(e)
            if "depth" in message.lower() or "recursion" in message.lower():
                yield record.reject("nested_too_deep", f"JSON nesting is deeper than {MAX_DEPTH}")
            else:
                yield record.reject("invalid_json", message[:200])
            continue
        if line.count(b"[") + line.count(b"{") > MAX_DEPTH and not _depth_ok(obj):
            yield record.reject("nested_too_deep", f"JSON nesting is deeper than {MAX_DEPTH}")
            continue
        yield typer.type(record, obj)


_CSV_BOOL = {"true": True, "false": False, "1": True, "0": False}
_CSV_EXPECTED = {"int64": "a whole number", "float64": "a finite number", "bool": "true or false",
                 "list<string>": "a JSON array"}


def _csv_value(column: Column | None, cell: str) -> Any:
    """A CSV cell as the JSON value it stands for; an empty cell is null. Raises ValueError naming
    the column, never quoting the cell (details are public, the record's text is not)."""
    if cell == "":
        return None
    if column is None or column.type in ("string", "timestamp"):  # timestamp: typed by the schema checker
        return cell
    try:
        if column.type == "int64":
            return int(cell)
        if column.type == "bool":
            return _CSV_BOOL[cell.strip().lower()]
        value = float(cell) if column.type == "float64" else orjson.loads(cell)
    except (ValueError, KeyError):  # orjson.JSONDecodeError is a ValueError
        value = None
    if column.type == "float64" and isinstance(value, float) and math.isfinite(value):
        return value
    if column.type == "list<string>" and isinstance(value, list):
        return value
    raise ValueError(f"{column.name} is not {_CSV_EXPECTED[column.type]}")


class _CsvLines:
    """Physical lines of a CSV source for csv.reader, ends kept (RFC 4180: a quoted field may hold
    line breaks), with what the current record was read from: its first line, its text (the head
    of it, bounded) and whether a line was over the size limit or not UTF-8."""

    def __init__(self, body: IO[bytes], limit: int, max_lines: int) -> None:
        self.body, self.limit, self.max_lines = body, limit, max_lines
        self.number = 0
        self.start()

    def start(self) -> None:
        self.first, self.size, self.too_long, self.quotes = self.number + 1, 0, False, 0
        self.text: list[str] = []
        self.bad_utf8: str | None = None

    def __iter__(self) -> _CsvLines:
        return self

    def __next__(self) -> str:
        line = self.body.readline(self.limit + 1)
        if not line:
            raise StopIteration
        self.number += 1
        if self.number > self.max_lines:
            raise _CorruptSource(f"more than {self.max_lines} lines (limits.source_rows)", "too_many_rows")
        if self.number == 1 and line.startswith(_BOM):
            line = line[3:]
        self.quotes += line.count(b'"')
        if len(line) > self.limit and not line.endswith(b"\n"):
            self.too_long = True
            while line and not line.endswith(b"\n"):  # skip the rest of an over-long line
                line = self.body.readline(1 << 20)
                self.quotes += line.count(b'"')
            line = b"\n"
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as u:
            self.bad_utf8 = self.bad_utf8 or f"line {self.number}, byte {u.start}: {u.reason}"
            text = line.decode("utf-8", "replace")
        self.size += len(line)
        if self.size <= self.limit:
            self.text.append(text)
        return text

    def skip_open_field(self) -> None:
        """After a field over the size limit: read on to the line that closes it (the quotes read
        so far are then balanced), so the next record starts where the data says it does."""
        while self.quotes % 2 and next(self, None) is not None:
            pass

    def raw(self) -> str:
        return "".join(self.text).rstrip("\r\n")


def _csv(dataset: Dataset, typer: RecordTyper, index: int, body: IO[bytes]) -> Iterator[Record]:
    """RFC 4180 CSV: a header row, then one record per row; quoted fields may hold commas, quotes
    ("") and line breaks; CRLF or LF; a BOM is skipped. Each record is bounded by max_record_bytes."""
    limit = dataset.max_record_bytes
    columns = {c.name: c for c in dataset.columns}
    lines = _CsvLines(body, limit, dataset.limits.source_rows)
    csv.field_size_limit(limit)
    reader = csv.reader(lines, strict=True)
    header: list[str] | None = None
    while True:
        lines.start()
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            reason = "record_too_large" if "field limit" in str(e) else "invalid_csv"
            yield Record(index, lines.first, lines.raw(), reason=reason, detail=str(e)[:200])
            lines.skip_open_field()
            continue
        record = Record(index, lines.first, lines.raw())
        if lines.too_long or lines.size > limit:
            yield record.reject("record_too_large", f"record is over {limit} bytes")
        elif lines.bad_utf8:
            yield record.reject("invalid_utf8", lines.bad_utf8)
        elif not cells or cells == [""]:
            continue  # a blank line
        elif header is None:
            header = [h.strip() for h in cells]
            if len(set(header)) != len(header):
                raise _CorruptSource("the CSV header repeats a column name")
        elif len(cells) != len(header):
            yield record.reject("csv_column_count", f"{len(cells)} fields, the header has {len(header)}")
        else:
            try:
                obj = {name: _csv_value(columns.get(name), cell) for name, cell in zip(header, cells, strict=True)}
            except ValueError as e:
                yield record.reject("wrong_type", str(e)[:200])
                continue
            yield typer.type(record, obj)


PARQUET_RUN_ROWS = 20_000  # rows of whole small row groups a chunk task parses at once
PARQUET_SLICE_ROWS = 50_000  # a larger row group is parsed in slices of at most this many rows
MAX_TASK_ROW_GROUPS = 10_000  # a source with more row groups is parsed whole by its reader: each task reads the footer


@dataclass(frozen=True)
class RowGroups:
    """Rows [skip, skip + count) of row groups [first, end) of a Parquet source kept at `path` (a
    private local copy every worker reaches); `start` rows of the source come before them."""

    path: str
    name: str  # the source's key, for messages
    text: tuple[str, ...]  # its text columns, read dictionary-encoded (see _parquet_reader)
    first: int
    end: int
    skip: int
    count: int
    start: int


def _parquet_file(dataset: Dataset, body: IO[bytes]) -> tuple[Any, tuple[str, ...]]:
    """(the source as a pyarrow ParquetFile, its text columns), its footer checked against the
    dataset's limits."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    limits = dataset.limits
    try:
        source = body if body.seekable() else io.BytesIO(body.read())
        schema = pq.ParquetFile(source).schema_arrow
        text = tuple(f.name for f in schema if pa.types.is_string(f.type) or pa.types.is_binary(f.type))
        parquet = _parquet_reader(source, text)
        meta = parquet.metadata
        expanded = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
    except (pa.ArrowInvalid, OSError) as e:
        raise _CorruptSource(f"not a readable Parquet file: {e}") from None
    groups = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
    if min(groups, default=0) < 0 or sum(groups) != meta.num_rows:
        raise _CorruptSource(f"its footer says {meta.num_rows} rows, its row groups {sum(groups)}")
    if meta.num_rows > limits.source_rows:
        raise _CorruptSource(f"{meta.num_rows} rows, over {limits.source_rows} (limits.source_rows)", "too_many_rows")
    if expanded > limits.source_bytes:
        raise _CorruptSource(f"{expanded} bytes once decompressed, over {limits.source_bytes} (limits.source_bytes)",
                             "source_too_large")
    return parquet, text


def _parquet_reader(source: Any, text: tuple[str, ...]) -> Any:
    """The source as a ParquetFile whose `text` columns stay dictionary-encoded as read: a small
    page that repeats one large value a million times is then sized per row (see _parquet_rows)
    before any row is expanded."""
    import pyarrow.parquet as pq

    return pq.ParquetFile(source, read_dictionary=list(text))


def _parquet_items(dataset: Dataset, typer: RecordTyper, index: int, key: str, body: IO[bytes], pool: Executor,
                   local: str | None) -> Iterator[Block | tuple[Future[Block], int]]:
    """A Parquet source: its footer checked here, then its row groups in runs that `pool` parses
    (reading the copy at `local`), or, without one, its records parsed here."""
    parquet, text = _parquet_file(dataset, body)
    if local is None or parquet.metadata.num_row_groups > MAX_TASK_ROW_GROUPS:  # each task reads the footer
        yield from _blocks(dataset, index, _parquet_records(dataset, typer, index, parquet, None, 0, 0, None))
        return
    for run in _row_group_runs(parquet.metadata, local, key, text):
        yield pool.submit(_parquet_run, dataset, index, run), run.start + run.count


def _row_group_runs(meta: Any, path: str, name: str, text: tuple[str, ...] = ()) -> Iterator[RowGroups]:
    """The source's rows in runs of whole row groups of about PARQUET_RUN_ROWS rows, and a larger
    row group in slices of at most PARQUET_SLICE_ROWS (each slice's task decodes the rows before it
    in its group, and keeps only its own)."""
    first, rows, start = 0, 0, 0  # the pending run: row groups [first, g), `rows` rows, starting at `start`
    for g in range(meta.num_row_groups):
        n = meta.row_group(g).num_rows
        if rows and (rows + n > PARQUET_RUN_ROWS or n > PARQUET_SLICE_ROWS):
            yield RowGroups(path, name, text, first, g, 0, rows, start)
            start, rows = start + rows, 0
        if not rows:
            first = g
        if n > PARQUET_SLICE_ROWS:
            size = -(-n // -(-n // PARQUET_SLICE_ROWS))  # equal slices, as few as the cap allows
            for skip in range(0, n, size):
                yield RowGroups(path, name, text, g, g + 1, skip, min(size, n - skip), start + skip)
            start, first = start + n, g + 1
        else:
            rows += n
    if rows:
        yield RowGroups(path, name, text, first, meta.num_row_groups, 0, rows, start)


def _parquet_run(dataset: Dataset, index: int, run: RowGroups) -> Block:
    """Worker: parse, type and seal a run of a Parquet source's rows. Rows that cannot be decoded
    end the run with one quarantined record saying so; the runs after it are read on their own."""
    state = _state(dataset)
    try:
        parquet = _parquet_reader(run.path, run.text)
    except FileNotFoundError as e:  # the private copy is gone: the commit cannot go on
        raise CheckFailed(f"{run.path}: the copy of {run.name} cannot be read ({e})") from None
    records: list[Record] = []
    try:
        records.extend(_parquet_records(dataset, state.typer, index, parquet, range(run.first, run.end), run.skip,
                                        run.start, run.count))
    except _CorruptSource as e:
        records.append(Record(index, 0, b"", reason=e.reason, detail=f"{run.name}: {e}"))
    return to_block(index, state.sealer.seal(records), state.sealer.columns)


def _parquet_records(dataset: Dataset, typer: RecordTyper, index: int, parquet: Any, groups: range | None,
                     skip: int, start: int, count: int | None) -> Iterator[Record]:
    """Rows [skip, skip + count) of row groups `groups` (None: all; count None: to their end),
    numbered from start + 1. Rows that cannot be decoded raise _CorruptSource."""
    import pyarrow as pa

    number, limit = start, dataset.max_record_bytes
    end = start + count if count is not None else None
    try:  # batches small enough that one of records at the size limit stays within PARQUET_BATCH_BYTES
        for batch in parquet.iter_batches(batch_size=max(1, min(65536, PARQUET_BATCH_BYTES // limit)),
                                          row_groups=groups, use_threads=False):
            if skip >= batch.num_rows:
                skip -= batch.num_rows
                continue
            batch, skip = batch.slice(skip, None if end is None else end - number), 0
            for row in _parquet_rows(batch, limit):
                number += 1
                if isinstance(row, Record):
                    yield Record(index, number, row.raw, reason=row.reason, detail=row.detail)
                    continue
                raw = orjson.dumps(row, default=str, option=orjson.OPT_NON_STR_KEYS)
                if len(raw) > limit:
                    yield Record(index, number, raw[:1024], reason="record_too_large",
                                 detail=f"row is over {limit} bytes")
                    continue
                yield typer.type(Record(index, number, raw), row)
            if end is not None and number >= end:
                return
    except (pa.ArrowException, OSError) as e:  # pyarrow raises OSError for a corrupt page, too
        raise _CorruptSource(f"unreadable after row {number}: {e}") from None


def _text_bytes(batch: Any) -> Any:
    """Per row, the bytes of its text columns, computed without expanding a dictionary."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    total = np.zeros(batch.num_rows, dtype=np.int64)
    for column in batch.columns:
        if pa.types.is_dictionary(column.type):  # null rows take null lengths, counted as 0
            lengths = pc.take(pc.binary_length(column.dictionary), column.indices)
            total += lengths.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    return total


def _parquet_rows(batch: Any, limit: int) -> Iterator[dict[str, Any] | Record]:
    """The batch's rows as Python objects; a row whose text is over `limit` bytes, or that holds
    a value Python cannot represent (a timestamp outside years 1-9999, invalid UTF-8 in a
    string), comes as a rejected Record, and is never expanded."""
    sizes = _text_bytes(batch)
    if int(sizes.max(initial=0)) > limit:
        for i in range(batch.num_rows):
            if sizes[i] > limit:
                yield Record(0, 0, b"", reason="record_too_large", detail=f"row is over {limit} bytes")
            else:
                yield from _parquet_rows(batch.slice(i, 1), limit)
        return
    try:
        yield from batch.to_pylist()
        return
    except (ValueError, OverflowError, ArithmeticError):  # UnicodeDecodeError is a ValueError
        pass
    columns = batch.schema.names
    for i in range(batch.num_rows):
        row, problems = {}, []
        for name, column in zip(columns, batch.columns, strict=True):
            try:
                row[name] = column[i].as_py()
            except UnicodeDecodeError:
                row[name] = "<invalid UTF-8>"
                problems.append(("invalid_utf8", f"{name} is not valid UTF-8"))
            except (ValueError, OverflowError, ArithmeticError) as e:
                row[name] = "<unreadable>"
                problems.append(("wrong_type", f"{name} cannot be read as a Python value ({type(e).__name__})"))
        if problems:
            raw = orjson.dumps(row, default=str, option=orjson.OPT_NON_STR_KEYS)
            yield Record(0, 0, raw, reason=problems[0][0], detail=problems[0][1])
        else:
            yield row
