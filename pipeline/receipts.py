"""Receipts (SPEC §13.4) for every contributor of a batch, in one streaming pass over its data
parts (in leaf order, so each contributor's rows are one range: SPEC §13.2) and its stored tree
(`tree.bin`): no second tree is built. Everything read is checked against the manifest first.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from typing import Any

from pipeline.core import receipt as receipts
from pipeline.core.leaf import record_object
from pipeline.core.merkle import range_proof
from pipeline.core.rewards import RewardsTree
from pipeline.datasets import Column, Dataset
from pipeline.errors import CheckFailed, NotFound
from pipeline.lake.batch import BatchFiles
from pipeline.lake.columnar import timestamp_texts


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


def row_lines(table: Any, columns: tuple[Column, ...]) -> list[bytes]:
    """Each row of a data part as its receipt row, `{"record":{...}}` (JSON, exactly the values
    record_object gives), written column-wise by polars' JSON Lines writer."""
    import polars as pl

    frame = pl.from_arrow(_committed_text(table, columns))
    assert isinstance(frame, pl.DataFrame)
    out = io.BytesIO()
    frame.select(pl.struct(pl.all()).alias("record")).write_ndjson(out)
    return out.getvalue().split(b"\n")[:-1]  # a JSON string never holds a raw newline


def contributor_ranges(files: BatchFiles, dataset: Dataset) -> Iterator[tuple[str, int, int, bytes]]:
    """(contributor, first leaf, end leaf, its rows' JSON) for each contributor's range of the
    batch, in leaf order, reading one part at a time. Raises CheckFailed unless contributors
    ascend (SPEC §13.2)."""
    import numpy as np
    import pyarrow.compute as pc

    current, start, held = None, 0, list[bytes]()
    position = 0
    for table in files.parts():
        if table.num_rows == 0:
            continue
        lines = row_lines(table, dataset.committed_columns)
        who = table.column("contributor").combine_chunks()
        changes = np.flatnonzero(pc.not_equal(who[1:], who[:-1]).to_numpy(zero_copy_only=False)) + 1
        for a, b in zip([0, *changes.tolist()], [*changes.tolist(), table.num_rows], strict=True):
            address = who[a].as_py()
            if address != current:
                if current is not None:
                    if address < current:
                        raise CheckFailed(f"{files.dataset} batch {files.seq}: leaf {position + a} of {address} "
                                          f"follows {current}: the rows are not ordered by contributor")
                    yield current, start, position + a, b",".join(held)
                current, start, held = address, position + a, []
            held.append(b",".join(lines[a:b]))
        position += table.num_rows
    if current is not None:
        yield current, start, position, b",".join(held)


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


def build_receipts(files: BatchFiles, dataset: Dataset) -> int:
    """Write every contributor's receipt for the batch (in bulk), then the receipts index; their
    number. Checks the parts and tree.bin against the manifest, and that the tree holds one leaf
    per row and folds to the manifest's root."""
    manifest = files.manifest()
    tree = files.tree()
    if (tree.tree_size, tree.root().hex()) != (manifest.tree_size, manifest.root):
        raise CheckFailed(f"batch {manifest.seq}: {tree.source} holds {tree.tree_size} leaves with root "
                          f"{tree.root().hex()}, the manifest says {manifest.root} over {manifest.tree_size}")
    publication = files.rewards_publication()
    reward = _reward_parts(files, publication["contract"] if publication else None)
    anchor = files.anchor()
    node = tree.node_reader() if tree.tree_size else None
    end = 0
    with files.receipts_writer() as write:
        for contributor, start, end, rows in contributor_ranges(files, dataset):
            if node is None or end > tree.tree_size:
                break
            proof = range_proof(tree.tree_size, start, end, node)
            write(contributor, receipts.encode(
                receipts.build(manifest, contributor, start, end, proof, anchor, reward(contributor)), rows))
        if end != tree.tree_size:
            raise CheckFailed(f"batch {manifest.seq}: the parts hold {'at least ' * (end > tree.tree_size)}{end} "
                              f"rows, {tree.source} {tree.tree_size} leaves")
        count = write.count
    files.record_receipts(count, write.name, None if anchor is None else anchor["block_hash"])
    return count


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
