"""The stages of a batch, as the DAG and the CLI both run them.

stage -> commit -> anchor -> publish_rewards -> publish_receipts. Each takes explicit
arguments, is idempotent, and can be killed at any instant and run again.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pipeline import datasets, layout
from pipeline import manifest as manifests
from pipeline.commit import commit_batch, stage_sources
from pipeline.config import Settings
from pipeline.datasets import Dataset
from pipeline.errors import ServiceUnavailable
from pipeline.receipts import build_receipts
from pipeline.storage import Lake, open_lake

log = logging.getLogger(__name__)

RECEIPTS_INDEX_FORMAT = "anchorlake.receipts-index/1"


def lake_for(settings: Settings) -> Lake:
    return open_lake(settings.lake_url, settings.s3)


def dataset_for(settings: Settings, name: str) -> Dataset:
    return datasets.load(settings.datasets_dir, name)


def chain_for(settings: Settings) -> Any:
    from anchoring.chain import Chain

    if not settings.rpc_url:
        raise ServiceUnavailable("no chain is configured: run `anchorlake up` or set ANCHORLAKE_RPC_URL")
    return Chain(settings.rpc_url, settings.anchorer_key, settings.confirmations)


def stage(settings: Settings, dataset: str) -> int | None:
    """Freeze the next batch's sources; its seq, or None when nothing new arrived."""
    return stage_sources(lake_for(settings), dataset_for(settings, dataset))


def commit(settings: Settings, dataset: str, seq: int) -> dict[str, Any]:
    m = commit_batch(lake_for(settings), dataset_for(settings, dataset), seq, lease_ttl=settings.lease_seconds)
    return {"seq": m.seq, "root": m.root, "counts": m.data["counts"], "manifest_sha256": m.sha256}


def _read_json(lake: Lake, key: str) -> dict[str, Any] | None:
    data = lake.read_json(key, missing_ok=True)
    return None if data is None else dict(data)


def intent_store(lake: Lake, dataset: str, seq: int, step: str) -> Any:
    """Lake-backed store for the intent of one transaction step of one batch."""
    from anchoring.chain import IntentStore

    key = layout.intent(dataset, seq, step)
    return IntentStore(lambda: _read_json(lake, key), lambda data: lake.write(key, json.dumps(data, indent=1).encode()))


REANCHOR_WINDOW = 16  # how many recent batches each run re-checks for reorganised-away anchors


def current_anchor(lake: Lake, dataset: str, seq: int) -> dict[str, Any] | None:
    """The batch's live anchor record: a re-anchoring's if there was one, else anchor.json."""
    return _read_json(lake, layout.anchor_current(dataset, seq)) or _read_json(lake, layout.anchor(dataset, seq))


def anchor(settings: Settings, dataset: str, seq: int) -> dict[str, Any]:
    """Anchor every committed batch up to `seq` that is not anchored yet, in seq order, and
    re-anchor a recent batch whose recorded anchor a reorganisation removed from the chain."""
    from anchoring.chain import anchor_batch, create_once, holds_anchor, require_deployment

    lake = lake_for(settings)
    spec = dataset_for(settings, dataset)
    chain = chain_for(settings)
    address = require_deployment(chain, lake, dict(settings.contracts))["BatchAnchor"]

    def make(s: int) -> dict[str, Any]:
        m = manifests.load(lake, dataset, s)
        return anchor_batch(chain, address, spec.dataset_id, s, bytes.fromhex(m.root), m.tree_size,
                            bytes.fromhex(m.sha256), intent_store(lake, dataset, s, "anchor"),
                            settings.replace_after, settings.chain_timeout)

    record: dict[str, Any] = {}
    for s in range(seq + 1):
        existing = current_anchor(lake, dataset, s)
        if existing is None:
            record = make(s)
            create_once(lake, layout.anchor(dataset, s), json.dumps(record, indent=1).encode())
            log.info("anchored %s batch %d in %s", dataset, s, record["tx_hash"])
        elif s > seq - REANCHOR_WINDOW and not holds_anchor(chain, existing):
            log.warning("%s batch %d: anchor %s was reorganised away; anchoring again", dataset, s,
                        existing["tx_hash"])
            record = make(s)
            lake.write(layout.anchor_current(dataset, s), json.dumps(record, indent=1).encode())
        else:
            record = existing
    return record


def publish_rewards(settings: Settings, dataset: str, seq: int) -> dict[str, Any]:
    """Publish the rewards root of every committed batch up to `seq`, in order: funded with the
    token, or (payout "points") the ledger root alone. A recent publication a reorganisation
    removed is published again (recorded under state/, as rewards-published.json is write-once)."""
    from anchoring.chain import create_once, published_root, require_deployment
    from anchoring.chain import publish_rewards as publish

    lake = lake_for(settings)
    spec = dataset_for(settings, dataset)
    chain = chain_for(settings)
    deployment = require_deployment(chain, lake, dict(settings.contracts))

    def make(s: int) -> dict[str, Any]:
        rewards = manifests.load(lake, dataset, s).data["rewards"]
        return publish(chain, deployment, spec.dataset_id, s, bytes.fromhex(rewards["root"]),
                       int(rewards["cumulative_total"]), lambda step: intent_store(lake, dataset, s, f"rewards-{step}"),
                       settings.replace_after, settings.chain_timeout, points=spec.rewards.payout == "points")

    record: dict[str, Any] = {}
    for s in range(seq + 1):
        existing = _read_json(lake, layout.rewards_published(dataset, s))
        if existing is None:
            record = make(s)
            create_once(lake, layout.rewards_published(dataset, s), json.dumps(record, indent=1).encode())
            continue
        record = existing
        if s > seq - REANCHOR_WINDOW:
            onchain = published_root(chain, existing["contract"], spec.dataset_id, s)
            if onchain is None or onchain.hex() != existing["root"]:
                log.warning("%s batch %d: rewards publication was reorganised away; publishing again", dataset, s)
                record = make(s)
                lake.write(f"state/{dataset}/{layout.seq_part(s)}/rewards-current.json",
                           json.dumps(record, indent=1).encode())
    return record


def publish_receipts(settings: Settings, dataset: str, seq: int) -> int:
    """Write every contributor's receipt for batch `seq`; the index is written last."""
    lake = lake_for(settings)
    spec = dataset_for(settings, dataset)
    m = manifests.load(lake, dataset, seq)
    anchor_record = _read_json(lake, layout.anchor(dataset, seq))
    published = _read_json(lake, layout.rewards_published(dataset, seq))
    count = build_receipts(lake, spec, m, anchor_record, published["contract"] if published else None)
    lake.write(f"receipts/{dataset}/{layout.seq_part(seq)}/index.json", json.dumps(
        {"format": RECEIPTS_INDEX_FORMAT, "dataset": dataset, "seq": seq, "receipts": count}).encode())
    return count


def batch_finished(lake: Lake, dataset: Dataset, seq: int) -> bool:
    needs = [layout.anchor(dataset.name, seq), layout.rewards_published(dataset.name, seq),
             f"receipts/{dataset.name}/{layout.seq_part(seq)}/index.json"]
    return all(lake.exists(k) for k in needs)


@dataclass
class RunReport:
    dataset: str
    committed: list[dict[str, Any]] = field(default_factory=list)
    finished: list[int] = field(default_factory=list)


def finish(settings: Settings, dataset: str, seq: int, progress: Callable[[str], None]) -> None:
    progress(f"anchoring batch {seq}")
    anchor(settings, dataset, seq)
    progress(f"publishing rewards of batch {seq}")
    publish_rewards(settings, dataset, seq)
    progress(f"writing receipts of batch {seq}")
    publish_receipts(settings, dataset, seq)


def run(settings: Settings, dataset: str, progress: Callable[[str], None] = lambda _: None) -> RunReport:
    """One batch now, every stage: finish what an earlier run left, then commit what is new."""
    lake = lake_for(settings)
    spec = dataset_for(settings, dataset)
    report = RunReport(dataset)
    committed = manifests.committed_seqs(lake, dataset)
    for seq in committed:
        if not batch_finished(lake, spec, seq):
            finish(settings, dataset, seq, progress)
            report.finished.append(seq)
    if committed and committed[-1] not in report.finished:
        # finish() re-checks recent anchors itself; otherwise do it here, since a deep
        # reorganisation may have removed one
        anchor(settings, dataset, committed[-1])
        publish_rewards(settings, dataset, committed[-1])
    progress("staging new sources")
    staged = stage(settings, dataset)
    if staged is None:
        progress("no new sources")
        return report
    progress(f"validating and committing batch {staged}")
    report.committed.append(commit(settings, dataset, staged))
    finish(settings, dataset, staged, progress)
    report.finished.append(staged)
    return report
