"""A dataset's provable history (SPEC §13.9): the history tree over every manifest's SHA-256, and
RFC 9162 consistency proofs between two anchored manifests' history roots.

A proof document (`anchorlake.history/1`) carries both manifests whole, so whoever checks it
needs only the chain: each manifest's hash must be the one BatchAnchor holds for its seq, and
the proof must lead from the earlier manifest's history root to the later one's. Then nothing
committed before the earlier batch was rewritten since; `(dataset, seq, manifest_sha256)`
names a whole training set.
"""

from __future__ import annotations

from typing import Any

from pipeline.core import manifest as manifests
from pipeline.core.consistency import consistency_proof, verify_consistency
from pipeline.core.manifest import Manifest, history_levels
from pipeline.core.merkle import levels_node
from pipeline.core.records import tagged_json
from pipeline.datasets import dataset_id
from pipeline.errors import BadInput, CheckFailed, FormatError

FORMAT = "anchorlake.history/1"


def proof_document(chain: list[Manifest], first: int, second: int) -> dict[str, Any]:
    """The consistency proof from the history of batch `first` to that of batch `second` (both
    in `chain`, the linked manifests of 0..second), checked before it is returned."""
    later = chain[second]
    if later.history is None or chain[first].history is None:
        raise CheckFailed(f"batch {first if chain[first].history is None else second} was committed before "
                          "manifests carried a history root (SPEC §13.9)")
    levels = history_levels([m.sha256 for m in chain[:second]])
    if levels[-1][:1] and levels[-1][0].hex() != later.history["root"]:
        raise CheckFailed(f"batch {second}: its history root {later.history['root']} is not the root over the "
                          f"manifests of batches 0..{second - 1}")
    proof = consistency_proof(first, second, levels_node(levels)) if first else []
    document = {"format": FORMAT, "dataset": later.data["dataset"], "proof": [h.hex() for h in proof],
                "from": _end(chain[first]), "to": _end(later)}
    check_proof(document, "the proof just made")
    return document


def _end(m: Manifest) -> dict[str, Any]:
    return {"seq": m.seq, "manifest_sha256": m.sha256, "manifest": m.data}


def check_proof(document: dict[str, Any], source: str) -> tuple[Manifest, Manifest]:
    """Offline half of the check: both manifests parse and hash to what the document says, name its
    dataset, and the proof leads from the first history root to the second. Returns both
    manifests; CheckFailed (or FormatError) naming what differs."""
    ends = []
    for key in ("from", "to"):
        end = document.get(key)
        if not isinstance(end, dict) or not isinstance(end.get("manifest"), dict):
            raise FormatError(source, key, "must hold a manifest")
        m = manifests.parse(manifests.serialize(end["manifest"]), f"{source} ({key})")
        if (m.sha256, m.seq, m.data["dataset"]) != (end.get("manifest_sha256"), end.get("seq"), document["dataset"]):
            raise CheckFailed(f"{source}: the {key} manifest is not {document['dataset']} batch {end.get('seq')} "
                              f"with SHA-256 {end.get('manifest_sha256')}")
        ends.append(m)
    first, second = ends
    if first.history is None or second.history is None or first.seq > second.seq:
        raise CheckFailed(f"{source}: needs two manifests with history roots, the earlier first")
    proof = document.get("proof")
    if not isinstance(proof, list) or not all(isinstance(h, str) and len(h) == 64 for h in proof):
        raise FormatError(source, "proof", "must be a list of 64-hex-character hashes")
    try:
        hashes = [bytes.fromhex(h) for h in proof]
    except ValueError:
        raise FormatError(source, "proof", "must be a list of 64-hex-character hashes") from None
    if first.seq == 0:  # the empty history is a prefix of every history
        if hashes:
            raise CheckFailed(f"{source}: a proof from the empty history must be empty")
    else:
        verify_consistency(first.seq, second.seq, bytes.fromhex(first.history["root"]),
                           bytes.fromhex(second.history["root"]), hashes)
    return first, second


def check_on_chain(document: dict[str, Any], source: str, chain: Any, batch_anchor: str, dataset: str) -> str:
    """check_proof, then both manifests against BatchAnchor at `batch_anchor` for `dataset`, all
    three given by the verifying user. Returns one line saying what was proven; CheckFailed else."""
    from pipeline.verify import manifest_anchored

    if document.get("dataset") != dataset:
        raise CheckFailed(f"{source} is about dataset {document.get('dataset')!r}, not {dataset!r}")
    first, second = check_proof(document, source)
    for m in (first, second):
        manifest_anchored(m, dataset_id(dataset), chain, batch_anchor)
    before = f"batches 0..{first.seq - 1}" if first.seq else "no batch"
    return (f"{dataset}: the history anchored at batch {first.seq} ({before}) is a prefix of the history "
            f"anchored at batch {second.seq}; both manifests anchored in BatchAnchor {batch_anchor}")


def load(raw: bytes, source: str) -> dict[str, Any]:
    """A proof document from its bytes; FormatError unless it is one."""
    data = tagged_json(raw, source, FORMAT)
    if not isinstance(data.get("dataset"), str):
        raise FormatError(source, "dataset", "missing")
    return data


def first_and_last(first: int | None, last: int | None, committed: int) -> tuple[int, int]:
    """The batches the user asked for, defaulting to 1 and the last one; BadInput unless both are
    among the `committed` batches (those both committed and anchored) and in order."""
    if committed == 0:
        raise BadInput("the dataset has no committed and anchored batches")
    second = committed - 1 if last is None else last
    first = min(1, second) if first is None else first
    if not 0 <= first <= second < committed:
        raise BadInput(f"--from and --to must be anchored batches with from <= to (0..{committed - 1}), "
                       f"got {first} and {second}")
    return first, second
