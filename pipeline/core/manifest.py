"""Manifest (SPEC §6): built beside its validating reader; serialized as JCS. Pure."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pipeline.core.jcs import canonical_bytes
from pipeline.core.merkle import build_levels, leaf_hashes, root_from_levels
from pipeline.core.records import tagged_json
from pipeline.errors import FormatError

FORMAT = "anchorlake.manifest/1"
MERKLE_HASH = "sha256-rfc9162"
_REQUIRED = ("dataset", "seq", "created_at", "previous", "sources", "counts", "schema", "suite",
             "files", "merkle", "rewards")
COUNT_KINDS = ("accepted", "quarantined", "duplicate")


_GENERATION = re.compile(r"-g[1-9][0-9]*(?=\.[^./]+$)")


def generation_name(relative: str, generation: int) -> str:
    """The name a writer of lease `generation` gives a file: the plain name for the first writer,
    `<stem>-g<generation>.<ext>` for one that took the commit lease over. Each writer creates only
    names of its own, each once (a conditional create), so nothing an earlier, stalled writer still
    sends can land on a file another writer's manifest pins; the manifest names the files it pins."""
    if generation <= 0:
        return relative
    stem, _, ext = relative.rpartition(".")
    return f"{stem}-g{generation}.{ext}"


def plain_name(relative: str) -> str:
    """The plain name of a file whatever writer generation named it: `tree-g2.bin` -> `tree.bin`."""
    return _GENERATION.sub("", relative, count=1)


@dataclass(frozen=True)
class Manifest:
    data: dict[str, Any]
    sha256: str  # SHA-256 of the manifest file's bytes

    @property
    def seq(self) -> int:
        return int(self.data["seq"])

    @property
    def root(self) -> str:
        return str(self.data["merkle"]["root"])

    @property
    def tree_size(self) -> int:
        return int(self.data["merkle"]["tree_size"])

    @property
    def rewards(self) -> dict[str, Any]:
        return dict(self.data["rewards"])

    @property
    def history(self) -> dict[str, Any] | None:
        """`{tree_size, root}` over the earlier manifests (SPEC §13.9); None in a manifest older than it."""
        value = self.data.get("history")
        return dict(value) if isinstance(value, dict) else None

    def pinned(self, relative: str) -> dict[str, Any] | None:
        """The files or artifacts entry pinning `relative` (a path inside the batch), if any."""
        for entry in [*self.data["files"], *self.data.get("artifacts", [])]:
            if entry.get("path") == relative:
                return dict(entry)
        return None

    def artifact(self, plain: str) -> dict[str, Any] | None:
        """The artifacts entry of `plain` (tree.bin, …) under whatever generation name it was written."""
        for entry in self.data.get("artifacts", []):
            if plain_name(str(entry.get("path"))) == plain:
                return dict(entry)
        return None


@dataclass(frozen=True)
class SourceCounts:
    key: str
    sha256: str
    bytes: int
    accepted: int
    quarantined: int
    duplicate: int
    signer: str = ""  # a signed source's contributor (SPEC §13.7), with the signature anyone re-checks
    signature: str = ""

    def entry(self) -> dict[str, Any]:
        signed = {"signer": self.signer, "signature": self.signature} if self.signer else {}
        return {"key": self.key, "sha256": self.sha256, "bytes": self.bytes,
                "records": self.accepted + self.quarantined + self.duplicate,
                "accepted": self.accepted, "quarantined": self.quarantined, "duplicate": self.duplicate} | signed


def history_levels(manifest_hashes: Sequence[str]) -> list[list[bytes]]:
    """The levels of the dataset's history tree (SPEC §13.9): RFC 9162 over the leaves
    `manifest_sha256` (32 raw bytes each) of batches 0..n-1, leaf level first."""
    return build_levels(leaf_hashes([bytes.fromhex(h) for h in manifest_hashes]))


def history_entry(manifest_hashes: Sequence[str]) -> dict[str, Any]:
    """The manifest's `history` member for a batch whose earlier manifests hash to `manifest_hashes`."""
    return {"tree_size": len(manifest_hashes), "root": root_from_levels(history_levels(manifest_hashes)).hex()}


def build(*, dataset: str, seq: int, created_at: str, previous: Manifest | None, history: Sequence[str],
          sources: Sequence[SourceCounts], skipped: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str]], suite: Mapping[str, str],
          files: Sequence[Mapping[str, Any]], artifacts: Sequence[Mapping[str, Any]], tree_size: int, root: bytes,
          rewards: Mapping[str, Any]) -> dict[str, Any]:
    """The manifest body of a batch. Counts are summed from `sources`, so they add up by construction.

    Requires `previous` to be the manifest of seq - 1 (None for seq 0) and `history` the
    SHA-256s of the manifests of batches 0..seq-1, in order."""
    counts = {kind: sum(getattr(s, kind) for s in sources) for kind in COUNT_KINDS}
    return {
        "format": FORMAT,
        "dataset": dataset,
        "seq": seq,
        "created_at": created_at,
        "previous": None if previous is None else {"seq": previous.seq, "manifest_sha256": previous.sha256},
        "history": history_entry(history),
        "sources": [s.entry() for s in sources],
        "skipped_sources": [dict(s) for s in skipped],
        "counts": {"input": sum(counts.values()), **counts},
        "schema": {"columns": [{"name": name, "type": kind} for name, kind in columns]},
        "suite": dict(suite),
        "files": [dict(f) for f in files],
        "artifacts": [dict(a) for a in artifacts],
        "merkle": {"hash": MERKLE_HASH, "tree_size": tree_size, "root": root.hex()},
        "rewards": dict(rewards),
    }


def serialize(data: Mapping[str, Any]) -> bytes:
    return canonical_bytes(dict(data))


_SAFE_PARQUET = re.compile(r"(?:[A-Za-z0-9_-]+/)*[A-Za-z0-9_-][A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]+)*\.parquet")


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_files(files: Any, source: str) -> None:
    """`files`: data parts, each a relative `.parquet` path of plain names (no `..`, no leading `/`)
    whose file name no other part has, with a SHA-256, bytes and rows."""
    if not isinstance(files, list):
        raise FormatError(source, "files", "must be a list")
    names = set()
    for n, entry in enumerate(files):
        path = entry.get("path") if isinstance(entry, dict) else None
        if not isinstance(path, str) or not _SAFE_PARQUET.fullmatch(path) or path.rsplit("/", 1)[-1] in names \
                or not re.fullmatch(r"[0-9a-f]{64}", str(entry.get("sha256"))) \
                or not all(_whole(entry.get(k)) for k in ("bytes", "rows")):
            raise FormatError(source, f"files[{n}]", "must be {path: a relative .parquet path, its file name once; "
                                                      "sha256, bytes, rows}")
        names.add(path.rsplit("/", 1)[-1])


def parse(raw: bytes, source: str) -> Manifest:
    """Validate a manifest; raise FormatError naming the file and the field."""
    data = tagged_json(raw, source, FORMAT)
    for key in _REQUIRED:
        if key not in data:
            raise FormatError(source, key, "missing")
    merkle = data["merkle"]
    if not isinstance(merkle, dict) or merkle.get("hash") != MERKLE_HASH:
        raise FormatError(source, "merkle.hash", f"expected {MERKLE_HASH!r}")
    root = merkle.get("root")
    if not isinstance(root, str) or len(root) != 64:
        raise FormatError(source, "merkle.root", "must be 64 hex characters")
    if not isinstance(data["seq"], int) or isinstance(data["seq"], bool) or data["seq"] < 0 or \
            not isinstance(data["dataset"], str) or not _whole(merkle.get("tree_size")):
        raise FormatError(source, "seq/dataset/merkle.tree_size", "must be a whole number, a name, a whole number")
    _check_files(data["files"], source)
    history = data.get("history", {"tree_size": data["seq"], "root": "0" * 64})
    if not isinstance(history, dict) or history.get("tree_size") != data["seq"] or \
            not re.fullmatch(r"[0-9a-f]{64}", str(history.get("root"))):
        raise FormatError(source, "history", "must be {tree_size: seq, root: 64 hex characters}")
    counts = data["counts"]
    if not isinstance(counts, dict) or counts.get("input") != sum(counts.get(k, -1) for k in COUNT_KINDS):
        raise FormatError(source, "counts", "input != accepted + quarantined + duplicate")
    return Manifest(data, hashlib.sha256(raw).hexdigest())
