"""Every check a user runs against the chain: receipts, a pulled batch, the anchors `status`
lists, a batch's rewards root. Each returns findings (lines naming what differs) or raises
CheckFailed; none prints anything.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.core.receipt import Receipt, verify_reward_proof, verify_rows
from pipeline.datasets import Dataset, dataset_id
from pipeline.errors import AnchorlakeError, CheckFailed

if TYPE_CHECKING:  # the lake is imported where a check reads it: offline receipt checks start fast
    from pipeline.lake.batch import BatchFiles


def connect(rpc_url: str) -> Any:
    """A read-only connection to the chain at `rpc_url`."""
    from anchoring.chain import Chain

    return Chain(rpc_url)


@dataclass(frozen=True)
class ReceiptFindings:
    receipt: Receipt
    problems: list[str]
    against: str  # what the receipt was checked against, for the user


def receipt_offline(receipt: Receipt, root: bytes) -> ReceiptFindings:
    """Rows against their paths, and the receipt's root against a root the user trusts."""
    problems = verify_rows(receipt)
    if bytes.fromhex(receipt.data["root"]) != root:
        problems.append(f"{receipt.source}: root {receipt.data['root']} is not the given root {root.hex()}")
    return ReceiptFindings(receipt, problems, "the given root (offline)")


def receipt_on_chain(receipt: Receipt, chain: Any, contracts: Mapping[str, str]) -> ReceiptFindings:
    """Rows against their paths, root/tree size/manifest against BatchAnchor, and the reward proof
    against the published rewards root."""
    problems = verify_rows(receipt) + _anchored(receipt, chain, contracts)
    return ReceiptFindings(receipt, problems, f"chain {chain.chain_id}")


def _anchored(receipt: Receipt, chain: Any, contracts: Mapping[str, str]) -> list[str]:
    from anchoring.batch_anchor import read_batch
    from anchoring.distributor import published_root

    where, data = receipt.source, receipt.data
    anchor = data.get("anchor")
    if anchor is not None and anchor["chain_id"] != chain.chain_id:
        return [f"{where}: receipt is anchored on chain {anchor['chain_id']}, the RPC serves chain {chain.chain_id}"]
    address = contracts.get("BatchAnchor") or (anchor or {}).get("contract")
    if not address:
        return [f"{where}: receipt names no anchor contract; set ANCHORLAKE_BATCH_ANCHOR"]
    did = dataset_id(receipt.dataset)
    onchain = read_batch(chain, address, did, receipt.seq)
    if not onchain.exists:
        return [f"{where}: {receipt.dataset} batch {receipt.seq} is not anchored in contract {address}"]
    problems = [f"{where}: {what} {mine} differs from the anchored {theirs}" for what, mine, theirs in (
        ("root", data["root"], onchain.root.hex()), ("tree size", data["tree_size"], onchain.tree_size),
        ("manifest", data["manifest_sha256"], onchain.manifest_hash.hex())) if mine != theirs]
    reward = data.get("reward")
    distributor = contracts.get("RewardDistributor") or (reward or {}).get("contract")
    if reward is not None and distributor:
        root = published_root(chain, distributor, did, receipt.seq)
        if root is None:
            problems.append(f"{where}: rewards of batch {receipt.seq} are not published in {distributor}")
        else:
            problems += verify_reward_proof(receipt, root)
    return problems


def batch_against_chain(files: BatchFiles, dataset: Dataset, chain: Any, address: str) -> None:
    """A committed batch is what was anchored: every part's SHA-256 against the manifest, every
    leaf and the root recomputed from the rows, root, tree size and manifest hash against
    BatchAnchor. Raises CheckFailed naming what differs."""
    from anchoring.batch_anchor import read_batch
    from pipeline.core.leaf import leaf_function
    from pipeline.core.merkle import root as merkle_root
    from pipeline.receipts import batch_records

    m = files.manifest()
    leaf = leaf_function(dataset.committed_columns)
    root = merkle_root([leaf(r) for r in batch_records(files, dataset)]).hex()
    if root != m.root:
        raise CheckFailed(f"batch {m.seq}: data recomputes to root {root}, manifest says {m.root}")
    onchain = read_batch(chain, address, dataset.dataset_id, m.seq)
    if (onchain.root.hex(), onchain.tree_size, onchain.manifest_hash.hex()) != (m.root, m.tree_size, m.sha256):
        raise CheckFailed(f"batch {m.seq}: the chain anchors root {onchain.root.hex()} / manifest "
                          f"{onchain.manifest_hash.hex()}, the lake has {m.root} / {m.sha256}")


def rewards_against_chain(files: BatchFiles, dataset: Dataset, chain: Any, address: str) -> None:
    """The batch's rewards root is the one published in RewardDistributor; else CheckFailed."""
    from anchoring.distributor import published_root

    rewards = files.manifest().rewards
    onchain = published_root(chain, address, dataset.dataset_id, files.seq)
    if onchain is None or onchain.hex() != rewards["root"]:
        raise CheckFailed(f"rewards root of batch {files.seq} on chain is "
                          f"{onchain.hex() if onchain else 'unpublished'}, the lake has {rewards['root']}")


class AnchorStates:
    """The state of each batch's anchor for `status`, checked against the chain when one is reachable."""

    def __init__(self, rpc_url: str | None) -> None:
        self.rpc_url = rpc_url
        self.chain: Any = None
        self.unreachable: str | None = None

    def _connect(self) -> None:
        if self.unreachable is None and self.chain is None:
            try:
                if not self.rpc_url:
                    raise AnchorlakeError("no chain configured")
                self.chain = connect(self.rpc_url)
            except AnchorlakeError as e:
                self.unreachable = str(e)

    def state(self, files: BatchFiles, dataset: Dataset) -> tuple[str, dict[str, Any] | None]:
        """(one line: "not anchored", "anchored in …" or "ANCHOR LOST: …"; the current anchor record)."""
        first, again = files.first_anchor(), files.reanchor()
        record = again or first
        if record is None:
            return "not anchored", None
        state = self._check(files.manifest(), dataset, record)
        if first is not None and again is not None and state.startswith("anchored"):
            state += f"; re-anchored after a reorganisation removed {first['tx_hash']}"
        return state, record

    def _check(self, m: Any, dataset: Dataset, record: dict[str, Any]) -> str:
        from anchoring.batch_anchor import read_batch

        self._connect()
        if self.chain is None:
            return f"anchored in {record['tx_hash']} (not checked: {self.unreachable})"
        if record["chain_id"] != self.chain.chain_id:
            return f"anchored on chain {record['chain_id']} (not checked: the RPC serves chain {self.chain.chain_id})"
        onchain = read_batch(self.chain, record["contract"], dataset.dataset_id, m.seq)
        if not onchain.exists or self.chain.block_hash(int(record["block_number"])) != record["block_hash"]:
            return (f"ANCHOR LOST: anchor.json names tx {record['tx_hash']} in block {record['block_number']}, "
                    "which the chain no longer holds (reorganisation?)")
        if (onchain.root.hex(), onchain.manifest_hash.hex()) != (m.root, m.sha256):
            return f"ANCHOR LOST: the chain holds root {onchain.root.hex()} for this seq"
        return f"anchored in {record['tx_hash']} ({self.chain.head() - int(record['block_number']) + 1} confirmations)"


def pull_batch(files: BatchFiles, dataset: Dataset, target: Path, check: tuple[Any, str] | None) -> dict[str, Any]:
    """Copy a committed batch's data parts and manifest to `target`, each part checked against
    the manifest; with `check` = (chain, BatchAnchor address), first `batch_against_chain`."""
    from pipeline.lake import layout

    m = files.manifest()
    if check is not None:
        batch_against_chain(files, dataset, *check)
    for relative, data in files.part_bytes():
        (target / relative).parent.mkdir(parents=True, exist_ok=True)
        (target / relative).write_bytes(data)
    (target / layout.MANIFEST).write_bytes(files.manifest_bytes())
    return {"seq": m.seq, "rows": m.tree_size, "root": m.root, "verified": check is not None}
