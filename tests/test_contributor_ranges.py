"""Contributor-ordered leaves (SPEC §13.2) and receipt/2 (SPEC §13.4) on a file:// lake, with no
chain: every contributor's rows are one leaf range, in arrival order, whatever the partitioning,
and every receipt's range proof folds to the batch root."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.core.receipt import parse, verify_rows
from pipeline.datasets import load
from pipeline.errors import FormatError
from pipeline.ingest import builder
from pipeline.ingest.commit import commit_batch
from pipeline.ingest.stage import stage_sources
from pipeline.lake.batch import BatchFiles
from pipeline.lake.storage import open_lake
from pipeline.receipts import build_receipts

from conftest import REPO

pytestmark = pytest.mark.unit


def _contribute(incoming: Path, files: int, rows: int, contributors: list[str], rng: random.Random) -> None:
    incoming.mkdir(parents=True)
    for f in range(files):
        lines = [json.dumps({"prompt": f"file {f} line {n + 1}: what is the order?", "response": "by contributor",
                             "language": "en", "consent": True, "created_at": "2026-11-27T00:00:00Z",
                             "contributor": rng.choice(contributors)}) for n in range(rows)]
        (incoming / f"part-{f:02d}.jsonl").write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("partitions", [1, 7])
def test_rows_are_ordered_by_contributor_then_arrival_and_each_range_is_proved(
        partitions: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(partitions)
    contributors = [f"0x{rng.getrandbits(160):040x}" for _ in range(40)] + ["0x" + "0" * 40, "0x" + "f" * 40]
    _contribute(tmp_path / "lake" / "incoming" / "instructions", 3, 150, contributors, rng)
    sizes = sum(p.stat().st_size for p in (tmp_path / "lake" / "incoming" / "instructions").iterdir())
    monkeypatch.setattr(builder, "PARTITION_SOURCE_BYTES", -(-sizes // partitions))
    lake, dataset = open_lake((tmp_path / "lake").as_uri()), load(REPO / "expectations", "instructions")
    manifest = commit_batch(lake, dataset, stage_sources(lake, dataset), chunk_records=100)  # type: ignore[arg-type]
    files = BatchFiles(lake, "instructions", 0)

    rows = [row for table in files.parts() for row in table.to_pylist()]
    assert len(rows) == manifest.tree_size == 450 and len(manifest.data["files"]) >= 5
    arrival = [(int(r["prompt"].split()[1]), int(r["prompt"].split()[3][:-1])) for r in rows]  # (file, line)
    assert [(r["contributor"], a) for r, a in zip(rows, arrival, strict=True)] == \
        sorted((r["contributor"], a) for r, a in zip(rows, arrival, strict=True))

    assert build_receipts(files, dataset) == len({r["contributor"] for r in rows})
    covered = 0
    for contributor in files.receipt_contributors():
        receipt = files.receipt(contributor)
        span = receipt.data["range"]
        assert span["start"] == covered and not verify_rows(receipt), contributor  # ranges tile [0, n)
        assert [row["record"]["contributor"] for row in receipt.data["rows"]] == [contributor] * (span["end"] - covered)
        assert len(receipt.data["proof"]) <= 2 * (manifest.tree_size - 1).bit_length()
        covered = span["end"]
    assert covered == manifest.tree_size


def test_a_receipt_whose_rows_were_moved_or_relabelled_does_not_fold(tmp_path: Path) -> None:
    rng = random.Random(5)
    _contribute(tmp_path / "lake" / "incoming" / "instructions", 1, 60, [f"0x{i:040x}" for i in range(1, 6)], rng)
    lake, dataset = open_lake((tmp_path / "lake").as_uri()), load(REPO / "expectations", "instructions")
    commit_batch(lake, dataset, stage_sources(lake, dataset))  # type: ignore[arg-type]
    files = BatchFiles(lake, "instructions", 0)
    build_receipts(files, dataset)
    data = files.receipt(f"0x{2:040x}").data
    start, end = data["range"]["start"], data["range"]["end"]
    cases = {
        "rows swapped": data | {"rows": data["rows"][::-1]},
        "range shifted": data | {"range": {"start": start + 1, "end": end + 1}},
        "a proof hash flipped": data | {"proof": [("0" if data["proof"][0][0] != "0" else "1") + data["proof"][0][1:],
                                                  *data["proof"][1:]]},
    }
    for name, doctored in cases.items():
        try:
            assert verify_rows(parse(json.dumps(doctored).encode(), name)), name
        except FormatError as e:  # refused before folding: the proof's length does not fit the range
            assert "proof" in str(e), name
    relabelled = data | {"contributor": f"0x{3:040x}"}
    assert "names contributor" in verify_rows(parse(json.dumps(relabelled).encode(), "relabelled"))[0]
    assert pq.read_table(tmp_path / "lake" / "batches" / "instructions" / "000000" / "data" / "part-00000.parquet"
                         ).column("contributor").to_pylist() == sorted(f"0x{i:040x}" for i in range(1, 6) for _ in range(
                             sum(1 for r in files.parts() for c in r.column("contributor").to_pylist() if c == f"0x{i:040x}")))
