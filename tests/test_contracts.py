"""BatchAnchor and RewardDistributor against a real anvil: roles, order, write-once."""

from __future__ import annotations

import pytest

from anchoring.batch_anchor import anchor_batch, next_anchor_seq, read_batch
from anchoring.chain import Chain
from pipeline.config import DEVNET_KEYS
from pipeline.errors import ChainError, ConflictError

from conftest import OUTSIDER_KEY

pytestmark = pytest.mark.integration


@pytest.fixture
def anchor_contract(anvil) -> tuple[Chain, str]:
    chain = Chain(anvil.url, DEVNET_KEYS["admin"])
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

    chain = Chain(anvil.url, DEVNET_KEYS["admin"])
    me = chain.address
    token = chain.deploy("RewardToken", me, 10**24)
    distributor = chain.deploy("RewardDistributor", me, me, chain.w3.to_checksum_address(token), me)
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


def test_each_of_the_four_keys_can_do_its_role_and_nothing_else(anvil) -> None:
    """SPEC §13.5: the anchorer cannot publish, grant roles or move the treasury's tokens; the
    distributor cannot anchor and pulls no more than the treasury approved; the admin holds no
    token and no working role; only the treasury holds the supply."""
    from anchoring.chain import TOKEN_SUPPLY, ensure_deployment
    from anchoring.distributor import publish_rewards, token_balance

    keys = {role: Chain(anvil.url, key, role=role) for role, key in DEVNET_KEYS.items()}
    admin, anchorer, distributor, treasury = (keys[r] for r in ("admin", "anchorer", "distributor", "treasury"))
    deployment = ensure_deployment(admin, {}, lambda _: None,
                                   {r: keys[r].address for r in ("anchorer", "distributor", "treasury")})
    dataset = b"\x04" * 32

    def refused(chain: Chain, name: str, call: str, *args: object) -> str:
        contract = chain.contract(name, deployment[name])
        with pytest.raises(ChainError) as caught:
            chain.transact(name, getattr(contract.functions, call)(*args), call)
        return str(caught.value)

    def role(name: str, which: str) -> bytes:
        contract = admin.contract(name, deployment[name])
        return bytes(getattr(contract.functions, which)().call())

    assert "AccessControlUnauthorizedAccount" in refused(
        anchorer, "RewardDistributor", "publish", dataset, 0, b"r" * 32, 0)
    for name, which in (("BatchAnchor", "ANCHORER_ROLE"), ("RewardDistributor", "DISTRIBUTOR_ROLE"),
                        ("BatchAnchor", "DEFAULT_ADMIN_ROLE")):
        assert "AccessControlUnauthorizedAccount" in refused(anchorer, name, "grantRole", role(name, which),
                                                            anchorer.address)
    assert "ERC20InsufficientAllowance" in refused(anchorer, "RewardToken", "transferFrom", treasury.address,
                                                   anchorer.address, 1)
    assert "AccessControlUnauthorizedAccount" in refused(
        distributor, "BatchAnchor", "anchor", dataset, 0, b"r" * 32, 1, b"m" * 32)
    assert "AccessControlUnauthorizedAccount" in refused(
        admin, "BatchAnchor", "anchor", dataset, 0, b"r" * 32, 1, b"m" * 32)
    # The distributor pulls from the treasury only what the treasury approved.
    assert "ERC20InsufficientAllowance" in refused(
        distributor, "RewardDistributor", "publish", dataset, 0, b"r" * 32, 1000)
    token = deployment["RewardToken"]
    assert [token_balance(admin, token, k.address) for k in (admin, anchorer, distributor, treasury)] == \
        [0, 0, 0, TOKEN_SUPPLY]
    with pytest.raises(ChainError, match="needs; approve it from the treasury"):
        publish_rewards(distributor, deployment, dataset, 0, b"r" * 32, 1000)  # no treasury key here
    publish_rewards(distributor, deployment, dataset, 0, b"r" * 32, 1000, treasury=treasury)
    assert token_balance(admin, token, deployment["RewardDistributor"]) == 1000
    assert token_balance(admin, token, treasury.address) == TOKEN_SUPPLY - 1000
    with pytest.raises(ConflictError, match="pulls rewards from"):  # a treasury key the distributor does not use
        publish_rewards(distributor, deployment, dataset, 1, b"s" * 32, 2000, treasury=anchorer)


def _funded_distributor(anvil) -> tuple[Chain, dict[str, str]]:
    """A token and a distributor whose admin, distributor and treasury are one devnet account."""
    chain = Chain(anvil.url, DEVNET_KEYS["admin"])
    me = chain.address
    token = chain.deploy("RewardToken", me, 10**24)
    distributor = chain.deploy("RewardDistributor", me, me, chain.w3.to_checksum_address(token), me)
    return chain, {"RewardToken": token, "RewardDistributor": distributor}


def test_each_dataset_is_solvent_on_its_own(anvil) -> None:
    """SPEC §13.6: dataset B's root allocates more than B was funded; the claim reverts by name
    (ExceedsFunding) instead of taking tokens funded for dataset A, whose claims all pay."""
    from anchoring.distributor import claim, funding, publish_rewards, token_balance
    from pipeline.core.rewards import RewardsTree

    chain, deployment = _funded_distributor(anvil)
    a, b = b"\x0a" * 32, b"\x0b" * 32
    alice, bob, mallory = "0x" + "11" * 20, "0x" + "22" * 20, "0x" + "66" * 20
    fair = RewardsTree.build([(alice, 700), (bob, 300)])
    publish_rewards(chain, deployment, a, 0, fair.root, 1000, treasury=chain)
    greedy = RewardsTree.build([(mallory, 1000), ("0x" + "77" * 20, 0)])
    publish_rewards(chain, deployment, b, 0, greedy.root, 100, treasury=chain)  # funds 100, allocates 1000
    address, token = deployment["RewardDistributor"], deployment["RewardToken"]
    assert token_balance(chain, token, address) == 1100
    with pytest.raises(ChainError, match="ExceedsFunding"):
        claim(chain, address, b, mallory, 1000, greedy.proof(greedy.position(mallory)))
    for who, amount in ((alice, 700), (bob, 300)):
        claim(chain, address, a, who, amount, fair.proof(fair.position(who)))
        assert token_balance(chain, token, who) == amount
    assert funding(chain, address, a) == (1000, 1000) and funding(chain, address, b) == (100, 0)
    assert token_balance(chain, token, address) == 100  # what B was funded, still there


def test_a_batch_that_pays_nothing_publishes_nothing_and_later_batches_still_publish(anvil) -> None:
    from anchoring.distributor import latest_published, publish_rewards, published_root
    from pipeline.core.rewards import RewardsTree

    chain, deployment = _funded_distributor(anvil)
    dataset, address = b"\x0c" * 32, deployment["RewardDistributor"]
    assert latest_published(chain, address, dataset) is None
    first = RewardsTree.build([("0x" + "11" * 20, 10), ("0x" + "22" * 20, 0)])
    third = RewardsTree.build([("0x" + "11" * 20, 10), ("0x" + "22" * 20, 5)])
    publish_rewards(chain, deployment, dataset, 0, first.root, 10, treasury=chain)
    publish_rewards(chain, deployment, dataset, 2, third.root, 15, treasury=chain)  # batch 1 paid nothing
    assert published_root(chain, address, dataset, 1) is None
    assert latest_published(chain, address, dataset) == (2, third.root)
    with pytest.raises(ChainError, match="has published up to seq 2"):
        publish_rewards(chain, deployment, dataset, 1, first.root, 15, treasury=chain)
    # Zero marks "nothing published": a zero root would let a dataset change its payout kind (a
    # points publication, then a token one funded by nothing) and drain another dataset.
    fresh = b"\x0d" * 32
    with pytest.raises(ChainError, match="ZeroRoot"):
        publish_rewards(chain, deployment, fresh, 0, bytes(32), 1000, points=True)
