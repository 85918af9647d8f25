"""What a contributor is owed and claims (SPEC §13.6, §13.10): the statement across batches, and
the claim against the latest published rewards root.

Every amount comes from the lake's rewards files, checked against their manifests, and every
root against the RewardDistributor the user trusts: the latest root on chain must be the one the
lake's rewards tree gives, or nothing is claimed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipeline.datasets import Dataset
from pipeline.errors import BadInput, CheckFailed, NotFound
from pipeline.lake.batch import BatchFiles, committed_seqs
from pipeline.lake.storage import Lake


@dataclass(frozen=True)
class Entitlement:
    """A contributor's cumulative amount under the latest published root, and what was paid."""

    contributor: str
    seq: int  # the batch whose rewards root is the latest published
    cumulative: int
    claimed: int
    proof: list[bytes]

    @property
    def claimable(self) -> int:
        return max(self.cumulative - self.claimed, 0)


def entitlement(lake: Lake, dataset: Dataset, chain: Any, distributor: str, contributor: str) -> Entitlement:
    """What `contributor` may claim now; NotFound if no root is published or it holds no amount,
    CheckFailed if the lake's rewards tree is not the root published on chain."""
    from anchoring.distributor import claimed, latest_published

    latest = latest_published(chain, distributor, dataset.dataset_id)
    if latest is None:
        raise NotFound(f"no rewards of {dataset.name} are published in RewardDistributor {distributor} yet")
    seq, root = latest
    tree = BatchFiles(lake, dataset.name, seq).rewards_tree()
    if tree.root != root:
        raise CheckFailed(f"the lake's rewards tree of {dataset.name} batch {seq} has root 0x{tree.root.hex()}, "
                          f"RewardDistributor {distributor} publishes 0x{root.hex()}; nothing is claimed")
    at = tree.position(contributor)
    if at is None:
        raise NotFound(f"{contributor} has no rewards in {dataset.name} (anchorlake explain --dataset {dataset.name} "
                       f"--contributor {contributor} shows rejected records)")
    return Entitlement(contributor, seq, int(tree.values[at][1]), claimed(chain, distributor, dataset.dataset_id,
                                                                         contributor), tree.proof(at))


def claim(lake: Lake, dataset: Dataset, chain: Any, distributor: str, contributor: str) -> dict[str, Any]:
    """Claim what `contributor` is owed, paid by `chain`'s key, tokens to the contributor. Nothing is
    sent when nothing is owed. The result: amounts as decimal strings, the tx hash, the new balance."""
    from anchoring.distributor import claim as submit
    from anchoring.distributor import token_balance

    if dataset.rewards.payout == "points":
        raise BadInput(f"{dataset.name} pays in points: its rewards roots are on chain, there is no token to claim")
    owed = entitlement(lake, dataset, chain, distributor, contributor)
    result = {"dataset": dataset.name, "contributor": contributor, "seq": owed.seq, "unit": dataset.rewards.unit,
              "cumulative_amount": str(owed.cumulative), "claimed_before": str(owed.claimed),
              "claimed_now": str(owed.claimable), "tx_hash": None}
    if owed.claimable:
        receipt = submit(chain, distributor, dataset.dataset_id, contributor, owed.cumulative, owed.proof)
        result["tx_hash"] = "0x" + bytes(receipt["transactionHash"]).hex()
    token = str(chain.rpc(lambda: chain.contract("RewardDistributor", distributor).functions.token().call()))
    return result | {"balance": str(token_balance(chain, token, contributor))}


def statement(lake: Lake, dataset: Dataset, contributor: str, owed: Entitlement | None) -> dict[str, Any]:
    """A contributor's rewards across every committed batch: accepted and rejected records, the
    batch amount and the cumulative amount; with `owed` (from the chain), claimed and claimable."""
    batches = []
    for seq in committed_seqs(lake, dataset.name):
        row = next((r for r in BatchFiles(lake, dataset.name, seq).rewards_rows() if r["contributor"] == contributor),
                   None)
        if row is not None:
            batches.append({"seq": seq, "accepted": row["accepted"], "quarantined": row["quarantined"],
                            "duplicate": row["duplicate"], "amount": row["amount"],
                            "cumulative_amount": row["cumulative_amount"]})
    if not batches:
        raise NotFound(f"{contributor} has no records in any batch of {dataset.name}")
    chain_part = {} if owed is None else {"published_seq": owed.seq, "claimed": str(owed.claimed),
                                          "claimable": str(owed.claimable)}
    return {"dataset": dataset.name, "contributor": contributor, "unit": dataset.rewards.unit,
            "batches": batches} | chain_part
