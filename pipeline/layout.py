"""Lake keys (SPEC §3). Every path anchorlake reads or writes is named here."""

from __future__ import annotations


def seq_part(seq: int) -> str:
    return f"{seq:06d}"


def incoming(dataset: str) -> str:
    return f"incoming/{dataset}/"


def raw(dataset: str, seq: int, sha256: str, ext: str) -> str:
    return f"raw/{dataset}/{seq_part(seq)}/{sha256}.{ext}"


def raw_plan(dataset: str, seq: int) -> str:
    """The frozen list of sources of a batch, written once staging is complete."""
    return f"raw/{dataset}/{seq_part(seq)}/sources.json"


def batch(dataset: str, seq: int) -> str:
    return f"batches/{dataset}/{seq_part(seq)}/"


def data_part(dataset: str, seq: int, part: int) -> str:
    return f"{batch(dataset, seq)}data/part-{part:05d}.parquet"


def manifest(dataset: str, seq: int) -> str:
    return batch(dataset, seq) + "manifest.json"


def anchor(dataset: str, seq: int) -> str:
    return batch(dataset, seq) + "anchor.json"


def quarantine(dataset: str, seq: int) -> str:
    return batch(dataset, seq) + "quarantine.parquet"


def validation(dataset: str, seq: int) -> str:
    return batch(dataset, seq) + "validation.json"


def rewards(dataset: str, seq: int) -> str:
    return batch(dataset, seq) + "rewards.parquet"


def rewards_tree(dataset: str, seq: int) -> str:
    """Cumulative rewards ledger as an OpenZeppelin `standard-v1` tree dump."""
    return batch(dataset, seq) + "rewards-tree.json"


def index(dataset: str, seq: int) -> str:
    """Per-row record ids and dedupe keys, in leaf order."""
    return batch(dataset, seq) + "index.parquet"


def tree(dataset: str, seq: int) -> str:
    """Every node of the batch's Merkle tree (see pipeline.treefile)."""
    return batch(dataset, seq) + "tree.bin"


def rewards_published(dataset: str, seq: int) -> str:
    return batch(dataset, seq) + "rewards-published.json"


def receipt(dataset: str, seq: int, contributor: str) -> str:
    return f"receipts/{dataset}/{seq_part(seq)}/{contributor}.json"


def anchor_current(dataset: str, seq: int) -> str:
    """The batch's anchor after a reorganisation removed the one anchor.json records (which,
    like everything under batches/, is never rewritten)."""
    return f"state/{dataset}/{seq_part(seq)}/anchor-current.json"


def intent(dataset: str, seq: int, step: str) -> str:
    """Operational state of a resumable transaction (nonce, signed attempts); rewritten freely."""
    return f"state/{dataset}/{seq_part(seq)}/{step}-intent.json"


def deployment(chain_id: int) -> str:
    return f"deployments/{chain_id}.json"
