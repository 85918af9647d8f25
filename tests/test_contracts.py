"""BatchAnchor and RewardDistributor against a real anvil: roles, order, write-once."""

from __future__ import annotations

import pytest

from anchoring.batch_anchor import anchor_batch, next_anchor_seq, read_batch
from anchoring.chain import Chain
from pipeline.config import DEVNET_KEY
from pipeline.errors import ChainError, ConflictError

pytestmark = pytest.mark.integration
# anvil's second funded account: has gas money but no role.
OUTSIDER_KEY = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d"


@pytest.fixture
def anchor_contract(anvil) -> tuple[Chain, str]:
    chain = Chain(anvil.url, DEVNET_KEY)
    me = chain.address
    return chain, chain.deploy("BatchAnchor", me, me)


def test_only_the_anchorer_role_can_anchor(anvil, anchor_contract) -> None:
    _, address = anchor_contract
    outsider = Chain(anvil.url, OUTSIDER_KEY)
    contract = outsider.contract("BatchAnchor", address)
    with pytest.raises(ChainError, match="AccessControlUnauthorizedAccount"):
        outsider.transact("BatchAnchor", contract.functions.anchor(b"d" * 32, 0, b"r" * 32, 1, b"m" * 32), "anchoring")


def test_seq_must_be_next_and_is_never_rewritten(anchor_contract) -> None:
    chain, address = anchor_contract
    dataset = b"\x01" * 32
    with pytest.raises(ChainError, match="expects seq 0"):
        anchor_batch(chain, address, dataset, 1, b"r" * 32, 3, b"m" * 32)
    record = anchor_batch(chain, address, dataset, 0, b"r" * 32, 3, b"m" * 32)
    assert next_anchor_seq(chain, address, dataset) == 1
    stored = read_batch(chain, address, dataset, 0)
    assert (stored.root, stored.tree_size, stored.manifest_hash) == (b"r" * 32, 3, b"m" * 32)
    # Anchoring the same values again finds them and sends nothing.
    block = chain.w3.eth.block_number
    assert anchor_batch(chain, address, dataset, 0, b"r" * 32, 3, b"m" * 32).tx_hash == record.tx_hash
    assert chain.w3.eth.block_number == block
    with pytest.raises(ConflictError, match="anchored with root"):
        anchor_batch(chain, address, dataset, 0, b"x" * 32, 3, b"m" * 32)
    contract = chain.contract("BatchAnchor", address)
    with pytest.raises(ChainError, match="SeqNotNext"):
        chain.transact("BatchAnchor", contract.functions.anchor(dataset, 0, b"x" * 32, 3, b"m" * 32), "re-anchoring")


def test_the_event_carries_what_was_stored(anchor_contract) -> None:
    chain, address = anchor_contract
    dataset = b"\x02" * 32
    anchor_batch(chain, address, dataset, 0, b"\x0a" * 32, 7, b"\x0b" * 32)
    events = chain.contract("BatchAnchor", address).events.BatchAnchored.get_logs(from_block=0)
    args = [e["args"] for e in events if e["args"]["datasetId"] == dataset]
    assert len(args) == 1
    assert (args[0]["seq"], args[0]["root"], args[0]["treeSize"], args[0]["manifestHash"]) == (0, b"\x0a" * 32, 7, b"\x0b" * 32)


def test_a_points_dataset_publishes_roots_moves_no_token_and_cannot_be_claimed(anvil) -> None:
    from anchoring.distributor import claim, publish_rewards, published_root, token_balance
    from pipeline.core.rewards import RewardsTree

    chain = Chain(anvil.url, DEVNET_KEY)
    me = chain.address
    token = chain.deploy("RewardToken", me, 10**24)
    distributor = chain.deploy("RewardDistributor", me, me, chain.w3.to_checksum_address(token))
    deployment = {"RewardToken": token, "RewardDistributor": distributor}
    dataset = b"\x03" * 32
    alice = "0x" + "11" * 20
    tree = RewardsTree.build([(alice, 700), ("0x" + "22" * 20, 300)])
    publish_rewards(chain, deployment, dataset, 0, tree.root, 1000, points=True)
    assert published_root(chain, distributor, dataset, 0) == tree.root
    assert token_balance(chain, token, distributor) == 0
    with pytest.raises(ChainError, match="PayoutKindMismatch"):
        claim(chain, distributor, dataset, alice, 700, tree.proof(0))
    with pytest.raises(ChainError, match="PayoutKindMismatch"):
        publish_rewards(chain, deployment, dataset, 1, tree.root, 1000, points=False)
