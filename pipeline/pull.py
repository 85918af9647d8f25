"""Pulling a dataset for an AI team (`anchorlake pull`, open_dataset): verified batches laid out so that pandas,
pyarrow, polars, DuckDB and Hugging Face `datasets` load the folder as it is, the metadata kept
apart in a hidden folder they all skip; resumable, and reporting every bad batch.

    <dest>/<seq>/part-NNNNN.parquet            the batch's data parts, in leaf order
    <dest>/.anchorlake/pull.json               which dataset, and each batch pulled: manifest hash, verified
    <dest>/.anchorlake/<seq>/manifest.json     the batch's manifest, byte for byte
    <dest>/.croissant.json                     Croissant 1.1 metadata for what the folder holds

A batch is installed whole (written aside, then renamed into place) and recorded last, so a
pull killed at any moment is resumed by running it again. A batch recorded before is kept
without reading the lake once its files still hash to its recorded manifest and, when
verifying, that manifest's hash is still the one the chain holds. Anything else in the folder
(a file dropped in, a symlink) is removed: the folder holds what was pulled, nothing more.
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
PARTIAL = ".partial"  # a part being written aside
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
    removed: list[str] = field(default_factory=list)  # what lay in the folder that no pulled manifest names

    def as_dict(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "pulled": self.pulled, "kept": self.kept, "failed": self.failed,
                "removed": self.removed}


class Destination:
    """A pull destination folder for one dataset, held under an exclusive lock while in use (two
    pulls into one folder, say training ranks opening one cache, take turns)."""

    def __init__(self, root: Path, dataset: str) -> None:
        self.root, self.dataset = root, dataset
        self.meta = root / META
        self._lock: Any = None
        self._held: dict[int, Manifest | None] = {}  # recorded manifests as parsed, while the record stands
        self.state = self._claim()

    def __enter__(self) -> Destination:
        import fcntl

        self._lock = (self.meta / "lock").open("a")
        fcntl.flock(self._lock, fcntl.LOCK_EX)
        self.state, self._held = self._claim(), {}  # as the holder before us left it
        shutil.rmtree(self.meta / "incoming", ignore_errors=True)  # what a killed pull left aside
        return self

    def __exit__(self, *exc: object) -> None:
        self._lock.close()

    def _claim(self) -> dict[str, Any]:
        """The destination's record; BadInput if the folder holds another dataset or other files
        (a reader loading the folder would take them for data), FormatError if the record is damaged."""
        path = self.meta / "pull.json"
        if path.exists():
            return self._record(path)
        if self.root.exists() and not self.root.is_dir():
            raise BadInput(f"{self.root}: Not a directory")
        if self.root.exists() and any(p.name != META for p in self.root.iterdir()):
            raise BadInput(f"{self.root} is not empty and holds no pull: give an empty or new folder as --dest")
        state = {"format": FORMAT, "dataset": self.dataset, "batches": {}}
        _write_atomic(path, canonical_bytes(state))  # claimed before anything lands, so a killed pull resumes
        return state

    def _record(self, path: Path) -> dict[str, Any]:
        state = tagged_json(path.read_bytes(), str(path), FORMAT)
        if state.get("dataset") != self.dataset:
            raise BadInput(f"{self.root} holds a pull of dataset {state.get('dataset')!r}, not {self.dataset!r}: "
                           "give each dataset its own --dest")
        batches = state.get("batches")
        if not isinstance(batches, dict) or not all(
                isinstance(k, str) and k.isdigit() and len(k) == 6 and isinstance(v, dict) for k, v in batches.items()):
            raise FormatError(str(path), "batches", "must map 6-digit seqs to records")
        return state

    def batch_dir(self, seq: int) -> Path:
        return self.root / layout.seq_part(seq)

    def manifest_path(self, seq: int) -> Path:
        return self.meta / layout.seq_part(seq) / layout.MANIFEST

    def part_paths(self, m: Manifest) -> list[Path]:
        """Where each data part of the manifest lies in the destination, in leaf order."""
        return [self.batch_dir(m.seq) / Path(entry["path"]).name for entry in m.data["files"]]

    def held(self, seq: int) -> Manifest | None:
        """The manifest of batch `seq` as recorded in the destination, if it parses and is the one recorded."""
        if seq not in self._held:
            self._held[seq] = self._parse_held(seq)
        return self._held[seq]

    def _parse_held(self, seq: int) -> Manifest | None:
        entry = self.state["batches"].get(layout.seq_part(seq))
        try:
            m = manifests.parse(self.manifest_path(seq).read_bytes(), str(self.manifest_path(seq)))
        except (OSError, FormatError):
            return None
        if not isinstance(entry, dict) or (m.sha256, m.seq, m.data["dataset"]) != \
                (entry.get("manifest_sha256"), seq, self.dataset):
            return None
        return m

    def kept(self, seq: int, anchored: Anchored | None) -> dict[str, Any] | None:
        """The record of batch `seq` if the destination already holds it as it was pulled (every
        file hashing to the manifest, the manifest anchored when `anchored` is given, and verified
        before if it must be now); None if it must be pulled."""
        m = self.held(seq)
        verified = bool(self.state["batches"].get(layout.seq_part(seq), {}).get("verified"))
        if m is None or (anchored is not None and not verified) or not self._files_hold(m):
            return None
        if anchored is not None:
            anchored(m)
        return _entry(m, verified)

    def _files_hold(self, m: Manifest) -> bool:
        """Every data part in the destination is a plain file hashing to the SHA-256 the manifest pins."""
        for entry, path in zip(m.data["files"], self.part_paths(m), strict=True):
            try:
                if path.is_symlink():
                    return False
                with path.open("rb") as f:
                    if hashlib.file_digest(f, "sha256").hexdigest() != entry["sha256"]:
                        return False
            except OSError:
                return False
        return True

    def install(self, m: Manifest, raw_manifest: bytes, parts: Sequence[bytes], verified: bool) -> dict[str, Any]:
        """Put a batch in place whole: parts written aside (under names no `*.parquet` glob takes),
        the folder renamed into place and the parts named, the manifest beside the other metadata,
        then the record. Returns the record."""
        aside = self.meta / "incoming" / layout.seq_part(m.seq)
        shutil.rmtree(aside, ignore_errors=True)
        aside.mkdir(parents=True)
        final = self.part_paths(m)
        for path, data in zip(final, parts, strict=True):
            (aside / (path.name + PARTIAL)).write_bytes(data)
        self.forget(m.seq)
        os.replace(aside, self.batch_dir(m.seq))
        config.fault_point("pull.installed")
        for path in final:
            os.replace(path.with_name(path.name + PARTIAL), path)
        _write_atomic(self.manifest_path(m.seq), raw_manifest)
        self.state["batches"][layout.seq_part(m.seq)] = entry = _entry(m, verified)
        self._held[m.seq] = m
        _write_atomic(self.meta / "pull.json", canonical_bytes(self.state))
        return entry

    def forget(self, seq: int) -> None:
        """Drop batch `seq` from the destination: its record first, then its files."""
        self._held.pop(seq, None)
        if self.state["batches"].pop(layout.seq_part(seq), None) is not None:
            _write_atomic(self.meta / "pull.json", canonical_bytes(self.state))
        shutil.rmtree(self.batch_dir(seq), ignore_errors=True)
        if self.batch_dir(seq).is_symlink():
            self.batch_dir(seq).unlink()
        shutil.rmtree(self.meta / layout.seq_part(seq), ignore_errors=True)

    def sweep(self) -> list[str]:
        """Remove whatever a reader would load that no recorded manifest names (a file dropped
        into the folder, a symlink, a batch left half placed); the names removed."""
        held = self.manifests()
        parts = {path for m in held for path in self.part_paths(m)}
        batches = {self.batch_dir(m.seq) for m in held}
        removed = []
        for path in sorted(self.root.iterdir()):
            if path in (self.meta, self.root / CROISSANT):
                continue
            inside = sorted(path.iterdir()) if path in batches and not path.is_symlink() else [path]
            for stray in inside:
                if stray not in parts or stray.is_symlink() or not stray.is_file():
                    _remove(stray)
                    removed.append(str(stray.relative_to(self.root)))
        return removed

    def manifests(self) -> list[Manifest]:
        """The manifests of every batch recorded in the destination, in seq order."""
        found = [self.held(int(name)) for name in sorted(self.state["batches"])]
        return [m for m in found if m is not None]

    def files(self, seqs: Sequence[int]) -> list[Path]:
        """The data parts of batches `seqs`, in seq then leaf order."""
        by_seq = {m.seq: m for m in self.manifests()}
        return [path for seq in seqs for path in self.part_paths(by_seq[seq])]


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def _entry(m: Manifest, verified: bool) -> dict[str, Any]:
    """A batch's record in pull.json, from its manifest."""
    return {"seq": m.seq, "manifest_sha256": m.sha256, "root": m.root, "rows": m.tree_size, "verified": verified}


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


def pull_batch(files: BatchFiles, dataset: Dataset, dest: Destination, anchored: Anchored | None,
               tick: Tick = ignore) -> dict[str, Any]:
    """Fetch batch files.seq into `dest`; its record. With `anchored`, the manifest is checked
    first (one call to the chain), then its parts are read against the SHA-256s it pins and their
    rows recomputed to its root (verified_parts); without it (None) each part is only checked
    against the lake's manifest. Nothing is written unless every check holds. Raises CheckFailed,
    FormatError or NotFound."""
    m = files.manifest()
    if anchored is not None:
        anchored(m)
        parts = verified_parts(files, dataset, tick)
    else:
        parts = []
        for entry in m.data["files"]:
            parts.append(files.read(entry["path"]))
            tick(int(entry["rows"]))
    return dest.install(m, files.manifest_bytes(), parts, anchored is not None)


def pull_dataset(lake: Any, dataset: Dataset, seqs: Sequence[int], dest: Destination, anchored: Anchored | None,
                 meter: Callable[[int, int], Any] | None = None) -> PullReport:
    """Pull batches `seqs` into `dest`, keeping what it already holds as pulled and going on past
    a bad batch (dropped from `dest`): the report names every one. Then whatever in `dest` no
    pulled manifest names is removed, and the Croissant metadata written. `meter(seq, rows)` gives
    a context manager yielding a tick for the batch's progress."""
    report = PullReport(dataset.name)
    with dest:
        for seq in seqs:
            try:
                record = dest.kept(seq, anchored)
                if record is not None:
                    report.kept.append(record)
                    continue
                report.pulled.append(_fetch(BatchFiles(lake, dataset.name, seq), dataset, dest, anchored, meter))
            except (CheckFailed, FormatError, NotFound, BadInput) as e:
                dest.forget(seq)
                report.failed.append({"seq": seq, "error": str(e)})
        report.removed = dest.sweep()
        _write_croissant(dataset, dest)
    return report


def _fetch(files: BatchFiles, dataset: Dataset, dest: Destination, anchored: Anchored | None,
           meter: Callable[[int, int], Any] | None) -> dict[str, Any]:
    if not files.committed():
        raise NotFound(f"the lake has no manifest for {dataset.name} batch {files.seq}"
                       + (", which the chain anchors" if anchored is not None else ""))
    if meter is None:
        return pull_batch(files, dataset, dest, anchored)
    with meter(files.seq, files.manifest().tree_size) as tick:
        return pull_batch(files, dataset, dest, anchored, tick)


def _write_croissant(dataset: Dataset, dest: Destination) -> None:
    """Croissant metadata for every batch the destination holds, its file URLs relative to it."""
    from pipeline.croissant import document

    held = dest.manifests()
    if held:
        url = dest.root / CROISSANT
        parts = {(m.seq, entry["path"]): path
                 for m in held for entry, path in zip(m.data["files"], dest.part_paths(m), strict=True)}
        doc = document(dataset, held, lambda seq, path: os.path.relpath(parts[seq, path], url.parent))
        _write_atomic(url, canonical_bytes(doc))
