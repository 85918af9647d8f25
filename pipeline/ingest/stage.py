"""Stage a batch: freeze which incoming sources make batch `seq`, each copied byte-exact to raw/."""

from __future__ import annotations

import os
import tempfile
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from pathlib import Path

from pipeline import config
from pipeline.datasets import Dataset
from pipeline.ingest.parse import source_extension
from pipeline.lake import sources as staging
from pipeline.lake.batch import BatchFiles, committed_seqs
from pipeline.lake.sources import SkippedSource, Source
from pipeline.lake.storage import Lake, ObjectInfo

STAGE_THREADS = 8  # sources copied to raw/ at once: an object store answers many requests in parallel
HOLD_BYTES = 1 << 30  # copies held in scratch space while the suite is still being checked


def next_seq(lake: Lake, dataset: str) -> int:
    """The seq of the next batch: one past the committed ones (see committed_seqs)."""
    return len(committed_seqs(lake, dataset))


def _ingested(lake: Lake, dataset: str) -> tuple[dict[str, str], set[tuple[str, str]]]:
    """(sha256 -> first key, {(key, sha256)} seen) over every committed batch."""
    first: dict[str, str] = {}
    seen: set[tuple[str, str]] = set()
    for seq in committed_seqs(lake, dataset):
        data = BatchFiles(lake, dataset, seq).manifest().data
        for s in data["sources"]:
            first.setdefault(s["sha256"], s["key"])
            seen.add((s["key"], s["sha256"]))
        for s in data.get("skipped_sources", []):
            seen.add((s["key"], s["sha256"]))
    return first, seen


def stage_sources(lake: Lake, dataset: Dataset, gate: Future[None] | None = None) -> int | None:
    """Freeze the sources of the next batch; return its seq, or None if nothing new arrived.

    Each source is hashed while it is copied byte-exact to `raw/`, so what is staged is exactly
    what was hashed even if the drop zone changes meanwhile. A plan written by an earlier (killed)
    run is reused as it is: sources that arrive later go to the next batch. A plan the suite
    refused as a whole is replaced by one of the sources that arrived since. Nothing is put in
    `raw/` before `gate` (say, the check of the dataset's suite) has a result, and nothing at all
    if it raises: the copying goes on meanwhile, into scratch space (up to HOLD_BYTES).
    """
    seq = next_seq(lake, dataset.name)
    if staging.load_plan(lake, dataset.name, seq) is not None and not staging.plan_failed(lake, dataset.name, seq):
        return seq
    first, seen = _ingested(lake, dataset.name)
    seen.update(staging.failed_sources(lake, dataset.name))  # a refused plan's sources are not tried again
    known = staging.staged_versions(lake, dataset.name, range(seq))  # recognised without downloading
    skipped: list[SkippedSource] = []
    with tempfile.TemporaryDirectory(prefix="anchorlake-stage-", dir=config.scratch_dir()) as scratch, \
            ThreadPoolExecutor(STAGE_THREADS) as pool:
        storing = _Storing(pool, lake, dataset.name, seq, gate)
        for obj, copy in _read_ahead(pool, lake, staging.incoming(lake, dataset.name), known, Path(scratch)):
            if copy is None:  # a link or special file: recorded, never read
                refused = staging.refused_source(obj)
                if (obj.key, refused.sha256) not in seen:
                    seen.add((obj.key, refused.sha256))
                    skipped.append(refused)
                continue
            local, digest, size = copy.result()
            if (obj.key, digest) in seen:
                os.unlink(local)
                continue
            seen.add((obj.key, digest))
            if digest in first:
                skipped.append(SkippedSource(obj.key, digest, size, "duplicate_source", first[digest], obj.version))
                os.unlink(local)
                continue
            first[digest] = obj.key
            signature = staging.signed_by(lake, dataset.name, obj.key, digest, size) if dataset.signed else None
            storing.add(obj, digest, size, local, signature)
        sources = storing.sources()
    if not sources:
        return None
    staging.save_plan(lake, dataset.name, seq, sources, skipped)
    return seq


class _Storing:
    """Moves the copies of a batch's sources to raw/ in the pool once `gate` has a result (which
    raises if the batch is refused): until then they are held in scratch space, up to
    HOLD_BYTES, and then the gate is waited for."""

    def __init__(self, pool: Executor, lake: Lake, dataset: str, seq: int, gate: Future[None] | None) -> None:
        self.pool, self.lake, self.dataset, self.seq, self.gate = pool, lake, dataset, seq, gate
        self.held: list[tuple[ObjectInfo, str, int, Path, dict[str, str] | None]] = []
        self.held_bytes = 0
        self.planned: list[Future[Source]] = []

    def add(self, obj: ObjectInfo, digest: str, size: int, local: Path, signature: dict[str, str] | None) -> None:
        self.held.append((obj, digest, size, local, signature))
        self.held_bytes += size
        if self.gate is None or self.gate.done() or self.held_bytes > HOLD_BYTES:
            self._store_held()

    def _store_held(self) -> None:
        if self.gate is not None:
            self.gate.result()
            self.gate = None
        self.planned += [self.pool.submit(staging.store_raw, self.lake, self.dataset, self.seq, obj, digest, size,
                                          source_extension(obj.key), local, signature)
                         for obj, digest, size, local, signature in self.held]
        self.held, self.held_bytes = [], 0

    def sources(self) -> list[Source]:
        """Every source added, stored (the gate passed, if any was added)."""
        if self.held:
            self._store_held()
        return [p.result() for p in self.planned]


def _read_ahead(pool: Executor, lake: Lake, objects: Iterable[ObjectInfo], known: set[tuple[str, int, str]],
                scratch: Path) -> Iterator[tuple[ObjectInfo, Future[tuple[Path, str, int]] | None]]:
    """The drop zone's objects in order, each regular one not staged before with its copy being
    made by the pool (a few ahead of the one being looked at); None for a link or special file."""
    window: deque[tuple[ObjectInfo, Future[tuple[Path, str, int]] | None]] = deque()
    for obj in objects:
        if obj.regular and obj.version and (obj.key, obj.size, obj.version) in known:
            continue
        window.append((obj, pool.submit(staging.copy_hashing, lake, obj.key, scratch) if obj.regular else None))
        if len(window) > 2 * STAGE_THREADS:
            yield window.popleft()
    yield from window
