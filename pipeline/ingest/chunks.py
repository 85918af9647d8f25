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
from pipeline.ingest.parse import (
    Block,
    LineRun,
    RowGroups,
    RunFile,
    RunRef,
    Stored,
    block_types,
    parse_source,
    source_format,
)
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
    import pyarrow.compute as pc

    path = shuffle_file(job.shuffle, job.index, n)
    if isinstance(item, Block):  # zstd: rows of one text repeated (a small upload) stay small on disk
        tasks.write_arrow(path, _block_table(item), compression="zstd")
        size = int(pc.sum(pc.binary_length(item.raw)).as_py() or 0)
        return Deferred(read_block, (job.index, str(path)), len(item), size, str(path))
    deferred = cast(Deferred, item)
    run = deferred.args[-1]
    if not isinstance(run, LineRun):
        return deferred
    return replace(deferred, args=(*deferred.args[:-1], RunFile.write(path, run)), release=str(path))


_BLOCK_COLUMNS = {"line": tasks.LINE, "raw": tasks.RAW, "reason": "__reason", "detail": "__detail",
                  "contributor": "__contributor", "leaf": tasks.LEAF, "key": tasks.KEY}


def _block_table(block: Block) -> Any:
    """A block as one Arrow table: its committed values, then its other columns as shuffle-only ones."""
    table = block.table
    for field, name in _BLOCK_COLUMNS.items():
        table = table.append_column(name, getattr(block, field))
    return table


def read_block(index: int, path: str) -> Block:
    """Chunk task: the block of plan source `index` its reader wrote to `path`."""
    table = tasks.read_shuffled(Path(path))
    columns = {field: table.column(name) for field, name in _BLOCK_COLUMNS.items()}
    return Block(index, table=table.drop_columns(list(_BLOCK_COLUMNS.values())), **columns)


@dataclass
class _Chunk:
    """The records of a run of blocks, column by column (Arrow, `source` numpy). `standing` says
    which records stand; `rejected` holds (reason, detail) of each that does not, by position."""

    source: Any
    line: Any
    raw: Any
    contributor: Any
    leaf: Any
    key: Any
    table: Any  # committed values, a null row where a record was rejected as it was read
    standing: Any
    rejected: dict[int, tuple[str, str]]

    @classmethod
    def of(cls, blocks: list[Block]) -> _Chunk:
        import numpy as np
        import pyarrow as pa

        def joined(name: str) -> Any:  # a block's column is itself chunked past 2 GiB of text
            columns = [getattr(b, name) for b in blocks]
            return pa.chunked_array([piece for column in columns for piece in
                                     (column.chunks if isinstance(column, pa.ChunkedArray) else [column])],
                                    block_types()[name])

        reason, detail = joined("reason"), joined("detail")
        standing = reason.is_null().to_numpy(zero_copy_only=False)
        at = pa.array(np.flatnonzero(~standing))
        rejected = dict(zip(at.to_pylist(), zip(reason.take(at).to_pylist(), detail.take(at).to_pylist(), strict=True),
                            strict=True))
        return cls(np.repeat([b.source for b in blocks], [len(b) for b in blocks]), joined("line"), joined("raw"),
                   joined("contributor"), joined("leaf"), joined("key"), pa.concat_tables([b.table for b in blocks]),
                   standing, rejected)

    def __len__(self) -> int:
        return len(self.standing)

    def reject(self, i: int, reason: str, detail: str) -> None:
        self.standing[i] = False
        self.rejected[i] = (reason, detail)


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
    import numpy as np
    import pyarrow as pa

    chunk = _Chunk.of([item if isinstance(item, Block) else item.result() for item in job.items])
    if job.signers is not None:
        _check_signers(chunk, job.signers)
    typed = np.flatnonzero(chunk.standing)
    checked = checking(job.dataset).selected(chunk.table)  # by filters, chunk by chunk: a take would join them first
    result = check_chunk(job.dataset, checked if len(typed) == len(chunk) else checked.filter(pa.array(chunk.standing)))
    for position, (why, what) in result.failures.items():
        chunk.reject(int(typed[position]), why, what)
    counts, per_contributor = _tally(chunk)
    slice_rows = _spill(job, chunk) if chunk.standing.any() else [0] * job.slices
    rejected = np.flatnonzero(~chunk.standing)
    if len(rejected):
        mask = pa.array(~chunk.standing)
        found = [chunk.rejected[i] for i in rejected.tolist()]
        tasks.write_arrow(quarantine_file(job.shuffle, job.number), pa.table({
            "source": pa.array(chunk.source[rejected]), "line": chunk.line.filter(mask),
            "contributor": chunk.contributor.filter(mask), "reason": pa.array([r for r, _ in found], pa.string()),
            "detail": pa.array([d for _, d in found], pa.string()), "raw": chunk.raw.filter(mask)}))
    return ChunkOutcome(counts, per_contributor, result, slice_rows, len(rejected))


def _check_signers(chunk: _Chunk, signers: dict[int, tuple[str | None, str]]) -> None:
    """A source without a valid signature is quarantined whole, and a row naming another
    contributor than its source's signer is quarantined. Requires an entry for every source."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    sources = np.unique(chunk.source)
    signer = pa.array([signers[source][0] for source in sources.tolist()], pa.string()).take(
        pa.array(np.searchsorted(sources, chunk.source)))  # each row's source's signer
    unsigned = signer.is_null().to_numpy(zero_copy_only=False)
    other = pc.fill_null(pc.not_equal(chunk.contributor, signer), True).to_numpy(zero_copy_only=False)
    for i in np.flatnonzero(unsigned).tolist():
        chunk.reject(i, "unsigned_source", signers[int(chunk.source[i])][1])
    for i in np.flatnonzero(~unsigned & chunk.standing & other).tolist():
        chunk.reject(i, "contributor_not_signer", f"the source is signed by {signers[int(chunk.source[i])][0]}")


def _tally(chunk: _Chunk) -> tuple[list[tuple[str, int, int]], list[tuple[str, str, int]]]:
    """The chunk's records by kind, per source and per contributor (Arrow group-bys). A row that
    passed the gate counts as accepted until its dedupe task says otherwise."""
    import pyarrow as pa

    kinds = pa.table({"standing": pa.array(chunk.standing), "source": pa.array(chunk.source), "who": chunk.contributor})
    per_source = [(_KINDS[standing], source, count)
                  for standing, source, count in _grouped(kinds, ["standing", "source"], ("standing", "count"))]
    per_contributor = [(_KINDS[standing], who, count) for standing, who, count
                       in _grouped(kinds.filter(kinds["who"].is_valid()), ["standing", "who"], ("standing", "count"))]
    return per_source, per_contributor


_KINDS = {True: "accepted", False: "quarantined"}


def _grouped(table: Any, keys: list[str], aggregate: tuple[str, str]) -> Iterator[tuple[Any, ...]]:
    """(key values..., aggregate) of each group of `table`'s rows."""
    grouped = table.group_by(keys, use_threads=False).aggregate([aggregate])
    return zip(*(grouped.column(name).to_pylist() for name in (*keys, "_".join(aggregate))), strict=True)


def _spill(job: ChunkJob, chunk: _Chunk) -> list[int]:
    """The rows that passed the gate, with their arrival number, leaf, key, source, line and raw
    text, into one file per key slice (each in arrival order); the rows each slice got. Each
    record batch of the chunk is put in slice order by one take (a take over the whole chunk
    would join its batches first, which fails past 2 GiB of text), then cut by slice."""
    import numpy as np
    import pyarrow as pa

    arrival = np.cumsum(chunk.standing, dtype=np.int64) - 1 + (job.number << ARRIVAL_SHIFT)
    keys = chunk.key.combine_chunks()
    owner = tasks.key_slices(keys, job.slices)  # a rejected row has no key: its slice is never used
    rows = chunk.table
    for name, column in {tasks.ARRIVAL: pa.array(arrival), tasks.LEAF: chunk.leaf, tasks.KEY: keys,
                         tasks.SOURCE: pa.array(chunk.source), tasks.LINE: chunk.line, tasks.RAW: chunk.raw}.items():
        rows = rows.append_column(name, column)
    pieces: list[list[Any]] = [[] for _ in range(job.slices)]
    first = 0
    for batch in rows.to_batches():
        standing = first + np.flatnonzero(chunk.standing[first:first + batch.num_rows])
        order = standing[np.argsort(owner[standing], kind="stable")]  # by slice, then arrival
        bounds = np.searchsorted(owner[order], np.arange(job.slices + 1))
        taken = batch.take(pa.array(order - first))
        for k in np.flatnonzero(np.diff(bounds)).tolist():
            pieces[k].append(taken.slice(bounds[k], bounds[k + 1] - bounds[k]))
        first += batch.num_rows
    for k, found in enumerate(pieces):
        if found:
            tasks.write_arrow(tasks.slice_file(job.shuffle, k, job.number), pa.Table.from_batches(found))
    return [sum(piece.num_rows for piece in found) for found in pieces]
