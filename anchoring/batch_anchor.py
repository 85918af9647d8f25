"""BatchAnchor (SPEC §8): read anchored batches and anchor new ones, check-before-send.

`anchor_batch` returns a typed `Anchored`; the pipeline writes it to the lake as the anchor record.
"""

from __future__ import annotations

from dataclasses import dataclass

from anchoring.chain import Chain
from anchoring.transactions import IntentStore, MemoryIntents, ensure_confirmed, find_event
from pipeline.config import fault_point
from pipeline.errors import ChainError, ConflictError

ZERO32 = bytes(32)


@dataclass(frozen=True)
class AnchoredBatch:
    """What `BatchAnchor.batch(datasetId, seq)` holds."""

    root: bytes
    tree_size: int
    manifest_hash: bytes
    anchored_at: int

    @property
    def exists(self) -> bool:
        return self.manifest_hash != ZERO32


@dataclass(frozen=True)
class Anchored:
    """A confirmed anchor: the fields of the anchor record (SPEC §7), hashes as hex."""

    chain_id: int
    contract: str
    dataset_id: str
    seq: int
    root: str
    manifest_sha256: str
    tx_hash: str
    block_number: int
    block_hash: str
    confirmations: int


def read_batch(chain: Chain, address: str, dataset_id: bytes, seq: int) -> AnchoredBatch:
    contract = chain.contract("BatchAnchor", address)
    root, size, manifest_hash, at = chain.rpc(lambda: contract.functions.batch(dataset_id, seq).call())
    return AnchoredBatch(bytes(root), int(size), bytes(manifest_hash), int(at))


def next_anchor_seq(chain: Chain, address: str, dataset_id: bytes) -> int:
    contract = chain.contract("BatchAnchor", address)
    return int(chain.rpc(lambda: contract.functions.nextSeq(dataset_id).call()))


def anchor_batch(chain: Chain, address: str, dataset_id: bytes, seq: int, root: bytes, tree_size: int,
                 manifest_hash: bytes, intents: IntentStore | None = None, replace_after: float = 30.0,
                 timeout: float = 600.0) -> Anchored:
    """Make sure (dataset_id, seq) is anchored with exactly these values, with confirmations.

    Check-before-send: values already on chain are returned, not sent again. Raises
    ConflictError if the chain holds other values for the seq, ChainError if an earlier seq is
    not anchored yet or the key lacks the anchorer role.
    """
    contract = chain.contract("BatchAnchor", address)
    wanted = (root, tree_size, manifest_hash)

    def done() -> bool:
        onchain = read_batch(chain, address, dataset_id, seq)
        if not onchain.exists:
            return False
        if (onchain.root, onchain.tree_size, onchain.manifest_hash) != wanted:
            raise ConflictError(
                f"seq {seq} is anchored with root {onchain.root.hex()}, size {onchain.tree_size}, manifest "
                f"{onchain.manifest_hash.hex()}; the lake has root {root.hex()}, size {tree_size}, manifest "
                f"{manifest_hash.hex()}")
        return True

    if not done():
        expected = next_anchor_seq(chain, address, dataset_id)
        if expected != seq:
            raise ChainError(f"cannot anchor seq {seq}: the contract expects seq {expected} next")
    event = ensure_confirmed(chain, contract.functions.anchor(dataset_id, seq, root, tree_size, manifest_hash),
                             f"anchoring seq {seq}", done,
                             lambda: find_event(chain, contract, "BatchAnchored", dataset_id, seq),
                             intents or MemoryIntents(), replace_after, timeout)
    confirmations = chain.head() - int(event["blockNumber"]) + 1
    fault_point("chain.before_record")
    return Anchored(chain.chain_id, address.lower(), "0x" + dataset_id.hex(), seq, root.hex(), manifest_hash.hex(),
                    "0x" + bytes(event["transactionHash"]).hex(), int(event["blockNumber"]),
                    "0x" + bytes(event["blockHash"]).hex(), confirmations)


def holds_anchor(chain: Chain, contract: str, dataset_id: bytes, seq: int, root: str, manifest_sha256: str,
                 block_number: int, block_hash: str) -> bool:
    """Whether the chain still holds an anchor: its values in the contract and its block canonical."""
    onchain = read_batch(chain, contract, dataset_id, seq)
    return (onchain.exists and onchain.root.hex() == root and onchain.manifest_hash.hex() == manifest_sha256
            and chain.block_hash(block_number) == block_hash)
