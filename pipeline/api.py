"""The Python API for AI teams: `anchorlake.open_dataset`.

    import anchorlake
    ds = anchorlake.open_dataset("instructions", rpc="http://...", contract="0x...")
    df = ds.to_pandas()
    ds.citation          # ("instructions", 3, "<manifest sha256>"): the exact training set

Every batch is verified against the chain (rows recomputed to the anchored root) and copied into
a local cache laid out as `anchorlake pull` lays it out; the dataset returned reads those
verified copies, never the lake again, so nothing can be swapped between the check and the read.
A second call verifies only what is new (and re-hashes what is cached).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow.dataset as pads

from pipeline import config, stages
from pipeline.datasets import Dataset
from pipeline.errors import BadInput, CheckFailed, NotFound
from pipeline.pull import Anchored, Destination, PullReport, pull_dataset


class Unverified(UserWarning):
    """Data opened without checking it against the chain."""


class AnchoredDataset(pads.FileSystemDataset):
    """A pyarrow FileSystemDataset over a dataset's pulled batches, and where they came from:
    `verified` (against the chain or not), `batches` (seq, manifest_sha256, root, rows of each)
    and `citation`."""

    verified: bool
    batches: list[dict[str, Any]]
    name: str

    def to_pandas(self, **kwargs: Any) -> Any:
        return self.to_table().to_pandas(**kwargs)

    @property
    def citation(self) -> tuple[str, int, str] | None:
        """(dataset, seq, manifest_sha256) of the last batch read when batches 0..seq were all read:
        with the history root in that manifest, one triple names them all (`anchorlake history`
        proves it). None for a selection of batches."""
        if not self.batches or [b["seq"] for b in self.batches] != list(range(len(self.batches))):
            return None  # not a whole history: each batch is named by its own manifest in `batches`
        last = self.batches[-1]
        return self.name, int(last["seq"]), str(last["manifest_sha256"])


def open_dataset(name: str, *, lake: str | None = None, rpc: str | None = None, contract: str | None = None,
                 verify: bool = True, batches: Sequence[int] | None = None,
                 cache: str | os.PathLike[str] | None = None) -> AnchoredDataset:
    """The anchored batches of dataset `name` (all, or `batches`) as a pyarrow dataset.

    `lake`, `rpc` and `contract` (the BatchAnchor you trust) default to ANCHORLAKE_LAKE,
    ANCHORLAKE_RPC_URL and ANCHORLAKE_BATCH_ANCHOR; the lake's own records are never the trust
    anchor. With `verify=False` nothing is checked against the chain and an `Unverified` warning
    says so. Raises CheckFailed naming every batch (and file) that does not verify."""
    overrides = {var: value for var, value in (("ANCHORLAKE_LAKE", lake), ("ANCHORLAKE_RPC_URL", rpc),
                                               ("ANCHORLAKE_BATCH_ANCHOR", contract)) if value}
    settings = config.load(overrides=overrides)
    the_lake, spec = stages.lake_for(settings), stages.dataset_for(settings, name)
    dest = Destination(Path(cache) if cache is not None else config.cache_dir(settings.lake_url, name), name)
    if verify:
        anchored, seqs = _anchored_batches(settings, spec, batches)
    else:
        warnings.warn(f"{name}: opened WITHOUT verification: nothing was checked against the chain",
                      Unverified, stacklevel=2)
        from pipeline.lake.batch import committed_seqs

        anchored, seqs = None, sorted(set(batches)) if batches is not None else committed_seqs(the_lake, name)
    report = pull_dataset(the_lake, spec, seqs, dest, anchored)
    if report.failed:
        raise CheckFailed(f"{name}: " + "; ".join(f"batch {f['seq']}: {f['error']}" for f in report.failed))
    return _dataset(dest, spec, seqs, report, verify)


def _anchored_batches(settings: config.Settings, spec: Dataset, batches: Sequence[int] | None) -> tuple[Anchored, list[int]]:
    """(the check against BatchAnchor, the batches to read: all the chain anchors, or `batches`)."""
    from anchoring.batch_anchor import next_anchor_seq
    from pipeline.verify import connect, manifest_anchored

    address = settings.contracts.get("BatchAnchor")
    if not address or not settings.rpc_url:
        raise BadInput("open_dataset(verify=True) needs the chain and the BatchAnchor you trust: "
                       "rpc= and contract= (or ANCHORLAKE_RPC_URL and ANCHORLAKE_BATCH_ANCHOR)")
    chain = connect(settings.rpc_url)
    anchored_count = next_anchor_seq(chain, address, spec.dataset_id)
    seqs = list(range(anchored_count)) if batches is None else sorted(set(batches))
    missing = [seq for seq in seqs if not 0 <= seq < anchored_count]
    if missing:
        raise NotFound(f"{spec.name}: batches {missing} are not anchored in BatchAnchor {address} "
                       f"(it holds 0..{anchored_count - 1})")
    return (lambda m: manifest_anchored(m, spec.dataset_id, chain, address)), seqs


def _dataset(dest: Destination, spec: Dataset, seqs: list[int], report: PullReport, verified: bool) -> AnchoredDataset:
    from pipeline.lake.columnar import arrow_schema

    files = [str(p) for p in dest.files(seqs)]
    base = pads.dataset(files, format="parquet") if files else \
        pads.dataset([], schema=arrow_schema(spec.committed_columns), format="parquet")
    opened = AnchoredDataset(list(base.get_fragments()), base.schema, pads.ParquetFileFormat(), base.filesystem)
    records = {int(r["seq"]): r for r in [*report.pulled, *report.kept]}
    opened.verified, opened.name = verified, spec.name
    opened.batches = [records[seq] for seq in seqs]
    return opened
