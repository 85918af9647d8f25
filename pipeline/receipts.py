"""Receipts (SPEC §13.4) for every contributor of a batch, in one pass over its data parts (in
leaf order, so each contributor's rows are one range: SPEC §13.2) and its stored tree
(`tree.bin`), one worker per core: no second tree is built. Everything read is checked against
the manifest first.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from pipeline import config
from pipeline.core import receipt as receipts
from pipeline.core.jcs import canonical_bytes
from pipeline.core.leaf import record_object
from pipeline.core.merkle import range_proof
from pipeline.core.rewards import RewardsTree
from pipeline.datasets import Column, Dataset
from pipeline.errors import CheckFailed, NotFound
from pipeline.lake.batch import BatchFiles, read_parquet
from pipeline.lake.columnar import record_texts, text_slices, timestamp_texts
from pipeline.lake.workers import fork_pool

log = logging.getLogger(__name__)


def batch_records(files: BatchFiles, dataset: Dataset) -> list[dict[str, Any]]:
    """Every committed row of the batch as its JSON record, in leaf order (parts checked)."""
    columns = dataset.committed_columns
    return [record_object(columns, row) for table in files.parts() for row in table.to_pylist()]


def json_records(table: Any, columns: tuple[Column, ...]) -> list[dict[str, Any]]:
    """The rows of a data part as their JSON records (what record_object gives, column-wise)."""
    return _committed_text(table, columns).to_pylist()


def _committed_text(table: Any, columns: tuple[Column, ...]) -> Any:
    """The committed columns of a data part, timestamps as their committed text."""
    for c in columns:
        if c.type == "timestamp":
            at = table.schema.get_field_index(c.name)
            table = table.set_column(at, c.name, timestamp_texts(table.column(c.name).combine_chunks()))
    return table.select([c.name for c in columns])


def row_json(table: Any, columns: tuple[Column, ...]) -> tuple[bytes | memoryview, Any]:
    """The rows of a data part as receipt rows, `{"record":{...}}` (the record as its leaf writes
    it), each followed by a comma, written column-wise where the columns allow; and where each row
    starts (numpy, one more than the rows: the end)."""
    import numpy as np
    import pyarrow as pa

    texts: list[bytes | memoryview] = []
    starts, at = [np.zeros(1, np.int64)], 0
    for piece in text_slices(table):
        rows = record_texts(piece, columns, '{"record":', "},")
        if rows is None:  # floats or lists: the row-by-row rule
            lines = [b'{"record":' + canonical_bytes(record_object(columns, row)) + b"}," for row in piece.to_pylist()]
            texts.append(b"".join(lines))
            ends = np.cumsum([len(line) for line in lines], dtype=np.int64)
        else:
            rows = rows.combine_chunks() if isinstance(rows, pa.ChunkedArray) else rows
            offsets = np.frombuffer(rows.buffers()[1], np.int32, len(rows) + 1, rows.offset * 4).astype(np.int64)
            texts.append(memoryview(rows.buffers()[2]).cast("B")[offsets[0]:offsets[-1]])  # not copied
            ends = offsets[1:] - offsets[0]
        starts.append(ends + at)
        at += len(texts[-1])
    return texts[0] if len(texts) == 1 else b"".join(texts), np.concatenate(starts)


# --- one contributor's rows: a range of the batch ----------------------------------------------


@dataclass(frozen=True)
class Parts:
    """A batch's data parts (Parquet bytes, checked against the manifest) in leaf order, with the
    row count the manifest gives each."""

    name: str  # "<dataset> batch <seq>", for messages
    data: tuple[bytes, ...]
    rows: tuple[int, ...]

    @classmethod
    def read(cls, files: BatchFiles) -> Parts:
        entries, name = files.manifest().data["files"], f"{files.dataset} batch {files.seq}"
        if not all(isinstance(e, dict) and isinstance(e.get("path"), str) and type(e.get("rows")) is int
                   and e["rows"] >= 0 for e in entries):
            raise CheckFailed(f"{name}: the manifest does not give every data part's path and rows")
        rows = tuple(int(e["rows"]) for e in entries)
        return cls(name, tuple(files.read(e["path"]) for e in entries), rows)

    def table(self, index: int) -> Any:
        table = read_parquet(self.data[index])
        if table.num_rows != self.rows[index]:
            raise CheckFailed(f"{self.name}: data part {index} holds {table.num_rows} rows, the manifest says "
                              f"{self.rows[index]!r}")
        return table

    def last_contributor(self, before: int) -> str | None:
        """The contributor of the last row before part `before` (None: there is none)."""
        for index in range(before - 1, -1, -1):
            who = read_parquet(self.data[index], ["contributor"]).column("contributor")
            if len(who):
                return str(who[-1].as_py())
        return None

    def groups(self, count: int) -> list[tuple[int, int]]:
        """The parts cut into at most `count` runs [first, end) of about equal rows."""
        total, bounds, at = sum(self.rows), [0], 0
        for index, rows in enumerate(self.rows[:-1]):
            at += rows
            if at * count >= total * len(bounds) and len(bounds) < count:
                bounds.append(index + 1)
        return list(zip(bounds, [*bounds[1:], len(self.rows)], strict=True))


def _runs(table: Any) -> list[tuple[str, int, int]]:
    """(contributor, first row, end row) of each run of rows of one contributor in a data part."""
    import numpy as np
    import pyarrow.compute as pc

    if table.num_rows == 0:
        return []
    who = table.column("contributor").combine_chunks()
    changes = (np.flatnonzero(pc.not_equal(who[1:], who[:-1]).to_numpy(zero_copy_only=False)) + 1).tolist()
    firsts, ends = [0, *changes], [*changes, table.num_rows]
    return list(zip(who.take(np.array(firsts, np.int64)).to_pylist(), firsts, ends, strict=True))


def contributor_ranges(parts: Parts, columns: tuple[Column, ...], first: int = 0,
                       end: int | None = None) -> Iterator[tuple[str, int, int, bytes]]:
    """(contributor, first leaf, end leaf, its rows' JSON) for each contributor whose range starts
    in parts [first, end) (all by default), in leaf order: a range running on past `end` is read to
    its end, the rows of one that started before `first` are left to whoever reads that part.
    Raises CheckFailed unless contributors ascend (SPEC §13.2)."""
    end = len(parts.rows) if end is None else end
    position = sum(parts.rows[:first])
    current = parts.last_contributor(first)  # before `first`: its rows at the start are not ours
    ours, start, held = False, position, list[bytes | memoryview]()  # ours: current's range began in [first, end)
    for index in range(first, len(parts.rows)):
        table = parts.table(index)
        runs = _runs(table)
        if not runs:
            continue
        if index >= end:  # reading on, past our parts: the rest of our last range, if it runs on
            if not ours:
                return
            address, _, b = runs[0]
            if address == current:
                held.append(row_json(table.slice(0, b), columns)[0][:-1])
            if address != current or b < table.num_rows:
                yield cast(str, current), start, position + b * (address == current), b",".join(held)
                return
            position += table.num_rows
            continue
        text, starts = row_json(table, columns)
        for address, a, b in runs:
            if address != current:
                if current is not None and address < current:
                    raise CheckFailed(f"{parts.name}: leaf {position + a} of {address} follows {current}: "
                                      "the rows are not ordered by contributor")
                if ours:
                    yield cast(str, current), start, position + a, b",".join(held)
                current, start, held, ours = address, position + a, [], True
            held.append(text[starts[a]:starts[b] - 1])  # those of a range begun before `first` are let go
        position += table.num_rows
    if ours:
        yield cast(str, current), start, position, b",".join(held)


def _reward_parts(files: BatchFiles, rewards_contract: str | None) -> Callable[[str], dict[str, Any] | None]:
    """The reward part of a contributor's receipt: batch amount, cumulative amount and its proof,
    and the cumulative amount of the latest earlier batch that published rewards with its proof
    (`previous`, null for a contributor first rewarded now), so a verifier checks the batch amount
    against two roots. None when the batch published nothing or the contributor is not in it."""
    if not files.pays():  # nothing published for this batch: its receipts carry no reward part
        return lambda _: None
    tree = files.rewards_tree()
    before = _published_before(files)
    earlier = before.rewards_tree() if before is not None else None
    amounts = {row["contributor"]: row["amount"] for row in files.rewards_rows()}
    unit = files.manifest().rewards["unit"]
    root = "0x" + tree.root.hex()

    def part(address: str) -> dict[str, Any] | None:
        if tree.position(address) is None:
            return None
        return {"unit": unit, "amount": amounts.get(address, "0"), **_cumulative(tree, address), "root": root,
                "contract": rewards_contract,
                "previous": None if before is None else _previous(earlier, address, before.seq)}

    return part


def _published_before(files: BatchFiles) -> BatchFiles | None:
    """The latest batch before this one that published rewards (had an accepted row), if any."""
    for seq in range(files.seq - 1, -1, -1):
        earlier = BatchFiles(files.lake, files.dataset, seq)
        if earlier.pays():
            return earlier
    return None


def _cumulative(tree: RewardsTree, address: str) -> dict[str, Any]:
    i = tree.position(address)
    assert i is not None
    return {"cumulative_amount": str(tree.values[i][1]), "proof": ["0x" + p.hex() for p in tree.proof(i)]}


def _previous(earlier: RewardsTree | None, address: str, seq: int) -> dict[str, Any] | None:
    if earlier is None or earlier.position(address) is None:
        return None
    return {"seq": seq, **_cumulative(earlier, address)}


# --- every receipt of a batch, written by one worker per core ------------------------------------
# The parent checks what every receipt rests on (tree.bin, the parts, the rewards trees) and
# prepares it before the fork; each worker writes the receipts of the contributors whose ranges
# start in its run of parts to a file of its own; the parent joins the files in leaf order into
# the batch's receipts file and shifts the offsets.


@dataclass(frozen=True)
class _Prepared:
    parts: Parts
    columns: tuple[Column, ...]
    tree_size: int
    receipt: Callable[[str, int, int], dict[str, Any]]  # contributor's receipt of leaves [start, end), no rows


RECEIPTS_FILE_BYTES = 128 << 20  # receipts' JSON one file holds, at most (or one receipt): readable whole
_PREPARED: list[_Prepared] = []  # what build_receipts prepared, inherited by its forked workers


@dataclass(frozen=True)
class _Written:
    path: str
    sha256: str
    contributors: list[str]
    lengths: list[int]
    start: int  # the first leaf of the first range written
    end: int  # the end of the last


class _Writing:
    """A receipts file being written: each receipt a gzip member, hashed as it is written."""

    def __init__(self, path: str, start: int) -> None:
        self.out = open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb")  # as the lake's own files
        self.path, self.start, self.end, self.digest = path, start, start, hashlib.sha256()
        self.contributors, self.lengths, self.unpacked = list[str](), list[int](), 0

    def add(self, contributor: str, end: int, text: bytes) -> None:
        line = receipts.packed(text)
        self.out.write(line)
        self.digest.update(line)
        self.contributors.append(contributor)
        self.lengths.append(len(line))
        self.unpacked += len(text)
        self.end = end

    def close(self) -> _Written:
        self.out.close()
        return _Written(self.path, self.digest.hexdigest(), self.contributors, self.lengths, self.start, self.end)


def _write(first: int, end: int, prefix: str) -> tuple[list[_Written], int | None]:
    """Write the receipts of the ranges starting in parts [first, end) to files `prefix`-N; a new
    file once one holds RECEIPTS_FILE_BYTES of JSON (so a verifier can read any file whole). A
    receipt over MAX_RECEIPT_BYTES is written, and said: its readers refuse it. Returns the files
    and the end of the last range met (past the tree when the parts hold more rows)."""
    job = _PREPARED[-1]
    written: list[_Written] = []
    current: _Writing | None = None
    last = None
    try:
        for contributor, a, b, rows in contributor_ranges(job.parts, job.columns, first, end):
            last = b
            if b > job.tree_size:
                break
            text = receipts.encode(job.receipt(contributor, a, b), rows)
            if len(text) > receipts.MAX_RECEIPT_BYTES:
                log.warning("the receipt of %s, leaves [%d, %d), is %d bytes: over the %d its readers take",
                            contributor, a, b, len(text), receipts.MAX_RECEIPT_BYTES)
            if current is not None and current.unpacked + len(text) > RECEIPTS_FILE_BYTES:
                written.append(current.close())
                current = None
            current = current or _Writing(f"{prefix}-{len(written)}.jsonl.gz", a)
            current.add(contributor, b, text)
    finally:
        if current is not None:
            written.append(current.close())
    return written, last


def build_receipts(files: BatchFiles, dataset: Dataset) -> int:
    """Write every contributor's receipt for the batch (in bulk: one file per worker), then the
    receipts index; their number. Checks the parts and tree.bin against the manifest, and that
    the tree holds one leaf per row and folds to the manifest's root."""
    manifest = files.manifest()
    tree = files.tree()
    if (tree.tree_size, tree.root().hex()) != (manifest.tree_size, manifest.root):
        raise CheckFailed(f"batch {manifest.seq}: {tree.source} holds {tree.tree_size} leaves with root "
                          f"{tree.root().hex()}, the manifest says {manifest.root} over {manifest.tree_size}")
    publication = files.rewards_publication()
    reward = _reward_parts(files, publication["contract"] if publication else None)
    anchor = files.anchor()
    node = tree.node_reader()

    def receipt(contributor: str, start: int, end: int) -> dict[str, Any]:
        proof = range_proof(tree.tree_size, start, end, node)
        return receipts.build(manifest, contributor, start, end, proof, anchor, reward(contributor))

    parts = Parts.read(files)
    groups = parts.groups(config.cores())
    _PREPARED.append(_Prepared(parts, dataset.committed_columns, tree.tree_size, receipt))
    pool = fork_pool(len(groups), tree.tree_size)
    write = files.receipts_writer()
    try:
        with tempfile.TemporaryDirectory(prefix="anchorlake-receipts-", dir=config.scratch_dir()) as tmp:
            jobs = [(first, end, f"{tmp}/{first}") for first, end in groups]
            pending = [pool.submit(_write, *job) for job in jobs] if pool else None
            done, end = list[_Written](), 0
            for i, job in enumerate(jobs):
                files_written, last = pending[i].result() if pending else _write(*job)
                for written in files_written:
                    if written.start != end:
                        raise CheckFailed(f"batch {manifest.seq}: no receipt covers leaf {end}")
                    done.append(written)
                    end = written.end
                end = end if last is None else last
                if end > tree.tree_size:
                    break
            if end != tree.tree_size:
                raise CheckFailed(f"batch {manifest.seq}: the parts hold {'at least ' * (end > tree.tree_size)}"
                                  f"{end} rows, {tree.source} {tree.tree_size} leaves")
            for written in done:  # every leaf covered once: only now does anything reach the lake
                write.add(Path(written.path), written.sha256, written.contributors, written.lengths)
    finally:
        _PREPARED.pop()
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    files.record_receipts(write, None if anchor is None else anchor["block_hash"])
    return write.count


def serve_proof(files: BatchFiles, index: int) -> dict[str, Any]:
    """One leaf's inclusion proof, read from the stored tree with two ranged reads.

    Requires 0 <= index < tree_size. The caller checks the result against the anchored root.
    """
    stored = files.tree_ranges()
    if not 0 <= index < stored.tree_size:
        raise NotFound(f"{files.dataset} batch {files.seq} has {stored.tree_size} leaves; there is no leaf {index}")
    return {"leaf_index": index, "tree_size": stored.tree_size, "leaf": stored.leaf(index).hex(),
            "path": [p.hex() for p in stored.proof(index)]}


def serve_range_proof(files: BatchFiles, start: int, end: int) -> dict[str, Any]:
    """The range proof of leaves [start, end) (SPEC §13.3), from the stored tree. The caller
    checks the result against the anchored root."""
    tree = files.tree()
    if not 0 <= start < end <= tree.tree_size:
        raise NotFound(f"{files.dataset} batch {files.seq} has {tree.tree_size} leaves; [{start}, {end}) is not a "
                       "non-empty range of them")
    return {"range": {"start": start, "end": end}, "tree_size": tree.tree_size,
            "proof": [p.hex() for p in range_proof(tree.tree_size, start, end, tree.node_reader())]}
