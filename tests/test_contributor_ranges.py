"""Contributor-ordered leaves (SPEC §13.2) and receipt/2 (SPEC §13.4) on a file:// lake, with no
chain: every contributor's rows are one leaf range, in arrival order, whatever the partitioning,
and every receipt's range proof folds to the batch root."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import random
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline import cli, config
from pipeline.core.jcs import canonical_bytes
from pipeline.core.leaf import record_object
from pipeline.core.receipt import Receipt, lines, packed, parse, unpacked, verify_rows
from pipeline.datasets import Column, load
from pipeline.errors import CheckFailed, FormatError, NotFound
from pipeline.ingest import builder
from pipeline.ingest import partitions as tasks
from pipeline.ingest.commit import commit_batch
from pipeline.ingest.stage import stage_sources
from pipeline.lake import workers
from pipeline.lake.batch import BatchFiles
from pipeline.lake.columnar import arrow_schema
from pipeline.lake.storage import FileLake, Lake, open_lake
from pipeline.receipts import Parts, build_receipts, contributor_ranges, json_records, row_json

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


@pytest.mark.parametrize("partitions", [1, 2, 8, 4096])
def test_column_wise_partitions_order_and_ids_are_the_row_rules(partitions: int) -> None:
    rng = random.Random(partitions)
    addresses = ["0x" + "0" * 40, "0x" + "f" * 40] + [f"0x{rng.getrandbits(160):040x}" for _ in range(3000)]
    column = pa.chunked_array([addresses[:10], addresses[10:]])
    assert tasks.address_partitions(column, partitions).tolist() == [int(a[2:10], 16) * partitions >> 32
                                                                       for a in addresses]
    rows = [rng.choice(addresses[:40]) for _ in range(2000)]
    table = pa.table({"contributor": rows, tasks.ARRIVAL: list(range(2000))})
    ordered = table.take(tasks.leaf_order(table))
    assert list(zip(ordered["contributor"].to_pylist(), ordered[tasks.ARRIVAL].to_pylist(), strict=True)) == \
        sorted((who, n) for n, who in enumerate(rows))
    hashes = [rng.randbytes(32) for _ in range(300)]
    sliced = pa.chunked_array([pa.array(hashes, pa.binary(32)).slice(3, 200), pa.array(hashes[:5], pa.binary(32))])
    assert tasks.hex_of(sliced).to_pylist() == [h.hex() for h in hashes[3:203] + hashes[:5]]


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


COLUMNS = (Column("s", "string"), Column("i", "int64"), Column("f", "float64"), Column("b", "bool"),
           Column("t", "timestamp"), Column("l", "list<string>"))


def _same_records(table: pa.Table, columns: tuple[Column, ...]) -> None:
    """Receipt rows written column-wise parse to records with the leaf bytes of record_object's."""
    expected = [record_object(columns, row) for row in table.to_pylist()]
    assert json_records(table, columns) == expected
    text, starts = row_json(table, columns)
    lines = [bytes(text[a:b - 1]) for a, b in zip(starts[:-1], starts[1:], strict=True)]
    assert text == b"".join(line + b"," for line in lines)
    assert [canonical_bytes(json.loads(line)["record"]) for line in lines] == [canonical_bytes(r) for r in expected]


def test_receipt_rows_written_column_wise_are_the_committed_records() -> None:
    values = {"s": ['a"b\\c\n\x01\x1f é 😀 \u2028', None, ""], "i": [1, -(2**53) + 1, None], "f": [0.1, 1e21, None],
              "b": [True, False, None], "l": [["x", '"q"\n'], [], None],
              "t": [datetime(2026, 1, 1, tzinfo=UTC), None, datetime(1, 1, 1, 0, 0, 0, 1, tzinfo=UTC)]}
    table = pa.table(values, schema=arrow_schema(COLUMNS))
    for part in (table, table.slice(1, 2), table.slice(2, 1)):
        _same_records(part, COLUMNS)
    floats = (Column("f", "float64"),)  # the shortest text that reads back exactly
    _same_records(pa.table({"f": [0.1 + 0.2, 5e-324, 1.7976931348623157e308, -0.0]}, schema=arrow_schema(floats)), floats)


@given(st.lists(st.one_of(st.none(), st.text()), min_size=1, max_size=20),
       st.lists(st.one_of(st.none(), st.lists(st.text(), max_size=3)), min_size=20, max_size=20))
@settings(max_examples=200, deadline=None)
def test_any_text_is_written_as_the_json_of_its_record(texts: list[str | None], lists: list[list[str] | None]) -> None:
    columns = (Column("s", "string"), Column("l", "list<string>"))
    _same_records(pa.table({"s": texts, "l": lists[:len(texts)]}, schema=arrow_schema(columns)), columns)


def test_offsets_pointing_at_another_contributors_receipt_are_refused(tmp_path: Path) -> None:
    """The offsets file is in the lake: a writer who swaps two contributors' byte ranges makes
    `receipt` refuse, never hand one contributor another's receipt."""
    rng = random.Random(8)
    _contribute(tmp_path / "lake" / "incoming" / "instructions", 1, 20, [f"0x{i:040x}" for i in (1, 2)], rng)
    lake, dataset = open_lake((tmp_path / "lake").as_uri()), load(REPO / "expectations", "instructions")
    commit_batch(lake, dataset, stage_sources(lake, dataset))  # type: ignore[arg-type]
    files = BatchFiles(lake, "instructions", 0)
    build_receipts(files, dataset)
    offsets = next((tmp_path / "lake" / "receipts" / "instructions" / "000000").glob("*.offsets.parquet"))
    table = pq.read_table(offsets)
    pq.write_table(table.set_column(0, "contributor", pa.array(table.column("contributor").to_pylist()[::-1])), offsets)
    with pytest.raises(CheckFailed, match="the offsets point at a receipt of"):
        files.receipt(f"0x{1:040x}")


def _two_contributors_receipts(tmp_path: Path) -> tuple[BatchFiles, Path, Path]:
    """A batch of two contributors with its receipts: (its files, the receipts file, the offsets)."""
    files, folder = _receipts_lake(tmp_path, [f"0x{i:040x}" for i in (1, 2)])
    [receipts] = folder.glob("receipts-*.jsonl.gz")
    [offsets] = folder.glob("*.offsets.parquet")
    return files, receipts, offsets


def test_a_receipts_file_is_gzip_of_json_lines_and_each_range_a_gzip_file_of_one_receipt(tmp_path: Path) -> None:
    """What a reader downloads: the whole file gunzips to the receipts' JSON Lines, and each
    contributor's byte range alone to that contributor's receipt, the one `receipt` reads."""
    files, receipts, offsets = _two_contributors_receipts(tmp_path)
    data = receipts.read_bytes()
    lines = gzip.decompress(data).splitlines()
    table = pq.read_table(offsets).to_pylist()
    assert [row["contributor"] for row in table] == [json.loads(line)["contributor"] for line in lines]
    assert sum(row["length"] for row in table) == len(data)
    for row, line in zip(table, lines, strict=True):
        member = data[row["offset"]:row["offset"] + row["length"]]
        assert gzip.decompress(member) == line + b"\n" == unpacked(member, "r", len(line) + 1)
        assert files.receipt(row["contributor"]).data == json.loads(line)


@pytest.mark.parametrize("case", ["bomb", "garbage", "cut short", "two receipts"])
def test_a_receipts_range_that_is_not_one_small_gzip_receipt_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str) -> None:
    """A lake writer rewrites a receipts file and its offsets: a gzip bomb stops at the bound,
    and garbage, a cut member or two members in one range are refused, each with one line."""
    files, receipts, offsets = _two_contributors_receipts(tmp_path)
    data, table = receipts.read_bytes(), pq.read_table(offsets)
    first, second = table.column("length").to_pylist()
    monkeypatch.setattr("pipeline.core.receipt.MAX_RECEIPT_BYTES", 1 << 20)
    planted, length, problem = {
        "bomb": (packed(b" " * (2 << 20)), None, "unpacks to more than 1,048,576 bytes"),
        "garbage": (b"\x1f\x8b" + os.urandom(first) + data, None, "is not gzip"),
        "cut short": (data, first - 1, "is cut short"),
        "two receipts": (data, first + second, "holds more than 1 gzip member"),
    }[case]
    receipts.write_bytes(planted)
    lengths = [length or len(planted) - second, second]
    pq.write_table(table.set_column(3, "length", pa.array(lengths, pa.int64())), offsets)
    with pytest.raises(FormatError, match=problem):
        files.receipt(f"0x{1:040x}")


@pytest.mark.parametrize("data, problem", [  # mtime 0: a test's id must be the same on every xdist worker
    (b"", "is cut short"), (b"not gzip", "is not gzip"),
    (gzip.compress(b"x" * 100, mtime=0)[:-1], "is cut short"),
    (gzip.compress(b"a", mtime=0) + b"trailing", "is not gzip"),
    (gzip.compress(b"x" * 101, mtime=0), "unpacks to more than 100 bytes"),
    (gzip.compress(b"a", mtime=0) + b"\0" * 8, "is not gzip"),
    (gzip.compress(b"a", mtime=0) + b"\0" + packed(b"forged"), "is not gzip"),
    (gzip.compress(b"a", mtime=0) + b"\x1f", "is cut short"),
])
def test_unpacked_refuses_what_is_not_whole_gzip_within_its_bound(data: bytes, problem: str) -> None:
    with pytest.raises(FormatError, match=problem):
        unpacked(data, "f", 100)
    assert unpacked(gzip.compress(b"a") + gzip.compress(b"") + packed(b"b" * 98), "f", 100) == b"a" + b"b" * 98
    with pytest.raises(FormatError, match="holds more than 1 gzip member"):
        unpacked(packed(b"a") + packed(b""), "f", 100, members=1)


def test_a_file_of_many_gzip_members_unpacks_member_by_member() -> None:
    """Each member's leftover input is one small piece, never the rest of the file: 200,000
    members (empty ones, as an attacker would write, and genuine ones) unpack as one stream."""
    assert unpacked(packed(b"") * 200_000, "f", 0) == b""
    lines_ = [f'{{"n":{i}}}\n'.encode() for i in range(20_000)]
    data = b"".join(packed(line) for line in lines_)
    assert unpacked(data, "f", len(data) * 10) == b"".join(lines_) == gzip.decompress(data)


@given(st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\0", b"\n")), max_size=12))
@settings(max_examples=300, deadline=None)
def test_lines_reads_the_lines_of_any_pieces_as_split_does(pieces: list[bytes]) -> None:
    text = b"".join(pieces)
    expected = list(enumerate(text.split(b"\n"), 1))
    if expected and expected[-1][1] == b"":
        expected.pop()  # nothing after the last newline: no line
    assert list(lines(pieces, "f", 1 << 20)) == expected
    longest = max((len(line) for _, line in expected), default=0)
    if longest:
        with pytest.raises(FormatError, match=f"is over {longest - 1:,} bytes"):
            list(lines(pieces, "f", longest - 1))


def test_verify_stops_a_gzip_bomb_handed_to_it_at_its_bound(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Read a receipt at a time: one long line stops at the bound before more of it is held, and
    a file of millions of tiny lines at its first line, which is no receipt."""
    monkeypatch.setattr("pipeline.core.receipt.MAX_RECEIPT_BYTES", 1 << 20)
    for name, data, problem in (("long.jsonl.gz", b" " * (2 << 20), ": line 1: is over 1,048,576 bytes: not one receipt"),
                                ("tiny.jsonl.gz", b"a\n" * (8 << 20), " line 1: invalid JSON"),
                                ("one.json.gz", b" " * (2 << 20), ": unpacks to more than 1,048,576 bytes")):
        bomb = tmp_path / name
        bomb.write_bytes(packed(data))
        assert cli.main(["verify", str(bomb), "--root", "00" * 32, "--tree-size", "1"]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"anchorlake: {bomb}{problem}") and err.count("\n") == 1, err


def test_verify_reports_a_failed_receipt_before_a_damaged_line_after_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    files, receipts_file, _ = _two_contributors_receipts(tmp_path)
    first = gzip.decompress(receipts_file.read_bytes()).splitlines()[0]
    forged = first.replace(b"by contributor", b"by Contributor", 1)
    handed = tmp_path / "handed.jsonl.gz"
    handed.write_bytes(packed(forged + b"\n") + packed(b"{not json\n"))
    m = files.manifest()
    assert cli.main(["verify", str(handed), "--root", m.root, "--tree-size", str(m.tree_size)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and err[0].startswith(f"FAIL {handed} line 1: ") and "line 2: invalid JSON" in err[1], err


def test_receipts_index_and_offsets_naming_other_files_are_refused(tmp_path: Path) -> None:
    """The index and the offsets are in the lake: one naming a file outside the batch's receipts
    (or one the index does not list) is refused, never read."""
    _contribute(tmp_path / "lake" / "incoming" / "instructions", 1, 20, [f"0x{i:040x}" for i in (1, 2)],
                random.Random(8))
    lake, dataset = open_lake((tmp_path / "lake").as_uri()), load(REPO / "expectations", "instructions")
    commit_batch(lake, dataset, stage_sources(lake, dataset))  # type: ignore[arg-type]
    files = BatchFiles(lake, "instructions", 0)
    build_receipts(files, dataset)
    folder = tmp_path / "lake" / "receipts" / "instructions" / "000000"
    index = json.loads((folder / "index.json").read_text())
    offsets = folder / f"{index['offsets']}.offsets.parquet"
    table = pq.read_table(offsets)
    pq.write_table(table.set_column(1, "file", pa.array(["receipts-" + "0" * 32] * table.num_rows)), offsets)
    with pytest.raises(CheckFailed, match="names a receipts file its index does not"):
        files.receipt(f"0x{1:040x}")
    (folder / "index.json").write_text(json.dumps(index | {"files": ["../../../batches/instructions/000000/manifest"]}))
    with pytest.raises(CheckFailed, match="not receipts files"):
        files.receipt(f"0x{1:040x}")


def test_a_record_nested_too_deep_fails_its_receipt_with_a_line(tmp_path: Path) -> None:
    nested: object = "x"
    for _ in range(100_000):  # refused before anything recurses into it
        nested = [nested]
    receipt = {"format": "anchorlake.receipt/2", "dataset": "d", "seq": 0, "contributor": "0x" + "11" * 20,
               "tree_size": 1, "root": "00" * 32, "manifest_sha256": "00" * 32, "anchor": None,
               "range": {"start": 0, "end": 1}, "proof": [], "reward": None,
               "rows": [{"record": {"contributor": "0x" + "11" * 20, "prompt": nested}}]}
    # json.loads reads a few hundred levels; a record nested deeper than a committed record can be
    # is a failure line, never an internal error (nor a stack overflow in a thread with a small stack).
    assert verify_rows(Receipt(receipt, "deep.json")) == [
        "deep.json: row 0: the record is nested more than 8 levels deep; a committed record is an object of values "
        "and lists of strings"]


# --- receipts written by several workers: each takes the ranges that start in its run of parts --

RANGE_COLUMNS = (Column("contributor", "string"), Column("n", "int64"))


def _parts(tables: list[pa.Table]) -> Parts:
    data = []
    for table in tables:
        out = io.BytesIO()
        pq.write_table(table, out)
        data.append(out.getvalue())
    return Parts("d batch 0", tuple(data), tuple(t.num_rows for t in tables))


def _cut(rows: list[str], cuts: list[int]) -> list[pa.Table]:
    bounds = [0, *sorted(min(c, len(rows)) for c in cuts), len(rows)]
    return [pa.table({"contributor": pa.array(rows[a:b], pa.string()), "n": pa.array(range(a, b), pa.int64())})
            for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def _grouped(parts: Parts, groups: int) -> list[tuple[str, int, int, list[dict]]]:
    return [(who, a, b, json.loads(b"[" + rows + b"]")) for first, end in parts.groups(groups)
            for who, a, b, rows in contributor_ranges(parts, RANGE_COLUMNS, first, end)]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(1, 6), min_size=1, max_size=12), st.lists(st.integers(0, 40), max_size=6),
       st.integers(1, 5))
def test_ranges_read_by_groups_of_parts_are_every_range_once(counts: list[int], cuts: list[int], groups: int) -> None:
    """Parts cut anywhere (empty ones too, a contributor over several parts), read by 1-5 groups:
    every contributor's range exactly once, in order, with its rows."""
    rows = [f"0x{i:040x}" for i, count in enumerate(counts) for _ in range(count)]
    parts = _parts(_cut(rows, cuts))
    expected, at = [], 0
    for i, count in enumerate(counts):
        expected.append((f"0x{i:040x}", at, at + count, [{"record": {"contributor": f"0x{i:040x}", "n": n}}
                                                           for n in range(at, at + count)]))
        at += count
    assert _grouped(parts, groups) == expected
    bounds = parts.groups(groups)
    assert len(bounds) <= groups and [a for a, _ in bounds] == [0] + [b for _, b in bounds[:-1]]
    assert bounds[-1][1] == len(parts.rows)


@pytest.mark.parametrize("groups", [1, 2, 3])
@pytest.mark.parametrize("rows, cuts", [(["0x" + "2" * 40, "0x" + "1" * 40, "0x" + "3" * 40], [1, 2]),  # at a cut
                                        (["0x" + "2" * 40, "0x" + "1" * 40, "0x" + "3" * 40], [2]),  # in a part
                                        (["0x" + "2" * 40, "0x" + "3" * 40, "0x" + "2" * 40], [1, 2])])  # back again
def test_rows_out_of_contributor_order_are_refused_however_the_parts_are_grouped(
        rows: list[str], cuts: list[int], groups: int) -> None:
    with pytest.raises(CheckFailed, match="the rows are not ordered by contributor"):
        _grouped(_parts(_cut(rows, cuts)), groups)


def test_a_part_holding_other_rows_than_the_manifest_says_is_refused() -> None:
    parts = _parts(_cut(["0x" + "1" * 40] * 3, [1]))
    with pytest.raises(CheckFailed, match="data part 1 holds 2 rows, the manifest says 5"):
        list(contributor_ranges(Parts(parts.name, parts.data, (1, 5)), RANGE_COLUMNS))


def test_receipts_written_by_two_workers_are_the_receipts_one_writes(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Two workers write a file each, one writes one: the same lines in the same order, each file
    named by its own SHA-256, and every receipt read back is the same."""
    rng = random.Random(11)
    contributors = [f"0x{rng.getrandbits(160):040x}" for _ in range(30)]
    _contribute(tmp_path / "lake" / "incoming" / "instructions", 4, 150, contributors, rng)
    lake, dataset = open_lake((tmp_path / "lake").as_uri()), load(REPO / "expectations", "instructions")
    commit_batch(lake, dataset, stage_sources(lake, dataset), chunk_records=100)  # type: ignore[arg-type]
    files = BatchFiles(lake, "instructions", 0)
    assert len(files.manifest().data["files"]) >= 4
    folder = tmp_path / "lake" / "receipts" / "instructions" / "000000"
    written, read = {}, {}
    monkeypatch.setattr(workers, "PARALLEL_FROM_ROWS", 0)
    for cores in (1, 2):
        monkeypatch.setattr(config, "cores", lambda cores=cores: cores)
        assert build_receipts(files, dataset) == len(set(files.receipt_contributors())) == 30
        _, names = files.receipts_files()
        assert len(names) == cores
        texts = [(folder / f"{name}.jsonl.gz").read_bytes() for name in names]
        assert names == ["receipts-" + hashlib.sha256(t).hexdigest()[:32] for t in texts]
        written[cores] = b"".join(texts)
        read[cores] = {c: files.receipt(c).data for c in contributors}
    assert written[1] == written[2] and read[1] == read[2]
    assert [json.loads(line)["contributor"] for line in gzip.decompress(written[1]).splitlines()] == sorted(contributors)
    assert all(not verify_rows(files.receipt(c)) for c in contributors)
    assert not list(folder.glob(".tmp-*")) and not list(folder.glob("*.partial"))


def test_receipts_roll_into_a_new_file_at_the_bound_and_an_oversized_one_is_said(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A file holds RECEIPTS_FILE_BYTES of receipts at most (or one receipt), so a verifier reads any
    file whole; every receipt still reads back. A receipt over what its readers take is written,
    and the log says so (its rows are one range: it is not cut)."""
    from pipeline import receipts

    contributors = [f"0x{i:040x}" for i in (1, 2, 3)]
    _contribute(tmp_path / "lake" / "incoming" / "instructions", 1, 30, contributors, random.Random(3))
    lake, dataset = open_lake((tmp_path / "lake").as_uri()), load(REPO / "expectations", "instructions")
    commit_batch(lake, dataset, stage_sources(lake, dataset))  # type: ignore[arg-type]
    files = BatchFiles(lake, "instructions", 0)
    monkeypatch.setattr(receipts, "RECEIPTS_FILE_BYTES", 1)
    monkeypatch.setattr("pipeline.core.receipt.MAX_RECEIPT_BYTES", 4096)
    assert build_receipts(files, dataset) == 3
    _, names = files.receipts_files()
    assert len(names) == 3  # a file each
    assert "over the 4096 its readers take" in caplog.text
    monkeypatch.setattr("pipeline.core.receipt.MAX_RECEIPT_BYTES", 1 << 20)
    assert [files.receipt(c).data["contributor"] for c in contributors] == contributors
    assert all(not verify_rows(files.receipt(c)) for c in contributors)


def test_a_worker_that_wrote_no_receipt_shifts_no_offset(tmp_path: Path) -> None:
    """A worker whose parts hold only the rest of a range begun earlier writes nothing: its file
    is dropped and the offsets of the next file start at 0."""
    lake = open_lake((tmp_path / "lake").as_uri())
    write = BatchFiles(lake, "instructions", 0).receipts_writer()
    for name, text, contributors in (("one", b"{}\n", ["a"]), ("none", b"", []), ("two", b"{}\n{}\n", ["b", "c"])):
        (tmp_path / name).write_bytes(text)
        write.add(tmp_path / name, hashlib.sha256(text).hexdigest(), contributors, [3] * len(contributors))
        assert not (tmp_path / name).exists()
    one, two = ("receipts-" + hashlib.sha256(t).hexdigest()[:32] for t in (b"{}\n", b"{}\n{}\n"))
    assert (write.names, write.contributors, write.files, write.starts, write.lengths, write.count) == (
        [one, two], ["a", "b", "c"], [one, two, two], [0, 0, 3], [3, 3, 3], 3)
    assert lake.read(f"receipts/instructions/000000/{two}.jsonl.gz") == b"{}\n{}\n"


def test_a_file_moved_into_a_lake_is_there_whole_and_gone_from_where_it_was(tmp_path: Path) -> None:
    """move_file renames on one file system, copies across two (EXDEV), and on S3 uploads: the
    default, which `_MovedByDefault` stands in for here."""
    for lake in (open_lake((tmp_path / "lake").as_uri()), _MovedByDefault((tmp_path / "other").as_uri())):
        local = tmp_path / "local.jsonl"
        local.write_bytes(b"{}\n" * 1000)
        lake.move_file("receipts/x/receipts.jsonl", local)
        assert lake.read("receipts/x/receipts.jsonl") == b"{}\n" * 1000 and not local.exists()


def test_a_file_moved_across_file_systems_is_copied(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno
    import os

    def cross_device(src: object, dst: object) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    lake = open_lake((tmp_path / "lake").as_uri())
    local = tmp_path / "local.jsonl"
    local.write_bytes(b"{}\n")
    monkeypatch.setattr(os, "replace", lambda src, dst, replace=os.replace: (
        cross_device(src, dst) if Path(src) == local else replace(src, dst)))
    lake.move_file("receipts/x/receipts.jsonl", local)
    assert (tmp_path / "lake" / "receipts/x/receipts.jsonl").read_bytes() == b"{}\n" and not local.exists()


def test_a_file_created_by_moving_it_is_created_once_and_gone_from_where_it_was(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """create_moved: renamed into place (mode 0600, as the lake's other files) on one file system,
    copied across two, uploaded on S3 (the default); the local file is gone even when the key
    existed already."""
    import errno

    from pipeline.errors import AlreadyExists

    def cross_device(src: object, dst: object) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    for name, lake in (("same", open_lake((tmp_path / "lake").as_uri())),
                       ("default", _MovedByDefault((tmp_path / "other").as_uri())),
                       ("exdev", open_lake((tmp_path / "third").as_uri()))):
        local = tmp_path / f"{name}.parquet"
        local.write_bytes(b"PAR1 part")
        with monkeypatch.context() as patch:
            if name == "exdev":
                patch.setattr(os, "replace", lambda src, dst, local=local, replace=os.replace: (
                    cross_device(src, dst) if Path(src) == local else replace(src, dst)))
            lake.create_moved("batches/x/000000/data/part-00000.parquet", local)
        assert lake.read("batches/x/000000/data/part-00000.parquet") == b"PAR1 part" and not local.exists()
        local.write_bytes(b"PAR1 other")
        with pytest.raises(AlreadyExists):
            lake.create_moved("batches/x/000000/data/part-00000.parquet", local)
        assert lake.read("batches/x/000000/data/part-00000.parquet") == b"PAR1 part" and not local.exists()
    mode = (tmp_path / "lake" / "batches/x/000000/data/part-00000.parquet").stat().st_mode & 0o777
    assert mode == 0o600 and not list((tmp_path / "lake" / "batches/x/000000/data").glob(".tmp-*"))


class _MovedByDefault(FileLake):
    """A lake that moves with the default (S3's) move_file: write_file, then the local file removed."""

    def __init__(self, url: str) -> None:
        super().__init__(Path(url.removeprefix("file://")))

    move_file = Lake.move_file
    create_moved = Lake.create_moved


def test_receipts_are_written_only_for_a_batch_this_pipeline_sealed(tmp_path: Path) -> None:
    """A manifest in the lake without this pipeline's seal (planted, or sealed with another key)
    gets no receipts, with a clear failure rather than receipts built on it."""
    from pipeline import config, stages

    _contribute(tmp_path / "lake" / "incoming" / "instructions", 1, 20, [f"0x{i:040x}" for i in (1, 2)],
                random.Random(3))
    env = {"ANCHORLAKE_LAKE": (tmp_path / "lake").as_uri(), "ANCHORLAKE_HOME": str(tmp_path / "home"),
           "ANCHORLAKE_RPC_URL": "http://127.0.0.1:9", "ANCHORLAKE_SEAL_KEY": "ours"}
    ours = config.load(env)
    seq = stages.stage(ours, "instructions")
    assert seq == 0 and stages.commit(ours, "instructions", seq)["seq"] == 0
    with pytest.raises(CheckFailed, match="carries no valid seal of this pipeline's commit: no receipts are written"):
        stages.publish_receipts(config.load(env | {"ANCHORLAKE_SEAL_KEY": "theirs"}), "instructions", seq)
    assert stages.publish_receipts(ours, "instructions", seq) == 2


def test_a_manifest_whose_files_are_not_entries_is_refused_with_a_line() -> None:
    class Planted:  # what BatchFiles gives when the lake holds such a manifest
        dataset, seq = "instructions", 0

        def manifest(self) -> object:
            return type("M", (), {"data": {"files": [1, {"path": "data/x.parquet"}]}})()

    with pytest.raises(CheckFailed, match="does not give every data part's path and rows"):
        Parts.read(Planted())  # type: ignore[arg-type]


# --- receipts files against a lake writer (review of the per-worker files) ----------------------


def _receipts_lake(tmp_path: Path, contributors: list[str], consent: bool = True) -> tuple[BatchFiles, Path]:
    incoming = tmp_path / "lake" / "incoming" / "instructions"
    _contribute(incoming, 1, 20, contributors, random.Random(5))
    if not consent:  # every record quarantined: an honest batch with no accepted row
        path = incoming / "part-00.jsonl"
        path.write_text(path.read_text().replace('"consent": true', '"consent": false'))
    lake, dataset = open_lake((tmp_path / "lake").as_uri()), load(REPO / "expectations", "instructions")
    commit_batch(lake, dataset, stage_sources(lake, dataset))  # type: ignore[arg-type]
    files = BatchFiles(lake, "instructions", 0)
    build_receipts(files, dataset)
    return files, tmp_path / "lake" / "receipts" / "instructions" / "000000"


def test_a_batch_with_no_accepted_row_has_no_receipt_and_no_alarm(tmp_path: Path) -> None:
    files, folder = _receipts_lake(tmp_path, [f"0x{1:040x}"], consent=False)
    assert files.manifest().tree_size == 0
    assert json.loads((folder / "index.json").read_text())["files"] == []
    assert files.receipt_contributors() == []
    with pytest.raises(NotFound, match="no receipt for contributor"):
        files.receipt(f"0x{1:040x}")


def test_receipts_files_are_readable_by_the_lake_owner_only_as_its_other_files(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        _, folder = _receipts_lake(tmp_path, [f"0x{i:040x}" for i in (1, 2)])
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in folder.iterdir()}
    assert len(modes) == 3 and set(modes.values()) == {0o600}, modes


def test_a_receipt_line_whose_rows_were_rewritten_is_never_served(tmp_path: Path) -> None:
    """Same header, same length, one changed character in a row: the rows no longer fold to the
    root, so `receipt` refuses it rather than hand it to the contributor."""
    files, path, offsets = _two_contributors_receipts(tmp_path)
    lines = gzip.decompress(path.read_bytes()).splitlines(keepends=True)
    members = [packed(line.replace(b"by contributor", b"by Contributor", 1)) for line in lines]
    path.write_bytes(b"".join(members))
    lengths = [len(m) for m in members]
    table = pq.read_table(offsets).set_column(2, "offset", pa.array([0, *lengths[:-1]], pa.int64()))
    pq.write_table(table.set_column(3, "length", pa.array(lengths, pa.int64())), offsets)
    with pytest.raises(CheckFailed, match=r"fold to root"):
        files.receipt(f"0x{1:040x}")


def test_offsets_past_anything_readable_are_a_clear_failure(tmp_path: Path) -> None:
    files, folder = _receipts_lake(tmp_path, [f"0x{i:040x}" for i in (1, 2)])
    offsets = folder / f"{json.loads((folder / 'index.json').read_text())['offsets']}.offsets.parquet"
    table = pq.read_table(offsets)
    pq.write_table(table.set_column(2, "offset", pa.array([2**63 - 1] * table.num_rows, pa.int64())), offsets)
    with pytest.raises(CheckFailed, match="cannot be read|is not a receipt"):
        files.receipt(f"0x{1:040x}")


def test_a_folder_planted_where_a_receipts_file_goes_is_a_check_failure(tmp_path: Path) -> None:
    """Receipts files are named by their content, which a lake writer can work out: a folder put
    under that name fails the batch's receipts with CheckFailed (which `run` reports and goes on
    from), not an OS error."""
    files, folder = _receipts_lake(tmp_path, [f"0x{i:040x}" for i in (1, 2)])
    [name] = json.loads((folder / "index.json").read_text())["files"]
    (folder / f"{name}.jsonl.gz").unlink()
    (folder / f"{name}.jsonl.gz").mkdir()
    with pytest.raises(CheckFailed, match="is a folder, where a file of the lake goes"):
        build_receipts(files, load(REPO / "expectations", "instructions"))
