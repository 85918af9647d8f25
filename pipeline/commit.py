"""Stage and commit a batch (SPEC §3, §6).

`stage_sources` freezes which incoming sources make batch `seq` and copies each byte-exact to
`raw/`. `commit_batch` streams the staged sources in chunks through typing, the quality gate and
dedupe, writes accepted rows, quarantine, rewards and a manifest. Everything before the manifest
can be rewritten by a re-run; the manifest is created exactly once and is the commit point.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tempfile
from collections import Counter, deque
from collections.abc import Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeline import layout, treefile
from pipeline import manifest as manifests
from pipeline.datasets import Column, Dataset
from pipeline.dedupe import PriorKeys
from pipeline.errors import AlreadyExists, CheckFailed, NotFound
from pipeline.ingest import Block, parse_source, source_extension, source_format
from pipeline.jcs import canonical_bytes
from pipeline.lease import Lease
from pipeline.quality import QualityReport
from pipeline.rewards import RULE, RewardsTree, split_proportional
from pipeline.storage import Lake

log = logging.getLogger(__name__)

SOURCES_FORMAT = "anchorlake.sources/1"
CHUNK_RECORDS = 100_000
MAX_IN_FLIGHT = 8  # blocks being parsed by the pool at once (bounds memory)
_COPY_BLOCK = 8 << 20


@dataclass(frozen=True)
class Source:
    key: str
    sha256: str
    bytes: int
    raw_key: str


@dataclass(frozen=True)
class SkippedSource:
    key: str
    sha256: str
    bytes: int
    reason: str  # "duplicate_source": the same bytes were ingested under another key
    first_key: str


def _load_plan(lake: Lake, dataset: str, seq: int) -> tuple[list[Source], list[SkippedSource]] | None:
    data = lake.read_json(layout.raw_plan(dataset, seq), SOURCES_FORMAT, missing_ok=True)
    if data is None:
        return None
    return ([Source(**s) for s in data["sources"]], [SkippedSource(**s) for s in data.get("skipped", [])])


def next_seq(lake: Lake, dataset: str) -> int:
    seqs = manifests.committed_seqs(lake, dataset)
    if seqs and seqs != list(range(len(seqs))):
        raise CheckFailed(f"dataset {dataset}: committed seqs are not contiguous: {seqs[:10]}...")
    return len(seqs)


def _ingested(lake: Lake, dataset: str) -> tuple[dict[str, str], set[tuple[str, str]]]:
    """(sha256 -> first key, {(key, sha256)} seen) over every committed batch."""
    first: dict[str, str] = {}
    seen: set[tuple[str, str]] = set()
    for seq in manifests.committed_seqs(lake, dataset):
        data = manifests.load(lake, dataset, seq).data
        for s in data["sources"]:
            first.setdefault(s["sha256"], s["key"])
            seen.add((s["key"], s["sha256"]))
        for s in data.get("skipped_sources", []):
            seen.add((s["key"], s["sha256"]))
    return first, seen


def _copy_hashing(lake: Lake, key: str, scratch: Path) -> tuple[Path, str, int]:
    """Stream an incoming object to a scratch file, hashing as it goes."""
    digest = hashlib.sha256()
    size = 0
    fd, tmp = tempfile.mkstemp(prefix="source-", dir=scratch)
    with os.fdopen(fd, "wb") as out, lake.open(key) as stream:
        while block := stream.read(_COPY_BLOCK):
            digest.update(block)
            out.write(block)
            size += len(block)
    return Path(tmp), digest.hexdigest(), size


def stage_sources(lake: Lake, dataset: Dataset) -> int | None:
    """Freeze the sources of the next batch; return its seq, or None if nothing new arrived.

    Each source is hashed while it is copied byte-exact to `raw/`, so what is staged is exactly
    what was hashed even if the drop zone changes meanwhile. A plan written by an earlier (killed)
    run is reused as it is: sources that arrive later go to the next batch.
    """
    seq = next_seq(lake, dataset.name)
    if _load_plan(lake, dataset.name, seq) is not None:
        return seq
    first, seen = _ingested(lake, dataset.name)
    sources: list[Source] = []
    skipped: list[SkippedSource] = []
    with tempfile.TemporaryDirectory(prefix="anchorlake-stage-") as scratch:
        for obj in lake.list(layout.incoming(dataset.name)):
            if obj.key.rsplit("/", 1)[-1].startswith("."):
                continue  # partial uploads and editor droppings
            local, digest, size = _copy_hashing(lake, obj.key, Path(scratch))
            if (obj.key, digest) in seen:
                os.unlink(local)
                continue
            seen.add((obj.key, digest))
            if digest in first:
                skipped.append(SkippedSource(obj.key, digest, size, "duplicate_source", first[digest]))
                os.unlink(local)
                continue
            first[digest] = obj.key
            raw_key = layout.raw(dataset.name, seq, digest, source_extension(obj.key))
            if not lake.exists(raw_key):
                lake.write_file(raw_key, local)
            os.unlink(local)
            sources.append(Source(obj.key, digest, size, raw_key))
    if not sources:
        return None
    body = {"format": SOURCES_FORMAT, "dataset": dataset.name, "seq": seq,
            "sources": [asdict(s) for s in sources], "skipped": [asdict(s) for s in skipped]}
    lake.write(layout.raw_plan(dataset.name, seq), canonical_bytes(body))
    return seq


# --- Arrow and Parquet ------------------------------------------------------------------------


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


def _table(columns: tuple[Column, ...], data: dict[str, list[Any]], rows: list[int] | None = None) -> Any:
    """Committed values (timestamps in canonical string form) as an Arrow table, optionally
    only the rows at the given positions."""
    import pyarrow as pa

    arrays = []
    for c in columns:
        values = data[c.name] if rows is None else [data[c.name][i] for i in rows]
        if c.type == "timestamp":
            arrays.append(pa.array(values, pa.string()).cast(_arrow_type("timestamp")))
        else:
            arrays.append(pa.array(values, _arrow_type(c.type)))
    return pa.Table.from_arrays(arrays, schema=arrow_schema(columns))


def _parquet(table: Any) -> bytes:
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


QUARANTINE_COLUMNS = ("source_key", "source_sha256", "line", "contributor", "reason", "detail", "raw", "duplicate_of")


def _quarantine_schema() -> Any:
    import pyarrow as pa

    return pa.schema([("source_key", pa.string()), ("source_sha256", pa.string()), ("line", pa.int64()),
                      ("contributor", pa.string()), ("reason", pa.string()), ("detail", pa.string()),
                      ("raw", pa.string()), ("duplicate_of", pa.string())])


def _index_schema() -> Any:
    import pyarrow as pa

    return pa.schema([("record_id", pa.string()), ("dedupe_key", pa.binary(32)), ("contributor", pa.string())])


# --- committing -------------------------------------------------------------------------------


class BatchBuilder:
    """Accumulates one batch block by block, validating and writing a data part per chunk."""

    def __init__(self, lake: Lake, dataset: Dataset, seq: int, plan: list[Source], scratch: Path,
                 chunk_records: int = CHUNK_RECORDS) -> None:
        import pyarrow.parquet as pq

        self.lake, self.dataset, self.seq, self.plan = lake, dataset, seq, plan
        self.chunk_records = chunk_records
        self.columns = dataset.committed_columns
        self.prior = PriorKeys.load(lake, dataset.name, seq)
        self.quality = QualityReport(dataset)
        self.seen: dict[bytes, int] = {}
        self.leaves: list[bytes] = []
        self.files: list[dict[str, Any]] = []
        self.counts: Counter[str] = Counter()
        self.per_source: list[Counter[str]] = [Counter() for _ in plan]
        self.per_contributor: dict[str, Counter[str]] = {}
        self.weights: Counter[str] = Counter()
        self.pending: list[Block] = []
        self.pending_rows = 0
        self.quarantine_path = scratch / "quarantine.parquet"
        self.index_path = scratch / "index.parquet"
        self.quarantine = pq.ParquetWriter(self.quarantine_path, _quarantine_schema(), compression="zstd")
        self.index = pq.ParquetWriter(self.index_path, _index_schema(), compression="zstd")

    def add(self, block: Block) -> None:
        self.pending.append(block)
        self.pending_rows += len(block)
        if self.pending_rows >= self.chunk_records:
            self.flush()

    def flush(self) -> None:
        """Validate, dedupe and write the pending blocks as one chunk."""
        import pyarrow as pa

        blocks, self.pending, self.pending_rows = self.pending, [], 0
        if not blocks:
            return
        source: list[int] = []
        for b in blocks:
            source += [b.source] * len(b)
        line = [x for b in blocks for x in b.line]
        raw = [x for b in blocks for x in b.raw]
        reason = [x for b in blocks for x in b.reason]
        detail = [x for b in blocks for x in b.detail]
        contributor = [x for b in blocks for x in b.contributor]
        leaf = [x for b in blocks for x in b.leaf]
        key = [x for b in blocks for x in b.key]
        n = len(line)
        duplicate_of: list[str | None] = [None] * n

        typed = [i for i in range(n) if reason[i] is None]
        table = _table(self.columns, {c.name: [x for b in blocks for x in b.values[c.name]] for c in self.columns},
                       typed)
        if typed:
            wanted = self.quality.columns
            if wanted is not None and not set(wanted) <= set(table.column_names):
                wanted = None  # the suite names an unknown column: let GX say which, clearly
            frame = (table if wanted is None else table.select(wanted)).to_pandas()
            for position, (why, what) in self.quality.validate(frame).failures.items():
                reason[typed[position]], detail[typed[position]] = why, what

        key_columns = "+".join(self.dataset.dedupe_key)
        survivors = [j for j, i in enumerate(typed) if reason[i] is None]
        earlier = self.prior.lookup([key[typed[j]] for j in survivors])  # type: ignore[misc]
        accepted: list[int] = []  # positions in `typed` (rows of `table`)
        for j, prior_id in zip(survivors, earlier, strict=True):
            i = typed[j]
            if prior_id is not None:
                reason[i], detail[i], duplicate_of[i] = (
                    "duplicate", f"same {key_columns} as record {prior_id} of an earlier batch", prior_id)
                continue
            first = self.seen.get(key[i])  # type: ignore[arg-type]
            if first is not None:
                first_id = self.leaves[first].hex()
                reason[i], detail[i], duplicate_of[i] = "duplicate", f"same {key_columns} as record {first_id}", first_id
                continue
            self.seen[key[i]] = len(self.leaves)  # type: ignore[index]
            self.leaves.append(leaf[i])  # type: ignore[arg-type]
            accepted.append(j)

        weight_column = self.dataset.rewards.weight_column
        weights = table.column(weight_column).to_pylist() if weight_column else None
        for j in accepted:
            self.weights[contributor[typed[j]]] += 1 if weights is None else max(int(weights[j] or 0), 0)  # type: ignore[index]
        for i in range(n):
            kind = "accepted" if reason[i] is None else "duplicate" if reason[i] == "duplicate" else "quarantined"
            self.counts[kind] += 1
            self.per_source[source[i]][kind] += 1
            who = contributor[i]
            if who is not None:
                counter = self.per_contributor.get(who)
                if counter is None:
                    counter = self.per_contributor[who] = Counter()
                counter[kind] += 1

        if accepted:
            data = _parquet(table.take(accepted))
            part_key = layout.data_part(self.dataset.name, self.seq, len(self.files))
            self.lake.write(part_key, data)
            self.files.append({"path": part_key.split("/", 3)[3], "sha256": hashlib.sha256(data).hexdigest(),
                               "bytes": len(data), "rows": len(accepted)})
            self.index.write_table(pa.table({
                "record_id": pa.array([leaf[typed[j]].hex() for j in accepted], pa.string()),  # type: ignore[union-attr]
                "dedupe_key": pa.array([key[typed[j]] for j in accepted], pa.binary(32)),
                "contributor": pa.array([contributor[typed[j]] for j in accepted], pa.string()),
            }, schema=_index_schema()))
        rejected = [i for i in range(n) if reason[i] is not None]
        if rejected:
            self.quarantine.write_table(pa.table({
                "source_key": [self.plan[source[i]].key for i in rejected],
                "source_sha256": [self.plan[source[i]].sha256 for i in rejected],
                "line": pa.array([line[i] for i in rejected], pa.int64()),
                "contributor": pa.array([contributor[i] for i in rejected], pa.string()),
                "reason": pa.array([reason[i] for i in rejected], pa.string()),
                "detail": pa.array([detail[i] for i in rejected], pa.string()),
                "raw": pa.array([_text(raw[i]) for i in rejected], pa.string()),
                "duplicate_of": pa.array([duplicate_of[i] for i in rejected], pa.string()),
            }, schema=_quarantine_schema()))

    def close_writers(self) -> None:
        self.quarantine.close()
        self.index.close()


def _text(raw: bytes | str) -> str:
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw


def _blocks(lake: Lake, dataset: Dataset, plan: list[Source], scratch: Path,
            pool: Executor | None) -> Iterator[Block]:
    """Every record of every staged source in blocks, in plan order, checking each source's SHA-256.

    With a pool, up to MAX_IN_FLIGHT blocks are being parsed while earlier ones are consumed.
    """
    window: deque[Block | Future[Block]] = deque()
    for index, source in enumerate(plan):
        fmt, _ = source_format(source.key)
        digest = hashlib.sha256()
        stream: Any
        if fmt == "parquet":  # Parquet needs random access: read from a local copy
            path = lake.local_copy(source.raw_key, scratch)
            _hash_file(path, digest)
            stream = open(path, "rb")
        else:
            stream = io.BufferedReader(_HashingReader(lake.open(source.raw_key), digest), 1 << 20)
        with stream:
            for item in parse_source(dataset, index, source.key, stream, pool):
                window.append(item)
                while len(window) > MAX_IN_FLIGHT:
                    yield _resolve(window.popleft())
            while stream.read(_COPY_BLOCK):  # a parser may stop early (corrupt tail): hash it all
                pass
        if digest.hexdigest() != source.sha256:
            raise CheckFailed(f"{lake.uri(source.raw_key)}: bytes no longer match sha256 {source.sha256}")
    while window:
        yield _resolve(window.popleft())


def _resolve(item: Block | Future[Block]) -> Block:
    return item if isinstance(item, Block) else item.result()


class _HashingReader(io.RawIOBase):
    """Hashes every byte read through it."""

    def __init__(self, inner: Any, digest: Any) -> None:
        self.inner, self.digest = inner, digest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self.inner.read(len(buffer))
        self.digest.update(data)
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self.inner.close()
        super().close()


def previous_ledger(lake: Lake, dataset: str, seq: int) -> dict[str, int]:
    """Cumulative amounts over batches 0..seq-1 (empty for seq 0)."""
    if seq == 0:
        return {}
    key = layout.rewards_tree(dataset, seq - 1)
    tree = RewardsTree.load(json.loads(lake.read(key)), lake.uri(key))
    return dict(tree.values)


def _artifact(lake: Lake, key: str, data: bytes) -> dict[str, Any]:
    lake.write(key, data)
    return {"path": key.split("/", 3)[3], "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def _hash_file(path: Path, digest: Any) -> Any:
    """Feed a local file to `digest` in blocks (memory stays bounded) and return the digest."""
    with open(path, "rb") as f:
        while block := f.read(_COPY_BLOCK):
            digest.update(block)
    return digest


def _file_artifact(lake: Lake, key: str, path: Path) -> dict[str, Any]:
    digest = _hash_file(path, hashlib.sha256())
    lake.write_file(key, path)
    return {"path": key.split("/", 3)[3], "sha256": digest.hexdigest(), "bytes": path.stat().st_size}


def _pool() -> Executor | None:
    """Worker processes for parsing and hashing, one per core; None on a single core."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if cores < 2:
        return None
    import multiprocessing

    return ProcessPoolExecutor(max_workers=cores, mp_context=multiprocessing.get_context("fork"))


def commit_batch(lake: Lake, dataset: Dataset, seq: int, chunk_records: int = CHUNK_RECORDS,
                 lease_ttl: float = 120.0) -> manifests.Manifest:
    """Validate, dedupe and commit staged batch `seq`; return its manifest.

    Requires a staged plan for `seq` (see stage_sources). Re-running after the commit returns
    the committed manifest unchanged. Raises BatchRejected (nothing committed) if the suite
    refuses the batch, CheckFailed if records are not conserved.
    """

    name = dataset.name
    try:
        return manifests.load(lake, name, seq)
    except NotFound:
        pass
    staged = _load_plan(lake, name, seq)
    if staged is None:
        raise NotFound(f"dataset {name}: batch {seq} has no staged sources")
    plan, skipped = staged
    lease = Lease(lake, name, seq, lease_ttl).acquire()
    try:
        return _commit_leased(lake, dataset, seq, plan, skipped, chunk_records, lease)
    finally:
        lease.release()


def _commit_leased(lake: Lake, dataset: Dataset, seq: int, plan: list[Source], skipped: list[SkippedSource],
                   chunk_records: int, lease: Lease) -> manifests.Manifest:
    import pyarrow as pa

    name = dataset.name
    try:
        return manifests.load(lake, name, seq)  # committed while we waited for the lease
    except NotFound:
        pass

    with tempfile.TemporaryDirectory(prefix="anchorlake-commit-") as tmp:
        scratch = Path(tmp)
        builder = BatchBuilder(lake, dataset, seq, plan, scratch, chunk_records)
        pool = _pool()
        try:
            for block in _blocks(lake, dataset, plan, scratch, pool):
                lease.renew()
                builder.add(block)
            builder.flush()
        finally:
            builder.close_writers()
            if pool is not None:
                pool.shutdown(cancel_futures=True)
        builder.quality.check_thresholds()

        counts = builder.counts
        counts["input"] = sum(builder.per_source[i][k] for i in range(len(plan))
                              for k in ("accepted", "quarantined", "duplicate"))
        if counts["input"] != counts["accepted"] + counts["quarantined"] + counts["duplicate"]:
            raise CheckFailed(f"dataset {name} batch {seq}: records are not conserved: {dict(counts)}")

        if not builder.files:  # an empty batch still has one (empty) data file with the schema
            data = _parquet(_table(builder.columns, {c.name: [] for c in builder.columns}))
            entry = _artifact(lake, layout.data_part(name, seq, 0), data)
            builder.files.append(entry | {"rows": 0})
        tree_bytes, root = treefile.encode(builder.leaves)

        artifacts = [
            _artifact(lake, layout.tree(name, seq), tree_bytes),
            _file_artifact(lake, layout.quarantine(name, seq), builder.quarantine_path),
            _file_artifact(lake, layout.index(name, seq), builder.index_path),
            _artifact(lake, layout.validation(name, seq), canonical_bytes(builder.quality.summary())),
        ]
        for n, page in enumerate(builder.quality.docs):
            artifacts.append(_artifact(lake, layout.batch(name, seq) + f"data-docs/validation-{n:05d}.html",
                                       page.encode("utf-8")))
        links = "".join(f'<li><a href="validation-{n:05d}.html">chunk {n}</a></li>' for n in range(len(builder.quality.docs)))
        artifacts.append(_artifact(lake, layout.batch(name, seq) + "data-docs/index.html", (
            f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{name} batch {seq}: Data Docs</title></head>"
            f"<body><h1>{name} batch {seq}</h1><p>Great Expectations validation, one page per chunk of up to "
            f"{chunk_records} rows.</p><ul>{links}</ul></body></html>").encode()))

    # Rewards: proportional split of this batch's pool, then the cumulative ledger and its tree.
    amounts = split_proportional(dataset.rewards.pool, dict(builder.weights))
    ledger = previous_ledger(lake, name, seq)
    for contributor, amount in amounts.items():
        ledger[contributor] = ledger.get(contributor, 0) + amount
    tree = RewardsTree.build(sorted(ledger.items()))
    per = builder.per_contributor
    contributors = sorted(per)
    rewards_table = pa.table({
        "contributor": pa.array(contributors, pa.string()),
        "accepted": pa.array([per[c]["accepted"] for c in contributors], pa.int64()),
        "quarantined": pa.array([per[c]["quarantined"] for c in contributors], pa.int64()),
        "duplicate": pa.array([per[c]["duplicate"] for c in contributors], pa.int64()),
        "weight": pa.array([builder.weights.get(c, 0) for c in contributors], pa.int64()),
        # uint256 base units do not fit int64: decimal strings.
        "amount": pa.array([str(amounts.get(c, 0)) for c in contributors], pa.string()),
        "cumulative_amount": pa.array([str(ledger.get(c, 0)) for c in contributors], pa.string()),
    })
    artifacts.append(_artifact(lake, layout.rewards(name, seq), _parquet(rewards_table)))
    artifacts.append(_artifact(lake, layout.rewards_tree(name, seq), canonical_bytes(tree.dump())))

    previous = None
    if seq > 0:
        prev = manifests.load(lake, name, seq - 1)
        previous = {"seq": seq - 1, "manifest_sha256": prev.sha256}
    ps = builder.per_source
    body = {
        "format": manifests.FORMAT,
        "dataset": name,
        "seq": seq,
        "created_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "previous": previous,
        "sources": [
            {"key": s.key, "sha256": s.sha256, "bytes": s.bytes,
             "records": ps[i]["accepted"] + ps[i]["quarantined"] + ps[i]["duplicate"],
             "accepted": ps[i]["accepted"], "quarantined": ps[i]["quarantined"], "duplicate": ps[i]["duplicate"]}
            for i, s in enumerate(plan)
        ],
        "skipped_sources": [asdict(s) for s in skipped],
        "counts": {k: counts[k] for k in ("input", "accepted", "quarantined", "duplicate")},
        "schema": {"columns": [{"name": c.name, "type": c.type} for c in builder.columns]},
        "suite": {"name": dataset.suite_path.name, "sha256": dataset.suite_sha256()},
        "files": builder.files,
        "artifacts": artifacts,
        "merkle": {"hash": "sha256-rfc9162", "tree_size": len(builder.leaves), "root": root.hex()},
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
    lease.check()
    try:
        lake.create(layout.manifest(name, seq), manifests.serialize(body))
    except AlreadyExists:
        # Another writer committed this seq first; theirs is the batch.
        log.warning("dataset %s batch %d was committed by another writer", name, seq)
    return manifests.load(lake, name, seq)
