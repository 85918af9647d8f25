"""Build one batch from its staged sources: runs of lines -> chunk tasks (parse, type, hash,
quality gate, spill) -> dedupe tasks -> partition tasks (contributor-ordered data parts and
tree tiles), with every record counted.

The engine's workers read the sources and cut them into runs; the driver gathers the runs, as
references, into chunks, and the workers do the rest (see ingest.chunks and ingest.partitions).
This process reads no source and never holds the batch's rows; it folds the tasks' tile roots
into tree.bin.
Leaves are ordered by contributor, then arrival (SPEC §13.2).
"""

from __future__ import annotations

import hashlib
import io
from collections import Counter, deque
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, wait
from pathlib import Path
from typing import Any

from pipeline.core.signature import holds as signature_holds
from pipeline.core.treefile import TreeAssembler
from pipeline.datasets import Dataset
from pipeline.errors import CheckFailed
from pipeline.ingest import partitions as tasks
from pipeline.ingest.chunks import (
    ARRIVAL_SHIFT,
    ChunkJob,
    ChunkOutcome,
    Deferred,
    SourceJob,
    plan_source,
    quarantine_file,
    run_chunk,
)
from pipeline.ingest.quality import QualityReport
from pipeline.lake import layout
from pipeline.lake.batch import BatchFiles
from pipeline.lake.columnar import arrow_table
from pipeline.lake.sources import Source, stored_bytes
from pipeline.lake.workers import engine_pool, pool_width

CHUNK_RECORDS = 100_000
CHUNK_BYTES = 256 << 20  # a chunk is sent once its items hold this many bytes, if it is not full before
MAX_READ_AHEAD = 8  # sources read ahead, at most (each may leave up to limits.source_bytes in the shuffle)
IN_FLIGHT_PER_WORKER = 2  # chunks sent per worker of the engine and not yet settled (bounds memory)
PARTITION_SOURCE_BYTES = 64 << 20  # source bytes per contributor partition: what one sort task holds
HISTORY_KEYS_PER_SLICE = 4 << 20  # earlier batches' keys per dedupe slice: what one dedupe task holds
MAX_PARTITIONS = 4096
RENEW_EVERY = 5.0  # seconds between lease renewals while the driver waits on a task


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


class BatchBuilder:
    """Accumulates one batch chunk by chunk, then has the partition tasks dedupe, order and write
    it. `scratch` is the shuffle directory: every worker of the engine must reach it."""

    def __init__(self, files: BatchFiles, dataset: Dataset, plan: list[Source], scratch: Path,
                 chunk_records: int = CHUNK_RECORDS, pool: Executor | None = None) -> None:
        import pyarrow.parquet as pq

        if not 0 < chunk_records < 1 << ARRIVAL_SHIFT:
            raise ValueError(f"chunk_records must be 1 .. 2**{ARRIVAL_SHIFT} - 1, not {chunk_records}")
        self.files_of, self.dataset, self.plan = files, dataset, plan
        self.chunk_records = chunk_records
        self.columns = dataset.committed_columns
        self.history = tasks.history(files.lake, dataset.name, files.seq)
        self.partitions = partition_count(stored_bytes(files.lake, plan))
        self.slices = slice_count(self.partitions, self.history.keys)
        self.quality = QualityReport(dataset)
        self.pool = pool
        self.in_flight = IN_FLIGHT_PER_WORKER * pool_width(pool)
        self.validating: deque[tuple[int, ChunkOutcome | Future[ChunkOutcome]]] = deque()
        self.signers = self._signers()
        self.chunks = 0  # chunks sent so far: the next one's number
        self.chunk_files: dict[int, list[str]] = {}  # each running chunk's shuffle files, removed as it settles
        self.slice_chunks: list[list[int]] = [[] for _ in range(self.slices)]  # chunks that spilled into each slice
        self.slice_rows = [0] * self.slices
        self.files: list[dict[str, Any]] = []
        self.index_files: list[dict[str, Any]] = []
        self.tree_size, self.root = 0, b""
        self.counts: Counter[str] = Counter()
        self.per_source: list[Counter[str]] = [Counter() for _ in plan]
        self.per_contributor: dict[str, Counter[str]] = {}
        self.weights: Counter[str] = Counter()
        self.pending: list[Deferred] = []
        self.pending_sources: set[int] = set()
        self.pending_rows = 0
        self.pending_bytes = 0
        self.scratch = scratch
        self.quarantine_path = scratch / layout.QUARANTINE
        self.rejected_path = scratch / layout.REJECTED
        self.tree_path = scratch / layout.TREE
        self.quarantine = pq.ParquetWriter(self.quarantine_path, _quarantine_schema(), compression="zstd")
        self.rejected = pq.ParquetWriter(self.rejected_path, _rejected_schema(), compression="zstd")

    def add(self, source: int, item: Deferred, renew: Callable[[], None] = lambda: None) -> None:
        """What a chunk task will parse of plan source `source` (a run of lines, of row groups, a
        block); `renew()` while waiting on a chunk task (the writer's lease). A chunk is sent at
        `chunk_records` records or CHUNK_BYTES bytes, whichever comes first: lines of up to the
        record size limit could otherwise put gigabytes in one task."""
        self.pending_sources.add(source)
        self.pending.append(item)
        self.pending_rows += len(item)
        self.pending_bytes += item.size
        if self.pending_rows >= self.chunk_records or self.pending_bytes >= CHUNK_BYTES:
            self.flush(renew)

    def flush(self, renew: Callable[[], None] = lambda: None) -> None:
        """Send the pending items, as one chunk, to a chunk task; chunks are settled in order,
        as many still running as the engine has workers, twice over."""
        items, self.pending, self.pending_rows, self.pending_bytes = self.pending, [], 0, 0
        sources, self.pending_sources = self.pending_sources, set()
        if not items:
            return
        signers = None if self.signers is None else {i: self.signers[i] for i in sources}
        job = ChunkJob(str(self.scratch), self.dataset, self.chunks, tuple(items), self.slices, signers)
        self.chunk_files[self.chunks] = [item.release for item in items if item.release]
        self.validating.append((self.chunks, self.pool.submit(run_chunk, job) if self.pool is not None
                                else run_chunk(job)))
        self.chunks += 1
        while len(self.validating) > self.in_flight:
            self._settle(*self.validating.popleft(), renew)

    def settle(self, renew: Callable[[], None] = lambda: None) -> None:
        """Flush, and settle every chunk still running."""
        self.flush(renew)
        while self.validating:
            self._settle(*self.validating.popleft(), renew)

    def _settle(self, number: int, done: ChunkOutcome | Future[ChunkOutcome], renew: Callable[[], None]) -> None:
        """Take chunk `number`'s counts and quality result, and its quarantine rows."""
        if isinstance(done, Future):
            while not wait([done], timeout=RENEW_EVERY).done:
                renew()
        outcome = done.result() if isinstance(done, Future) else done
        for used in self.chunk_files.pop(number):  # what its items were read from: no longer needed
            Path(used).unlink(missing_ok=True)
        self.quality.add(outcome.quality)
        for kind, source, count in outcome.counts:
            self._count(kind, count, source=source)
        for kind, who, count in outcome.per_contributor:
            self._count(kind, count, who=who)
        for k, rows in enumerate(outcome.slice_rows):
            if rows:
                self.slice_chunks[k].append(number)
                self.slice_rows[k] += rows
        if outcome.quarantined:
            path = quarantine_file(self.scratch, number)
            rows = tasks.read_shuffled(path)
            if rows.num_rows != outcome.quarantined:
                raise CheckFailed(f"{path} holds {rows.num_rows} rows, its chunk task quarantined {outcome.quarantined}")
            self._write_quarantine(rows.column("source").to_pylist(), rows.column("line").to_pylist(),
                                   rows.column("contributor").to_pylist(), rows.column("reason").to_pylist(),
                                   rows.column("detail").to_pylist(), rows.column("raw").to_pylist(),
                                   [None] * rows.num_rows)
            path.unlink()

    def _signers(self) -> dict[int, tuple[str | None, str]] | None:
        """For a signed dataset (SPEC §13.7), each source's signer if its signature recovers that
        signer over its SHA-256, else None, and why not. Checked again here: the staged plan is in
        the lake, where anyone with write access could have planted a signer; the bytes read are
        checked against that SHA-256 as they are read."""
        if not self.dataset.signed:
            return None
        return {i: (source.signer if source.signer and signature_holds(self.dataset.name, source.sha256,
                                                                       source.signature, source.signer) else None,
                    source.unsigned or "the source carries no valid signature") for i, source in enumerate(self.plan)}

    def _count(self, kind: str, count: int, source: int | None = None, who: str | None = None) -> None:
        """Add `count` records of `kind` to the totals and `source`'s, or to `who`'s."""
        if source is not None:
            self.counts[kind] += count
            self.per_source[source][kind] += count
        if who is not None:
            self.per_contributor.setdefault(who, Counter())[kind] += count

    def finish(self, renew: Callable[[], None] = lambda: None) -> None:
        """Dedupe by key slice, then write the data parts and tree.bin by contributor partition, in
        the engine's workers; `renew()` as work goes on (the writer's lease). The duplicates and the
        index slices are taken here while the workers write the parts. Requires every block added
        and settled, and the pool still running."""
        shuffle = str(self.scratch)
        deduped = list(self._run(tasks.dedupe_slice, [
            tasks.DedupeJob(shuffle, self.dataset, self.files_of.lake, tasks.overlapping(self.history.index, k, self.slices),
                            k, self.slices, self.partitions, tuple(self.slice_chunks[k]), self.slice_rows[k])
            for k in range(self.slices)], renew))
        self.tree_size = sum(sum(result.rows) for result in deduped)
        accepted = self.counts["accepted"] - sum(sum(r.duplicates_per_source.values()) for r in deduped)
        if self.tree_size != accepted:
            raise CheckFailed(f"dataset {self.dataset.name} batch {self.files_of.seq}: the partitions hold "
                              f"{self.tree_size} rows, {accepted} were accepted")
        jobs = self._partition_jobs(shuffle, deduped)
        written = self._run(tasks.write_partition, jobs, renew)
        for k, result in enumerate(deduped):
            renew()
            for number in self.slice_chunks[k]:
                tasks.slice_file(shuffle, k, number).unlink(missing_ok=True)
            self._take_duplicates(k, result)
            self.index_files.append(self.files_of.move_file(layout.index_slice(k, self.slices),
                                                             tasks.index_file(shuffle, k)))
        self._take_partitions(shuffle, jobs, written, renew)
        if not self.files:
            self.write_empty_part()

    def _partition_jobs(self, shuffle: str, deduped: list[tasks.DedupeResult]) -> list[tasks.PartitionJob]:
        """The partition tasks: each writes its parts and whole tiles."""
        jobs, first_part, first_leaf = [], 0, 0
        for p in range(self.partitions):
            sent = tuple(k for k, result in enumerate(deduped) if result.rows[p])
            count = sum(result.rows[p] for result in deduped)
            jobs.append(tasks.PartitionJob(shuffle, self.columns, p, sent, first_part, first_leaf, count,
                                           self.chunk_records))
            first_part += -(-count // self.chunk_records)
            first_leaf += count
        return jobs

    def _take_partitions(self, shuffle: str, jobs: list[tasks.PartitionJob], results: Iterator[tasks.PartitionResult],
                         renew: Callable[[], None]) -> None:
        """Upload each partition's parts in leaf order, and fold its tiles into tree.bin."""
        with open(self.tree_path, "wb") as out:
            tree = TreeAssembler(self.tree_size, out.write)
            for job, written in zip(jobs, results, strict=True):
                for number, name, count in written.parts:
                    renew()
                    entry = self.files_of.move_file(layout.part(number), self.scratch / name)
                    self.files.append(entry | {"rows": count})
                tree.leaves(written.head)
                if written.roots:
                    tree.tiles(_pieces(self.scratch / written.tiles), written.roots)
                tree.leaves(written.tail)
                for k in job.slices:
                    tasks.partition_file(shuffle, job.partition, k).unlink(missing_ok=True)
                if written.tiles:
                    (self.scratch / written.tiles).unlink(missing_ok=True)
            self.root = tree.finish()

    def read_source(self, job: SourceJob, renew: Callable[[], None] = lambda: None) -> Callable[[], list[Deferred]]:
        """Send a source to be read through by a worker (see chunks.plan_source); what waits for
        what the chunk tasks will parse. Without a pool it is read here, when waited for."""
        if self.pool is None:
            return lambda: plan_source(job, renew)
        future = self.pool.submit(plan_source, job)
        return lambda: self._result(future, renew)

    def _run(self, task: Callable[[Any], Any], jobs: list[Any], renew: Callable[[], None]) -> Iterator[Any]:
        """Each job's result, in job order: sent to the engine's workers now (each result is waited
        for as it is read), or done here as it is read, without a pool."""
        if self.pool is None:
            return (self._here(task, job, renew) for job in jobs)
        futures = [self.pool.submit(task, job) for job in jobs]
        return (self._result(future, renew) for future in futures)

    @staticmethod
    def _here(task: Callable[[Any], Any], job: Any, renew: Callable[[], None]) -> Any:
        renew()
        return task(job)

    @staticmethod
    def _result(future: Future[Any], renew: Callable[[], None]) -> Any:
        while not wait([future], timeout=RENEW_EVERY).done:  # a long task must not let the lease lapse
            renew()
        renew()
        return future.result()

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


def _pieces(path: Path, size: int = 8 << 20) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while piece := f.read(size):
            yield piece


# --- reading the staged sources ---------------------------------------------------------------


def blocks(files: BatchFiles, dataset: Dataset, plan: list[Source], scratch: Path,
           read_source: Callable[[SourceJob], Callable[[], list[Deferred]]],
           ahead: int = 1) -> Iterator[tuple[int, Deferred]]:
    """(plan index, what a chunk task parses) of every staged source, in plan order: each source
    read through by a worker (`read_source` sends it and gives what waits for its items; see
    chunks.plan_source), the next `ahead` sources sent before they are reached. `scratch` is the
    shuffle directory. Nothing here reads a source."""
    upcoming, waiting = iter(range(len(plan))), deque[Callable[[], list[Deferred]]]()
    for index in range(len(plan)):
        while len(waiting) < min(max(1, ahead), MAX_READ_AHEAD) and (sent := next(upcoming, None)) is not None:
            waiting.append(read_source(SourceJob(files.lake, dataset, sent, plan[sent], str(scratch))))
        for item in waiting.popleft()():
            yield index, item


def worker_pool() -> Executor | None:
    """Where sources are parsed, typed and hashed and chunks checked: the engine's pool (forked
    workers, one per core, or Ray tasks); None for one local core."""
    return engine_pool()
