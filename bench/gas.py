"""Benchmark: gas per anchor and per claim on a real anvil.

    .venv/bin/python bench/gas.py

Anchors: seq 0..6 of one dataset with tree sizes from 10 to 10,000,000. Target: at most 120,000
gas, the same whatever the tree size (only a root, a size and a manifest hash go on chain). The
first anchor of a dataset costs more: it creates the dataset's nextSeq slot.

Claims: a rewards tree of 10,000 contributors is published, then CLAIMS of them claim (each
their first claim: the costliest, as it writes a fresh `claimed` slot). Target: at most 100,000
gas. The baseline, measured in the same run, is one plain ERC-20 transfer of the reward token.
"""

from __future__ import annotations

import hashlib
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from anchoring.batch_anchor import anchor_batch  # noqa: E402
from anchoring.chain import Chain  # noqa: E402
from anchoring.distributor import claim, publish_rewards  # noqa: E402
from pipeline.config import DEVNET_KEYS  # noqa: E402
from pipeline.core.rewards import RewardsTree  # noqa: E402
from pipeline.devnet import Anvil  # noqa: E402

CONTRIBUTORS = 10_000
CLAIMS = 9


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-gas-") as tmp:
        node = Anvil(Path(tmp)).start()
        try:
            chain = Chain(node.url, DEVNET_KEYS["admin"])
            anchors(chain)
            claims(chain)
        finally:
            node.stop()


def claims(chain: Chain) -> None:
    me = chain.address
    token = chain.deploy("RewardToken", me, 10**27)
    distributor = chain.deploy("RewardDistributor", me, me, chain.w3.to_checksum_address(token), me)
    dataset = hashlib.sha256(b"bench-claims").digest()
    accounts = ["0x" + hashlib.sha256(f"contributor {i}".encode()).hexdigest()[:40] for i in range(CONTRIBUTORS)]
    tree = RewardsTree.build([(a, 10**18 + i) for i, a in enumerate(accounts)])
    publish_rewards(chain, {"RewardToken": token, "RewardDistributor": distributor}, dataset, 0, tree.root,
                    sum(10**18 + i for i in range(CONTRIBUTORS)), treasury=chain)
    used = []
    for i in range(0, CONTRIBUTORS, CONTRIBUTORS // CLAIMS)[:CLAIMS]:
        at = tree.position(accounts[i])
        assert at is not None
        receipt = claim(chain, distributor, dataset, accounts[i], int(tree.values[at][1]), tree.proof(at))
        used.append(int(receipt["gasUsed"]))
    contract = chain.contract("RewardToken", token)
    baseline = int(chain.transact("RewardToken", contract.functions.transfer(
        chain.w3.to_checksum_address("0x" + "77" * 20), 1), "a plain transfer")["gasUsed"])
    print(f"claim in a tree of {CONTRIBUTORS:,} contributors ({len(tree.proof(0))} proof hashes): median "
          f"{statistics.median(used):,.0f} gas, max {max(used):,} over {len(used)} first claims "
          f"(target <= 100,000); baseline: a plain ERC-20 transfer {baseline:,} gas "
          f"({statistics.median(used) / baseline:.2f}x)")


def anchors(chain: Chain) -> None:
    address = chain.deploy("BatchAnchor", chain.address, chain.address)
    dataset = hashlib.sha256(b"bench").digest()
    used = []
    for seq, size in enumerate([10, 1_000, 100_000, 1_000_000, 10_000_000, 10, 10_000_000]):
        root = hashlib.sha256(f"root{seq}".encode()).digest()
        manifest = hashlib.sha256(f"manifest{seq}".encode()).digest()
        record = anchor_batch(chain, address, dataset, seq, root, size, manifest)
        gas = chain.w3.eth.get_transaction_receipt(record.tx_hash)["gasUsed"]
        used.append(gas)
        print(f"seq {seq}: tree size {size:>10,}: {gas:,} gas" + ("  (first anchor of the dataset)" if seq == 0 else ""))
    later = used[1:]
    print(f"first anchor {used[0]:,} gas; later anchors {min(later):,}-{max(later):,} gas "
          f"(target <= 120,000, independent of tree size)")


if __name__ == "__main__":
    main()
