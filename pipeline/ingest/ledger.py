"""The batch's rewards: its pool split over contributors (rule `proportional/1`), the cumulative
ledger over batches 0..seq and its OpenZeppelin tree, and the per-contributor rewards table."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pipeline.core.manifest import COUNT_KINDS
from pipeline.core.rewards import RewardsTree, amounts_for
from pipeline.datasets import Dataset
from pipeline.lake.batch import BatchFiles


@dataclass(frozen=True)
class Ledger:
    amounts: dict[str, int]  # this batch's amount per contributor, base units
    cumulative: dict[str, int]  # every contributor's cumulative amount over batches 0..seq
    tree: RewardsTree

    def manifest_entry(self, dataset: Dataset, file: str, tree: str) -> dict[str, Any]:
        """The manifest's `rewards` member; `file` and `tree` name the batch's rewards files."""
        return {
            "unit": dataset.rewards.unit,
            **dataset.rewards.terms(),
            "total": str(sum(self.amounts.values())),
            "cumulative_total": str(sum(self.cumulative.values())),
            "file": file,
            "tree": tree,
            "root": self.tree.root.hex(),
        }


def ledger(files: BatchFiles, dataset: Dataset, weights: Mapping[str, int]) -> Ledger:
    """Pay this batch by the dataset's rule over `weights` and add it to the ledger of batch seq - 1."""
    spec = dataset.rewards
    amounts = amounts_for(spec.rule, spec.pool, spec.rate, dict(weights))
    cumulative = {} if files.seq == 0 else dict(
        BatchFiles(files.lake, files.dataset, files.seq - 1).rewards_tree().values)
    for contributor, amount in amounts.items():
        cumulative[contributor] = cumulative.get(contributor, 0) + amount
    return Ledger(amounts, cumulative, RewardsTree.build(sorted(cumulative.items())))


def rewards_table(ledger: Ledger, per_contributor: Mapping[str, Counter[str]], weights: Mapping[str, int]) -> Any:
    """One row per contributor of the batch; amounts as decimal strings (uint256 does not fit int64)."""
    import pyarrow as pa

    contributors = sorted(per_contributor)
    return pa.table({
        "contributor": pa.array(contributors, pa.string()),
        **{kind: pa.array([per_contributor[c][kind] for c in contributors], pa.int64())
           for kind in COUNT_KINDS},
        "weight": pa.array([weights.get(c, 0) for c in contributors], pa.int64()),
        "amount": pa.array([str(ledger.amounts.get(c, 0)) for c in contributors], pa.string()),
        "cumulative_amount": pa.array([str(ledger.cumulative.get(c, 0)) for c in contributors], pa.string()),
    })
