"""Pulling a dataset for an AI team (SPEC §13.9): verified batches laid out so that pandas,
pyarrow, polars, DuckDB and Hugging Face `datasets` load the folder as it is, the metadata kept
apart in a hidden folder they all skip; resumable, and reporting every bad batch.

    <dest>/<seq>/part-NNNNN.parquet            the batch's data parts, in leaf order
    <dest>/.anchorlake/pull.json               which dataset, and each batch pulled: manifest hash, verified
    <dest>/.anchorlake/<seq>/manifest.json     the batch's manifest, byte for byte
    <dest>/.croissant.json                     Croissant 1.1 metadata for what the folder holds

A batch is installed whole (written aside, then renamed into place) and recorded last, so a
pull killed at any moment is resumed by running it again. A batch recorded before is kept
without downloading it again once its files still hash to its manifest and, when verifying, the
manifest's hash is still the one the chain holds.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline import config
from pipeline.core import manifest as manifests
from pipeline.core.jcs import canonical_bytes
from pipeline.core.manifest import Manifest
from pipeline.core.records import tagged_json
from pipeline.datasets import Dataset
from pipeline.errors import BadInput, CheckFailed, FormatError, NotFound
from pipeline.lake import layout
from pipeline.lake.batch import BatchFiles
from pipeline.progress import Tick, ignore
from pipeline.verify import verified_parts

META = ".anchorlake"
FORMAT = "anchorlake.pull/1"
CROISSANT = ".croissant.json"  # at the top, where mlcroissant finds the files; hidden, so readers skip it

Anchored = Callable[[Manifest], None]  # raises CheckFailed unless the manifest is the one the user trusts


@dataclass
class PullReport:
    """What a pull did: batches fetched now, batches already in the destination and kept, and
    every batch that could not be pulled, each with the reason."""

    dataset: str
    pulled: list[dict[str, Any]] = field(default_factory=list)
    kept: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "pulled": self.pulled, "kept": self.kept, "failed": self.failed}


class Destination:
    """A pull destination folder for one dataset."""

    def __init__(self, root: Path, dataset: str) -> None:
        self.root, self.dataset = root, dataset
        self.meta = root / META
        self.state = self._claim()

    def _claim(self) -> dict[str, Any]:
        """The destination's record; BadInput if the folder holds another dataset or other files
        (a reader loading the folder would take them for data)."""
        path = self.meta / "pull.json"
        if path.exists():
            state = tagged_json(path.read_bytes(), str(path), FORMAT)
            if state.get("dataset") != self.dataset or not isinstance(state.get("batches"), dict):
                raise BadInput(f"{self.root} holds a pull of dataset {state.get('dataset')!r}, not {self.dataset!r}: "
                               "give each dataset its own --dest")
            return state
        if self.root.exists() and not self.root.is_dir():
            raise BadInput(f"{self.root}: Not a directory")
        if self.root.exists() and any(p.name != META for p in self.root.iterdir()):
            raise BadInput(f"{self.root} is not empty and holds no pull: give an empty or new folder as --dest")
        state = {"format": FORMAT, "dataset": self.dataset, "batches": {}}
        _write_atomic(path, canonical_bytes(state))  # claimed before anything lands, so a killed pull resumes
        return state

    def batch_dir(self, seq: int) -> Path:
        return self.root / layout.seq_part(seq)

    def manifest_path(self, seq: int) -> Path:
        return self.meta / layout.seq_part(seq) / layout.MANIFEST

    def part_paths(self, m: Manifest) -> list[Path]:
        """Where each data part of the manifest lies in the destination, in leaf order."""
        return [self.batch_dir(m.seq) / Path(entry["path"]).name for entry in m.data["files"]]

    def kept(self, seq: int, anchored: Anchored | None) -> dict[str, Any] | None:
        """The record of batch `seq` if the destination already holds it as it was pulled (every
        file hashing to the manifest, the manifest anchored when `anchored` is given, and verified
        before if it must be now); None if it must be pulled."""
        entry = self.state["batches"].get(layout.seq_part(seq))
        if not isinstance(entry, dict) or (anchored is not None and not entry.get("verified")):
            return None
        try:
            raw = self.manifest_path(seq).read_bytes()
            m = manifests.parse(raw, str(self.manifest_path(seq)))
        except (OSError, FormatError):
            return None
        if m.sha256 != entry.get("manifest_sha256") or not self._files_hold(m):
            return None
        if anchored is not None:
            anchored(m)
        return dict(entry)

    def _files_hold(self, m: Manifest) -> bool:
        """Every data part in the destination hashes to the SHA-256 the manifest pins."""
        for entry, path in zip(m.data["files"], self.part_paths(m), strict=True):
            try:
                with path.open("rb") as f:
                    if hashlib.file_digest(f, "sha256").hexdigest() != entry["sha256"]:
                        return False
            except OSError:
                return False
        return True

    def install(self, m: Manifest, raw_manifest: bytes, parts: Sequence[bytes], verified: bool) -> dict[str, Any]:
        """Put a batch in place whole: parts written aside, renamed into place, the manifest beside
        the other metadata, then the record. Returns the record."""
        aside = self.meta / "incoming" / layout.seq_part(m.seq)
        shutil.rmtree(aside, ignore_errors=True)
        aside.mkdir(parents=True)
        for path, data in zip(self.part_paths(m), parts, strict=True):
            (aside / path.name).write_bytes(data)
        shutil.rmtree(self.batch_dir(m.seq), ignore_errors=True)
        os.replace(aside, self.batch_dir(m.seq))
        config.fault_point("pull.installed")
        _write_atomic(self.manifest_path(m.seq), raw_manifest)
        entry = {"seq": m.seq, "manifest_sha256": m.sha256, "root": m.root, "rows": m.tree_size, "verified": verified}
        self.state["batches"][layout.seq_part(m.seq)] = entry
        _write_atomic(self.meta / "pull.json", canonical_bytes(self.state))
        return dict(entry)

    def manifests(self) -> list[Manifest]:
        """The manifests of every batch recorded in the destination, in seq order."""
        found = []
        for name in sorted(self.state["batches"]):
            path = self.manifest_path(int(name))
            found.append(manifests.parse(path.read_bytes(), str(path)))
        return found

    def files(self, seqs: Sequence[int]) -> list[Path]:
        """The data parts of batches `seqs`, in seq then leaf order."""
        by_seq = {m.seq: m for m in self.manifests()}
        return [path for seq in seqs for path in self.part_paths(by_seq[seq])]


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


def pull_batch(files: BatchFiles, dataset: Dataset, dest: Destination, anchored: Anchored | None,
               tick: Tick = ignore) -> tuple[dict[str, Any], bool]:
    """(the record of batch files.seq in `dest`, whether it was kept rather than fetched). With
    `anchored`, the rows are recomputed to the manifest's root (verified_parts) and the manifest
    checked by `anchored` before anything is written; without it (None) each part is only checked
    against the manifest's SHA-256. Raises CheckFailed, FormatError or NotFound."""
    kept = dest.kept(files.seq, anchored)
    if kept is not None:
        tick(int(kept["rows"]))
        return kept, True
    m = files.manifest()
    if anchored is not None:
        parts = verified_parts(files, dataset, tick)
        anchored(m)
    else:
        parts = []
        for entry in m.data["files"]:
            parts.append(files.read(entry["path"]))
            tick(int(entry.get("rows", 0)))
    return dest.install(m, files.manifest_bytes(), parts, anchored is not None), False


def pull_dataset(lake: Any, dataset: Dataset, seqs: Sequence[int], dest: Destination, anchored: Anchored | None,
                 meter: Callable[[int, int], Any] | None = None) -> PullReport:
    """Pull batches `seqs` into `dest`, going on past a bad batch: the report names every one.
    `meter(seq, rows)` gives a context manager yielding a tick for the batch's progress."""
    report = PullReport(dataset.name)
    for seq in seqs:
        files = BatchFiles(lake, dataset.name, seq)
        try:
            if not files.committed():
                raise NotFound(f"the lake has no manifest for {dataset.name} batch {seq}"
                               + (", which the chain anchors" if anchored is not None else ""))
            rows = files.manifest().tree_size
            if meter is None:
                record, kept = pull_batch(files, dataset, dest, anchored)
            else:
                with meter(seq, rows) as tick:
                    record, kept = pull_batch(files, dataset, dest, anchored, tick)
        except (CheckFailed, FormatError, NotFound) as e:
            report.failed.append({"seq": seq, "error": str(e)})
            continue
        (report.kept if kept else report.pulled).append(record)
    _write_croissant(dataset, dest)
    return report


def _write_croissant(dataset: Dataset, dest: Destination) -> None:
    """Croissant metadata for every batch the destination holds, its file URLs relative to it."""
    from pipeline.croissant import document

    held = dest.manifests()
    if held:
        url = dest.root / CROISSANT
        doc = document(dataset, held, lambda seq, path: os.path.relpath(
            dest.batch_dir(seq) / Path(path).name, url.parent))
        _write_atomic(url, canonical_bytes(doc))
