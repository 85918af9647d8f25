"""The tasks that read a batch plan (SPEC §13.11), run by the engine's workers, so the
committing process never reads a source or holds parsed rows.

A source task reads one staged source through (checking its SHA-256) and cuts it into runs that
can be parsed on their own (see plan_source), as references. The driver gathers them, in plan
order, into chunks of about `chunk_records` lines and sends each chunk to a chunk task, which
parses, types and hashes its runs, runs the quality gate over them once, spills the rows that
passed by dedupe-key slice into the shuffle directory and writes the rest as quarantine rows
beside them. The driver takes back counts and the gate's result only. A run read from the lake
again (a plain JSONL source's lines, by raw key, byte range and SHA-256) is checked to be the
bytes the source task read.
A row's arrival number is its chunk's number, then its place in the chunk: the order of the
plan, then of the lines, whatever worker ran which chunk.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

from pipeline.datasets import Dataset
from pipeline.ingest import partitions as tasks
from pipeline.ingest.parse import Block, LineRun, RowGroups, RunFile, RunRef, Stored, parse_source, source_format
from pipeline.ingest.quality import ChunkResult, check_chunk, checking
from pipeline.lake.sources import Source, open_source
from pipeline.lake.storage import Lake

ARRIVAL_SHIFT = 32  # arrival = chunk number << 32 | place among the chunk's rows that passed


@dataclass(frozen=True)
class Deferred:
    """A call a chunk task makes (parsing one run of lines) instead of the driver; `rows` is how
    many records it may yield, at most, and `size` about how many bytes of them it holds (0:
    not known beforehand). `release` names a shuffle file no chunk needs once the chunk holding
    this item has settled."""

    fn: Callable[..., Block]
    args: tuple[Any, ...]
    rows: int
    size: int = 0
    release: str | None = None

    def result(self) -> Block:
        return self.fn(*self.args)

    def __len__(self) -> int:
        return self.rows


class Deferring(Executor):
    """Stands in for a pool to the parser: each submitted call is kept for a chunk task to make."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        run = args[-1]  # a run of lines by reference (its length) or with its bytes; Parquet row groups: not known
        size = run.length if isinstance(run, RunRef) else len(run.data) if isinstance(run, LineRun) else 0
        return Deferred(fn, args, getattr(run, "count", 1), size)  # type: ignore[return-value]


@dataclass(frozen=True)
class SourceJob:
    """One staged source, for a worker to read through and cut for the chunk tasks (plan_source)."""

    lake: Lake
    dataset: Dataset
    index: int  # its place in the plan
    source: Source
    shuffle: str


def plan_source(job: SourceJob, renew: Callable[[], None] = lambda: None) -> list[Deferred]:
    """Worker: read a staged source through once, checking its SHA-256, and cut it into what the
    chunk tasks parse, in order. What can be read again on its own goes by reference: a plain
    JSONL source's runs of lines, a plain CSV source of up to 4 MB whole, a Parquet source's runs
    of row groups of a private copy made in the shuffle directory. What had to be decompressed
    or parsed here to be cut (a compressed JSONL source's runs; a larger or compressed CSV source,
    a compressed Parquet one or one of over 10,000 row groups, parsed whole: RFC 4180 lets a CSV
    record run over lines) goes to files in the shuffle directory. The driver reads no source and
    holds no rows: only these references. `renew()` as items are cut (the writer's lease, when the
    driver reads a source itself, without a pool)."""
    fmt, _ = source_format(job.source.key)
    stream, finish = open_source(job.lake, job.source, Path(job.shuffle), seekable=fmt == "parquet")
    with stream:
        copy = stream.name if fmt == "parquet" else None
        items = []
        for n, item in enumerate(parse_source(job.dataset, job.index, job.source.key, stream, Deferring(),
                                              Stored(job.lake, job.source.raw_key, copy))):
            renew()
            items.append(_referenced(job, n, item))
        finish()
    if copy is not None:  # the private copy goes once the last chunk that reads it has settled
        last = max((i for i, item in enumerate(items) if isinstance(item.args[-1], RowGroups)), default=None)
        if last is None:
            Path(copy).unlink()
        else:
            items[last] = replace(items[last], release=copy)
    return items


def shuffle_file(shuffle: str | Path, index: int, n: int) -> Path:
    """Where item `n` of plan source `index` goes when it cannot go by reference."""
    return Path(shuffle) / f"read-{index:06d}-{n:06d}"


def _referenced(job: SourceJob, n: int, item: Block | Future[Block]) -> Deferred:
    """Item `n` of a source as a chunk task's item that carries no records and no bytes: a block
    parsed by the reader, or a run of lines that went with its bytes, is written to a file of the
    shuffle directory (whole or not at all: a retried reader never leaves a torn one)."""
    path = shuffle_file(job.shuffle, job.index, n)
    if isinstance(item, Block):  # zstd: rows of one text repeated (a small upload) stay small on disk
        tasks.write_arrow(path, _block_table(item), compression="zstd")
        size = sum(len(raw) for raw in item.raw)
        return Deferred(read_block, (job.index, str(path)), len(item), size, str(path))
    deferred = cast(Deferred, item)
    run = deferred.args[-1]
    if not isinstance(run, LineRun):
        return deferred
    return replace(deferred, args=(*deferred.args[:-1], RunFile.write(path, run)), release=str(path))


_BLOCK_LISTS = {"line": (tasks.LINE, "int64"), "raw": (tasks.RAW, "binary"), "reason": ("__reason", "string"),
                "detail": ("__detail", "string"), "contributor": ("__contributor", "string"),
                "leaf": (tasks.LEAF, "binary32"), "key": (tasks.KEY, "binary32")}


def _block_table(block: Block) -> Any:
    """A block as one Arrow table: its committed values, then its lists as shuffle-only columns."""
    import pyarrow as pa

    types = {"int64": pa.int64(), "binary": pa.binary(), "string": pa.string(), "binary32": pa.binary(32)}
    table = block.table
    for field, (name, kind) in _BLOCK_LISTS.items():
        values = [_bytes(r) for r in block.raw] if field == "raw" else getattr(block, field)
        table = table.append_column(name, pa.array(values, types[kind]))
    return table


def read_block(index: int, path: str) -> Block:
    """Chunk task: the block of plan source `index` its reader wrote to `path`."""
    table = tasks.read_shuffled(Path(path))
    names = [name for name, _ in _BLOCK_LISTS.values()]
    lists = {field: table.column(name).to_pylist() for field, (name, _) in _BLOCK_LISTS.items()}
    return Block(index, table=table.drop_columns(names), **lists)


@dataclass
class _Chunk:
    """The records of a run of blocks, column by column; `reason` is None while a record stands."""

    source: list[int]
    line: list[int]
    raw: list[bytes | str]
    reason: list[str | None]
    detail: list[str | None]
    contributor: list[str | None]
    leaf: list[bytes | None]
    key: list[bytes | None]
    table: Any  # committed values, a null row where a record was rejected as it was read

    @classmethod
    def of(cls, blocks: list[Block]) -> _Chunk:
        import pyarrow as pa

        def joined(name: str) -> list[Any]:
            return [x for b in blocks for x in getattr(b, name)]

        return cls([b.source for b in blocks for _ in range(len(b))], joined("line"), joined("raw"), joined("reason"),
                   joined("detail"), joined("contributor"), joined("leaf"), joined("key"),
                   pa.concat_tables([b.table for b in blocks]))

    def reject(self, i: int, reason: str, detail: str) -> None:
        self.reason[i], self.detail[i] = reason, detail


@dataclass(frozen=True)
class ChunkJob:
    shuffle: str
    dataset: Dataset
    number: int  # the chunk's place in the batch
    items: tuple[Block | Deferred, ...]
    slices: int
    # Signed datasets (SPEC §13.7): per source of the chunk, (its signer if its signature holds,
    # else None; why it does not). None for a dataset that is not signed.
    signers: dict[int, tuple[str | None, str]] | None = None


@dataclass
class ChunkOutcome:
    counts: list[tuple[str, int, int]]  # (kind, source, records): accepted (so far) or quarantined
    per_contributor: list[tuple[str, str, int]]  # (kind, contributor, records)
    quality: ChunkResult
    slice_rows: list[int]  # rows spilled into each key slice
    quarantined: int  # rows in its quarantine file


def quarantine_file(shuffle: str | Path, number: int) -> Path:
    return Path(shuffle) / f"quarantine-{number:06d}.arrow"


def run_chunk(job: ChunkJob) -> ChunkOutcome:
    """Parse, type, hash and check one chunk; spill what passed, write what did not."""
    import pyarrow as pa

    chunk = _Chunk.of([item if isinstance(item, Block) else item.result() for item in job.items])
    if job.signers is not None:
        _check_signers(chunk, job.signers)
    typed = [i for i in range(len(chunk.line)) if chunk.reason[i] is None]
    table = chunk.table if len(typed) == len(chunk.line) else chunk.table.take(pa.array(typed, pa.int64()))
    result = check_chunk(job.dataset, checking(job.dataset).selected(table))
    for position, (why, what) in result.failures.items():
        chunk.reject(typed[position], why, what)
    passed = [j for j, i in enumerate(typed) if chunk.reason[i] is None]
    counts, per_contributor = _tally(chunk)
    slice_rows = _spill(job, chunk, typed, table, passed) if passed else [0] * job.slices
    rejected = [i for i in range(len(chunk.line)) if chunk.reason[i] is not None]
    if rejected:
        tasks.write_arrow(quarantine_file(job.shuffle, job.number), pa.table({
            "source": pa.array([chunk.source[i] for i in rejected], pa.int64()),
            "line": pa.array([chunk.line[i] for i in rejected], pa.int64()),
            "contributor": pa.array([chunk.contributor[i] for i in rejected], pa.string()),
            "reason": pa.array([chunk.reason[i] for i in rejected], pa.string()),
            "detail": pa.array([chunk.detail[i] for i in rejected], pa.string()),
            "raw": pa.array([_bytes(chunk.raw[i]) for i in rejected], pa.binary())}))
    return ChunkOutcome(counts, per_contributor, result, slice_rows, len(rejected))


def _check_signers(chunk: _Chunk, signers: dict[int, tuple[str | None, str]]) -> None:
    """A source without a valid signature is quarantined whole, and a row naming another
    contributor than its source's signer is quarantined."""
    for i, source in enumerate(chunk.source):
        signer, unsigned = signers[source]
        if signer is None:
            chunk.reject(i, "unsigned_source", unsigned)
        elif chunk.reason[i] is None and chunk.contributor[i] != signer:
            chunk.reject(i, "contributor_not_signer", f"the source is signed by {signer}")


def _tally(chunk: _Chunk) -> tuple[list[tuple[str, int, int]], list[tuple[str, str, int]]]:
    """The chunk's records by kind, per source and per contributor (Arrow group-bys). A row that
    passed the gate counts as accepted until its dedupe task says otherwise."""
    import pyarrow as pa

    kinds = pa.table({
        "kind": pa.array(["accepted" if r is None else "quarantined" for r in chunk.reason], pa.string()),
        "source": pa.array(chunk.source, pa.int64()),
        "who": pa.array(chunk.contributor, pa.string())})
    per_source = list(_grouped(kinds, ["kind", "source"], ("kind", "count")))
    per_contributor = list(_grouped(kinds.filter(kinds["who"].is_valid()), ["kind", "who"], ("kind", "count")))
    return per_source, per_contributor


def _grouped(table: Any, keys: list[str], aggregate: tuple[str, str]) -> Iterator[tuple[Any, ...]]:
    """(key values..., aggregate) of each group of `table`'s rows."""
    grouped = table.group_by(keys, use_threads=False).aggregate([aggregate])
    return zip(*(grouped.column(name).to_pylist() for name in (*keys, "_".join(aggregate))), strict=True)


def _spill(job: ChunkJob, chunk: _Chunk, typed: list[int], table: Any, passed: list[int]) -> list[int]:
    """The rows that passed the gate, with their arrival number, leaf, key, source, line and raw
    text, into one file per key slice (each in arrival order); the rows each slice got. The rows
    are put in slice order as they are gathered: the table is copied once."""
    import numpy as np
    import pyarrow as pa

    keys = pa.array([chunk.key[typed[j]] for j in passed], pa.binary(32))
    owner = tasks.key_slices(keys, job.slices)
    order = np.argsort(owner, kind="stable")
    bounds = np.searchsorted(owner[order], np.arange(job.slices + 1))
    picked = np.asarray(passed, np.int64)[order]  # positions in `table`, in slice order
    rows = [typed[j] for j in picked.tolist()]  # and in the chunk
    kept = table.take(pa.array(picked))
    extra = {
        tasks.ARRIVAL: pa.array(order.astype(np.int64) + (job.number << ARRIVAL_SHIFT)),
        tasks.LEAF: pa.array([chunk.leaf[i] for i in rows], pa.binary(32)),
        tasks.KEY: keys.take(pa.array(order)),
        tasks.SOURCE: pa.array([chunk.source[i] for i in rows], pa.int64()),
        tasks.LINE: pa.array([chunk.line[i] for i in rows], pa.int64()),
        tasks.RAW: pa.array([_bytes(chunk.raw[i]) for i in rows], pa.binary()),
    }
    for name, column in extra.items():
        kept = kept.append_column(name, column)
    sent = []
    for k in range(job.slices):
        part = kept.slice(bounds[k], bounds[k + 1] - bounds[k])
        if part.num_rows:
            tasks.write_arrow(tasks.slice_file(job.shuffle, k, job.number), part)
        sent.append(part.num_rows)
    return sent


def _bytes(raw: bytes | str) -> bytes:
    return raw if isinstance(raw, bytes) else raw.encode("utf-8", "surrogatepass")
