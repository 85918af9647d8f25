"""Manifest (SPEC §6): build, serialize as JCS, read back with validation."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pipeline import layout
from pipeline.errors import FormatError, NotFound
from pipeline.jcs import canonical_bytes

if TYPE_CHECKING:
    from pipeline.storage import Lake

FORMAT = "anchorlake.manifest/1"
_REQUIRED = ("dataset", "seq", "created_at", "previous", "sources", "counts", "schema", "suite",
             "files", "merkle", "rewards")


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


def serialize(data: dict[str, Any]) -> bytes:
    return canonical_bytes(data)


def parse(raw: bytes, source: str) -> Manifest:
    try:
        data = json.loads(raw)
    except ValueError as e:
        raise FormatError(source, "(file)", f"invalid JSON: {e}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise FormatError(source, "format", f"expected {FORMAT!r}")
    for key in _REQUIRED:
        if key not in data:
            raise FormatError(source, key, "missing")
    merkle = data["merkle"]
    if not isinstance(merkle, dict) or merkle.get("hash") != "sha256-rfc9162":
        raise FormatError(source, "merkle.hash", "expected 'sha256-rfc9162'")
    root = merkle.get("root")
    if not isinstance(root, str) or len(root) != 64:
        raise FormatError(source, "merkle.root", "must be 64 hex characters")
    counts = data["counts"]
    if counts["input"] != counts["accepted"] + counts["quarantined"] + counts["duplicate"]:
        raise FormatError(source, "counts", "input != accepted + quarantined + duplicate")
    return Manifest(data, hashlib.sha256(raw).hexdigest())


def load(lake: Lake, dataset: str, seq: int) -> Manifest:
    key = layout.manifest(dataset, seq)
    return parse(lake.read(key), lake.uri(key))


def committed_seqs(lake: Lake, dataset: str) -> list[int]:
    """Seqs that have a manifest, ascending."""
    seqs = []
    for obj in lake.list(f"batches/{dataset}/"):
        parts = obj.key.split("/")
        if len(parts) == 4 and parts[3] == "manifest.json" and parts[2].isdigit():
            seqs.append(int(parts[2]))
    return sorted(seqs)


def latest(lake: Lake, dataset: str) -> Manifest | None:
    seqs = committed_seqs(lake, dataset)
    if not seqs:
        return None
    try:
        return load(lake, dataset, seqs[-1])
    except NotFound:
        return None
