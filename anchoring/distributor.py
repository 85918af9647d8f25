"""RewardDistributor (SPEC §8): publish rewards roots (funded, or as points), claims, balances.

`publish_rewards` returns a typed `Published`; the pipeline writes it to the lake.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from anchoring.chain import Chain
from anchoring.transactions import IntentStore, MemoryIntents, ensure_confirmed, ensure_transaction, find_event
from pipeline.errors import ChainError, ConflictError


@dataclass(frozen=True)
class Published:
    """A confirmed rewards publication; hashes as hex, the total in base units as a decimal string."""

    chain_id: int
    contract: str
    seq: int
    root: str
    cumulative_total: str
    tx_hash: str
    block_number: int


def published_root(chain: Chain, address: str, dataset_id: bytes, seq: int) -> bytes | None:
    """The rewards root published for (dataset_id, seq), or None if none is (a batch that paid
    nothing publishes nothing)."""
    contract = chain.contract("RewardDistributor", address)
    root = bytes(chain.rpc(lambda: contract.functions.rootAt(dataset_id, seq).call()))
    return None if root == bytes(32) else root


def latest_published(chain: Chain, address: str, dataset_id: bytes) -> tuple[int, bytes] | None:
    """(seq, root) of the dataset's latest rewards publication, the one claims verify against."""
    contract = chain.contract("RewardDistributor", address)
    next_seq = int(chain.rpc(lambda: contract.functions.nextSeq(dataset_id).call()))
    if next_seq == 0:
        return None
    return next_seq - 1, bytes(chain.rpc(lambda: contract.functions.latestRoot(dataset_id).call()))


def _fund(chain: Chain, treasury: Chain | None, deployment: Mapping[str, str], increase: int,
          published: Callable[[], bool], intents: IntentStore, replace_after: float, timeout: float) -> None:
    """Make sure the distributor may pull `increase` base units from the treasury: the treasury key
    approves it (when this process holds that key), or an allowance given beforehand covers it."""
    distributor = chain.contract("RewardDistributor", deployment["RewardDistributor"])
    source = str(chain.rpc(lambda: distributor.functions.treasury().call()))
    spender = chain.w3.to_checksum_address(deployment["RewardDistributor"])
    token = chain.contract("RewardToken", deployment["RewardToken"])

    def allowance() -> int:
        return int(chain.rpc(lambda: token.functions.allowance(source, spender).call()))

    if treasury is None:
        if published() or allowance() >= increase:
            return
        raise ChainError(f"the treasury {source.lower()} has approved {allowance()} of the {increase} base units "
                         f"the RewardDistributor {spender.lower()} needs; approve it from the treasury, or set "
                         "ANCHORLAKE_TREASURY_KEY")
    if str(treasury.address).lower() != source.lower():
        raise ConflictError(f"RewardDistributor {spender.lower()} pulls rewards from {source.lower()}, the treasury "
                            f"key is {str(treasury.address).lower()}; nothing was signed")
    approve = treasury.contract("RewardToken", deployment["RewardToken"]).functions.approve(spender, increase)
    ensure_transaction(treasury, approve, "approving reward funds", lambda: published() or allowance() >= increase,
                       intents, replace_after, timeout)


def publish_rewards(chain: Chain, deployment: Mapping[str, str], dataset_id: bytes, seq: int, root: bytes,
                    cumulative_total: int, intents: Callable[[str], IntentStore] | None = None,
                    replace_after: float = 30.0, timeout: float = 600.0, points: bool = False,
                    treasury: Chain | None = None, max_increase: int | None = None) -> Published:
    """Publish the rewards root of `seq` (check-before-send) with the distributor key (`chain`),
    funded from the treasury (approved with the `treasury` key when given); for a dataset paid in
    off-chain points (`points`), publish the ledger root and move no token.

    `intents(step)` gives the intent store of each step ("approve", "publish"); an increase of the
    cumulative total over `max_increase` (the batch's own total) is refused before anything is signed."""
    address = deployment["RewardDistributor"]
    distributor = chain.contract("RewardDistributor", address)
    stores: dict[str, IntentStore] = {}

    def store(step: str) -> IntentStore:
        return intents(step) if intents is not None else stores.setdefault(step, MemoryIntents())

    def published() -> bool:
        return published_root(chain, address, dataset_id, seq) is not None

    if not published():
        expected = int(chain.rpc(lambda: distributor.functions.nextSeq(dataset_id).call()))
        if seq < expected:
            raise ChainError(f"cannot publish rewards for seq {seq}: the contract has published up to seq {expected - 1}")
        previous = int(chain.rpc(lambda: distributor.functions.cumulativeTotal(dataset_id).call()))
        increase = cumulative_total - previous
        if increase < 0:
            raise ConflictError(f"cumulative total {cumulative_total} is below the published {previous}")
        if max_increase is not None and increase != max_increase:
            raise ConflictError(f"publishing seq {seq} would add {increase} to the published cumulative total, the batch "
                                f"pays {max_increase}; nothing was signed")
        if increase and not points:
            _fund(chain, treasury, deployment, increase, published, store("approve"), replace_after, timeout)
    publish = distributor.functions.publishPoints if points else distributor.functions.publish
    event = ensure_confirmed(chain, publish(dataset_id, seq, root, cumulative_total),
                             f"publishing rewards for seq {seq}", published,
                             lambda: find_event(chain, distributor, "RewardsPublished", dataset_id, seq),
                             store("publish"), replace_after, timeout)
    existing = published_root(chain, address, dataset_id, seq)
    if existing != root:
        raise ConflictError(f"rewards for seq {seq} are published with root {existing.hex() if existing else None}, "
                            f"the lake has {root.hex()}")
    return Published(chain.chain_id, address.lower(), seq, root.hex(), str(cumulative_total),
                     "0x" + bytes(event["transactionHash"]).hex(), int(event["blockNumber"]))


def claim(chain: Chain, address: str, dataset_id: bytes, account: str, cumulative_amount: int,
          proof: list[bytes]) -> Any:
    distributor = chain.contract("RewardDistributor", address)
    return chain.transact("RewardDistributor", distributor.functions.claim(
        dataset_id, chain.w3.to_checksum_address(account), cumulative_amount, proof), f"claiming for {account}")


def funding(chain: Chain, address: str, dataset_id: bytes) -> tuple[int, int]:
    """(funded, paid out) of one dataset: its claims can never pay more than it was funded."""
    distributor = chain.contract("RewardDistributor", address)
    funded = int(chain.rpc(lambda: distributor.functions.cumulativeTotal(dataset_id).call()))
    return funded, int(chain.rpc(lambda: distributor.functions.paid(dataset_id).call()))


def claimed(chain: Chain, address: str, dataset_id: bytes, account: str) -> int:
    distributor = chain.contract("RewardDistributor", address)
    return int(chain.rpc(lambda: distributor.functions.claimed(dataset_id, chain.w3.to_checksum_address(account)).call()))


def token_balance(chain: Chain, token: str, account: str) -> int:
    contract = chain.contract("RewardToken", token)
    return int(chain.rpc(lambda: contract.functions.balanceOf(chain.w3.to_checksum_address(account)).call()))
