"""Commit a staged batch (SPEC §3, §6): lease -> builder -> tree -> ledger -> manifest.

Everything before the manifest can be rewritten by a re-run; the manifest is created exactly
once and is the commit point.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeline import config
from pipeline.core import manifest as manifests
from pipeline.core.jcs import canonical_bytes
from pipeline.core.manifest import COUNT_KINDS
from pipeline.datasets import Dataset
from pipeline.errors import CheckFailed, NotFound
from pipeline.ingest.builder import CHUNK_RECORDS, BatchBuilder, blocks, parquet_bytes, worker_pool
from pipeline.ingest.ledger import ledger, rewards_table
from pipeline.ingest.quality import BatchRejected, checking
from pipeline.lake import layout
from pipeline.lake import sources as staging
from pipeline.lake.batch import BatchFiles
from pipeline.lake.lease import Lease
from pipeline.lake.sources import SkippedSource, Source
from pipeline.lake.storage import Lake
from pipeline.lake.workers import pool_width

log = logging.getLogger(__name__)


def commit_batch(lake: Lake, dataset: Dataset, seq: int, chunk_records: int = CHUNK_RECORDS,
                 lease_ttl: float = 120.0, seal: Callable[[str], str] | None = None,
                 tick: Callable[[int], None] = lambda _: None) -> manifests.Manifest:
    """Validate, dedupe and commit staged batch `seq`; return its manifest. `seal(manifest
    sha256)` gives the MAC of the commit seal written just before the manifest (see core.seal);
    `tick(n)` is told of every n records read (progress).

    Requires a staged plan for `seq` (see ingest.stage). Re-running after the commit returns
    the committed manifest unchanged. Raises BatchRejected (nothing committed) if the suite
    refuses the batch, CheckFailed if records are not conserved.
    """
    files = BatchFiles(lake, dataset.name, seq)
    if files.committed():
        return files.manifest()
    staged = staging.load_plan(lake, dataset.name, seq)
    if staged is None:
        raise NotFound(f"dataset {dataset.name}: batch {seq} has no staged sources")
    if staging.plan_failed(lake, dataset.name, seq):
        raise BatchRejected(f"dataset {dataset.name}: the sources staged for batch {seq} were refused; "
                            "the next run stages what arrived since")
    lease = Lease(lake, dataset.name, seq, lease_ttl).acquire()
    try:
        if not files.committed():  # another writer may have committed while we waited for the lease
            _commit_leased(files, dataset, *staged, chunk_records, lease, seal, tick)
    except BatchRejected as e:  # refused as a whole: recorded, so it does not block the batches after it
        staging.fail_plan(lake, dataset.name, seq, str(e))
        raise
    finally:
        lease.release()
    return BatchFiles(lake, dataset.name, seq).manifest()


def _commit_leased(files: BatchFiles, dataset: Dataset, plan: list[Source], skipped: list[SkippedSource],
                   chunk_records: int, lease: Lease, seal: Callable[[str], str] | None,
                   tick: Callable[[int], None]) -> None:
    files.generation = lease.generation
    files.fence = lambda: lease.fence(files.committed)
    with tempfile.TemporaryDirectory(prefix="anchorlake-commit-", dir=config.scratch_dir()) as tmp:
        builder = _build(files, dataset, plan, Path(tmp), chunk_records, lease, tick)
        config.fault_point("commit.built")
        _check_conserved(builder, dataset.name, files.seq)
        files.move_private(builder.rejected_path)
        artifacts = [
            files.move_file(layout.TREE, builder.tree_path),
            files.move_file(layout.QUARANTINE, builder.quarantine_path),
            *builder.index_files,
            files.write(layout.VALIDATION, canonical_bytes(builder.quality.summary())),
            *_data_docs(files, dataset.name, builder.quality.docs, chunk_records),
        ]
    rewards = ledger(files, dataset, builder.weights)
    rewards_file = files.write(layout.REWARDS, parquet_bytes(rewards_table(rewards, builder.per_contributor,
                                                                          builder.weights)))
    rewards_tree = files.write(layout.REWARDS_TREE, canonical_bytes(rewards.tree.dump()))
    artifacts += [rewards_file, rewards_tree]
    previous = None if files.seq == 0 else BatchFiles(files.lake, dataset.name, files.seq - 1).manifest()
    if previous is not None and builder.history.manifests[-1] != previous.sha256:
        raise CheckFailed(f"dataset {dataset.name}: the manifest of batch {previous.seq} changed during the commit")
    body = manifests.build(
        dataset=dataset.name, seq=files.seq, created_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        previous=previous, history=builder.history.manifests,
        sources=[manifests.SourceCounts(s.key, s.sha256, s.bytes, **{k: builder.per_source[i][k] for k in COUNT_KINDS},
                                        signer=s.signer, signature=s.signature) for i, s in enumerate(plan)],
        skipped=[asdict(s) for s in skipped], columns=[(c.name, c.type) for c in builder.columns],
        suite={"name": dataset.suite_path.name, "sha256": dataset.suite_sha256()},
        files=builder.files, artifacts=artifacts, tree_size=builder.tree_size, root=builder.root,
        rewards=rewards.manifest_entry(dataset, rewards_file["path"], rewards_tree["path"]))
    lease.check()
    if not files.create_manifest(body, seal):
        log.warning("dataset %s batch %d was committed by another writer", dataset.name, files.seq)


def _build(files: BatchFiles, dataset: Dataset, plan: list[Source], scratch: Path, chunk_records: int,
           lease: Lease, tick: Callable[[int], None]) -> BatchBuilder:
    """Stream every staged record through the builder, apply the quality gate's thresholds, then
    have the partition tasks write the parts in leaf order."""
    checking(dataset)  # the quality gate's GX context, built before worker processes fork
    pool = worker_pool()
    builder = BatchBuilder(files, dataset, plan, scratch, chunk_records, pool)
    try:
        for source, item in blocks(files, dataset, plan, scratch, lambda job: builder.read_source(job, lease.renew),
                                   pool_width(pool)):
            lease.renew()
            builder.add(source, item, lease.renew)
            tick(len(item))
        builder.settle(lease.renew)
        builder.quality.check_thresholds()
        builder.finish(lease.renew)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
        builder.close_writers()
    return builder


def _check_conserved(builder: BatchBuilder, dataset: str, seq: int) -> None:
    """Every input record is accepted, quarantined or a duplicate, overall and per source."""
    per_source = {kind: sum(counts[kind] for counts in builder.per_source) for kind in COUNT_KINDS}
    if per_source != {kind: builder.counts[kind] for kind in COUNT_KINDS}:
        raise CheckFailed(f"dataset {dataset} batch {seq}: records are not conserved: "
                          f"{dict(builder.counts)} overall, {per_source} over the sources")


def _data_docs(files: BatchFiles, dataset: str, pages: list[str], chunk_records: int) -> list[dict[str, Any]]:
    """Great Expectations Data Docs: one page per validated chunk and an index linking them."""
    entries = [files.write(layout.data_docs_page(n), page.encode("utf-8")) for n, page in enumerate(pages)]
    links = "".join(f'<li><a href="{entry["path"].rsplit("/", 1)[1]}">chunk {n}</a></li>'
                    for n, entry in enumerate(entries))
    seq = files.seq
    entries.append(files.write(layout.DATA_DOCS_INDEX, (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{dataset} batch {seq}: Data Docs</title></head>"
        f"<body><h1>{dataset} batch {seq}</h1><p>Great Expectations validation, one page per chunk of up to "
        f"{chunk_records} rows.</p><ul>{links}</ul></body></html>").encode()))
    return entries

