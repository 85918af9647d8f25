"""The partition tasks of a batch plan (SPEC §13.11), run by the engine's workers (forked
processes or Ray tasks) on files in a shuffle directory every worker reaches.

The chunk tasks (ingest.chunks) spill the rows that passed the quality gate by dedupe-key slice. Then:
1. `dedupe_slice`, one task per key slice: sorts its rows by key, then arrival; the first row of
   each key not committed by an earlier batch is accepted, every other row is a duplicate. It
   reads only its slice of the history index (each earlier batch's index is sliced by key too,
   so what a task holds does not grow with the number of batches). It writes the accepted rows
   by contributor partition, the batch's index slice and the duplicates, and returns counts.
2. `write_partition`, one task per contributor partition: sorts its rows by contributor, then
   arrival (SPEC §13.2), writes its data parts and the tiles of tree.bin wholly inside its leaf
   range, and returns their roots and the loose leaves at its edges; the driver folds them.

Partition and slice counts are powers of two, and a key's slice is the range its first 32 bits
fall in, so slices of batches sliced differently overlap simply. Nothing here depends on which
worker runs what: the same inputs give the same files.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline import config
from pipeline.core import treefile
from pipeline.datasets import Column, Dataset
from pipeline.errors import CheckFailed
from pipeline.lake import layout
from pipeline.lake.batch import BatchFiles, linked_manifests, read_parquet, read_pinned
from pipeline.lake.columnar import arrow_schema
from pipeline.lake.storage import Lake

ARRIVAL, LEAF, KEY = "__arrival", "__leaf", "__key"  # shuffle-only columns, never committed
SOURCE, LINE, RAW = "__source", "__line", "__raw"  # what a duplicate's quarantine row needs


def power_of_two_at_least(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def _top_bits(prefix: Any, slices: int) -> Any:
    import numpy as np

    return (prefix >> np.uint64(32 - (slices.bit_length() - 1))).astype(np.int64)


def key_slices(keys: Any, slices: int) -> Any:
    """The slice (0..slices-1, a power of two) of each value of a binary(32) column: the range its
    first 32 bits, big-endian, fall in. A numpy int64 array."""
    import numpy as np
    import pyarrow as pa

    column = keys.combine_chunks() if isinstance(keys, pa.ChunkedArray) else keys
    if len(column) == 0:
        return np.zeros(0, np.int64)
    octets = np.frombuffer(column.buffers()[1], np.uint8, count=32 * len(column),
                           offset=32 * column.offset).reshape(-1, 32)[:, :4].astype(np.uint64)
    return _top_bits((octets << np.array([24, 16, 8, 0], np.uint64)).sum(axis=1, dtype=np.uint64), slices)


def address_partitions(contributors: Any, partitions: int) -> Any:
    """The partition (0..partitions-1, a power of two) of each lowercase 0x-address of a string
    column: the range its first 8 hex digits fall in, so partition order is address order."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    prefixes = pc.utf8_slice_codeunits(contributors, 2, 10).combine_chunks().cast(pa.binary())
    if len(prefixes) == 0:
        return np.zeros(0, np.int64)
    if prefixes.offset or prefixes.null_count or pc.min_max(pc.binary_length(prefixes)).as_py() != {"min": 8, "max": 8}:
        raise CheckFailed("a contributor that is not an address reached the partitions")
    digits = np.frombuffer(prefixes.buffers()[2], np.uint8, count=8 * len(prefixes)).reshape(-1, 8)
    nibbles = np.where(digits >= ord("a"), digits - (ord("a") - 10), digits - ord("0")).astype(np.uint64)
    return _top_bits((nibbles << (4 * np.arange(7, -1, -1, dtype=np.uint64))).sum(axis=1, dtype=np.uint64), partitions)


def overlaps(slice_: int, slices: int, other: int, others: int) -> bool:
    """Whether slice `slice_` of `slices` and slice `other` of `others` (powers of two) share keys."""
    return slice_ * others < (other + 1) * slices and other * slices < (slice_ + 1) * others


def split_by(table: Any, owner: Any, count: int) -> list[Any]:
    """`table`'s rows grouped by `owner` (0..count-1), each group in its original order."""
    import numpy as np
    import pyarrow as pa

    order = np.argsort(owner, kind="stable")
    bounds = np.searchsorted(owner[order], np.arange(count + 1))
    grouped = table.take(pa.array(order))
    return [grouped.slice(bounds[p], bounds[p + 1] - bounds[p]) for p in range(count)]


def shuffle_schema(columns: tuple[Column, ...]) -> Any:
    """The rows a chunk task spills by key slice: committed columns, arrival, leaf, key, and where
    each came from with its raw text (for the quarantine row of a duplicate)."""
    import pyarrow as pa

    return arrow_schema(columns).append(pa.field(ARRIVAL, pa.int64())).append(pa.field(LEAF, pa.binary(32))).append(
        pa.field(KEY, pa.binary(32))).append(pa.field(SOURCE, pa.int64())).append(pa.field(LINE, pa.int64())).append(
        pa.field(RAW, pa.binary()))


def index_schema() -> Any:
    import pyarrow as pa

    return pa.schema([("record_id", pa.string()), ("dedupe_key", pa.binary(32)), ("contributor", pa.string())])


def hex_of(hashes: Any) -> Any:
    """Lowercase hex of each value of a binary(32) column, as an Arrow string array."""
    import numpy as np
    import pyarrow as pa

    column = hashes.combine_chunks() if isinstance(hashes, pa.ChunkedArray) else hashes
    count = len(column)
    octets = np.frombuffer(column.buffers()[1], np.uint8, count=32 * count, offset=32 * column.offset).reshape(-1, 32)
    digits = np.frombuffer(b"0123456789abcdef", np.uint8)
    text = np.empty((count, 64), np.uint8)
    text[:, 0::2], text[:, 1::2] = digits[octets >> 4], digits[octets & 15]
    return pa.StringArray.from_buffers(count, pa.py_buffer(np.arange(0, 64 * count + 1, 64, dtype=np.int32).tobytes()),
                                       pa.py_buffer(text.tobytes()))


def leaf_order(table: Any) -> Any:
    """The positions of rows by contributor, then arrival: the contributors (a few per thousand
    rows) are ranked once, and rows sorted by integer rank and arrival."""
    import pyarrow as pa
    import pyarrow.compute as pc

    encoded = pc.dictionary_encode(table.column("contributor")).combine_chunks()
    ranks = pc.rank(encoded.dictionary, sort_keys="ascending", tiebreaker="first")
    keys = pa.table({"rank": pc.take(ranks, encoded.indices), "arrival": table.column(ARRIVAL)})
    return pc.sort_indices(keys, sort_keys=[("rank", "ascending"), ("arrival", "ascending")])


def read_shuffled(path: Path) -> Any:
    """An Arrow file another task (or the driver) wrote to the shuffle directory."""
    return read_arrow(_shuffled(path))


def read_shuffled_bytes(path: Path) -> bytes:
    """The bytes of a file another task wrote to the shuffle directory."""
    return _shuffled(path).read_bytes()


def _shuffled(path: Path) -> Path:
    if not path.exists():
        raise CheckFailed(f"{path} is not there: this worker does not see the driver's shuffle directory "
                          "(on a cluster, set ANCHORLAKE_SCRATCH to a volume every node mounts)")
    return path


def read_arrow(path: Path) -> Any:
    import pyarrow as pa

    with pa.memory_map(str(path)) as source:
        return pa.ipc.open_file(source).read_all()


def write_arrow(path: Path, table: Any, compression: str | None = None) -> None:
    """Write an Arrow shuffle file whole or not at all (see _whole)."""
    import pyarrow as pa

    options = pa.ipc.IpcWriteOptions(compression=compression)
    with _whole(path) as temporary, pa.ipc.new_file(str(temporary), table.schema, options=options) as writer:
        writer.write_table(table)


def write_shuffled_bytes(path: Path, data: bytes) -> None:
    """Write a shuffle file of `data` whole or not at all (see _whole)."""
    with _whole(path) as temporary:
        temporary.write_bytes(data)


@contextmanager
def _whole(path: Path) -> Iterator[Path]:
    """Where to write what then becomes `path` at once: a retried task's first attempt, still
    writing, never leaves a torn file under the name a reader opens."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    yield temporary
    os.replace(temporary, path)


# --- the history index ------------------------------------------------------------------------


@dataclass(frozen=True)
class IndexSlice:
    """One committed index file: keys of slice `slice` of `slices` of an earlier batch, at `key`
    in the lake, pinned by that batch's manifest to `sha256`."""

    key: str
    sha256: str
    slice: int
    slices: int


@dataclass(frozen=True)
class History:
    """What a batch commits on top of: the earlier batches' index files, how many keys they hold,
    and their manifests' SHA-256s in seq order (the leaves of the history tree, SPEC §13.9)."""

    index: tuple[IndexSlice, ...]
    keys: int
    manifests: tuple[str, ...]


def history(lake: Lake, dataset: str, seq: int) -> History:
    """The history of batches 0..seq-1, its manifests linked back from batch seq - 1 (whose seal
    the commit checks; lake.batch.linked_manifests): a manifest rewritten in the lake is refused,
    never taken as history, so no index entry can be dropped or renamed to let a duplicate
    through, and the history root covers the manifests that were committed. Raises CheckFailed."""
    earlier = linked_manifests(lake, dataset, seq - 1) if seq else []
    index = [entry for m in earlier for entry in _index_files(BatchFiles(lake, dataset, m.seq), m.data.get("artifacts"))]
    return History(tuple(index), sum(int(m.data["counts"]["accepted"]) for m in earlier),
                   tuple(m.sha256 for m in earlier))


def _index_files(files: BatchFiles, artifacts: Any) -> list[IndexSlice]:
    """A batch's index files: `index.parquet`, or slices 0..S-1 of one power of two S."""
    where = files.uri(layout.MANIFEST)
    if not isinstance(artifacts, list):
        raise CheckFailed(f"{where}: artifacts is not a list")
    found = []
    for entry in artifacts:
        path, digest = (entry.get("path"), entry.get("sha256")) if isinstance(entry, dict) else (None, None)
        if not isinstance(path, str):
            raise CheckFailed(f"{where}: an artifacts entry names no path")
        sliced = layout.index_slice_of(layout.plain_name(path))
        if sliced is None:
            continue
        if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise CheckFailed(f"{where}: index file {path} is pinned by no SHA-256")
        found.append(IndexSlice(files.key(path), digest, *sliced))
    counts = {entry.slices for entry in found}
    slices = counts.pop() if len(counts) == 1 else 0
    if slices & (slices - 1) or sorted(entry.slice for entry in found) != list(range(slices)) or not found:
        raise CheckFailed(f"{where}: its index files are not one whole set of key slices: "
                          f"{sorted((entry.slice, entry.slices) for entry in found)}")
    return found


def overlapping(history: tuple[IndexSlice, ...], slice_: int, slices: int) -> tuple[IndexSlice, ...]:
    """The history files that hold keys of slice `slice_` of `slices`: all a dedupe task reads."""
    return tuple(entry for entry in history if overlaps(slice_, slices, entry.slice, entry.slices))


def prior_keys(lake: Lake, files: tuple[IndexSlice, ...], slice_: int, slices: int) -> tuple[Any, Any]:
    """(keys sorted, record ids in the same order) of every earlier row whose key falls in slice
    `slice_` of `slices`: numpy arrays of S32 and S64. Each file is checked against its SHA-256.
    A key committed twice can only be in the earliest batch (later copies were duplicates)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    keys, ids = [np.array([], "S32")], [np.array([], "S64")]
    for entry in overlapping(files, slice_, slices):
        table = read_parquet(read_pinned(lake, entry.key, entry.sha256), ["dedupe_key", "record_id"])
        if entry.slices < slices:  # a coarser slice: keep only this slice's keys
            table = table.filter(pa.array(key_slices(table.column("dedupe_key"), slices) == slice_))
        column = table.column("dedupe_key").combine_chunks()
        keys.append(np.frombuffer(column.buffers()[1], "S32", count=len(column), offset=32 * column.offset)
                    if len(column) else np.array([], "S32"))
        ids.append(pc.cast(table.column("record_id"), pa.binary()).to_numpy(zero_copy_only=False).astype("S64"))
    all_keys, all_ids = np.concatenate(keys), np.concatenate(ids)
    order = np.argsort(all_keys, kind="stable")
    return all_keys[order], all_ids[order]


# --- task 1: dedupe a key slice ---------------------------------------------------------------


@dataclass(frozen=True)
class DedupeJob:
    shuffle: str  # the shuffle directory
    dataset: Dataset
    lake: Lake
    history: tuple[IndexSlice, ...]  # the earlier index files that overlap this slice
    slice: int
    slices: int
    partitions: int  # contributor partitions the accepted rows go to
    chunks: tuple[int, ...]  # the chunks that spilled rows into this slice, in order
    rows: int  # how many rows they spilled


@dataclass
class DedupeResult:
    rows: list[int]  # accepted rows per contributor partition
    duplicates_per_source: Counter[int] = field(default_factory=Counter)
    duplicates_per_contributor: Counter[str] = field(default_factory=Counter)
    weights: Counter[str] = field(default_factory=Counter)  # accepted weight per contributor


def slice_file(shuffle: str | Path, slice_: int, chunk: int) -> Path:
    """The rows of chunk `chunk` whose key is in slice `slice_`, as the chunk task spilled them."""
    return Path(shuffle) / f"slice-{slice_:05d}-{chunk:06d}.arrow"


def partition_file(shuffle: str | Path, partition: int, slice_: int) -> Path:
    return Path(shuffle) / f"partition-{partition:05d}-{slice_:05d}.arrow"


def index_file(shuffle: str | Path, slice_: int) -> Path:
    return Path(shuffle) / f"index-{slice_:05d}.parquet"


def duplicates_file(shuffle: str | Path, slice_: int) -> Path:
    return Path(shuffle) / f"duplicates-{slice_:05d}.arrow"


def dedupe_slice(job: DedupeJob) -> DedupeResult:
    """Dedupe the rows of one key slice against each other and against the earlier batches'
    slice; write the accepted ones by contributor partition, the index slice and the duplicates.
    Requires the chunks' slice files written."""
    config.fault_point("partition.dedupe")
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = _spilled(job)
    column = table.column(KEY).combine_chunks()
    keys = np.frombuffer(column.buffers()[1], "S32", count=len(column), offset=32 * column.offset) if len(column) \
        else np.zeros(0, "S32")
    order = np.argsort(keys, kind="stable")  # by key, then arrival: the rows come in arrival order
    first, prior_of = _first_rows(job, keys[order])
    accepted = first & (prior_of == "")
    result = DedupeResult([0] * job.partitions)

    kept_rows = np.zeros(len(keys), bool)
    kept_rows[order[accepted]] = True
    kept = table.select([*(c.name for c in job.dataset.committed_columns), ARRIVAL, LEAF, KEY]).filter(
        pa.array(kept_rows))
    owners = address_partitions(kept.column("contributor"), job.partitions)
    for p, rows in enumerate(split_by(kept, owners, job.partitions)):
        if rows.num_rows:
            write_arrow(partition_file(job.shuffle, p, job.slice), rows)
            result.rows[p] = rows.num_rows
    index = table.select([LEAF, KEY, "contributor"]).take(pa.array(order[accepted]))  # by key
    pq.write_table(pa.table({"record_id": hex_of(index.column(LEAF)), "dedupe_key": index.column(KEY),
                             "contributor": index.column("contributor")}, schema=index_schema()),
                   index_file(job.shuffle, job.slice), compression="zstd")
    result.weights.update(dict(zip(*_weights(job.dataset, kept), strict=True)))
    if not accepted.all():
        dups = _write_duplicates(job, table, order, first, prior_of, ~accepted)
        result.duplicates_per_source.update(dups.column("source").to_pylist())
        result.duplicates_per_contributor.update(dups.column("contributor").to_pylist())
    return result


def _spilled(job: DedupeJob) -> Any:
    """The slice's rows in arrival order, as many as the chunk tasks spilled; CheckFailed, saying
    why, otherwise."""
    import pyarrow as pa

    if not job.chunks:
        return shuffle_schema(job.dataset.committed_columns).empty_table()
    table = pa.concat_tables([read_shuffled(slice_file(job.shuffle, job.slice, n)) for n in job.chunks])
    if table.num_rows != job.rows:
        raise CheckFailed(f"key slice {job.slice} holds {table.num_rows} rows, the chunk tasks spilled {job.rows}")
    return table


def _first_rows(job: DedupeJob, keys: Any) -> tuple[Any, Any]:
    """For keys in order: whether each is the first of its key in the batch, and the record id of
    the earlier batch's row with its key ("" for none). numpy arrays."""
    import numpy as np

    if len(keys) == 0:
        return np.zeros(0, bool), np.zeros(0, "U64")
    first = np.ones(len(keys), bool)
    first[1:] = keys[1:] != keys[:-1]
    prior, prior_ids = prior_keys(job.lake, job.history, job.slice, job.slices)
    if len(prior) == 0:
        return first, np.zeros(len(keys), "U64")
    at = np.minimum(np.searchsorted(prior, keys), len(prior) - 1)
    return first, np.where(prior[at] == keys, prior_ids[at].astype("U64"), "")


def _write_duplicates(job: DedupeJob, table: Any, order: Any, first: Any, prior_of: Any, duplicate: Any) -> Any:
    """Write the duplicates of a slice (`table` in arrival order; `order` sorts it by key, and the
    other arrays follow that order) with what their quarantine rows say: a row whose key an
    earlier batch committed names that batch's record, any other the first row of its key here."""
    import numpy as np
    import pyarrow as pa

    group_first = np.maximum.accumulate(np.where(first, np.arange(len(first)), 0))
    leaves = table.column(LEAF).take(pa.array(order[group_first[duplicate]]))
    earlier = (prior_of != "")[duplicate]
    of = np.where(earlier, prior_of[duplicate], hex_of(leaves).to_numpy(zero_copy_only=False)).tolist()
    key_columns = "+".join(job.dataset.dedupe_key)
    detail = [f"same {key_columns} as record {o}" + (" of an earlier batch" if e else "")
              for o, e in zip(of, earlier.tolist(), strict=True)]
    picked = order[duplicate]  # positions in `table`, in key order: a few, so filtered out first (a take of
    mask = np.zeros(table.num_rows, bool)  # a few rows from the chunks of a concatenated table copies it all)
    mask[picked] = True
    few = table.select([SOURCE, LINE, "contributor", RAW, ARRIVAL]).filter(pa.array(mask))
    dups = few.take(pa.array(np.searchsorted(np.sort(picked), picked)))
    dups = pa.table({"source": dups.column(SOURCE), "line": dups.column(LINE), "contributor": dups.column("contributor"),
                     "detail": pa.array(detail, pa.string()), "duplicate_of": pa.array(of, pa.string()),
                     "raw": dups.column(RAW), ARRIVAL: dups.column(ARRIVAL)})
    write_arrow(duplicates_file(job.shuffle, job.slice), dups)
    return dups


def _weights(dataset: Dataset, rows: Any) -> tuple[list[str], list[int]]:
    """(contributors, weight of each's rows) as the pipeline measures it, never a value the
    contributor wrote: one per row, or the characters of the text columns (SPEC §7)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    if dataset.rewards.weight == "rows":
        weight = pa.array(np.ones(rows.num_rows, np.int64))
    else:
        weight = pa.array([0] * rows.num_rows, pa.int64())
        for column in dataset.columns:
            if column.type == "string":
                weight = pc.add(weight, pc.fill_null(pc.utf8_length(rows.column(column.name)), 0))
    grouped = pa.table({"who": rows.column("contributor"), "weight": weight}).group_by(
        ["who"], use_threads=False).aggregate([("weight", "sum")])
    return grouped.column("who").to_pylist(), grouped.column("weight_sum").to_pylist()


# --- task 2: write a contributor partition ----------------------------------------------------


@dataclass(frozen=True)
class PartitionJob:
    shuffle: str
    columns: tuple[Column, ...]  # the committed columns
    partition: int
    slices: tuple[int, ...]  # the key slices that sent this partition rows
    first_part: int  # the number of its first data part
    first_leaf: int  # the tree position of its first row
    rows: int  # how many rows the slices reported
    part_rows: int  # rows per data part


@dataclass
class PartitionResult:
    parts: list[tuple[int, str, int]]  # (part number, file in the shuffle directory, rows)
    head: list[bytes]
    tiles: str  # the file of the whole tiles inside its range, in the shuffle directory ("" for no rows)
    roots: list[bytes]
    tail: list[bytes]


def write_partition(job: PartitionJob) -> PartitionResult:
    """Sort one contributor partition into leaf order and write its data parts and whole tiles.
    Requires the rows the dedupe tasks reported for it."""
    config.fault_point("partition.write")
    import pyarrow as pa
    import pyarrow.parquet as pq

    names = [c.name for c in job.columns]
    if not job.slices and not job.rows:
        return PartitionResult([], [], "", [], [])
    table = pa.concat_tables([read_shuffled(partition_file(job.shuffle, job.partition, s)) for s in job.slices])
    if table.num_rows != job.rows:
        raise CheckFailed(f"contributor partition {job.partition}: {table.num_rows} rows in the shuffle, "
                          f"{job.rows} reported by the dedupe tasks")
    table = table.take(leaf_order(table))
    parts = []
    for n, start in enumerate(range(0, table.num_rows, job.part_rows)):
        part = table.slice(start, job.part_rows)
        name = f"part-{job.first_part + n:05d}.parquet"
        pq.write_table(part.select(names), Path(job.shuffle) / name, compression="zstd")
        parts.append((job.first_part + n, name, part.num_rows))
    column = table.column(LEAF).combine_chunks() if table.num_rows else None
    data = b"" if column is None else column.buffers()[1].to_pybytes()[32 * column.offset:32 * (column.offset + len(column))]
    leaves = [data[i:i + 32] for i in range(0, len(data), 32)]
    head, blob, roots, tail = treefile.full_tiles(leaves, job.first_leaf)
    tiles = f"tiles-{job.partition:05d}.bin"
    (Path(job.shuffle) / tiles).write_bytes(blob)
    return PartitionResult(parts, head, tiles, roots, tail)
