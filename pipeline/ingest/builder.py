"""Build one batch from its staged sources: records in blocks -> typed chunks -> quality gate ->
dedupe -> contributor-ordered data parts, index and quarantine, with every record counted.

Leaves are ordered by contributor, then arrival (SPEC §13.2). Accepted rows stream through in
chunks of `chunk_records` and are spilled to scratch files partitioned by contributor address
prefix (contiguous prefix ranges, so partition order is address order); `finish` then sorts one
partition at a time and writes the parts. Memory holds one partition's rows, and per accepted
row its leaf hash and dedupe key.
"""

from __future__ import annotations

import hashlib
import io
from collections import Counter, deque
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.core.signature import holds as signature_holds
from pipeline.datasets import Column, Dataset
from pipeline.ingest.dedupe import PriorKeys
from pipeline.ingest.parse import Block, parse_source, source_format
from pipeline.ingest.quality import ChunkResult, QualityReport, check_chunk
from pipeline.lake import layout
from pipeline.lake.batch import BatchFiles
from pipeline.lake.columnar import arrow_schema, arrow_table
from pipeline.lake.sources import Source, open_source
from pipeline.lake.workers import engine_pool

CHUNK_RECORDS = 100_000
MAX_IN_FLIGHT = 8  # blocks being parsed by the pool at once (bounds memory)
VALIDATING = 1  # chunks being checked by the quality gate while the next one gathers
PARTITION_SOURCE_BYTES = 256 << 20  # source bytes per contributor partition: what one sort holds
MAX_PARTITIONS = 4096
ARRIVAL, LEAF, KEY = "__arrival", "__leaf", "__key"  # spill-only columns, never committed


def partition_count(source_bytes: int) -> int:
    """How many contributor partitions a batch of `source_bytes` is sorted in."""
    return max(1, min(MAX_PARTITIONS, -(-source_bytes // PARTITION_SOURCE_BYTES)))


def partition_of(contributor: str, partitions: int) -> int:
    """The partition of a (lowercase) address: contiguous ranges of its first 32 bits."""
    return int(contributor[2:10], 16) * partitions >> 32


def partitions_of(contributors: Any, partitions: int) -> Any:
    """partition_of each (lowercase) address of an Arrow string column, as a numpy array."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    prefixes = pc.utf8_slice_codeunits(contributors, 2, 10).combine_chunks().cast(pa.binary())
    if len(prefixes) == 0:
        return np.zeros(0, np.int64)
    if prefixes.offset or prefixes.null_count or pc.min_max(pc.binary_length(prefixes)).as_py() != {"min": 8, "max": 8}:
        return np.array([partition_of(c, partitions) for c in contributors.to_pylist()], np.int64)  # not addresses
    digits = np.frombuffer(prefixes.buffers()[2], np.uint8, count=8 * len(prefixes)).reshape(-1, 8)
    nibbles = np.where(digits >= ord("a"), digits - (ord("a") - 10), digits - ord("0")).astype(np.uint64)
    prefix = (nibbles << (4 * np.arange(7, -1, -1, dtype=np.uint64))).sum(axis=1, dtype=np.uint64)
    return (prefix * np.uint64(partitions) >> np.uint64(32)).astype(np.int64)


def _hex(hashes: Any) -> Any:
    """Lowercase hex of each value of a binary(32) column, as an Arrow string array."""
    import numpy as np
    import pyarrow as pa

    column = hashes.combine_chunks()
    count = len(column)
    octets = np.frombuffer(column.buffers()[1], np.uint8, count=32 * count, offset=32 * column.offset).reshape(-1, 32)
    digits = np.frombuffer(b"0123456789abcdef", np.uint8)
    text = np.empty((count, 64), np.uint8)
    text[:, 0::2], text[:, 1::2] = digits[octets >> 4], digits[octets & 15]
    return pa.StringArray.from_buffers(count, pa.py_buffer(np.arange(0, 64 * count + 1, 64, dtype=np.int32).tobytes()),
                                       pa.py_buffer(text.tobytes()))


def _leaf_order(table: Any) -> Any:
    """The positions of a partition's rows by contributor, then arrival: the contributors (a few
    per thousand rows) are ranked once, and rows sorted by integer rank and arrival."""
    import pyarrow as pa
    import pyarrow.compute as pc

    encoded = pc.dictionary_encode(table.column("contributor")).combine_chunks()
    ranks = pc.rank(encoded.dictionary, sort_keys="ascending", tiebreaker="first")
    keys = pa.table({"rank": pc.take(ranks, encoded.indices), "arrival": table.column(ARRIVAL)})
    return pc.sort_indices(keys, sort_keys=[("rank", "ascending"), ("arrival", "ascending")])


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


def _index_schema() -> Any:
    import pyarrow as pa

    return pa.schema([("record_id", pa.string()), ("dedupe_key", pa.binary(32)), ("contributor", pa.string())])


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
    """Accumulates one batch block by block, validating and writing a data part per chunk."""

    def __init__(self, files: BatchFiles, dataset: Dataset, plan: list[Source], scratch: Path,
                 chunk_records: int = CHUNK_RECORDS, pool: Executor | None = None) -> None:
        import pyarrow.parquet as pq

        self.files_of, self.dataset, self.plan = files, dataset, plan
        self.chunk_records = chunk_records
        self.columns = dataset.committed_columns
        self.prior = PriorKeys.load(files.lake, dataset.name, files.seq)
        self.quality = QualityReport(dataset)
        self.pool = pool
        self.validating: deque[_Validating] = deque()
        self.seen: dict[bytes, bytes] = {}  # dedupe key -> leaf hash of its accepted row
        self.signed: dict[int, bool] = {}  # plan index -> its signature holds (signed datasets)
        self.accepted = 0
        self.leaves: list[bytes] = []  # in leaf order, once finished
        self.files: list[dict[str, Any]] = []
        self.counts: Counter[str] = Counter()
        self.per_source: list[Counter[str]] = [Counter() for _ in plan]
        self.per_contributor: dict[str, Counter[str]] = {}
        self.weights: Counter[str] = Counter()
        self.pending: list[Block] = []
        self.pending_rows = 0
        self.quarantine_path = scratch / layout.QUARANTINE
        self.rejected_path = scratch / layout.REJECTED
        self.index_path = scratch / layout.INDEX
        self.quarantine = pq.ParquetWriter(self.quarantine_path, _quarantine_schema(), compression="zstd")
        self.rejected = pq.ParquetWriter(self.rejected_path, _rejected_schema(), compression="zstd")
        self.index = pq.ParquetWriter(self.index_path, _index_schema(), compression="zstd")
        self.spill = _Spill(scratch, partition_count(sum(source.bytes for source in plan)), self.columns)

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
        table = chunk.table.take(pa.array(typed, pa.int64()))
        selected = self.quality.selected(table)
        checked = (self.pool.submit(check_chunk, self.dataset, selected) if self.pool is not None and typed
                   else check_chunk(self.dataset, selected))
        self.validating.append(_Validating(chunk, typed, table, checked))
        while len(self.validating) > VALIDATING:
            self._settle(self.validating.popleft())

    def settle(self) -> None:
        """Flush, and settle every chunk still being checked (before the pool is shut down)."""
        self.flush()
        while self.validating:
            self._settle(self.validating.popleft())

    def _settle(self, done: _Validating) -> None:
        """Apply a chunk's quality results, dedupe it, count it and write what it accepted and rejected."""
        chunk, typed, table = done.chunk, done.typed, done.table
        result = self.quality.add(done.checked.result() if isinstance(done.checked, Future) else done.checked)
        for position, (why, what) in result.failures.items():
            chunk.reject(typed[position], why, what)
        duplicate_of: dict[int, str] = {}
        accepted = self._dedupe(chunk, typed, duplicate_of)
        self._tally(chunk, typed, table, accepted)
        if accepted:
            self._spill_accepted(chunk, typed, table, accepted)
        self._write_quarantine(chunk, duplicate_of)

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

    def _dedupe(self, chunk: _Chunk, typed: list[int], duplicate_of: dict[int, str]) -> list[int]:
        """Positions in `typed` of the rows accepted: not seen in an earlier batch nor earlier in this one."""
        key_columns = "+".join(self.dataset.dedupe_key)
        survivors = [j for j, i in enumerate(typed) if chunk.reason[i] is None]
        earlier = self.prior.lookup([chunk.key[typed[j]] for j in survivors])  # type: ignore[misc]
        accepted: list[int] = []
        for j, prior_id in zip(survivors, earlier, strict=True):
            i = typed[j]
            key, leaf = chunk.key[i], chunk.leaf[i]
            assert key is not None and leaf is not None
            if prior_id is not None:
                chunk.reject(i, "duplicate", f"same {key_columns} as record {prior_id} of an earlier batch")
                duplicate_of[i] = prior_id
            elif (first := self.seen.get(key)) is not None:
                duplicate_of[i] = first.hex()
                chunk.reject(i, "duplicate", f"same {key_columns} as record {duplicate_of[i]}")
            else:
                self.seen[key] = leaf
                accepted.append(j)
        return accepted

    def _tally(self, chunk: _Chunk, typed: list[int], table: Any, accepted: list[int]) -> None:
        """Count the chunk's records by kind: overall, per source and per contributor; and the
        accepted rows' weights per contributor (Arrow group-bys: one pass per chunk, not per row)."""
        import pyarrow as pa

        weights = self._row_weights(table)
        if accepted:
            rows = pa.table({"who": pa.array([chunk.contributor[typed[j]] for j in accepted], pa.string()),
                             "weight": pa.array([1] * len(accepted) if weights is None
                                                else [weights[j] for j in accepted], pa.int64())})
            for who, weight in _grouped(rows, ["who"], ("weight", "sum")):
                self.weights[who] += weight
        kinds = pa.table({
            "kind": pa.array(["accepted" if r is None else "duplicate" if r == "duplicate" else "quarantined"
                              for r in chunk.reason], pa.string()),
            "source": pa.array(chunk.source, pa.int64()),
            "who": pa.array(chunk.contributor, pa.string())})
        for kind, source, count in _grouped(kinds, ["kind", "source"], ("kind", "count")):
            self.counts[kind] += count
            self.per_source[source][kind] += count
        for kind, who, count in _grouped(kinds.filter(kinds["who"].is_valid()), ["kind", "who"], ("kind", "count")):
            self.per_contributor.setdefault(who, Counter())[kind] += count

    def _row_weights(self, table: Any) -> list[int] | None:
        """Each row's weight as the pipeline measures it (never a value the contributor wrote):
        None for one per row, else the characters of its text columns."""
        if self.dataset.rewards.weight == "rows":
            return None
        import pyarrow as pa
        import pyarrow.compute as pc

        total = pa.array([0] * table.num_rows, pa.int64())
        for column in self.dataset.columns:
            if column.type == "string":
                total = pc.add(total, pc.fill_null(pc.utf8_length(table.column(column.name)), 0))
        return [int(w) for w in total.to_pylist()]

    def _spill_accepted(self, chunk: _Chunk, typed: list[int], table: Any, accepted: list[int]) -> None:
        """The accepted rows with their arrival number, leaf and key, into their partitions."""
        import pyarrow as pa

        rows = [typed[j] for j in accepted]
        kept = table.take(accepted)
        kept = kept.append_column(ARRIVAL, pa.array(range(self.accepted, self.accepted + len(rows)), pa.int64()))
        kept = kept.append_column(LEAF, pa.array([chunk.leaf[i] for i in rows], pa.binary(32)))
        kept = kept.append_column(KEY, pa.array([chunk.key[i] for i in rows], pa.binary(32)))
        self.accepted += len(rows)
        self.spill.add(kept)

    def finish(self, renew: Callable[[], None] = lambda: None) -> None:
        """Write the data parts and the index in leaf order: each partition sorted by contributor,
        then arrival; `renew()` before each part (the writer's lease). Requires every block added
        and flushed."""
        import pyarrow as pa

        names = [c.name for c in self.columns]
        for table in self.spill.sorted_partitions():
            for start in range(0, table.num_rows, self.chunk_records):
                renew()
                part = table.slice(start, self.chunk_records)
                entry = self.files_of.write(layout.part(len(self.files)), parquet_bytes(part.select(names)))
                self.files.append(entry | {"rows": part.num_rows})
                leaves = part.column(LEAF).to_pylist()
                self.leaves += leaves
                self.index.write_table(pa.table({
                    "record_id": _hex(part.column(LEAF)),
                    "dedupe_key": part.column(KEY), "contributor": part.column("contributor"),
                }, schema=_index_schema()))
        if not self.files:
            self.write_empty_part()

    def _write_quarantine(self, chunk: _Chunk, duplicate_of: dict[int, str]) -> None:
        import pyarrow as pa

        rejected = [i for i in range(len(chunk.line)) if chunk.reason[i] is not None]
        if not rejected:
            return
        raw = [_bytes(chunk.raw[i]) for i in rejected]
        raw_sha256 = pa.array([hashlib.sha256(r).hexdigest() for r in raw], pa.string())
        source_sha256 = pa.array([self.plan[chunk.source[i]].sha256 for i in rejected], pa.string())
        line = pa.array([chunk.line[i] for i in rejected], pa.int64())
        self.quarantine.write_table(pa.table({
            "source_key": [self.plan[chunk.source[i]].key for i in rejected],
            "source_sha256": source_sha256, "line": line,
            "contributor": pa.array([chunk.contributor[i] for i in rejected], pa.string()),
            "reason": pa.array([chunk.reason[i] for i in rejected], pa.string()),
            "detail": pa.array([chunk.detail[i] for i in rejected], pa.string()),
            "raw_sha256": raw_sha256,
            "duplicate_of": pa.array([duplicate_of.get(i) for i in rejected], pa.string()),
        }, schema=_quarantine_schema()))
        self.rejected.write_table(pa.table({"source_sha256": source_sha256, "line": line, "raw_sha256": raw_sha256,
                                            "raw": pa.array(raw, pa.binary())}, schema=_rejected_schema()))

    def write_empty_part(self) -> None:
        """An empty batch still has one (empty) data file with the schema."""
        data = parquet_bytes(arrow_table(self.columns, {c.name: [] for c in self.columns}))
        self.files.append(self.files_of.write(layout.part(0), data) | {"rows": 0})

    def close_writers(self) -> None:
        self.quarantine.close()
        self.rejected.close()
        self.index.close()
        self.spill.close()


class _Spill:
    """Accepted rows in scratch files, one per contributor partition (Arrow IPC, uncompressed)."""

    def __init__(self, scratch: Path, partitions: int, columns: tuple[Column, ...]) -> None:
        import pyarrow as pa

        self.partitions = partitions
        self.schema = arrow_schema(columns).append(pa.field(ARRIVAL, pa.int64())).append(
            pa.field(LEAF, pa.binary(32))).append(pa.field(KEY, pa.binary(32)))
        self.paths = [scratch / f"spill-{p:05d}.arrow" for p in range(partitions)]
        self.writers: dict[int, Any] = {}

    def add(self, table: Any) -> None:
        import numpy as np
        import pyarrow as pa

        if self.partitions == 1:
            self._writer(0).write_table(table)
            return
        owner = partitions_of(table.column("contributor"), self.partitions)
        order = np.argsort(owner, kind="stable")
        bounds = np.searchsorted(owner[order], np.arange(self.partitions + 1))
        grouped = table.take(pa.array(order))
        for p in range(self.partitions):
            if bounds[p + 1] > bounds[p]:
                self._writer(p).write_table(grouped.slice(bounds[p], bounds[p + 1] - bounds[p]))

    def _writer(self, p: int) -> Any:
        import pyarrow as pa

        if p not in self.writers:
            self.writers[p] = pa.ipc.new_file(str(self.paths[p]), self.schema)
        return self.writers[p]

    def sorted_partitions(self) -> Iterator[Any]:
        """Each partition's rows sorted by contributor, then arrival, in partition order."""
        import pyarrow as pa

        self.close()
        for p in range(self.partitions):
            if self.paths[p].exists():
                with pa.memory_map(str(self.paths[p])) as source:
                    table = pa.ipc.open_file(source).read_all()
                yield table.take(_leaf_order(table))

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
