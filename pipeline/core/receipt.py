"""Receipts (SPEC §7): the format, its builder and the pure checks. No I/O.

`verify_rows` needs nothing but the receipt: it folds each row to the receipt's root; the chain
(or a root the user gives) then says whether that root is the anchored one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pipeline.core.jcs import canonical_bytes
from pipeline.core.manifest import Manifest
from pipeline.core.merkle import InclusionProof, ProofError, leaf_hash, root_from_inclusion
from pipeline.core.records import ADDRESS, HEX64, tagged_json
from pipeline.core.rewards import verify_reward
from pipeline.errors import FormatError

FORMAT = "anchorlake.receipt/1"
ANCHOR_FIELDS = ("chain_id", "contract", "dataset_id", "tx_hash", "block_number")


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


def build(manifest: Manifest, contributor: str, rows: Sequence[tuple[int, dict[str, Any], Sequence[bytes]]],
          anchor: Mapping[str, Any] | None, reward: Mapping[str, Any] | None) -> dict[str, Any]:
    """A receipt for `contributor`'s rows in the batch of `manifest`.

    `rows` are (leaf_index, record, inclusion path leaf level first); `anchor` is the batch's
    anchor record (or None before anchoring); `reward` the reward part (or None)."""
    return {
        "format": FORMAT,
        "dataset": manifest.data["dataset"],
        "seq": manifest.seq,
        "contributor": contributor,
        "root": manifest.root,
        "tree_size": manifest.tree_size,
        "manifest_sha256": manifest.sha256,
        "anchor": None if anchor is None else {k: anchor[k] for k in ANCHOR_FIELDS},
        "rows": [{"leaf_index": i, "record": record, "path": [p.hex() for p in path]} for i, record, path in rows],
        "reward": None if reward is None else dict(reward),
    }


def parse(raw: bytes, source: str) -> Receipt:
    """Validate a receipt's shape; raise FormatError naming the field that is wrong."""
    data = tagged_json(raw, source, FORMAT)
    for key, kind in (("dataset", str), ("seq", int), ("contributor", str), ("root", str), ("tree_size", int),
                      ("manifest_sha256", str), ("rows", list)):
        if not isinstance(data.get(key), kind) or isinstance(data.get(key), bool):
            raise FormatError(source, key, f"missing or not a {kind.__name__}")
    if data["seq"] < 0 or data["tree_size"] < 0:
        raise FormatError(source, "seq/tree_size", "must be >= 0")
    for key in ("root", "manifest_sha256"):
        if not HEX64(data[key]):
            raise FormatError(source, key, "must be 64 lowercase hex characters")
    if not ADDRESS(data["contributor"]):
        raise FormatError(source, "contributor", "must be 0x and 40 lowercase hex digits")
    for n, row in enumerate(data["rows"]):
        _check_row(source, f"rows[{n}]", row, data["tree_size"])
    _check_reward(source, data.get("reward"))
    anchor = data.get("anchor")
    if anchor is not None and (not isinstance(anchor, dict) or not isinstance(anchor.get("chain_id"), int)):
        raise FormatError(source, "anchor", "must be null or an object with chain_id")
    return Receipt(data, source)


def _check_row(source: str, where: str, row: Any, tree_size: int) -> None:
    if not isinstance(row, dict) or not isinstance(row.get("record"), dict):
        raise FormatError(source, f"{where}.record", "must be an object")
    index = row.get("leaf_index")
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < tree_size:
        raise FormatError(source, f"{where}.leaf_index", f"must be an integer in [0, {tree_size})")
    path = row.get("path")
    if not isinstance(path, list) or not all(HEX64(p) for p in path):
        raise FormatError(source, f"{where}.path", "must be a list of 64-hex-character hashes")
    expected = path_length(index, tree_size)
    if len(path) != expected:
        raise FormatError(source, f"{where}.path", f"has {len(path)} hashes, a proof in this tree has {expected}")


def _check_reward(source: str, reward: Any) -> None:
    if reward is None:
        return
    if not isinstance(reward, dict):
        raise FormatError(source, "reward", "must be an object or null")
    try:
        int(reward["cumulative_amount"])
        [bytes.fromhex(p[2:]) for p in reward["proof"]]
    except (KeyError, TypeError, ValueError):
        raise FormatError(source, "reward", "needs cumulative_amount and a proof of 0x hashes") from None


def path_length(index: int, size: int) -> int:
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
    """Check the receipt's cumulative reward folds to the rewards `root`. Failures as lines."""
    reward = receipt.data.get("reward")
    if reward is None:
        return []
    proof = [bytes.fromhex(p[2:]) for p in reward["proof"]]
    if not verify_reward(receipt.data["contributor"], int(reward["cumulative_amount"]), proof, root):
        return [f"{receipt.source}: reward: cumulative amount {reward['cumulative_amount']} does not fold to "
                f"rewards root 0x{root.hex()}"]
    return []
