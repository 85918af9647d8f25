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


def stage_sources(lake: Lake, dataset: Dataset) -> int | None:
    """Freeze the sources of the next batch; return its seq, or None if nothing new arrived.

    Each source is hashed while it is copied byte-exact to `raw/`, so what is staged is exactly
    what was hashed even if the drop zone changes meanwhile. A plan written by an earlier (killed)
    run is reused as it is: sources that arrive later go to the next batch. A plan the suite
    refused as a whole is replaced by one of the sources that arrived since.
    """
    seq = next_seq(lake, dataset.name)
    if staging.load_plan(lake, dataset.name, seq) is not None and not staging.plan_failed(lake, dataset.name, seq):
        return seq
    first, seen = _ingested(lake, dataset.name)
    seen.update(staging.failed_sources(lake, dataset.name))  # a refused plan's sources are not tried again
    known = staging.staged_versions(lake, dataset.name, range(seq))  # recognised without downloading
    planned: list[Future[Source]] = []
    skipped: list[SkippedSource] = []
    with tempfile.TemporaryDirectory(prefix="anchorlake-stage-", dir=config.scratch_dir()) as scratch, \
            ThreadPoolExecutor(STAGE_THREADS) as pool:
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
            planned.append(pool.submit(staging.store_raw, lake, dataset.name, seq, obj, digest, size,
                                       source_extension(obj.key), local, signature))
        sources = [p.result() for p in planned]
    if not sources:
        return None
    staging.save_plan(lake, dataset.name, seq, sources, skipped)
    return seq


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
