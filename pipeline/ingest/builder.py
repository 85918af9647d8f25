"""Build one batch from its staged sources: records in blocks -> typed chunks -> quality gate ->
dedupe -> contributor-ordered data parts, index and quarantine, with every record counted.

Records stream through in chunks of `chunk_records`: typed and checked by the engine's workers,
counted here, the rows that pass spilled by dedupe-key slice into the shuffle directory. `finish`
hands the rest to the partition tasks (see ingest.partitions): dedupe per key slice, then sort
and write per contributor partition, the tree's tiles built beside the parts. This process holds
one chunk of records at a time, never the batch's rows, and folds the tasks' tile roots into
tree.bin. Leaves are ordered by contributor, then arrival (SPEC §13.2).
"""

from __future__ import annotations

import hashlib
import io
from collections import Counter, deque
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.core.signature import holds as signature_holds
from pipeline.core.treefile import TreeAssembler
from pipeline.datasets import Dataset
from pipeline.errors import CheckFailed
from pipeline.ingest import partitions as tasks
from pipeline.ingest.parse import Block, parse_source, source_format
from pipeline.ingest.quality import ChunkResult, QualityReport, check_chunk
from pipeline.lake import layout
from pipeline.lake.batch import BatchFiles
from pipeline.lake.columnar import arrow_table
from pipeline.lake.sources import Source, open_source, stored_bytes
from pipeline.lake.workers import engine_pool

CHUNK_RECORDS = 100_000
MAX_IN_FLIGHT = 8  # blocks being parsed by the pool at once (bounds memory)
VALIDATING = 1  # chunks being checked by the quality gate while the next one gathers
PARTITION_SOURCE_BYTES = 64 << 20  # source bytes per contributor partition: what one sort task holds
HISTORY_KEYS_PER_SLICE = 4 << 20  # earlier batches' keys per dedupe slice: what one dedupe task holds
MAX_PARTITIONS = 4096
RENEW_EVERY = 5.0  # seconds between lease renewals while a partition task runs


def partition_count(source_bytes: int) -> int:
    """How many contributor partitions (a power of two) a batch of `source_bytes` is sorted in."""
    return min(MAX_PARTITIONS, tasks.power_of_two_at_least(-(-source_bytes // PARTITION_SOURCE_BYTES)))


def slice_count(partitions: int, history_keys: int) -> int:
    """How many dedupe-key slices (a power of two): no fewer than the partitions, and enough that
    one slice's share of the earlier batches' keys stays bounded."""
    return min(MAX_PARTITIONS, max(partitions, tasks.power_of_two_at_least(-(-history_keys // HISTORY_KEYS_PER_SLICE))))


# --- Arrow and Parquet ------------------------------------------------------------------------


def parquet_bytes(table: Any) -> bytes:
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def _quarantine_schema() -> Any:
    """batches/.../quarantine.parquet: public, so no text of the record itself (SPEC §13.1)."""
    import pyarrow as pa

    return pa.schema([("source_key", pa.string()), ("source_sha256", pa.string()), ("line", pa.int64()),
                      ("contributor", pa.string()), ("reason", pa.string()), ("detail", pa.string()),
                      ("raw_sha256", pa.string()), ("duplicate_of", pa.string())])


def _rejected_schema() -> Any:
    """private/.../rejected.parquet: the raw bytes of each quarantined record, for the operator."""
    import pyarrow as pa

    return pa.schema([("source_sha256", pa.string()), ("line", pa.int64()), ("raw_sha256", pa.string()),
                      ("raw", pa.binary())])


# --- one chunk ----------------------------------------------------------------------------------


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


@dataclass
class _Validating:
    """A chunk whose typed rows the quality gate is checking (a future of it, with a pool)."""

    chunk: _Chunk
    typed: list[int]
    table: Any
    checked: ChunkResult | Future[ChunkResult]


def _grouped(table: Any, keys: list[str], aggregate: tuple[str, str]) -> Iterator[tuple[Any, ...]]:
    """(key values..., aggregate) of each group of `table`'s rows."""
    grouped = table.group_by(keys, use_threads=False).aggregate([aggregate])
    return zip(*(grouped.column(name).to_pylist() for name in (*keys, "_".join(aggregate))), strict=True)


def _bytes(raw: bytes | str) -> bytes:
    return raw if isinstance(raw, bytes) else raw.encode("utf-8", "surrogatepass")


class BatchBuilder:
    """Accumulates one batch chunk by chunk, then has the partition tasks dedupe, order and write
    it. `scratch` is the shuffle directory: every worker of the engine must reach it."""

    def __init__(self, files: BatchFiles, dataset: Dataset, plan: list[Source], scratch: Path,
                 chunk_records: int = CHUNK_RECORDS, pool: Executor | None = None) -> None:
        import pyarrow.parquet as pq

        self.files_of, self.dataset, self.plan = files, dataset, plan
        self.chunk_records = chunk_records
        self.columns = dataset.committed_columns
        self.history, history_keys = tasks.history(files.lake, dataset.name, files.seq)
        self.partitions = partition_count(stored_bytes(files.lake, plan))
        self.slices = slice_count(self.partitions, history_keys)
        self.quality = QualityReport(dataset)
        self.pool = pool
        self.validating: deque[_Validating] = deque()
        self.signed: dict[int, bool] = {}  # plan index -> its signature holds (signed datasets)
        self.arrivals = 0  # rows that passed the quality gate so far: the next one's arrival number
        self.files: list[dict[str, Any]] = []
        self.index_files: list[dict[str, Any]] = []
        self.tree_size, self.root = 0, b""
        self.counts: Counter[str] = Counter()
        self.per_source: list[Counter[str]] = [Counter() for _ in plan]
        self.per_contributor: dict[str, Counter[str]] = {}
        self.weights: Counter[str] = Counter()
        self.pending: list[Block] = []
        self.pending_rows = 0
        self.scratch = scratch
        self.quarantine_path = scratch / layout.QUARANTINE
        self.rejected_path = scratch / layout.REJECTED
        self.tree_path = scratch / layout.TREE
        self.quarantine = pq.ParquetWriter(self.quarantine_path, _quarantine_schema(), compression="zstd")
        self.rejected = pq.ParquetWriter(self.rejected_path, _rejected_schema(), compression="zstd")
        self.spill = _Spill(scratch, self.slices, tasks.shuffle_schema(self.columns))

    def add(self, block: Block) -> None:
        self.pending.append(block)
        self.pending_rows += len(block)
        if self.pending_rows >= self.chunk_records:
            self.flush()

    def flush(self) -> None:
        """Send the pending blocks, as one chunk, to the quality gate: a worker process checks it
        while the next chunk gathers; chunks are settled in order."""
        import pyarrow as pa

        blocks, self.pending, self.pending_rows = self.pending, [], 0
        if not blocks:
            return
        chunk = _Chunk.of(blocks)
        if self.dataset.signed:
            self._check_signers(chunk)
        typed = [i for i in range(len(chunk.line)) if chunk.reason[i] is None]
        table = chunk.table if len(typed) == len(chunk.line) else chunk.table.take(pa.array(typed, pa.int64()))
        selected = self.quality.selected(table)
        checked = (self.pool.submit(check_chunk, self.dataset, selected) if self.pool is not None and typed
                   else check_chunk(self.dataset, selected))
        self.validating.append(_Validating(chunk, typed, table, checked))
        while len(self.validating) > VALIDATING:
            self._settle(self.validating.popleft())

    def settle(self) -> None:
        """Flush, and settle every chunk still being checked."""
        self.flush()
        while self.validating:
            self._settle(self.validating.popleft())

    def _settle(self, done: _Validating) -> None:
        """Apply a chunk's quality results, count it, spill the rows that passed and quarantine the rest."""
        chunk, typed, table = done.chunk, done.typed, done.table
        result = self.quality.add(done.checked.result() if isinstance(done.checked, Future) else done.checked)
        for position, (why, what) in result.failures.items():
            chunk.reject(typed[position], why, what)
        passed = [j for j, i in enumerate(typed) if chunk.reason[i] is None]
        self._tally(chunk)
        if passed:
            self._spill_passed(chunk, typed, table, passed)
        rejected = [i for i in range(len(chunk.line)) if chunk.reason[i] is not None]
        self._write_quarantine([chunk.source[i] for i in rejected], [chunk.line[i] for i in rejected],
                               [chunk.contributor[i] for i in rejected], [chunk.reason[i] for i in rejected],
                               [chunk.detail[i] for i in rejected], [_bytes(chunk.raw[i]) for i in rejected],
                               [None] * len(rejected))

    def _check_signers(self, chunk: _Chunk) -> None:
        """A signed dataset (SPEC §13.7): a source without a valid signature is quarantined whole,
        and a row naming another contributor than its source's signer is quarantined."""
        for i, source_index in enumerate(chunk.source):
            source = self.plan[source_index]
            if not self._signed(source_index):
                chunk.reject(i, "unsigned_source", source.unsigned or "the source carries no valid signature")
            elif chunk.reason[i] is None and chunk.contributor[i] != source.signer:
                chunk.reject(i, "contributor_not_signer", f"the source is signed by {source.signer}")

    def _signed(self, source_index: int) -> bool:
        """Whether the staged source's signature recovers its signer over its SHA-256, checked again
        here (once per source): the staged plan is in the lake, where anyone with write access could
        have planted a signer; the bytes read are checked against that SHA-256 as they are read."""
        if source_index not in self.signed:
            source = self.plan[source_index]
            self.signed[source_index] = bool(source.signer) and signature_holds(
                self.dataset.name, source.sha256, source.signature, source.signer)
        return self.signed[source_index]

    def _tally(self, chunk: _Chunk) -> None:
        """Count the chunk's records by kind, overall, per source and per contributor (Arrow
        group-bys: one pass per chunk, not per row). A row that passed the gate counts as accepted
        until its dedupe task says otherwise."""
        import pyarrow as pa

        kinds = pa.table({
            "kind": pa.array(["accepted" if r is None else "quarantined" for r in chunk.reason], pa.string()),
            "source": pa.array(chunk.source, pa.int64()),
            "who": pa.array(chunk.contributor, pa.string())})
        for kind, source, count in _grouped(kinds, ["kind", "source"], ("kind", "count")):
            self._count(kind, count, source=source)
        for kind, who, count in _grouped(kinds.filter(kinds["who"].is_valid()), ["kind", "who"], ("kind", "count")):
            self._count(kind, count, who=who)

    def _count(self, kind: str, count: int, source: int | None = None, who: str | None = None) -> None:
        """Add `count` records of `kind` to the totals and `source`'s, or to `who`'s."""
        if source is not None:
            self.counts[kind] += count
            self.per_source[source][kind] += count
        if who is not None:
            self.per_contributor.setdefault(who, Counter())[kind] += count

    def _spill_passed(self, chunk: _Chunk, typed: list[int], table: Any, passed: list[int]) -> None:
        """The rows that passed the gate, with their arrival number, leaf, key, source, line and raw
        text, into their key slices."""
        import pyarrow as pa

        rows = [typed[j] for j in passed]
        kept = table if len(passed) == table.num_rows else table.take(passed)
        extra = {
            tasks.ARRIVAL: pa.array(range(self.arrivals, self.arrivals + len(rows)), pa.int64()),
            tasks.LEAF: pa.array([chunk.leaf[i] for i in rows], pa.binary(32)),
            tasks.KEY: pa.array([chunk.key[i] for i in rows], pa.binary(32)),
            tasks.SOURCE: pa.array([chunk.source[i] for i in rows], pa.int64()),
            tasks.LINE: pa.array([chunk.line[i] for i in rows], pa.int64()),
            tasks.RAW: pa.array([_bytes(chunk.raw[i]) for i in rows], pa.binary()),
        }
        for name, column in extra.items():
            kept = kept.append_column(name, column)
        self.arrivals += len(rows)
        self.spill.add(kept)

    def finish(self, renew: Callable[[], None] = lambda: None) -> None:
        """Dedupe by key slice, then write the data parts and tree.bin by contributor partition, in
        the engine's workers; `renew()` as work goes on (the writer's lease). Requires every block
        added and settled, and the pool still running."""
        self.spill.close()
        shuffle = str(self.scratch)
        deduped = list(self._run(tasks.dedupe_slice, [
            tasks.DedupeJob(shuffle, self.dataset, self.files_of.lake, tasks.overlapping(self.history, k, self.slices),
                            k, self.slices, self.partitions, self.spill.rows[k]) for k in range(self.slices)], renew))
        for k, result in enumerate(deduped):
            renew()
            tasks.slice_file(shuffle, k).unlink(missing_ok=True)
            self._take_duplicates(k, result)
            self.index_files.append(self.files_of.write_file(layout.index_slice(k, self.slices),
                                                             tasks.index_file(shuffle, k)))
        self.tree_size = sum(sum(result.rows) for result in deduped)
        if self.tree_size != self.counts["accepted"]:
            raise CheckFailed(f"dataset {self.dataset.name} batch {self.files_of.seq}: the partitions hold "
                              f"{self.tree_size} rows, {self.counts['accepted']} were accepted")
        self._write_partitions(shuffle, deduped, renew)
        if not self.files:
            self.write_empty_part()

    def _write_partitions(self, shuffle: str, deduped: list[tasks.DedupeResult], renew: Callable[[], None]) -> None:
        """The partition tasks: each writes its parts and whole tiles; here the parts are uploaded
        in leaf order and the tiles folded into tree.bin."""
        jobs, first_part, first_leaf = [], 0, 0
        for p in range(self.partitions):
            sent = tuple(k for k, result in enumerate(deduped) if result.rows[p])
            count = sum(result.rows[p] for result in deduped)
            jobs.append(tasks.PartitionJob(shuffle, self.columns, p, sent, first_part, first_leaf, count,
                                           self.chunk_records))
            first_part += -(-count // self.chunk_records)
            first_leaf += count
        with open(self.tree_path, "wb") as out:
            tree = TreeAssembler(self.tree_size, out.write)
            for job, written in zip(jobs, self._run(tasks.write_partition, jobs, renew), strict=True):
                for number, name, count in written.parts:
                    renew()
                    entry = self.files_of.write_file(layout.part(number), self.scratch / name)
                    self.files.append(entry | {"rows": count})
                    (self.scratch / name).unlink()
                tree.leaves(written.head)
                if written.roots:
                    tree.tiles(_pieces(self.scratch / written.tiles), written.roots)
                tree.leaves(written.tail)
                for k in job.slices:
                    tasks.partition_file(shuffle, job.partition, k).unlink(missing_ok=True)
                if written.tiles:
                    (self.scratch / written.tiles).unlink(missing_ok=True)
            self.root = tree.finish()

    def _run(self, task: Callable[[Any], Any], jobs: list[Any], renew: Callable[[], None]) -> Iterator[Any]:
        """Each job's result, in job order: from the engine's workers, or here without a pool."""
        if self.pool is None:
            for job in jobs:
                renew()
                yield task(job)
            return
        futures = [self.pool.submit(task, job) for job in jobs]
        for future in futures:
            while not wait([future], timeout=RENEW_EVERY).done:  # a long task must not let the lease lapse
                renew()
            renew()
            yield future.result()

    def _take_duplicates(self, slice_: int, result: tasks.DedupeResult) -> None:
        """Move a key slice's duplicates from accepted to duplicate in the counts, quarantine them
        (in arrival order) and take its accepted rows' weights."""
        for source, count in result.duplicates_per_source.items():
            self._count("accepted", -count, source=source)
            self._count("duplicate", count, source=source)
        for who, count in result.duplicates_per_contributor.items():
            self._count("accepted", -count, who=who)
            self._count("duplicate", count, who=who)
        self.weights.update(result.weights)
        path = tasks.duplicates_file(self.scratch, slice_)
        if not path.exists():
            return
        dups = tasks.read_arrow(path).sort_by(tasks.ARRIVAL)
        count = dups.num_rows
        self._write_quarantine(dups.column("source").to_pylist(), dups.column("line").to_pylist(),
                               dups.column("contributor").to_pylist(), ["duplicate"] * count,
                               dups.column("detail").to_pylist(), dups.column("raw").to_pylist(),
                               dups.column("duplicate_of").to_pylist())

    def _write_quarantine(self, sources: list[int], lines: list[int], contributors: list[str | None],
                          reasons: list[str | None], details: list[str | None], raws: list[bytes],
                          duplicate_of: list[str | None]) -> None:
        """Quarantine rows (public: no record text) and the raw text of each (private)."""
        import pyarrow as pa

        if not sources:
            return
        raw_sha256 = pa.array([hashlib.sha256(r).hexdigest() for r in raws], pa.string())
        source_sha256 = pa.array([self.plan[s].sha256 for s in sources], pa.string())
        line = pa.array(lines, pa.int64())
        self.quarantine.write_table(pa.table({
            "source_key": [self.plan[s].key for s in sources], "source_sha256": source_sha256, "line": line,
            "contributor": pa.array(contributors, pa.string()), "reason": pa.array(reasons, pa.string()),
            "detail": pa.array(details, pa.string()), "raw_sha256": raw_sha256,
            "duplicate_of": pa.array(duplicate_of, pa.string()),
        }, schema=_quarantine_schema()))
        self.rejected.write_table(pa.table({"source_sha256": source_sha256, "line": line, "raw_sha256": raw_sha256,
                                            "raw": pa.array(raws, pa.binary())}, schema=_rejected_schema()))

    def write_empty_part(self) -> None:
        """An empty batch still has one (empty) data file with the schema."""
        data = parquet_bytes(arrow_table(self.columns, {c.name: [] for c in self.columns}))
        self.files.append(self.files_of.write(layout.part(0), data) | {"rows": 0})

    def close_writers(self) -> None:
        self.quarantine.close()
        self.rejected.close()
        self.spill.close()


def _pieces(path: Path, size: int = 8 << 20) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while piece := f.read(size):
            yield piece


class _Spill:
    """Rows in the shuffle directory, one Arrow IPC file (uncompressed) per dedupe-key slice."""

    def __init__(self, scratch: Path, slices: int, schema: Any) -> None:
        self.scratch, self.slices, self.schema = scratch, slices, schema
        self.writers: dict[int, Any] = {}
        self.rows = [0] * slices

    def add(self, table: Any) -> None:
        owner = tasks.key_slices(table.column(tasks.KEY), self.slices)
        for k, rows in enumerate(tasks.split_by(table, owner, self.slices)):
            if rows.num_rows:
                self._writer(k).write_table(rows)
                self.rows[k] += rows.num_rows

    def _writer(self, k: int) -> Any:
        import pyarrow as pa

        if k not in self.writers:
            self.writers[k] = pa.ipc.new_file(str(tasks.slice_file(self.scratch, k)), self.schema)
        return self.writers[k]

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()
        self.writers = {}


# --- reading the staged sources ---------------------------------------------------------------


def blocks(files: BatchFiles, dataset: Dataset, plan: list[Source], scratch: Path,
           pool: Executor | None) -> Iterator[Block]:
    """Every record of every staged source in blocks, in plan order, checking each source's SHA-256.

    With a pool, up to MAX_IN_FLIGHT blocks are being parsed while earlier ones are consumed.
    """
    window: deque[Block | Future[Block]] = deque()
    for index, source in enumerate(plan):
        fmt, _ = source_format(source.key)
        stream, finish = open_source(files.lake, source, scratch, seekable=fmt == "parquet")
        with stream:
            for item in parse_source(dataset, index, source.key, stream, pool):
                window.append(item)
                while len(window) > MAX_IN_FLIGHT:
                    yield _resolve(window.popleft())
            finish()
    while window:
        yield _resolve(window.popleft())


def _resolve(item: Block | Future[Block]) -> Block:
    return item if isinstance(item, Block) else item.result()


def worker_pool() -> Executor | None:
    """Where sources are parsed, typed and hashed and chunks checked: the engine's pool (forked
    workers, one per core, or Ray tasks); None for one local core."""
    return engine_pool()
