"""The partition tasks: dedupe by key slice against a history sliced any way, and the same batch
whatever the slicing (SPEC §13.11)."""

from __future__ import annotations

import hashlib
import io
import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import config
from pipeline.datasets import load
from pipeline.errors import CheckFailed
from pipeline.ingest import builder
from pipeline.ingest import partitions as tasks
from pipeline.ingest.commit import commit_batch
from pipeline.ingest.stage import stage_sources
from pipeline.lake import layout
from pipeline.lake.batch import BatchFiles
from pipeline.lake.sources import Source, stored_bytes
from pipeline.lake.storage import open_lake

from conftest import REPO

pytestmark = pytest.mark.unit


def _record(prompt: str, contributor: str) -> str:
    return json.dumps({"prompt": prompt, "response": "the same answer", "language": "en", "consent": True,
                       "created_at": "2026-11-27T00:00:00Z", "contributor": contributor})


@pytest.mark.parametrize("slicings", [(8, 1, 4), (1, 2, 1), (2, 16, 8)])
def test_every_repeated_key_is_a_duplicate_of_its_first_row_however_each_batch_was_sliced(
        slicings: tuple[int, int, int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Three batches, each cut into a different number of key slices and contributor partitions;
    prompts repeat within a batch and across batches. The reference walks every record in arrival
    order with one set of keys seen."""
    rng = random.Random(sum(slicings))
    contributors = [f"0x{rng.getrandbits(160):040x}" for _ in range(30)]
    lake, dataset = open_lake((tmp_path / "lake").as_uri()), load(REPO / "expectations", "instructions")
    first_record: dict[str, str] = {}  # prompt -> record id of its accepted row
    for seq, slices in enumerate(slicings):
        incoming = tmp_path / "lake" / "incoming" / "instructions"
        incoming.mkdir(parents=True, exist_ok=True)
        prompts = [f"prompt {rng.randrange(300)}" for _ in range(400)]
        (incoming / f"batch-{seq}.jsonl").write_text("".join(_record(p, rng.choice(contributors)) + "\n"
                                                             for p in prompts))
        monkeypatch.setattr(builder, "PARTITION_SOURCE_BYTES", 1)  # as many partitions as the cap allows
        monkeypatch.setattr(builder, "MAX_PARTITIONS", slices)
        manifest = commit_batch(lake, dataset, stage_sources(lake, dataset), chunk_records=64)  # type: ignore[arg-type]
        files = BatchFiles(lake, dataset.name, seq)
        sliced = [layout.index_slice_of(layout.plain_name(a["path"])) for a in manifest.data["artifacts"]]
        assert sorted(s for s in sliced if s) == [(k, slices) for k in range(slices)]

        rows = [row for table in files.parts() for row in table.to_pylist()]
        tree = files.tree()
        ids = {row["prompt"]: tree.leaf(i).hex() for i, row in enumerate(rows)}
        duplicates = {r["line"]: r for r in files.rejections() if r["reason"] == "duplicate"}
        expected_new = []
        for line, prompt in enumerate(prompts, start=1):
            if prompt in first_record or prompt in expected_new:
                quarantined = duplicates.pop(line)
                assert quarantined["duplicate_of"] == first_record.get(prompt, ids.get(prompt))
                assert quarantined["detail"].endswith("of an earlier batch") is (prompt in first_record)
            else:
                expected_new.append(prompt)
        assert not duplicates
        assert sorted(row["prompt"] for row in rows) == sorted(expected_new)
        assert manifest.data["counts"]["accepted"] == len(expected_new)
        assert manifest.data["counts"]["duplicate"] == len(prompts) - len(expected_new)
        first_record.update({p: ids[p] for p in expected_new})
        for k in range(slices):  # each index slice holds exactly its keys, in key order
            index = pq.read_table(io.BytesIO(files.artifact(layout.index_slice(k, slices))))
            keys = index.column("dedupe_key").to_pylist()
            assert keys == sorted(keys) and all(int.from_bytes(key[:4], "big") * slices >> 32 == k for key in keys)


def test_a_history_index_file_whose_bytes_changed_stops_the_dedupe(tmp_path: Path) -> None:
    lake = open_lake((tmp_path / "lake").as_uri())
    keys = [bytes([k]) * 32 for k in range(0, 256, 16)]
    table = pa.table({"record_id": [k.hex() * 2 for k in keys], "dedupe_key": pa.array(keys, pa.binary(32)),
                      "contributor": ["0x" + "1" * 40] * len(keys)}, schema=tasks.index_schema())
    path = tmp_path / "index.parquet"
    pq.write_table(table, path)
    data = path.read_bytes()
    lake.write("batches/d/000000/index.parquet", data)
    entry = tasks.IndexSlice("batches/d/000000/index.parquet", hashlib.sha256(data).hexdigest(), 0, 1)
    for k in range(4):  # the unsliced index of an early batch serves every slice its own keys
        found, ids = tasks.prior_keys(lake, [entry], k, 4)
        assert [key.ljust(32, b"\0") for key in found.tolist()] == [key for key in keys if key[0] >> 6 == k]
        assert ids.tolist() == [(key.hex() * 2)[:64].encode() for key in keys if key[0] >> 6 == k]
    lake.write("batches/d/000000/index.parquet", data[:-9] + b"X" + data[-8:])
    with pytest.raises(CheckFailed, match="SHA-256 differs"):
        tasks.prior_keys(lake, [entry], 1, 4)


@pytest.mark.parametrize(("a", "slices", "b", "others", "shared"), [
    (0, 1, 3, 4, True), (1, 2, 1, 4, False), (1, 2, 2, 4, True), (5, 8, 2, 4, True), (5, 8, 3, 4, False)])
def test_slices_of_different_counts_overlap_exactly_where_their_ranges_do(
        a: int, slices: int, b: int, others: int, shared: bool) -> None:
    assert tasks.overlaps(a, slices, b, others) is shared and tasks.overlaps(b, others, a, slices) is shared


def _commit_one(lake, dataset, incoming: Path, name: str, prompts: list[str]):  # type: ignore[no-untyped-def]
    incoming.mkdir(parents=True, exist_ok=True)
    (incoming / name).write_text("".join(_record(p, "0x" + "ab" * 20) + "\n" for p in prompts))
    return commit_batch(lake, dataset, stage_sources(lake, dataset))  # type: ignore[arg-type]


def _rewrite_manifest(lake, seq: int, edit) -> None:  # type: ignore[no-untyped-def]
    key = layout.batch_file("instructions", seq, layout.MANIFEST)
    data = json.loads(lake.read(key))
    edit(data["artifacts"])
    lake.write(key, json.dumps(data).encode())


@pytest.mark.parametrize("tampered", [0, 1])
@pytest.mark.parametrize("edit", ["rename the index", "drop the index", "a junk entry", "an unpinned index"])
def test_an_earlier_manifest_rewritten_to_hide_its_keys_stops_the_commit_instead_of_paying_twice(
        tampered: int, edit: str, tmp_path: Path) -> None:
    """Batch 0 holds a record; batch 2 repeats it. Whoever writes the lake rewrites an earlier
    manifest so the dedupe would not see batch 0's key. Batch 0's manifest is pinned by batch 1's
    `previous`; batch 1's (the last) is sealed, and its index entries must be one whole set."""
    lake, dataset = open_lake((tmp_path / "lake").as_uri()), load(REPO / "expectations", "instructions")
    incoming = tmp_path / "lake" / "incoming" / "instructions"
    _commit_one(lake, dataset, incoming, "a.jsonl", ["the first record"])
    _commit_one(lake, dataset, incoming, "b.jsonl", ["another record"])
    edits = {
        "rename the index": lambda artifacts: [a.update(path=a["path"].replace("index/00001", "index/00000"))
                                               for a in artifacts],
        "drop the index": lambda artifacts: artifacts.__setitem__(slice(None), [
            a for a in artifacts if not a["path"].startswith("index")]),
        "a junk entry": lambda artifacts: artifacts.append("junk"),
        "an unpinned index": lambda artifacts: [a.pop("sha256") for a in artifacts if a["path"].startswith("index")],
    }
    _rewrite_manifest(lake, tampered, edits[edit])
    with pytest.raises(CheckFailed, match="previous manifest" if tampered == 0 else "manifest.json"):
        _commit_one(lake, dataset, incoming, "c.jsonl", ["something new", "the first record"])
    assert not BatchFiles(lake, "instructions", 2).committed()


def test_the_work_is_sized_by_the_stored_sources_not_by_the_sizes_a_plan_claims(tmp_path: Path) -> None:
    lake = open_lake((tmp_path / "lake").as_uri())
    lake.write("raw/instructions/000000/" + "a" * 64 + ".jsonl", b"x" * 1000)
    claimed = Source("incoming/instructions/a.jsonl", "a" * 64, 10**15, "raw/instructions/000000/" + "a" * 64 + ".jsonl")
    assert stored_bytes(lake, [claimed]) == 1000
    assert builder.partition_count(stored_bytes(lake, [claimed])) == 1


def test_a_dedupe_task_that_cannot_see_the_shuffle_directory_says_so(tmp_path: Path) -> None:
    lake, dataset = open_lake((tmp_path / "lake").as_uri()), load(REPO / "expectations", "instructions")
    job = tasks.DedupeJob(str(tmp_path / "elsewhere"), dataset, lake, (), 0, 1, 1, chunks=(0,), rows=5)
    with pytest.raises(CheckFailed, match="ANCHORLAKE_SCRATCH"):
        tasks.dedupe_slice(job)


def test_a_lake_sent_to_ray_tasks_carries_no_s3_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    import pickle

    from pipeline.config import S3Settings
    from pipeline.lake.storage import S3Lake

    lake = S3Lake("bucket", "prefix", S3Settings("http://127.0.0.1:1", "the-access-key", "the-secret-key"))
    monkeypatch.setenv("ANCHORLAKE_ENGINE", "local")
    assert b"the-secret-key" in pickle.dumps(lake)  # a forked worker: this process's own
    monkeypatch.setenv("ANCHORLAKE_ENGINE", "ray")
    assert b"the-secret-key" not in pickle.dumps(lake) and b"the-access-key" not in pickle.dumps(lake)
    assert pickle.loads(pickle.dumps(lake)).url == "s3://bucket/prefix"


def test_a_chunk_size_past_the_arrival_numbers_is_refused(tmp_path: Path) -> None:
    """A row's arrival is its chunk's number, then its place in the chunk, in 32 bits: a larger
    chunk would give two rows the same arrival and order them by chance."""
    lake, dataset = open_lake((tmp_path / "lake").as_uri()), load(REPO / "expectations", "instructions")
    for size in (0, 1 << 32):
        with pytest.raises(ValueError, match="chunk_records"):
            builder.BatchBuilder(BatchFiles(lake, "instructions", 0), dataset, [], tmp_path, chunk_records=size)


def test_a_quarantine_file_that_lost_rows_stops_the_commit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The driver writes quarantine.parquet from the chunk tasks' files: one holding fewer rows
    than its task quarantined (torn, stale, replaced) is refused, never passed on short."""
    from pipeline.ingest import chunks

    real = chunks.run_chunk

    def short(job: chunks.ChunkJob) -> chunks.ChunkOutcome:
        outcome = real(job)
        outcome.quarantined += 1
        return outcome

    monkeypatch.setattr(builder, "run_chunk", short)
    monkeypatch.setattr(config, "cores", lambda: 1)  # the chunk runs here, where the patch holds
    lake, dataset = open_lake((tmp_path / "lake").as_uri()), load(REPO / "expectations", "instructions")
    incoming = tmp_path / "lake" / "incoming" / "instructions"
    incoming.mkdir(parents=True)
    (incoming / "a.jsonl").write_text(_record("fine", "0x" + "ab" * 20) + "\n{not json\n")
    with pytest.raises(CheckFailed, match="holds 1 rows, its chunk task quarantined 2"):
        commit_batch(lake, dataset, stage_sources(lake, dataset))  # type: ignore[arg-type]
