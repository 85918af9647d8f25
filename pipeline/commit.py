"""Stage and commit a batch (SPEC §3, §6).

`stage_sources` freezes which incoming sources make batch `seq` and copies them byte-exact to
`raw/`. `commit_batch` turns the staged sources into accepted rows, quarantine, rewards and a
manifest. Everything before the manifest can be rewritten by a re-run; the manifest is created
exactly once and is the commit point.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import secrets
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pipeline import layout
from pipeline import manifest as manifests
from pipeline.datasets import Column, Dataset
from pipeline.errors import AlreadyExists, CheckFailed, FormatError, NotFound
from pipeline.ingest import Record, parse_source, source_extension
from pipeline.jcs import canonical_bytes
from pipeline.merkle import build_levels, root_from_levels
from pipeline.quality import run_suite
from pipeline.rewards import RULE, RewardsTree, split_proportional
from pipeline.rows import dedupe_key, record_leaf_hashes
from pipeline.storage import Lake

log = logging.getLogger(__name__)

SOURCES_FORMAT = "anchorlake.sources/1"
PART_ROWS = 500_000


@dataclass(frozen=True)
class Source:
    key: str
    sha256: str
    bytes: int
    raw_key: str


def _load_plan(lake: Lake, dataset: str, seq: int) -> list[Source] | None:
    key = layout.raw_plan(dataset, seq)
    try:
        data = json.loads(lake.read(key))
    except NotFound:
        return None
    except ValueError as e:
        raise FormatError(lake.uri(key), "(file)", f"invalid JSON: {e}") from None
    if data.get("format") != SOURCES_FORMAT:
        raise FormatError(lake.uri(key), "format", f"expected {SOURCES_FORMAT!r}")
    return [Source(s["key"], s["sha256"], int(s["bytes"]), s["raw_key"]) for s in data["sources"]]


def next_seq(lake: Lake, dataset: str) -> int:
    seqs = manifests.committed_seqs(lake, dataset)
    if seqs and seqs != list(range(len(seqs))):
        raise CheckFailed(f"dataset {dataset}: committed seqs are not contiguous: {seqs[:10]}...")
    return len(seqs)


def committed_source_hashes(lake: Lake, dataset: str) -> set[str]:
    hashes = set()
    for seq in manifests.committed_seqs(lake, dataset):
        for source in manifests.load(lake, dataset, seq).data["sources"]:
            hashes.add(source["sha256"])
    return hashes


def stage_sources(lake: Lake, dataset: Dataset) -> int | None:
    """Freeze the sources of the next batch; return its seq, or None if nothing new arrived.

    Idempotent: a plan written by an earlier (killed) run is reused as it is, so sources that
    arrive later go to the next batch.
    """
    seq = next_seq(lake, dataset.name)
    plan = _load_plan(lake, dataset.name, seq)
    if plan is not None:
        return seq
    seen = committed_source_hashes(lake, dataset.name)
    sources: list[Source] = []
    for obj in lake.list(layout.incoming(dataset.name)):
        data = lake.read(obj.key)
        digest = hashlib.sha256(data).hexdigest()
        if digest in seen:
            log.info("skipping %s: the same bytes were ingested already", obj.key)
            continue
        seen.add(digest)
        raw_key = layout.raw(dataset.name, seq, digest, source_extension(obj.key))
        if not lake.exists(raw_key):
            lake.write(raw_key, data)
        sources.append(Source(obj.key, digest, len(data), raw_key))
    if not sources:
        return None
    body = {"format": SOURCES_FORMAT, "dataset": dataset.name, "seq": seq,
            "sources": [s.__dict__ for s in sources]}
    lake.write(layout.raw_plan(dataset.name, seq), canonical_bytes(body))
    return seq


def _arrow_type(column_type: str) -> Any:
    import pyarrow as pa

    return {
        "string": pa.string(),
        "int64": pa.int64(),
        "float64": pa.float64(),
        "bool": pa.bool_(),
        "timestamp": pa.timestamp("us", tz="UTC"),
        "list<string>": pa.list_(pa.string()),
    }[column_type]


def arrow_schema(columns: tuple[Column, ...]) -> Any:
    import pyarrow as pa

    return pa.schema([pa.field(c.name, _arrow_type(c.type)) for c in columns])


def _parquet(table: Any) -> bytes:
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def _frame(dataset: Dataset, rows: list[dict[str, Any]]) -> Any:
    """The candidate rows as a pandas DataFrame indexed 0..n-1, for the quality gate."""
    return _table(dataset.committed_columns[:-1], rows).to_pandas()  # salt is not assigned yet


def _table(columns: tuple[Column, ...], rows: list[dict[str, Any]]) -> Any:
    import pyarrow as pa

    schema = arrow_schema(columns)
    return pa.Table.from_pydict({c.name: [r.get(c.name) for r in rows] for c in columns}, schema=schema)


def previous_ledger(lake: Lake, dataset: str, seq: int) -> dict[str, int]:
    """Cumulative amounts over batches 0..seq-1 (empty for seq 0)."""
    if seq == 0:
        return {}
    key = layout.rewards_tree(dataset, seq - 1)
    tree = RewardsTree.load(json.loads(lake.read(key)), lake.uri(key))
    return dict(tree.values)


def _prior_keys(lake: Lake, dataset: str, seq: int) -> dict[bytes, str]:
    import pyarrow.parquet as pq

    keys: dict[bytes, str] = {}
    for earlier in range(seq):
        table = pq.read_table(io.BytesIO(lake.read(layout.index(dataset, earlier))),
                              columns=["dedupe_key", "record_id"])
        for k, rid in zip(table.column("dedupe_key").to_pylist(), table.column("record_id").to_pylist(), strict=False):
            keys.setdefault(k, rid)
    return keys


def _artifact(lake: Lake, key: str, data: bytes) -> dict[str, Any]:
    lake.write(key, data)
    return {"path": key.split("/", 3)[3], "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def commit_batch(lake: Lake, dataset: Dataset, seq: int) -> manifests.Manifest:
    """Validate, dedupe and commit staged batch `seq`; return its manifest.

    Requires a staged plan for `seq` (see stage_sources). Re-running after the commit returns
    the committed manifest unchanged.
    """
    import pyarrow as pa

    name = dataset.name
    try:
        return manifests.load(lake, name, seq)
    except NotFound:
        pass
    plan = _load_plan(lake, name, seq)
    if plan is None:
        raise NotFound(f"dataset {name}: batch {seq} has no staged sources")

    records: list[Record] = []
    for index, source in enumerate(plan):
        data = lake.read(source.raw_key)
        if hashlib.sha256(data).hexdigest() != source.sha256:
            raise CheckFailed(f"{lake.uri(source.raw_key)}: bytes no longer match sha256 {source.sha256}")
        records.extend(parse_source(dataset, index, source.key, data))

    candidates = [r for r in records if r.values is not None]
    quality = run_suite(dataset, _frame(dataset, [r.values for r in candidates]))  # type: ignore[misc]
    for position, (reason, detail) in quality.failures.items():
        candidates[position].reject(reason, detail)
    candidates = [r for r in candidates if r.values is not None]

    columns = dataset.committed_columns
    for r in candidates:
        r.values["salt"] = secrets.token_hex(16)  # type: ignore[index]
    leaves = record_leaf_hashes(columns, [r.values for r in candidates])  # type: ignore[misc]
    prior = _prior_keys(lake, name, seq)
    seen: dict[bytes, str] = {}
    accepted: list[Record] = []
    accepted_leaves: list[bytes] = []
    accepted_keys: list[bytes] = []
    for r, leaf in zip(candidates, leaves, strict=False):
        key = dedupe_key(columns, dataset.dedupe_key, r.values)  # type: ignore[arg-type]
        first = prior.get(key) or seen.get(key)
        if first is not None:
            r.reject("duplicate", f"same {'+'.join(dataset.dedupe_key)} as record {first}")
            r.extra["duplicate_of"] = first
            continue
        seen[key] = leaf.hex()
        accepted.append(r)
        accepted_leaves.append(leaf)
        accepted_keys.append(key)

    counts: Counter[str] = Counter()
    per_source: list[Counter[str]] = [Counter() for _ in plan]
    for r in records:
        kind = "accepted" if r.values is not None else "duplicate" if r.reason == "duplicate" else "quarantined"
        counts[kind] += 1
        per_source[r.source][kind] += 1
    counts["input"] = len(records)
    if counts["input"] != counts["accepted"] + counts["quarantined"] + counts["duplicate"]:
        raise CheckFailed(f"dataset {name} batch {seq}: records are not conserved: {dict(counts)}")

    levels = build_levels(accepted_leaves)
    root = root_from_levels(levels)
    files = []
    for part, start in enumerate(range(0, max(len(accepted), 1), PART_ROWS)):
        rows = [r.values for r in accepted[start:start + PART_ROWS]]
        data = _parquet(_table(columns, rows))  # type: ignore[arg-type]
        entry = _artifact(lake, layout.data_part(name, seq, part), data)
        entry["rows"] = len(rows)
        files.append(entry)

    quarantined = [r for r in records if r.values is None]
    q_table = pa.table({
        "source_key": [plan[r.source].key for r in quarantined],
        "source_sha256": [plan[r.source].sha256 for r in quarantined],
        "line": pa.array([r.line for r in quarantined], pa.int64()),
        "contributor": pa.array([r.contributor for r in quarantined], pa.string()),
        "reason": pa.array([r.reason for r in quarantined], pa.string()),
        "detail": pa.array([r.detail for r in quarantined], pa.string()),
        "raw": pa.array([r.raw for r in quarantined], pa.string()),
        "duplicate_of": pa.array([r.extra.get("duplicate_of") for r in quarantined], pa.string()),
    })
    artifacts = [_artifact(lake, layout.quarantine(name, seq), _parquet(q_table))]

    index_table = pa.table({
        "record_id": pa.array([leaf.hex() for leaf in accepted_leaves], pa.string()),
        "dedupe_key": pa.array(accepted_keys, pa.binary(32)),
        "contributor": pa.array([r.contributor for r in accepted], pa.string()),
    })
    artifacts.append(_artifact(lake, layout.index(name, seq), _parquet(index_table)))
    artifacts.append(_artifact(lake, layout.validation(name, seq), canonical_bytes(
        {"format": "anchorlake.validation/1", "suite": dataset.suite_path.name, "gx": quality.validation})))

    # Rewards: proportional split of this batch's pool, then the cumulative ledger and its tree.
    weights: Counter = Counter()
    per_contributor: dict[str, Counter] = {}
    for r in records:
        if r.contributor is None:
            continue
        c = per_contributor.setdefault(r.contributor, Counter())
        kind = "accepted" if r.values is not None else "duplicate" if r.reason == "duplicate" else "quarantined"
        c[kind] += 1
    for r in accepted:
        column = dataset.rewards.weight_column
        weight = 1 if column is None else max(int(r.values.get(column) or 0), 0)  # type: ignore[union-attr]
        weights[r.contributor] += weight  # type: ignore[index]
    amounts = split_proportional(dataset.rewards.pool, dict(weights))
    ledger = previous_ledger(lake, name, seq)
    for contributor, amount in amounts.items():
        ledger[contributor] = ledger.get(contributor, 0) + amount
    tree = RewardsTree.build(sorted(ledger.items()))
    contributors = sorted(per_contributor)
    rewards_table = pa.table({
        "contributor": pa.array(contributors, pa.string()),
        "accepted": pa.array([per_contributor[c]["accepted"] for c in contributors], pa.int64()),
        "quarantined": pa.array([per_contributor[c]["quarantined"] for c in contributors], pa.int64()),
        "duplicate": pa.array([per_contributor[c]["duplicate"] for c in contributors], pa.int64()),
        "weight": pa.array([weights.get(c, 0) for c in contributors], pa.int64()),
        # uint256 base units do not fit int64: decimal strings.
        "amount": pa.array([str(amounts.get(c, 0)) for c in contributors], pa.string()),
        "cumulative_amount": pa.array([str(ledger.get(c, 0)) for c in contributors], pa.string()),
    })
    rewards_entry = _artifact(lake, layout.rewards(name, seq), _parquet(rewards_table))
    artifacts.append(rewards_entry)
    artifacts.append(_artifact(lake, layout.rewards_tree(name, seq), canonical_bytes(tree.dump())))

    previous = None
    if seq > 0:
        prev = manifests.load(lake, name, seq - 1)
        previous = {"seq": seq - 1, "manifest_sha256": prev.sha256}
    body = {
        "format": manifests.FORMAT,
        "dataset": name,
        "seq": seq,
        "created_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "previous": previous,
        "sources": [
            {"key": s.key, "sha256": s.sha256, "bytes": s.bytes, "records": sum(
                per_source[i][k] for k in ("accepted", "quarantined", "duplicate")),
             "accepted": per_source[i]["accepted"], "quarantined": per_source[i]["quarantined"],
             "duplicate": per_source[i]["duplicate"]}
            for i, s in enumerate(plan)
        ],
        "counts": {k: counts[k] for k in ("input", "accepted", "quarantined", "duplicate")},
        "schema": {"columns": [{"name": c.name, "type": c.type} for c in columns]},
        "suite": {"name": dataset.suite_path.name, "sha256": dataset.suite_sha256()},
        "files": files,
        "artifacts": artifacts,
        "merkle": {"hash": "sha256-rfc9162", "tree_size": len(accepted_leaves), "root": root.hex()},
        "rewards": {
            "unit": dataset.rewards.unit,
            "pool": str(dataset.rewards.pool),
            "total": str(sum(amounts.values())),
            "cumulative_total": str(sum(ledger.values())),
            "rule": RULE,
            "payout": dataset.rewards.payout,
            "file": "rewards.parquet",
            "tree": "rewards-tree.json",
            "root": tree.root.hex(),
        },
    }
    raw = manifests.serialize(body)
    try:
        lake.create(layout.manifest(name, seq), raw)
    except AlreadyExists:
        # Another writer committed this seq first; theirs is the batch.
        log.warning("dataset %s batch %d was committed by another writer", name, seq)
    return manifests.load(lake, name, seq)
