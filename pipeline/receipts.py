"""Receipts (SPEC §7) for every contributor of a batch, from its data parts and its stored tree
(`tree.bin`): no second tree is built. Everything read is checked against the manifest first.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pipeline.core import receipt as receipts
from pipeline.core.leaf import record_object
from pipeline.core.rewards import RewardsTree
from pipeline.datasets import Dataset
from pipeline.errors import CheckFailed, NotFound
from pipeline.lake.batch import BatchFiles


def batch_records(files: BatchFiles, dataset: Dataset) -> list[dict[str, Any]]:
    """Every committed row of the batch as its JSON record, in leaf order (parts checked)."""
    columns = dataset.committed_columns
    return [record_object(columns, row) for table in files.parts() for row in table.to_pylist()]


def _rewards(files: BatchFiles, contributors: Iterable[str], rewards_contract: str | None) -> dict[str, dict[str, Any]]:
    """The reward part of each of `contributors`' receipts: batch amount, cumulative amount and its
    proof, and the cumulative amount of the latest earlier batch that published rewards with its
    proof (`previous`, null for a contributor first rewarded now), so a verifier checks the batch
    amount against two roots."""
    if not files.pays():  # nothing published for this batch: its receipts carry no reward part
        return {}
    tree = files.rewards_tree()
    before = _published_before(files)
    earlier = before.rewards_tree() if before is not None else None
    amounts = {row["contributor"]: row["amount"] for row in files.rewards_rows()}
    unit = files.manifest().rewards["unit"]
    root = "0x" + tree.root.hex()
    return {address: {"unit": unit, "amount": amounts.get(address, "0"), **_cumulative(tree, address),
                      "root": root, "contract": rewards_contract,
                      "previous": None if before is None else _previous(earlier, address, before.seq)}
            for address in contributors if tree.position(address) is not None}


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
    """Write every contributor's receipt for the batch, then the receipts index; their number.

    Checks the parts and tree.bin against the manifest, and that the tree holds one leaf per row
    and folds to the manifest's root."""
    manifest = files.manifest()
    records = batch_records(files, dataset)
    tree = files.tree()
    if (tree.tree_size, tree.root().hex()) != (len(records), manifest.root) or tree.tree_size != manifest.tree_size:
        raise CheckFailed(f"batch {manifest.seq}: {tree.source} holds {tree.tree_size} leaves with root {tree.root().hex()}, "
                          f"the parts {len(records)} rows, the manifest says {manifest.root} over {manifest.tree_size}")
    by_contributor: dict[str, list[int]] = {}
    for i, record in enumerate(records):
        by_contributor.setdefault(record["contributor"], []).append(i)
    publication = files.rewards_publication()
    rewards = _rewards(files, by_contributor, publication["contract"] if publication else None)
    anchor = files.anchor()
    prove = tree.prover()
    count = files.write_receipts(
        receipts.build(manifest, contributor, [(i, records[i], prove(i)) for i in indices], anchor,
                       rewards.get(contributor))
        for contributor, indices in sorted(by_contributor.items()))
    files.record_receipts(count, None if anchor is None else anchor["block_hash"])
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
