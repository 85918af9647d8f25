"""Receipts (SPEC §7): one contributor's inclusion proofs and reward proof for one batch.

`verify` needs nothing but the receipt and the root it should fold to; the chain (or `--root`)
supplies that root. A receipt's `record` is the JSON object whose JCS bytes are the leaf.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pipeline import layout
from pipeline.datasets import Dataset
from pipeline.errors import CheckFailed, FormatError, NotFound
from pipeline.jcs import canonical_bytes
from pipeline.manifest import Manifest
from pipeline.merkle import (
    EMPTY_ROOT,
    InclusionProof,
    ProofError,
    build_levels,
    inclusion_path,
    leaf_hash,
    root_from_inclusion,
)
from pipeline.rewards import RewardsTree, verify_reward
from pipeline.rows import record_object
from pipeline.treefile import TreeFile

if TYPE_CHECKING:
    from pipeline.storage import Lake

FORMAT = "anchorlake.receipt/1"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_ADDRESS = re.compile(r"^0x[0-9a-f]{40}$")


def batch_records(lake: Lake, dataset: Dataset, manifest: Manifest) -> list[dict[str, Any]]:
    """Every committed row of the batch as its JSON record, in leaf order.

    Checks each data file against the SHA-256 the manifest pins.
    """
    import pyarrow.parquet as pq

    records: list[dict[str, Any]] = []
    columns = dataset.committed_columns
    for entry in manifest.data["files"]:
        key = layout.batch(dataset.name, manifest.seq) + entry["path"]
        data = lake.read(key)
        if hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise CheckFailed(f"{lake.uri(key)}: SHA-256 differs from the manifest's {entry['sha256']}")
        for row in pq.read_table(io.BytesIO(data)).to_pylist():
            records.append(record_object(columns, row))
    return records


def _pinned(lake: Lake, dataset: str, manifest: Manifest, relative: str) -> bytes:
    """Read a batch artifact and check it against the SHA-256 the manifest pins."""
    key = layout.batch(dataset, manifest.seq) + relative
    data = lake.read(key)
    for entry in manifest.data.get("artifacts", []):
        if entry["path"] == relative:
            if hashlib.sha256(data).hexdigest() != entry["sha256"]:
                raise CheckFailed(f"{lake.uri(key)}: SHA-256 differs from the manifest's {entry['sha256']}")
            return data
    raise CheckFailed(f"{lake.uri(key)} is not pinned by the manifest of batch {manifest.seq}")


def batch_leaves(lake: Lake, dataset: str, manifest: Manifest) -> list[bytes]:
    """The batch's leaf hashes in leaf order, from its pinned index (no re-hashing of rows)."""
    import pyarrow.parquet as pq

    table = pq.read_table(io.BytesIO(_pinned(lake, dataset, manifest, "index.parquet")), columns=["record_id"])
    return [bytes.fromhex(h) for h in table.column("record_id").to_pylist()]


def build_receipts(lake: Lake, dataset: Dataset, manifest: Manifest, anchor: dict[str, Any] | None,
                   rewards_contract: str | None = None) -> int:
    """Write `receipts/<dataset>/<seq>/<contributor>.json` for every contributor of the batch.

    Checks the data files and the index against the manifest, and the leaves against its root.
    """
    records = batch_records(lake, dataset, manifest)
    leaves = batch_leaves(lake, dataset.name, manifest)
    levels = build_levels(leaves)
    root = (levels[-1][0] if leaves else EMPTY_ROOT).hex()
    if root != manifest.root or len(records) != len(leaves):
        raise CheckFailed(f"batch {manifest.seq}: index recomputes to root {root} over {len(leaves)} leaves, "
                          f"manifest says {manifest.root} over {manifest.tree_size}")
    by_contributor: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        by_contributor.setdefault(r["contributor"], []).append(i)
    tree_key = layout.rewards_tree(dataset.name, manifest.seq)
    tree = RewardsTree.load(json.loads(lake.read(tree_key)), lake.uri(tree_key))
    positions = {address: i for i, (address, _) in enumerate(tree.values)}
    amounts = _batch_amounts(lake, dataset.name, manifest.seq)
    rewards = manifest.data["rewards"]
    for contributor, indices in sorted(by_contributor.items()):
        reward = None
        if contributor in positions:
            i = positions[contributor]
            reward = {
                "unit": rewards["unit"],
                "amount": amounts.get(contributor, "0"),
                "cumulative_amount": str(tree.values[i][1]),
                "proof": ["0x" + p.hex() for p in tree.proof(i)],
                "root": "0x" + tree.root.hex(),
                "contract": rewards_contract,
            }
        receipt = {
            "format": FORMAT,
            "dataset": dataset.name,
            "seq": manifest.seq,
            "contributor": contributor,
            "root": manifest.root,
            "tree_size": manifest.tree_size,
            "manifest_sha256": manifest.sha256,
            "anchor": None if anchor is None else {k: anchor[k] for k in ("chain_id", "contract", "dataset_id", "tx_hash", "block_number")},
            "rows": [{"leaf_index": i, "record": records[i], "path": [p.hex() for p in inclusion_path(levels, i)]}
                     for i in indices],
            "reward": reward,
        }
        lake.write(layout.receipt(dataset.name, manifest.seq, contributor), json.dumps(receipt, indent=1).encode())
    return len(by_contributor)


def _batch_amounts(lake: Lake, dataset: str, seq: int) -> dict[str, str]:
    import pyarrow.parquet as pq

    table = pq.read_table(io.BytesIO(lake.read(layout.rewards(dataset, seq))), columns=["contributor", "amount"])
    return dict(zip(table.column("contributor").to_pylist(), table.column("amount").to_pylist(), strict=False))


def serve_proof(lake: Lake, dataset: str, seq: int, index: int) -> dict[str, Any]:
    """One leaf's inclusion proof, read from the stored tree with two ranged reads.

    Requires 0 <= index < tree_size. The caller checks the result against the anchored root.
    """
    stored = TreeFile(lambda offset, length: lake.read_range(layout.tree(dataset, seq), offset, length),
                      lake.uri(layout.tree(dataset, seq)))
    if not 0 <= index < stored.tree_size:
        raise NotFound(f"{dataset} batch {seq} has {stored.tree_size} leaves; there is no leaf {index}")
    return {"leaf_index": index, "tree_size": stored.tree_size, "leaf": stored.leaf(index).hex(),
            "path": [p.hex() for p in stored.proof(index)]}


def read_receipt(lake: Lake, dataset: str, seq: int, contributor: str) -> dict[str, Any]:
    key = layout.receipt(dataset, seq, contributor.lower())
    try:
        return dict(json.loads(lake.read(key)))
    except NotFound:
        raise NotFound(f"no receipt for contributor {contributor.lower()} in {dataset} batch {seq}") from None


# --- verification -------------------------------------------------------------------------


@dataclass(frozen=True)
class Receipt:
    data: dict[str, Any]
    source: str

    @property
    def dataset(self) -> str:
        return str(self.data["dataset"])

    @property
    def seq(self) -> int:
        return int(self.data["seq"])


def parse_receipt(raw: bytes, source: str) -> Receipt:
    """Validate a receipt's shape; raise FormatError naming the field that is wrong."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise FormatError(source, "(file)", f"not JSON: {e}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise FormatError(source, "format", f"expected {FORMAT!r}")
    for key, kind in (("dataset", str), ("seq", int), ("contributor", str), ("root", str), ("tree_size", int),
                      ("manifest_sha256", str), ("rows", list)):
        if not isinstance(data.get(key), kind) or isinstance(data.get(key), bool):
            raise FormatError(source, key, f"missing or not a {kind.__name__}")
    if data["seq"] < 0 or data["tree_size"] < 0:
        raise FormatError(source, "seq/tree_size", "must be >= 0")
    for key in ("root", "manifest_sha256"):
        if not _HEX64.match(data[key]):
            raise FormatError(source, key, "must be 64 lowercase hex characters")
    if not _ADDRESS.match(data["contributor"]):
        raise FormatError(source, "contributor", "must be 0x and 40 lowercase hex digits")
    for n, row in enumerate(data["rows"]):
        where = f"rows[{n}]"
        if not isinstance(row, dict) or not isinstance(row.get("record"), dict):
            raise FormatError(source, f"{where}.record", "must be an object")
        index = row.get("leaf_index")
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < data["tree_size"]:
            raise FormatError(source, f"{where}.leaf_index", f"must be an integer in [0, {data['tree_size']})")
        path = row.get("path")
        if not isinstance(path, list) or not all(isinstance(p, str) and _HEX64.match(p) for p in path):
            raise FormatError(source, f"{where}.path", "must be a list of 64-hex-character hashes")
        expected = _path_length(index, data["tree_size"])
        if len(path) != expected:
            raise FormatError(source, f"{where}.path", f"has {len(path)} hashes, a proof in this tree has {expected}")
    reward = data.get("reward")
    if reward is not None:
        if not isinstance(reward, dict):
            raise FormatError(source, "reward", "must be an object or null")
        try:
            int(reward["cumulative_amount"])
            [bytes.fromhex(p[2:]) for p in reward["proof"]]
        except (KeyError, TypeError, ValueError):
            raise FormatError(source, "reward", "needs cumulative_amount and a proof of 0x hashes") from None
    anchor = data.get("anchor")
    if anchor is not None and (not isinstance(anchor, dict) or not isinstance(anchor.get("chain_id"), int)):
        raise FormatError(source, "anchor", "must be null or an object with chain_id")
    return Receipt(data, source)


def _path_length(index: int, size: int) -> int:
    """Length of the RFC 9162 inclusion path of leaf `index` in a tree of `size` leaves."""
    length, last = 0, size - 1
    while last > 0:
        if index ^ 1 <= last:
            length += 1
        index >>= 1
        last >>= 1
    return length


def verify_rows(receipt: Receipt) -> list[str]:
    """Check every row folds to the receipt's root and names its contributor. Failures as lines."""
    failures = []
    root = bytes.fromhex(receipt.data["root"])
    size = receipt.data["tree_size"]
    for n, row in enumerate(receipt.data["rows"]):
        record = row["record"]
        where = f"{receipt.source}: row {n} (leaf {row['leaf_index']})"
        if record.get("contributor") != receipt.data["contributor"]:
            failures.append(f"{where}: record names contributor {record.get('contributor')!r}, "
                            f"the receipt is for {receipt.data['contributor']}")
            continue
        try:
            leaf = leaf_hash(canonical_bytes(record))
        except ValueError as e:
            failures.append(f"{where}: record has no canonical JSON form: {e}")
            continue
        proof = InclusionProof(row["leaf_index"], size, tuple(bytes.fromhex(p) for p in row["path"]))
        try:
            calculated = root_from_inclusion(proof, leaf)
        except ProofError as e:
            failures.append(f"{where}: {e}")
            continue
        if calculated != root:
            failures.append(f"{where}: folds to root {calculated.hex()}, expected {root.hex()}")
    return failures


def verify_reward_proof(receipt: Receipt, root: bytes) -> list[str]:
    reward = receipt.data.get("reward")
    if reward is None:
        return []
    proof = [bytes.fromhex(p[2:]) for p in reward["proof"]]
    if not verify_reward(receipt.data["contributor"], int(reward["cumulative_amount"]), proof, root):
        return [f"{receipt.source}: reward: cumulative amount {reward['cumulative_amount']} does not fold to "
                f"rewards root 0x{root.hex()}"]
    return []


def contributors_of(receipts: Iterable[Receipt]) -> list[str]:
    return sorted({r.data["contributor"] for r in receipts})
