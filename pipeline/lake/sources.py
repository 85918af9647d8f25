"""The drop zone and the staged sources of a batch at rest (SPEC §3): `incoming/`, `raw/` and
each batch's frozen plan `raw/<dataset>/<seq>/sources.json`."""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

from pipeline.core import records
from pipeline.core.signature import MAX_SIDECAR_BYTES, SIDECAR_SUFFIX, check_sidecar
from pipeline.errors import BadInput, CheckFailed, FormatError, NotFound
from pipeline.lake import layout
from pipeline.lake.records import create_once, read_record
from pipeline.lake.storage import Lake, ObjectInfo

_BLOCK = 8 << 20


@dataclass(frozen=True)
class Source:
    key: str
    sha256: str
    bytes: int
    raw_key: str
    version: str = ""  # the drop zone object's version when staged (see ObjectInfo.version)
    signer: str = ""  # in a signed dataset: the contributor whose valid signature the source carries
    signature: str = ""
    unsigned: str = ""  # in a signed dataset: why the source has no valid signature ("" if it has one)


@dataclass(frozen=True)
class SkippedSource:
    key: str
    sha256: str
    bytes: int
    reason: str  # "duplicate_source" (the same bytes under another key) or "not_a_regular_file"
    first_key: str | None
    version: str = ""


def contribute(lake: Lake, dataset: str, filename: str, data: bytes, sidecar: bytes | None = None) -> tuple[str, str]:
    """Drop a contribution file, after its signature sidecar when there is one; (its key, its
    SHA-256). The same bytes dropped twice are one object."""
    digest = hashlib.sha256(data).hexdigest()
    key = layout.contribution(dataset, digest, filename)
    if sidecar is not None:
        lake.write(key + SIDECAR_SUFFIX, sidecar)
    if not lake.exists(key):
        lake.write(key, data)
    return key, digest


def incoming(lake: Lake, dataset: str) -> Iterator[ObjectInfo]:
    """Sources in the dataset's drop zone, skipping dot-files (partial uploads, editor droppings)
    and signature sidecars (read beside their file, never sources of their own)."""
    for obj in lake.list(layout.incoming(dataset)):
        name = obj.key.rsplit("/", 1)[-1]
        if not name.startswith(".") and not name.endswith(SIDECAR_SUFFIX):
            yield obj


def signed_by(lake: Lake, dataset: str, key: str, sha256: str, size: int) -> dict[str, str]:
    """The signature fields of a Source for the file `key` of a signed dataset: signer and
    signature when its sidecar signs exactly these bytes, else why not (`unsigned`)."""
    try:
        with lake.open(key + SIDECAR_SUFFIX) as f:
            raw = f.read(MAX_SIDECAR_BYTES + 1)
    except NotFound:
        return {"unsigned": f"no signature beside it ({key.rsplit('/', 1)[-1]}{SIDECAR_SUFFIX})"}
    except BadInput:  # a link or special file in a file:// drop zone
        return {"unsigned": f"{key.rsplit('/', 1)[-1]}{SIDECAR_SUFFIX} is not a regular file"}
    try:
        sidecar = check_sidecar(raw, key.rsplit("/", 1)[-1] + SIDECAR_SUFFIX, dataset, sha256, size)
    except FormatError as e:
        return {"unsigned": str(e)[:300]}
    return {"signer": sidecar["signer"], "signature": sidecar["signature"]}


def refused_source(obj: ObjectInfo) -> SkippedSource:
    """A link or special file in a file:// drop zone, recorded as skipped and never read: its
    SHA-256 is that of where it points (a changed link is a new entry), never of what it reaches."""
    digest = hashlib.sha256(b"not a regular file:" + obj.target.encode("utf-8", "surrogateescape")).hexdigest()
    return SkippedSource(obj.key, digest, 0, "not_a_regular_file", None)


def copy_hashing(lake: Lake, key: str, scratch: Path, limit: int | None = None) -> tuple[Path, str, int]:
    """Stream an object (its first `limit` bytes, if given) to a scratch file, hashing as it goes:
    (local path, SHA-256, size)."""
    digest = hashlib.sha256()
    size = 0
    fd, tmp = tempfile.mkstemp(prefix="source-", dir=scratch)
    with os.fdopen(fd, "wb") as out, lake.open(key) as stream:
        while block := stream.read(_BLOCK if limit is None else max(0, min(_BLOCK, limit - size))):
            digest.update(block)
            out.write(block)
            size += len(block)
    return Path(tmp), digest.hexdigest(), size


def store_raw(lake: Lake, dataset: str, seq: int, obj: ObjectInfo, sha256: str, size: int, ext: str, local: Path,
              signature: dict[str, str] | None = None) -> Source:
    """Keep the byte-exact copy of a source of batch `seq` under raw/, moving the local copy
    `local` (its SHA-256 and size) there; `signature` from signed_by."""
    raw_key = layout.raw(dataset, seq, sha256, ext)
    lake.move_file(raw_key, local)  # even over a copy there already: that one was not hashed here
    return Source(obj.key, sha256, size, raw_key, obj.version, **(signature or {}))


def stored_bytes(lake: Lake, plan: list[Source]) -> int:
    """The bytes of the plan's raw copies as the lake holds them: what sizes a batch's work. The
    plan's own `bytes` is not used for that, since anyone who writes the lake can rewrite it."""
    sizes: dict[str, int] = {}
    for prefix in {source.raw_key.rsplit("/", 1)[0] + "/" for source in plan}:
        sizes |= {obj.key: obj.size for obj in lake.list(prefix)}
    return sum(sizes.get(source.raw_key, 0) for source in plan)


def staged_versions(lake: Lake, dataset: str, seqs: Iterable[int]) -> set[tuple[str, int, str]]:
    """(key, size, version) of every drop zone object the plans of batches `seqs` took or skipped,
    so a later staging knows them without downloading them again."""
    found: set[tuple[str, int, str]] = set()
    for seq in seqs:
        plan = load_plan(lake, dataset, seq)
        if plan is not None:
            found.update((s.key, s.bytes, s.version) for s in plan[0] if s.version)
            found.update((s.key, s.bytes, s.version) for s in plan[1] if s.version)
    return found


def load_plan(lake: Lake, dataset: str, seq: int) -> tuple[list[Source], list[SkippedSource]] | None:
    """The frozen sources of batch `seq`, or None if it was not staged."""
    data = read_record(lake, layout.raw_plan(dataset, seq), records.SOURCES)
    if data is None:
        return None
    return [Source(**s) for s in data["sources"]], [SkippedSource(**s) for s in data["skipped"]]


def save_plan(lake: Lake, dataset: str, seq: int, sources: list[Source], skipped: list[SkippedSource]) -> None:
    lake.write(layout.raw_plan(dataset, seq), records.SOURCES.dump({
        "dataset": dataset, "seq": seq, "sources": [asdict(s) for s in sources],
        "skipped": [asdict(s) for s in skipped]}))


def _plan_sha256(lake: Lake, dataset: str, seq: int) -> str | None:
    try:
        return hashlib.sha256(lake.read(layout.raw_plan(dataset, seq))).hexdigest()
    except NotFound:
        return None


def fail_plan(lake: Lake, dataset: str, seq: int, reason: str) -> None:
    """Record that batch `seq`'s plan was refused as a whole: the next staging leaves its sources
    out (they stay under raw/, the reason here) instead of trying the same plan for ever."""
    digest = _plan_sha256(lake, dataset, seq)
    staged = load_plan(lake, dataset, seq)
    if digest is None or staged is None:
        return
    create_once(lake, layout.failed_plan(dataset, digest), records.FAILED_PLAN, {
        "dataset": dataset, "seq": seq, "reason": reason[:2000], "sources": [asdict(s) for s in staged[0]],
        "skipped": [asdict(s) for s in staged[1]]})


def plan_failed(lake: Lake, dataset: str, seq: int) -> bool:
    """Whether the current plan of batch `seq` was refused (see fail_plan)."""
    digest = _plan_sha256(lake, dataset, seq)
    return digest is not None and lake.exists(layout.failed_plan(dataset, digest))


def failed_sources(lake: Lake, dataset: str) -> Iterator[tuple[str, str]]:
    """(key, sha256) of every source of a refused plan."""
    for obj in lake.list(layout.failed_plans(dataset)):
        data = read_record(lake, obj.key, records.FAILED_PLAN)
        for source in (data or {}).get("sources", []):
            yield str(source["key"]), str(source["sha256"])


def open_source(lake: Lake, source: Source, scratch: Path, seekable: bool) -> tuple[IO[bytes], Callable[[], None]]:
    """A stream over a staged source, and a check to call once parsing is done: it reads what is
    left and raises CheckFailed unless the bytes still match the source's SHA-256. `seekable`
    gives a private local copy in `scratch`, hashed as it is made and checked at once (Parquet
    needs random access, and the tasks that parse its row groups read the copy, not the lake's
    object, which could change meanwhile); the stream's `name` is its path."""
    if seekable:  # checked as soon as it is copied, and never copied past the bytes staged
        path, digest, size = copy_hashing(lake, source.raw_key, scratch, source.bytes + 1)
        _check(lake, source, digest, size)
        stream: IO[bytes] = open(path, "rb")
        return stream, lambda: None
    hasher = hashlib.sha256()
    reader = _HashingReader(lake.open(source.raw_key), hasher, source.bytes + 1)  # never read past what was staged
    stream = io.BufferedReader(reader, 1 << 20)

    def finish() -> None:
        while stream.read(_BLOCK):  # a parser may stop early (corrupt tail): hash it all
            pass
        _check(lake, source, hasher.hexdigest(), reader.size)

    return stream, finish


def read_checked(lake: Lake, key: str, at: int, length: int, sha256: str, what: str) -> bytes:
    """Bytes [at, at + length) of a stored source, which hashed to `sha256` when they were read
    before (`what` they hold, for messages); CheckFailed unless they still do."""
    try:
        data = lake.read_range(key, at, length)
    except (OSError, ValueError) as e:
        raise CheckFailed(f"{lake.uri(key)}: bytes {at}+{length} ({what}) cannot be read again ({e})") from None
    if len(data) != length or hashlib.sha256(data).hexdigest() != sha256:
        raise CheckFailed(f"{lake.uri(key)}: bytes {at}+{length} ({what}) no longer match sha256 {sha256}")
    return data


def _check(lake: Lake, source: Source, digest: str, size: int) -> None:
    """The bytes read are the source the plan names: its SHA-256 and its size (which the manifest
    repeats, so a plan that lies about it is refused rather than signed)."""
    if digest != source.sha256:
        raise CheckFailed(f"{lake.uri(source.raw_key)}: bytes no longer match sha256 {source.sha256}")
    if size != source.bytes:
        raise CheckFailed(f"{lake.uri(source.raw_key)}: {size} bytes, the staged plan says {source.bytes}")


class _HashingReader(io.RawIOBase):
    """Hashes every byte read through it, and ends after `limit` bytes."""

    def __init__(self, inner: Any, digest: Any, limit: int) -> None:
        self.inner, self.digest, self.size, self.limit = inner, digest, 0, limit

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self.inner.read(min(len(buffer), self.limit - self.size))
        self.digest.update(data)
        self.size += len(data)
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self.inner.close()
        super().close()
