"""Lake keys (SPEC §3, §13.1). Every key anchorlake reads or writes is spelled here and nowhere else.

Keys are '/'-separated and relative to the lake root; `<seq>` is zero-padded to 6 digits. Names
of the files inside a batch (`TREE`, `QUARANTINE`, …) are relative to the batch's folder, as the
manifest's `files` and `artifacts` entries give them.
"""

from __future__ import annotations

import re

from pipeline.core.manifest import generation_name, plain_name  # noqa: F401  (names of batch files)

# Files inside batches/<dataset>/<seq>/.
MANIFEST = "manifest.json"
ANCHOR = "anchor.json"
QUARANTINE = "quarantine.parquet"
VALIDATION = "validation.json"
REWARDS = "rewards.parquet"
REWARDS_TREE = "rewards-tree.json"  # the cumulative ledger, an OpenZeppelin `standard-v1` dump
REWARDS_PUBLISHED = "rewards-published.json"
INDEX = "index.parquet"  # record id, dedupe key and contributor per leaf (batches before key slices)
TREE = "tree.bin"  # every node of the batch's Merkle tree (see pipeline.core.treefile)
DATA_DOCS_INDEX = "data-docs/index.html"


def seq_part(seq: int) -> str:
    return f"{seq:06d}"


def index_slice(slice_: int, slices: int) -> str:
    """The batch's index rows (record id, dedupe key, contributor) whose key is in slice `slice_`
    of `slices` (a power of two; by the key's first 32 bits), ordered by key."""
    return f"index/{slices:05d}-{slice_:05d}.parquet"


def index_slice_of(plain: str) -> tuple[int, int] | None:
    """(slice, slices) of an index file's plain name; (0, 1) for the unsliced index.parquet."""
    if plain == INDEX:
        return 0, 1
    match = re.fullmatch(r"index/(\d{5})-(\d{5})\.parquet", plain)
    return None if match is None else (int(match[2]), int(match[1]))


def part(number: int) -> str:
    """A data part, relative to its batch: leaf order is part order, then row order."""
    return f"data/part-{number:05d}.parquet"


def data_docs_page(number: int) -> str:
    """The Great Expectations Data Docs page of one validated chunk, relative to its batch."""
    return f"data-docs/validation-{number:05d}.html"


def incoming(dataset: str) -> str:
    return f"incoming/{dataset}/"


def contribution(dataset: str, sha256: str, filename: str) -> str:
    """Where `anchorlake contribute` drops a file: the content hash makes a second drop a no-op."""
    return f"{incoming(dataset)}{sha256[:16]}-{filename}"


def raw(dataset: str, seq: int, sha256: str, ext: str) -> str:
    return f"raw/{dataset}/{seq_part(seq)}/{sha256}.{ext}"


def raw_plan(dataset: str, seq: int) -> str:
    """The frozen list of sources of a batch, written once staging is complete."""
    return f"raw/{dataset}/{seq_part(seq)}/sources.json"


def private(dataset: str, seq: int) -> str:
    """What only the operator reads (§13.1): the raw text of the batch's rejected records."""
    return f"private/{dataset}/{seq_part(seq)}/"


REJECTED = "rejected.parquet"  # under private/<dataset>/<seq>/: source, line, raw SHA-256 and raw bytes

# What the read-only identity (AI teams, contributors' tools) may read in a lake (SPEC §13.1):
# committed batches, receipts, deployments and the Iceberg tables' metadata (a projection of
# batches/); never incoming/, raw/, private/ or state/.
ICEBERG = "iceberg"  # the default Iceberg warehouse, beside batches/
READER_PREFIXES = ("batches/", "receipts/", "deployments/", f"{ICEBERG}/")


def reader_actions(lake_url: str) -> list[str]:
    """SeaweedFS identity actions that read and list READER_PREFIXES of the s3:// lake, nothing else."""
    bucket, _, prefix = lake_url.removeprefix("s3://").partition("/")
    base = f"{bucket}/{prefix.strip('/')}/" if prefix.strip("/") else f"{bucket}/"
    return [f"{verb}:{base}{where}*" for where in READER_PREFIXES for verb in ("Read", "List")]


def seal(dataset: str, seq: int, manifest_sha256: str) -> str:
    """The commit seal of the manifest with this hash (see core.seal)."""
    return f"{state(dataset, seq)}seal-{manifest_sha256}.json"


def failed_plans(dataset: str) -> str:
    """Plans whose batch the suite refused as a whole: their sources are not staged again."""
    return f"state/{dataset}/failed/"


def failed_plan(dataset: str, plan_sha256: str) -> str:
    return f"{failed_plans(dataset)}{plan_sha256}.json"


def batches(dataset: str) -> str:
    return f"batches/{dataset}/"


def batch(dataset: str, seq: int) -> str:
    return f"{batches(dataset)}{seq_part(seq)}/"


def batch_file(dataset: str, seq: int, relative: str) -> str:
    return batch(dataset, seq) + relative


def manifest_seq(dataset: str, key: str) -> int | None:
    """The seq whose manifest `key` is, or None for any other key."""
    parts = key.split("/")
    if (len(parts) == 4 and parts[0] == "batches" and parts[1] == dataset and parts[3] == MANIFEST
            and len(parts[2]) == 6 and parts[2].isdigit()):
        return int(parts[2])
    return None


def receipts(dataset: str, seq: int) -> str:
    return f"receipts/{dataset}/{seq_part(seq)}/"


def receipts_index(dataset: str, seq: int) -> str:
    """Written after the receipts files of the batch and their offsets: it names them and means
    they are complete."""
    return f"{receipts(dataset, seq)}index.json"


RECEIPTS_NAME = re.compile(r"receipts-[0-9a-f]{32}").fullmatch


def receipts_file(dataset: str, seq: int, name: str) -> str:
    """Receipts of the batch, one JSON object a line, in contributor order, each line a gzip
    member of its own: the batch's receipts files, in the order its index lists them, hold every
    receipt once."""
    return f"{receipts(dataset, seq)}{name}.jsonl.gz"


def receipts_offsets(dataset: str, seq: int, name: str) -> str:
    """Where each contributor's receipt is: (contributor, file, offset, length)."""
    return f"{receipts(dataset, seq)}{name}.offsets.parquet"


def state(dataset: str, seq: int) -> str:
    """Operational state of a batch (intents, leases, re-anchor records); never read by verifiers."""
    return f"state/{dataset}/{seq_part(seq)}/"


def anchor_current(dataset: str, seq: int) -> str:
    """The batch's anchor after a reorganisation removed the one anchor.json records (which,
    like everything under batches/, is never rewritten)."""
    return f"{state(dataset, seq)}anchor-current.json"


def rewards_current(dataset: str, seq: int) -> str:
    """The batch's rewards publication after a reorganisation removed the one
    rewards-published.json records (write-once, like everything under batches/)."""
    return f"{state(dataset, seq)}rewards-current.json"


def intent(dataset: str, seq: int, step: str) -> str:
    """Operational state of a resumable transaction (nonce, signed attempts); rewritten freely."""
    return f"{state(dataset, seq)}{step}-intent.json"


def leases(dataset: str, seq: int) -> str:
    return f"{state(dataset, seq)}lease-"


def lease(dataset: str, seq: int, generation: int) -> str:
    return f"{leases(dataset, seq)}{generation:08d}.json"


def lease_generation(key: str) -> int | None:
    tail = key.rsplit("-", 1)[-1]
    return int(tail[:8]) if tail.endswith(".json") and tail[:8].isdigit() else None


def deployment(chain_id: int) -> str:
    return f"deployments/{chain_id}.json"
