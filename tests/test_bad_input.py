"""A corpus of hostile and broken contributions: every record ends accepted or quarantined with
the expected reason code, the good rows still commit, and nothing is unaccounted for."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from parquet_footer import with_row_counts

from pipeline.config import REPO_ROOT
from pipeline.datasets import load as load_dataset
from pipeline.ingest.commit import commit_batch
from pipeline.ingest.stage import stage_sources
from pipeline.lake import layout
from pipeline.lake.batch import BatchFiles
from pipeline.lake.storage import open_lake

pytestmark = pytest.mark.integration

ALICE = "0x1111111111111111111111111111111111111111"
CHECKSUMMED = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"


def good(i: int, **changes: object) -> dict:
    record = {"prompt": f"Tell me fact number {i} about the sea.", "response": f"Fact {i}: the sea is salty.",
              "language": "en", "consent": True, "created_at": "2026-11-01T10:00:00Z", "contributor": ALICE}
    record.update(changes)
    return {k: v for k, v in record.items() if v is not _DROP}


_DROP = object()


def line(record: dict) -> bytes:
    return json.dumps(record, ensure_ascii=False).encode()


def jsonl(*lines: bytes) -> bytes:
    return b"\n".join(lines) + b"\n"


def parquet_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def _groups(sizes: list[int], first: int) -> bytes:
    """A Parquet file of good records (facts `first`, `first` + 1, ...) in row groups of `sizes`."""
    buf, at = io.BytesIO(), first
    schema = pa.Table.from_pylist([good(0)]).schema
    with pq.ParquetWriter(buf, schema) as writer:
        for size in sizes:
            writer.write_table(pa.Table.from_pylist([good(at + i) for i in range(size)], schema=schema))
            at += size
    return buf.getvalue()


def _flipped(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1:]


nested = "[" * 200 + "]" * 200
bomb = "[" * 5000 + "]" * 5000
csv_header = b"prompt,response,language,consent,created_at,contributor\n"
full = gzip.compress(jsonl(*(line(good(900 + i)) for i in range(200))))

# (file name, bytes, expected quarantine reasons in that source, accepted rows in that source)
CASES: list[tuple[str, bytes, list[str], int]] = [
    ("json-truncated.jsonl", jsonl(line(good(1)), b'{"prompt": "x"'), ["invalid_json"], 1),
    ("json-trailing.jsonl", jsonl(line(good(2)), line(good(3)) + b" trailing"), ["invalid_json"], 1),
    ("json-nan.jsonl", jsonl(line(good(4)), b'{"prompt": NaN, "contributor": "' + ALICE.encode() + b'"}'), ["invalid_json"], 1),
    ("utf8-invalid.jsonl", jsonl(line(good(5)), line(good(6)).replace(b"sea", b"s\xff\xfea")), ["invalid_utf8"], 1),
    ("surrogate.jsonl", jsonl(line(good(7)), line(good(8)).replace(b"sea", b"\\ud800")), ["invalid_json"], 1),
    ("array.jsonl", jsonl(line(good(9)), b"[1, 2, 3]"), ["not_an_object"], 1),
    ("string.jsonl", jsonl(line(good(10)), b'"just a string"'), ["not_an_object"], 1),
    ("no-contributor.jsonl", jsonl(line(good(11)), line(good(12, contributor=_DROP))), ["missing_contributor"], 1),
    ("short-address.jsonl", jsonl(line(good(13)), line(good(14, contributor="0x1234"))), ["invalid_contributor"], 1),
    ("nonhex-address.jsonl", jsonl(line(good(15)), line(good(16, contributor="0x" + "g" * 40))), ["invalid_contributor"], 1),
    ("bad-checksum.jsonl", jsonl(line(good(17, contributor=CHECKSUMMED)),
                                 line(good(18, contributor=CHECKSUMMED.replace("0x5aAeb", "0x5AAeb")))), ["invalid_contributor"], 1),
    ("number-address.jsonl", jsonl(line(good(19)), line(good(20, contributor=12345))), ["invalid_contributor"], 1),
    ("prompt-number.jsonl", jsonl(line(good(21)), line(good(22, prompt=42))), ["wrong_type"], 1),
    ("consent-string.jsonl", jsonl(line(good(23)), line(good(24, consent="yes"))), ["wrong_type"], 1),
    ("bad-timestamp.jsonl", jsonl(line(good(25)), line(good(26, created_at="yesterday"))), ["wrong_type"], 1),
    ("naive-timestamp.jsonl", jsonl(line(good(27)), line(good(28, created_at="2026-11-01T10:00:00"))), ["wrong_type"], 1),
    ("too-long.jsonl", jsonl(line(good(29)), line(good(30, prompt="p" * 9000))), ["field_too_long"], 1),
    ("unknown-column.jsonl", jsonl(line(good(31)), line(good(32, mood="happy"))), ["unknown_column"], 1),
    ("salt.jsonl", jsonl(line(good(33)), line(good(34, salt="00" * 16))), ["reserved_column"], 1),
    ("nested.jsonl", jsonl(line(good(35)), ('{"prompt": ' + nested + "}").encode()), ["nested_too_deep"], 1),
    ("bomb.jsonl", jsonl(line(good(36)), ('{"prompt": ' + bomb + "}").encode()), ["nested_too_deep"], 1),
    ("huge-line.jsonl", jsonl(line(good(37)), line(good(38, response="r" * 300_000))), ["record_too_large"], 1),
    ("null-prompt.jsonl", jsonl(line(good(39)), line(good(40, prompt=None))), ["missing_prompt"], 1),
    ("no-consent.jsonl", jsonl(line(good(41)), line(good(42, consent=False))), ["no_consent"], 1),
    ("bad-language.jsonl", jsonl(line(good(43)), line(good(44, language="English"))), ["invalid_language"], 1),
    ("short-prompt.jsonl", jsonl(line(good(45)), line(good(46, prompt="hi"))), ["prompt_too_short"], 1),
    ("empty-response.jsonl", jsonl(line(good(47)), line(good(48, response=""))), ["response_empty"], 1),
    ("null-created.jsonl", jsonl(line(good(49)), line(good(50, created_at=None))), ["missing_created_at"], 1),
    ("dup-in-batch.jsonl", jsonl(line(good(51)), line(good(51, prompt="  TELL me fact number 51 about the sea. "))),
     ["duplicate"], 1),
    ("empty.jsonl", b"", ["empty_source"], 0),
    ("blank.jsonl", b"\n  \n\t\n", ["empty_source"], 0),
    ("corrupt.jsonl.gz", b"\x1f\x8b\x08\x00garbage-not-deflate", ["corrupt_compression"], 0),
    ("truncated.jsonl.gz", full[: len(full) // 2], ["corrupt_compression"], -1),
    ("notes.xml", b"<records><r/></records>", ["unsupported_format"], 0),
    ("columns.csv", csv_header + b'"Tell me fact 60 about the sea.","ok",en,true,2026-11-01T10:00:00Z,' + ALICE.encode()
     + b"\n" + b"only,three,fields\n", ["csv_column_count"], 1),
    ("bool.csv", csv_header + b'"Tell me fact 61 about the sea.","ok",en,perhaps,2026-11-01T10:00:00Z,' + ALICE.encode()
     + b"\n", ["wrong_type"], 0),
    ("quoting.csv", csv_header + b'"Tell me fact 62 about the sea.","ok",en,true,2026-11-01T10:00:00Z,' + ALICE.encode()
     + b"\n" + b'"unterminated,quote\n', ["invalid_csv"], 1),
    ("corrupt.parquet", b"PAR1 this is not parquet", ["corrupt_source"], 0),
    ("types.parquet", parquet_bytes(pa.table({"prompt": [63, 64], "response": ["a", "b"], "language": ["en", "en"],
                                             "consent": [True, True], "contributor": [ALICE, ALICE]})),
     ["wrong_type", "wrong_type"], 0),
    ("address-newline.jsonl", jsonl(line(good(71)), line(good(72, contributor=ALICE + "\n"))), ["invalid_contributor"], 1),
    ("language-newline.jsonl", jsonl(line(good(73)), line(good(74, language="en\n"))), ["invalid_language"], 1),
    ("timestamp-overflow.jsonl", jsonl(line(good(75)), line(good(76, created_at="9999-12-31T23:00:00-05:00"))),
     ["wrong_type"], 1),
    ("timestamp-year-0.jsonl", jsonl(line(good(77)), line(good(78, created_at="0000-01-01T00:00:00Z"))), ["wrong_type"], 1),
    ("timestamp-range.parquet", parquet_bytes(pa.table({
        "prompt": ["Tell me fact 79 about the sea.", "Tell me fact 80 about the sea."], "response": ["ok", "ok"],
        "language": ["en", "en"], "consent": [True, True],
        "created_at": pa.array([1_700_000_000_000_000, 300_000_000_000_000_000], pa.timestamp("us", tz="UTC")),
        "contributor": [ALICE, ALICE]})), ["wrong_type"], 1),
    ("utf8-invalid.parquet", parquet_bytes(pa.table({
        "prompt": pa.Array.from_buffers(pa.string(), 2, [None, pa.py_buffer(bytes([0, 0, 0, 0, 30, 0, 0, 0, 32, 0, 0, 0])),
                                                         pa.py_buffer(b"Tell me fact 81 about the sea.\xff\xfe")]),
        "response": ["ok", "ok"], "language": ["en", "en"], "consent": [True, True],
        "created_at": pa.array([1_700_000_000_000_000] * 2, pa.timestamp("us", tz="UTC")),
        "contributor": [ALICE, ALICE]})), ["invalid_utf8"], 1),
    ("rfc4180.csv", csv_header + b'"Tell me fact 82 about the sea,\r\nin two lines.","She said ""salty"".",en,true,'
     b'2026-11-01T10:00:00Z,' + ALICE.encode() + b'\r\n"Tell me fact 83 about the sea.","ok",en,maybe,'
     b'2026-11-01T10:00:00Z,' + ALICE.encode() + b"\r\n", ["wrong_type"], 1),
    ("csv-utf8.csv", csv_header + b'"Tell me fact 84 about the sea.","ok",en,true,2026-11-01T10:00:00Z,' + ALICE.encode()
     + b'\n"Tell me fact 85 about the \xff sea.","ok",en,true,2026-11-01T10:00:00Z,' + ALICE.encode() + b"\n",
     ["invalid_utf8"], 1),
    ("csv-huge-field.csv", csv_header + b'"Tell me fact 86 about the sea.","' + b"r\n" * 200_000 + b'",en,true,'
     b"2026-11-01T10:00:00Z," + ALICE.encode() + b'\n"Tell me fact 87 about the sea.","ok",en,true,'
     b"2026-11-01T10:00:00Z," + ALICE.encode() + b"\n", ["record_too_large"], 1),
    ("csv-header-repeats.csv", b"prompt,prompt,contributor\n" + b'"Tell me fact 88 about the sea.",x,' + ALICE.encode()
     + b"\n", ["corrupt_source"], 0),
    ("csv-unknown-column.csv", b"prompt,response,language,consent,created_at,contributor,mood\n"
     + b'"Tell me fact 89 about the sea.","ok",en,true,2026-11-01T10:00:00Z,' + ALICE.encode() + b",happy\n",
     ["unknown_column"], 0),
    ("csv-bad-timestamp.csv", csv_header + b'"Tell me fact 90 about the sea.","ok",en,true,yesterday,' + ALICE.encode()
     + b"\n", ["wrong_type"], 0),
    ("csv-header-only.csv", csv_header, ["empty_source"], 0),
    ("address-0X.jsonl", jsonl(line(good(91)), line(good(92, contributor="0X" + "11" * 20))), ["invalid_contributor"], 1),
    ("address-space.jsonl", jsonl(line(good(93)), line(good(94, contributor=" " + ALICE))), ["invalid_contributor"], 1),
    ("address-bool.jsonl", jsonl(line(good(95)), line(good(96, contributor=True))), ["invalid_contributor"], 1),
    ("empty-object.jsonl", jsonl(line(good(97)), b"{}"), ["missing_contributor"], 1),
    ("null-line.jsonl", jsonl(line(good(98)), b"null"), ["not_an_object"], 1),
    ("timestamp-number.jsonl", jsonl(line(good(99)), line(good(100, created_at=1_700_000_000))), ["wrong_type"], 1),
    ("list-prompt.jsonl", jsonl(line(good(101)), line(good(102, prompt=["a", "b"]))), ["wrong_type"], 1),
    ("language-separator.jsonl", jsonl(line(good(103)), line(good(104, language="en\u2028"))), ["invalid_language"], 1),
    ("parquet-no-contributor.parquet", parquet_bytes(pa.table({"prompt": ["Tell me fact 105 about the sea."]})),
     ["missing_contributor"], 0),
    ("parquet-empty.parquet", parquet_bytes(pa.table({"prompt": pa.array([], pa.string()),
                                                      "contributor": pa.array([], pa.string())})), ["empty_source"], 0),
    ("parquet-struct.parquet", parquet_bytes(pa.table({"prompt": [{"text": "Tell me fact 106 about the sea."}],
                                                       "contributor": [ALICE]})), ["wrong_type"], 0),
    ("bom-crlf.jsonl", b"\xef\xbb\xbf" + line(good(65)) + b"\r\n" + line(good(66)) + b"\r\n", [], 2),
    ("good.jsonl.gz", gzip.compress(jsonl(line(good(67)), line(good(68)))), [], 2),
    ("good.csv.gz", gzip.compress(csv_header + b'"Tell me fact 69 about the sea.","ok",en,true,2026-11-01T10:00:00Z,'
                                  + ALICE.encode() + b"\n"), [], 1),
    ("good.parquet", parquet_bytes(pa.table({"prompt": ["Tell me fact 70 about the sea."], "response": ["ok"],
                                            "language": ["en"], "consent": [True],
                                            "created_at": pa.array([1_700_000_000_000_000], pa.timestamp("us", tz="UTC")),
                                            "contributor": [ALICE]})), [], 1),
    # Parquet whose pages or footer lie (pyarrow writes neither; tests/parquet_footer.py does)
    ("page-corrupt.parquet", _flipped(_groups([1], 110), 4), ["corrupt_source"], 0),
    ("groups-huge.parquet", with_row_counts(_groups([1], 111), [2**62]), ["corrupt_source"], 0),
    ("groups-fewer.parquet", with_row_counts(_groups([4, 4, 2], 112), total=3), ["corrupt_source"], 0),
    ("groups-fewer.parquet.gz", gzip.compress(with_row_counts(_groups([4, 4, 2], 122), total=3)), ["corrupt_source"], 0),
    ("groups-zero.parquet", with_row_counts(_groups([4, 4, 2], 132), [0]), ["corrupt_source"], 0),
    ("groups-negative.parquet", with_row_counts(_groups([4, 4, 2], 142), [4, -4]), ["corrupt_source"], 0),
]


@pytest.fixture(params=["worker processes", "one process"])
def committed(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple:
    if request.param == "one process":  # the path a single-core machine takes
        monkeypatch.setattr("pipeline.ingest.commit.worker_pool", lambda: None)
    lake = open_lake((tmp_path / "lake").as_uri())
    dataset = load_dataset(REPO_ROOT / "expectations", "instructions")
    for name, data, _, _ in CASES:
        lake.write(f"incoming/instructions/corpus/{name}", data)
    lake.write("incoming/instructions/corpus/zz-copy-of-good.jsonl.gz", dict((c[0], c[1]) for c in CASES)["good.jsonl.gz"])
    seq = stage_sources(lake, dataset)
    assert seq == 0
    return lake, dataset, commit_batch(lake, dataset, seq)


def test_the_corpus_has_at_least_60_kinds_of_bad_input() -> None:
    assert sum(1 for c in CASES if c[2]) >= 60


def test_every_bad_record_gets_its_reason_and_good_rows_commit(committed: tuple) -> None:
    lake, _, manifest = committed
    quarantine = pq.read_table(io.BytesIO(lake.read(layout.batch_file("instructions", 0, layout.QUARANTINE)))).to_pylist()
    by_source: dict[str, list[str]] = {}
    for row in quarantine:
        by_source.setdefault(row["source_key"].rsplit("/", 1)[1], []).append(row["reason"])
        assert row["source_sha256"] and row["detail"]
    sources = {s["key"].rsplit("/", 1)[1]: s for s in manifest.data["sources"]}
    for name, _, reasons, accepted in CASES:
        got = by_source.get(name, [])
        if name == "truncated.jsonl.gz":
            assert got == ["corrupt_compression"] and 0 < sources[name]["accepted"] < 200, (name, got)
            continue
        assert sorted(got) == sorted(reasons), (name, got)
        assert sources[name]["accepted"] == accepted, (name, sources[name])


def test_no_text_of_a_rejected_record_is_public_and_the_operator_keeps_it_privately(committed: tuple) -> None:
    """SPEC §13.1: batches/ keeps the reason and the SHA-256 of each rejected record's raw text;
    the text itself (an unknown column's name, a bad cell, a whole record) is only under private/."""
    lake, _, _ = committed
    quarantine = pq.read_table(io.BytesIO(lake.read(layout.batch_file("instructions", 0, layout.QUARANTINE))))
    assert "raw" not in quarantine.column_names
    public = " ".join(str(v) for row in quarantine.select(["reason", "detail", "duplicate_of"]).to_pylist()
                      for v in row.values())
    for text in ("mood", "happy", "perhaps", "yesterday", "just a string", "Tell me fact"):
        assert text not in public, text
    # Nor do the Great Expectations result and its Data Docs, which are public too: counts, no values.
    batch = layout.batch("instructions", 0)
    published = b"".join(lake.read(o.key) for o in lake.list(batch)
                         if o.key.endswith((layout.VALIDATION, ".html")))
    assert b"English" not in published and b'"hi"' not in published and b"partial_unexpected" not in published
    private = pq.read_table(io.BytesIO(lake.read(layout.private("instructions", 0) + layout.REJECTED)))
    raw = dict(zip(private.column("raw_sha256").to_pylist(), private.column("raw").to_pylist(), strict=True))
    assert all(hashlib.sha256(r).hexdigest() == h for h, r in raw.items())
    assert set(quarantine.column("raw_sha256").to_pylist()) == set(raw)
    assert any(b'"mood": "happy"' in r or b'"mood":"happy"' in r for r in raw.values())


def test_every_input_record_is_accounted_for(committed: tuple) -> None:
    lake, _, manifest = committed
    counts = manifest.data["counts"]
    assert counts["input"] == counts["accepted"] + counts["quarantined"] + counts["duplicate"]
    assert counts["input"] == sum(s["records"] for s in manifest.data["sources"])
    for s in manifest.data["sources"]:
        assert s["records"] == s["accepted"] + s["quarantined"] + s["duplicate"]
    data_rows = sum(pq.read_table(io.BytesIO(lake.read(layout.batch("instructions", 0) + f["path"]))).num_rows
                    for f in manifest.data["files"])
    quarantined = pq.read_table(io.BytesIO(lake.read(layout.batch_file("instructions", 0, layout.QUARANTINE)))).num_rows
    assert data_rows == counts["accepted"] == manifest.tree_size
    assert quarantined == counts["quarantined"] + counts["duplicate"]
    rewards = pq.read_table(io.BytesIO(lake.read(layout.batch_file("instructions", 0, layout.REWARDS)))).to_pylist()
    assert sum(r["accepted"] for r in rewards) == counts["accepted"]


def test_the_same_bytes_under_another_key_are_a_duplicate_source(committed: tuple) -> None:
    _, _, manifest = committed
    skipped = manifest.data["skipped_sources"]
    assert [(s["key"].rsplit("/", 1)[1], s["reason"], s["first_key"].rsplit("/", 1)[1]) for s in skipped] == \
        [("zz-copy-of-good.jsonl.gz", "duplicate_source", "good.jsonl.gz")]


def test_a_duplicate_of_an_earlier_batch_names_the_first_record(committed: tuple) -> None:
    lake, dataset, first = committed
    lake.write("incoming/instructions/later.jsonl", jsonl(line(good(1, contributor=CHECKSUMMED)), line(good(500))))
    assert stage_sources(lake, dataset) == 1
    second = commit_batch(lake, dataset, 1)
    assert second.data["counts"] == {"input": 2, "accepted": 1, "quarantined": 0, "duplicate": 1}
    assert [s["key"] for s in second.data["sources"]] == ["incoming/instructions/later.jsonl"]
    row = pq.read_table(io.BytesIO(lake.read(layout.batch_file("instructions", 1, layout.QUARANTINE)))).to_pylist()[0]
    index = BatchFiles(lake, "instructions", 0).index(["record_id"]).column("record_id").to_pylist()
    assert row["reason"] == "duplicate" and row["duplicate_of"] in index


def test_new_bytes_under_a_known_key_are_a_new_source(committed: tuple) -> None:
    lake, dataset, _ = committed
    lake.write("incoming/instructions/corpus/good.jsonl.gz", gzip.compress(jsonl(line(good(600)))))
    assert stage_sources(lake, dataset) == 1
    assert commit_batch(lake, dataset, 1).data["counts"]["accepted"] == 1


def test_a_quality_threshold_refuses_the_batch_and_commits_nothing(tmp_path: Path) -> None:
    from pipeline.ingest.quality import BatchRejected

    lake = open_lake((tmp_path / "lake").as_uri())
    dataset = load_dataset(REPO_ROOT / "expectations", "instructions")
    lake.write("incoming/instructions/mostly-undated.jsonl",
               jsonl(line(good(1)), *(line(good(i, created_at=None)) for i in range(2, 6))))
    seq = stage_sources(lake, dataset)
    with pytest.raises(BatchRejected, match="missing_created_at|created_at"):
        commit_batch(lake, dataset, seq)
    assert not lake.exists(layout.batch_file("instructions", 0, layout.MANIFEST))
    # The refused batch does not block the dataset: its sources are recorded with the reason and
    # left out, and the next batch of new sources commits under the same seq.
    with pytest.raises(BatchRejected, match="were refused"):
        commit_batch(lake, dataset, seq)
    assert stage_sources(lake, dataset) is None  # nothing new yet: no empty batch
    lake.write("incoming/instructions/later.jsonl", jsonl(line(good(7))))
    assert stage_sources(lake, dataset) == 0
    manifest = commit_batch(lake, dataset, 0)
    assert [s["key"] for s in manifest.data["sources"]] == ["incoming/instructions/later.jsonl"]
    failed = [json.loads(lake.read(o.key)) for o in lake.list(layout.failed_plans("instructions"))]
    assert [(f["seq"], [s["key"] for s in f["sources"]]) for f in failed] == \
        [(0, ["incoming/instructions/mostly-undated.jsonl"])]
    assert "created_at" in failed[0]["reason"]


def test_sources_arriving_while_a_batch_runs_go_to_the_next_batch(tmp_path: Path) -> None:
    lake = open_lake((tmp_path / "lake").as_uri())
    dataset = load_dataset(REPO_ROOT / "expectations", "instructions")
    lake.write("incoming/instructions/a.jsonl", jsonl(line(good(1))))
    assert stage_sources(lake, dataset) == 0
    lake.write("incoming/instructions/b.jsonl", jsonl(line(good(2))))
    assert stage_sources(lake, dataset) == 0  # the plan of batch 0 is frozen; a re-run reuses it
    first = commit_batch(lake, dataset, 0)
    assert [s["key"] for s in first.data["sources"]] == ["incoming/instructions/a.jsonl"]
    assert stage_sources(lake, dataset) == 1
    second = commit_batch(lake, dataset, 1)
    assert [s["key"] for s in second.data["sources"]] == ["incoming/instructions/b.jsonl"]
    assert stage_sources(lake, dataset) is None  # nothing new: no empty batch


def test_raw_copies_are_byte_exact_and_named_by_their_hash(committed: tuple) -> None:
    import hashlib

    lake, _, manifest = committed
    for source in manifest.data["sources"]:
        ext = source["key"].rsplit("/", 1)[1].split(".", 1)[1]
        raw = lake.read(f"raw/instructions/000000/{source['sha256']}.{ext}")
        assert hashlib.sha256(raw).hexdigest() == source["sha256"] and len(raw) == source["bytes"]
        assert raw == lake.read(source["key"])


def test_a_third_dataset_needs_only_its_two_files(tmp_path: Path) -> None:
    import shutil

    from pipeline.datasets import available

    declarations = tmp_path / "expectations"
    declarations.mkdir()
    for name in ("instructions.dataset.json", "instructions.suite.json"):
        shutil.copy(REPO_ROOT / "expectations" / name, declarations / name)
    (declarations / "ratings.dataset.json").write_text(json.dumps({
        "format": "anchorlake.dataset/1", "name": "ratings",
        "columns": [{"name": "item", "type": "string", "max_length": 200}, {"name": "stars", "type": "int64"},
                    {"name": "score", "type": "float64"}, {"name": "tags", "type": "list<string>", "max_length": 5}],
        "dedupe_key": ["item", "stars"], "suite": "ratings.suite.json",
        "rewards": {"rule": "per_unit/1", "rate": "10", "unit": "points", "payout": "points", "weight": "characters"}}))
    (declarations / "ratings.suite.json").write_text(json.dumps({"name": "ratings", "expectations": [
        {"type": "expect_column_values_to_be_between", "kwargs": {"column": "stars", "min_value": 1, "max_value": 5},
         "meta": {"anchorlake": {"reason": "stars_out_of_range"}}}]}))
    assert available(declarations) == ["instructions", "ratings"]
    dataset = load_dataset(declarations, "ratings")
    lake = open_lake((tmp_path / "lake").as_uri())
    rows = [{"item": "apple", "stars": 5, "score": 0.1, "tags": ["x"], "contributor": ALICE},
            {"item": "b", "stars": 1, "score": 1e21, "tags": [], "contributor": CHECKSUMMED},
            {"item": "c", "stars": 9, "score": 2.5, "tags": None, "contributor": ALICE},
            {"item": "d", "stars": 2, "score": "high", "contributor": ALICE}]
    lake.write("incoming/ratings/r.jsonl", jsonl(*(line(r) for r in rows)))
    manifest = commit_batch(lake, dataset, stage_sources(lake, dataset))
    assert manifest.data["counts"] == {"input": 4, "accepted": 2, "quarantined": 2, "duplicate": 0}
    reasons = pq.read_table(io.BytesIO(lake.read(layout.batch_file("ratings", 0, layout.QUARANTINE)))).column("reason").to_pylist()
    assert sorted(reasons) == ["stars_out_of_range", "wrong_type"]
    rewards = {r["contributor"]: int(r["amount"]) for r in
               pq.read_table(io.BytesIO(lake.read(layout.batch_file("ratings", 0, layout.REWARDS)))).to_pylist()}
    assert rewards == {ALICE: 50, CHECKSUMMED.lower(): 10}  # 10 points per character of text: "apple" and "b"
    # Float rows take the JCS path: the stored leaves are the RFC 8785 hashes of the records.
    from pipeline.core.jcs import canonical_bytes
    from pipeline.core.merkle import leaf_hash
    from pipeline.lake.batch import BatchFiles
    from pipeline.receipts import batch_records

    files = BatchFiles(lake, "ratings", manifest.seq)
    records = batch_records(files, dataset)
    tree = files.tree()
    assert [leaf_hash(canonical_bytes(r)) for r in records] == [tree.leaf(i) for i in range(tree.tree_size)]
    assert any(r["score"] == 1e21 for r in records)


def test_a_suite_naming_an_unknown_column_is_a_clear_configuration_error(tmp_path: Path) -> None:
    import shutil

    from pipeline.errors import BadInput

    declarations = tmp_path / "expectations"
    declarations.mkdir()
    shutil.copy(REPO_ROOT / "expectations" / "instructions.dataset.json", declarations)
    suite = json.loads((REPO_ROOT / "expectations" / "instructions.suite.json").read_text())
    suite["expectations"].append({"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "mood"}})
    (declarations / "instructions.suite.json").write_text(json.dumps(suite))
    dataset = load_dataset(declarations, "instructions")
    lake = open_lake((tmp_path / "lake").as_uri())
    lake.write("incoming/instructions/a.jsonl", jsonl(line(good(1))))
    with pytest.raises(BadInput, match="mood"):
        commit_batch(lake, dataset, stage_sources(lake, dataset))
    assert not lake.exists(layout.batch_file("instructions", 0, layout.MANIFEST))


def test_links_and_special_files_in_a_file_drop_zone_are_recorded_and_never_read(tmp_path: Path) -> None:
    """The attack: a symlink to /proc/self/environ (keys, S3 secret) dropped in a file:// drop
    zone was copied into raw/ and quarantine.parquet. Now only regular files are read."""
    import os

    lake = open_lake((tmp_path / "lake").as_uri())
    dataset = load_dataset(REPO_ROOT / "expectations", "instructions")
    lake.write("incoming/instructions/good.jsonl", jsonl(line(good(1))))
    zone = tmp_path / "lake" / "incoming" / "instructions"
    (tmp_path / "secret.jsonl").write_text(json.dumps(good(2, prompt="SECRET-ANCHORER-KEY")) + "\n")
    os.symlink(tmp_path / "secret.jsonl", zone / "secret.jsonl")
    os.symlink("/proc/self/environ", zone / "environ.jsonl")
    os.mkfifo(zone / "pipe.jsonl")  # reading a FIFO would block the run for good
    manifest = commit_batch(lake, dataset, stage_sources(lake, dataset))
    assert manifest.data["counts"]["accepted"] == 1
    skipped = {s["key"].rsplit("/", 1)[1]: s["reason"] for s in manifest.data["skipped_sources"]}
    assert skipped == {"secret.jsonl": "not_a_regular_file", "environ.jsonl": "not_a_regular_file",
                       "pipe.jsonl": "not_a_regular_file"}
    for path in (tmp_path / "lake").rglob("*"):
        if path.is_file() and not path.is_symlink():
            assert b"SECRET-ANCHORER-KEY" not in path.read_bytes() and b"PATH=" not in path.read_bytes(), path
    lake.write("incoming/instructions/later.jsonl", jsonl(line(good(3))))
    assert commit_batch(lake, dataset, stage_sources(lake, dataset)).data["counts"]["input"] == 1


def _bomb_lake(folder: Path) -> None:
    """A drop zone with a Parquet file that decodes to 2 GiB (2.4 KB-style: one zstd-compressed
    16 MiB string per row group) and a gzip of one 2 GiB line, both built without holding them."""
    import zlib

    zone = folder / "lake" / "incoming" / "instructions"
    zone.mkdir(parents=True)
    big = pa.array(["a" * (16 << 20)])
    schema = pa.schema([("prompt", pa.string()), ("contributor", pa.string())])
    with pq.ParquetWriter(zone / "bomb.parquet", schema, compression="zstd", use_dictionary=False) as writer:
        for _ in range(128):
            writer.write_table(pa.table({"prompt": big, "contributor": [ALICE]}, schema=schema))
    one = pa.DictionaryArray.from_arrays(pa.array([0] * 2_000, pa.int32()), pa.array(["b" * (64 << 20)]))
    pq.write_table(pa.table({"prompt": one, "contributor": [ALICE] * 2_000}), zone / "bomb-dictionary.parquet",
                   compression="zstd")  # one 64 MiB value, 2,000 times: 128 GiB of rows from one small page
    packer = zlib.compressobj(1, zlib.DEFLATED, 31)
    chunk = b"a" * (64 << 20)  # one endless line
    with open(zone / "bomb.jsonl.gz", "wb") as out:
        for _ in range(32):
            out.write(packer.compress(chunk))
        out.write(packer.flush())
    (zone / "good.jsonl").write_bytes(jsonl(line(good(1))))


BOMB_RUN = """
import json, resource, sys
from pipeline.config import REPO_ROOT
from pipeline.datasets import load
from pipeline.ingest.commit import commit_batch
from pipeline.ingest.stage import stage_sources
from pipeline.lake.storage import open_lake
lake = open_lake(sys.argv[1])
dataset = load(REPO_ROOT / "expectations", "instructions")
manifest = commit_batch(lake, dataset, stage_sources(lake, dataset))
print(json.dumps({"counts": manifest.data["counts"], "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""


def test_bombs_are_quarantined_while_memory_stays_bounded(tmp_path: Path) -> None:
    import subprocess
    import sys

    _bomb_lake(tmp_path)
    proc = subprocess.run([sys.executable, "-c", BOMB_RUN, (tmp_path / "lake").as_uri()], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["counts"]["accepted"] == 1
    assert result["peak_rss"] < 1 << 30, result
    lake = open_lake((tmp_path / "lake").as_uri())
    quarantine = pq.read_table(io.BytesIO(lake.read(layout.batch_file("instructions", 0, layout.QUARANTINE))))
    reasons = {(r["source_key"].rsplit("/", 1)[1], r["reason"]) for r in quarantine.to_pylist()}
    assert reasons == {("bomb.parquet", "source_too_large"), ("bomb.jsonl.gz", "source_too_large"),
                       ("bomb-dictionary.parquet", "record_too_large")}, reasons
    assert result["counts"]["quarantined"] == 2 + 2_000


def test_limits_are_declared_per_dataset_and_a_misspelled_key_is_an_error(tmp_path: Path) -> None:
    import shutil

    from pipeline.errors import FormatError

    declarations = tmp_path / "expectations"
    declarations.mkdir()
    shutil.copy(REPO_ROOT / "expectations" / "instructions.suite.json", declarations)
    base = json.loads((REPO_ROOT / "expectations" / "instructions.dataset.json").read_text())
    for where, broken in (("(declaration)", base | {"unknown_column": "drop"}),
                          ("columns[0]", base | {"columns": [base["columns"][0] | {"maxlength": 3}]}),
                          ("rewards.weight", base | {"rewards": base["rewards"] | {"weight": "prompt"}}),
                          ("rewards.weight_column: is not accepted: a weight never comes from a value the contributor",
                           base | {"rewards": base["rewards"] | {"weight_column": "stars"}}),
                          ("rewards.rate: does not apply to proportional/1", base | {"rewards": base["rewards"] | {"rate": "1"}}),
                          ("rewards.rule", base | {"rewards": base["rewards"] | {"rule": "winner_takes_all/1"}}),
                          ("contributors", base | {"contributors": "trusted"}),
                          ("limits", base | {"limits": {"source_byte": 10}}),
                          ("limits.source_rows", base | {"limits": {"source_rows": 0}})):
        (declarations / "instructions.dataset.json").write_text(json.dumps(broken))
        with pytest.raises(FormatError, match=re.escape(where)):
            load_dataset(declarations, "instructions")
    (declarations / "instructions.dataset.json").write_text(json.dumps(base | {"limits": {"source_rows": 3}}))
    dataset = load_dataset(declarations, "instructions")
    lake = open_lake((tmp_path / "lake").as_uri())
    lake.write("incoming/instructions/long.jsonl", jsonl(*(line(good(i)) for i in range(5))))
    lake.write("incoming/instructions/long.csv", csv_header + b"".join(
        b'"Tell me fact %d about the sea.","ok",en,true,2026-11-01T10:00:00Z,' % (100 + i) + ALICE.encode() + b"\n"
        for i in range(4)))
    manifest = commit_batch(lake, dataset, stage_sources(lake, dataset))
    counts = manifest.data["counts"]
    assert counts["input"] == counts["accepted"] + counts["quarantined"] + counts["duplicate"]
    reasons = pq.read_table(io.BytesIO(lake.read(layout.batch_file("instructions", 0, layout.QUARANTINE)))).to_pylist()
    assert sorted(r["reason"] for r in reasons) == ["too_many_rows", "too_many_rows"]
    assert counts["accepted"] == 3 + 2  # the lines before the limit (the CSV header is a line)


def test_check_names_every_problem_of_a_suite_and_run_stages_nothing(tmp_path: Path) -> None:
    """A misspelled expectation type (GX would only log it and validate nothing), an unknown column,
    an unknown policy key and a regex ending in $: one line each, exit 2, nothing staged."""
    import shutil

    from conftest import base_env, cli

    declarations = tmp_path / "expectations"
    declarations.mkdir()
    shutil.copy(REPO_ROOT / "expectations" / "instructions.dataset.json", declarations)
    suite = json.loads((REPO_ROOT / "expectations" / "instructions.suite.json").read_text())
    suite["expectations"] += [
        {"type": "expect_column_values_to_not_be_nul", "kwargs": {"column": "prompt"}},
        {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "mood"}},
        {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "prompt"},
         "meta": {"anchorlake": {"reasons": "x"}}},
        {"type": "expect_column_values_to_match_regex", "kwargs": {"column": "language", "regex": "^[a-z]+$"}}]
    (declarations / "instructions.suite.json").write_text(json.dumps(suite))
    env = base_env(tmp_path) | {"ANCHORLAKE_DATASETS": str(declarations),
                                "ANCHORLAKE_LAKE": (tmp_path / "lake").as_uri()}
    proc = cli(env, "check", check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 4, proc.stderr
    for said, expected in zip(lines, ("did you mean expect_column_values_to_not_be_null", "unknown column 'mood'",
                                      "unknown meta.anchorlake key 'reasons'", "ends in $"), strict=True):
        assert expected in said, said
    lake = open_lake((tmp_path / "lake").as_uri())
    lake.write("incoming/instructions/a.jsonl", jsonl(line(good(1))))
    proc = cli(env, "run", "--dataset", "instructions", check=False)
    assert proc.returncode == 2 and "and 3 more: run `anchorlake check`" in proc.stderr, proc.stderr
    assert list(lake.list("raw/")) == []


def test_sources_already_staged_are_recognised_without_downloading_them_again(tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.lake import sources

    lake = open_lake((tmp_path / "lake").as_uri())
    dataset = load_dataset(REPO_ROOT / "expectations", "instructions")
    for i in range(5):
        lake.write(f"incoming/instructions/old-{i}.jsonl", jsonl(line(good(i))))
    commit_batch(lake, dataset, stage_sources(lake, dataset))
    downloaded: list[str] = []
    copy = sources.copy_hashing
    monkeypatch.setattr(sources, "copy_hashing", lambda lake, key, scratch: downloaded.append(key) or copy(lake, key, scratch))
    lake.write("incoming/instructions/new.jsonl", jsonl(line(good(10))))
    lake.write("incoming/instructions/old-0.jsonl", jsonl(line(good(11))))  # rewritten: new bytes, a new source
    assert stage_sources(lake, dataset) == 1
    assert sorted(downloaded) == ["incoming/instructions/new.jsonl", "incoming/instructions/old-0.jsonl"]
    assert commit_batch(lake, dataset, 1).data["counts"]["accepted"] == 2


def test_a_raw_copy_planted_before_staging_is_replaced_by_the_one_staging_hashed(tmp_path: Path) -> None:
    """raw/ keys are named by the source's SHA-256, which a lake writer can work out: a file put
    there first (other bytes) is replaced by the copy staging hashed, so the commit reads those."""
    lake = open_lake((tmp_path / "lake").as_uri())
    dataset = load_dataset(REPO_ROOT / "expectations", "instructions")
    data = jsonl(line(good(1)), line(good(2)))
    lake.write("incoming/instructions/a.jsonl", data)
    planted = layout.raw("instructions", 0, hashlib.sha256(data).hexdigest(), "jsonl")
    lake.write(planted, b"planted: not the source")
    assert stage_sources(lake, dataset) == 0
    assert lake.read(planted) == data
    assert commit_batch(lake, dataset, 0).data["counts"]["accepted"] == 2


def _planned_runs(lake: object, dataset: object, seq: int, scratch: Path) -> dict[str, list[object]]:
    """What the commit's driver sends its chunk tasks for each staged source: the last argument
    of each deferred parse (a run of lines, by reference or with its bytes)."""
    from pipeline.ingest.builder import blocks
    from pipeline.ingest.chunks import plan_source
    from pipeline.lake import sources as staging

    plan, _ = staging.load_plan(lake, "instructions", seq)  # type: ignore[arg-type, misc]
    runs: dict[str, list[object]] = {}
    files = BatchFiles(lake, "instructions", seq)  # type: ignore[arg-type]
    for index, item in blocks(files, dataset, plan, scratch, lambda job: lambda: plan_source(job)):  # type: ignore[arg-type]
        runs.setdefault(plan[index].key.rsplit("/", 1)[-1], []).append(item.args[-1])  # type: ignore[union-attr]
    return runs


def test_a_chunk_task_reads_its_lines_from_the_lake_and_the_driver_sends_only_where_they_are(tmp_path: Path) -> None:
    """The driver cuts a plain JSONL source into runs and sends each as (key, byte range, SHA-256):
    the task reads the bytes itself, as it reads a small CSV source whole. A compressed source's
    runs still carry their bytes. A Parquet
    source goes as runs of row groups of a private copy the driver hashed as it made it: a lake
    writer who changes the lake's object afterwards changes nothing the tasks read."""
    import pickle

    from pipeline.ingest import parse

    lake = open_lake((tmp_path / "lake").as_uri())
    dataset = load_dataset(REPO_ROOT / "expectations", "instructions")
    body = jsonl(*(line(good(i)) for i in range(2000)))
    lake.write("incoming/instructions/a.jsonl", b"\xef\xbb\xbf" + body)  # a byte order mark first
    other = jsonl(*(line(good(i)) for i in range(2000, 4000)))
    lake.write("incoming/instructions/b.jsonl.gz", gzip.compress(other))
    table = pa.Table.from_pylist([good(i) for i in range(4000, 4300)])
    lake.write("incoming/instructions/c.parquet", parquet_bytes(table))
    csv_rows = b"".join(f"question {i},answer {i},en,true,2026-11-01T10:00:00Z,{ALICE}\n".encode() for i in range(50))
    lake.write("incoming/instructions/d.csv", csv_header + csv_rows)
    seq = stage_sources(lake, dataset)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    runs = _planned_runs(lake, dataset, seq, scratch)
    [groups] = runs["c.parquet"]
    assert isinstance(groups, parse.RowGroups) and Path(groups.path).parent == scratch and groups.count == 300
    [whole] = runs["d.csv"]  # a small CSV source goes whole, by reference
    assert isinstance(whole, parse.RunRef) and (whole.at, whole.length) == (0, len(csv_header + csv_rows))
    original = parquet_bytes(table)
    raw_parquet = layout.raw("instructions", seq, hashlib.sha256(original).hexdigest(), "parquet")
    lake.write(raw_parquet, parquet_bytes(pa.Table.from_pylist([good(i, contributor=CHECKSUMMED) for i in range(300)])))
    block = parse._parquet_run(dataset, 2, groups)
    assert (block.line.to_pylist(), set(block.contributor.to_pylist())) == (list(range(1, 301)), {ALICE})  # what the driver hashed
    lake.write(raw_parquet, original)
    [ref] = runs["a.jsonl"]
    assert isinstance(ref, parse.RunRef) and (ref.at, ref.length, ref.first, ref.count) == (3, len(body), 1, 2000)
    assert len(pickle.dumps(ref)) < 1024 < len(body)
    assert ref.read().data == body
    [carried] = runs["b.jsonl.gz"]  # decompressed by the source's reader, into the shuffle directory
    assert isinstance(carried, parse.RunFile) and Path(carried.path).parent == scratch
    assert carried.read().data == other
    assert commit_batch(lake, dataset, seq).data["counts"]["accepted"] == 4350


def test_a_large_or_compressed_csv_source_is_parsed_by_its_reader_and_commits_as_if_read_whole(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every source is read by a worker, the next ones sent before they are reached. RFC 4180 lets
    a record run over lines, so a CSV source too large for one chunk task, or compressed, is not
    cut by bytes: its reader parses it whole into block files in the shuffle directory, and the
    driver sends each file to a chunk task (so for a compressed Parquet source). With pinned
    salts the batch is the one chunk tasks reading each CSV source whole commit; a raw copy
    changed after staging is refused."""
    from collections.abc import Callable

    from pipeline.errors import CheckFailed
    from pipeline.ingest import builder, commit, parse
    from pipeline.ingest.chunks import SourceJob

    monkeypatch.setenv("ANCHORLAKE_TEST_SALT_SEED", "split")
    for name in ("ANCHORLAKE_LAKE", "ANCHORLAKE_RPC_URL"):
        monkeypatch.delenv(name, raising=False)
    dataset = load_dataset(REPO_ROOT / "expectations", "instructions")
    rows = "".join(f'"question {i}\nover two lines","answer, {i}",en,{"true" if i % 7 else "maybe"},'
                   f"2026-11-01T10:00:00Z,{ALICE}\n" for i in range(120))
    data = csv_header + rows.encode() + b"short,row\n"
    table = pa.Table.from_pylist([good(i) for i in range(40)] + [good(40, contributor="0xnot")])
    events: list[str] = []  # each split sent, and each waited for
    read_source = builder.BatchBuilder.read_source

    def spied(self: builder.BatchBuilder, job: SourceJob, renew: Callable[[], None]) -> Callable[[], object]:
        name = job.source.key.rsplit("/", 1)[-1]
        events.append(f"send {name}")
        waiter = read_source(self, job, renew)
        return lambda: events.append(f"wait {name}") or waiter()

    monkeypatch.setattr(builder.BatchBuilder, "read_source", spied)
    left: list[list[str]] = []  # shuffle files of the sources' readers still there once every chunk settled
    finish = builder.BatchBuilder.finish
    monkeypatch.setattr(builder.BatchBuilder, "finish", lambda self, renew: (
        left.append(sorted(p.name for p in self.scratch.glob("*") if p.name.startswith(("read-", "source-")))),
        finish(self, renew))[-1])
    monkeypatch.setattr(commit, "pool_width", lambda pool: 2)  # two sent ahead, whatever the engine
    committed = {}
    for cut in (1 << 30, 256):  # d.csv whole to a chunk task, then split; e.csv.gz split both times
        monkeypatch.setattr(parse, "CSV_TASK_BYTES", cut)
        lake = open_lake((tmp_path / str(cut)).as_uri())
        lake.write("incoming/instructions/d.csv", data)
        lake.write("incoming/instructions/e.csv.gz", gzip.compress(data.replace(b"question", b"query"), mtime=0))
        lake.write("incoming/instructions/f.parquet.gz", gzip.compress(parquet_bytes(table), mtime=0))
        lake.write("incoming/instructions/g.parquet", parquet_bytes(table))
        m = commit_batch(lake, dataset, stage_sources(lake, dataset), chunk_records=50)  # type: ignore[arg-type]
        quarantine = pq.read_table(tmp_path / str(cut) / layout.batch("instructions", 0) / layout.QUARANTINE)
        committed[cut] = (m.root, m.data["counts"], quarantine.to_pylist())
        assert not list((tmp_path / str(cut)).rglob("read-*"))
    assert events == 2 * ["send d.csv", "send e.csv.gz", "wait d.csv", "send f.parquet.gz", "wait e.csv.gz",
                          "send g.parquet", "wait f.parquet.gz", "wait g.parquet"]
    assert committed[256] == committed[1 << 30] and left == [[], []]
    root, counts, quarantine = committed[256]
    assert counts["accepted"] == 2 * 102 + 40 and counts["duplicate"] == 40 and {(q["line"], q["reason"]) for q in quarantine} >= {(2, "wrong_type"), (242, "csv_column_count")}

    lake = open_lake((tmp_path / "forged").as_uri())
    lake.write("incoming/instructions/d.csv", data)
    seq = stage_sources(lake, dataset)
    lake.write(layout.raw("instructions", seq, hashlib.sha256(data).hexdigest(), "csv"),
               data.replace(b"question 1\n", b"question 9\n"))
    with pytest.raises(CheckFailed, match="no longer match"):
        commit_batch(lake, dataset, seq)  # type: ignore[arg-type]
    assert not BatchFiles(lake, "instructions", seq).committed()


def test_a_chunk_is_sent_at_its_byte_bound_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Lines of up to the record size limit, from a small gzip upload, must not put gigabytes in
    one chunk task: a chunk is sent at CHUNK_BYTES as well as at its record count, and the batch
    is the one a single chunk commits."""
    from pipeline.ingest import builder

    monkeypatch.setenv("ANCHORLAKE_TEST_SALT_SEED", "bytes")
    for name in ("ANCHORLAKE_LAKE", "ANCHORLAKE_RPC_URL"):
        monkeypatch.delenv(name, raising=False)
    dataset = load_dataset(REPO_ROOT / "expectations", "instructions")
    data = jsonl(*(line(good(i, prompt="p" * 5000 + str(i))) for i in range(2400)))  # 12 MB: runs of some MB
    sizes: list[list[int]] = []  # each chunk's items' sizes
    job = builder.ChunkJob
    monkeypatch.setattr(builder, "ChunkJob", lambda *a: (sizes.append([item.size for item in a[3]]), job(*a))[-1])
    roots = []
    for bound in (1 << 40, 64 << 10):
        monkeypatch.setattr(builder, "CHUNK_BYTES", bound)
        lake = open_lake((tmp_path / str(bound)).as_uri())
        lake.write("incoming/instructions/a.jsonl.gz", gzip.compress(data, mtime=0))
        roots.append(commit_batch(lake, dataset, stage_sources(lake, dataset), chunk_records=1 << 20).root)
    [whole, *bounded] = sizes  # all runs in one chunk; then a chunk a run (each over 64 KB)
    assert sum(whole) == len(data) and len(whole) > 1 and bounded == [[size] for size in whole]
    assert roots[0] == roots[1]


def test_a_staged_plan_that_lies_about_a_sources_size_is_refused_not_signed(tmp_path: Path) -> None:
    """The manifest repeats each source's size from the plan, which a lake writer can rewrite: the
    size of the bytes read must be the plan's, as their SHA-256 must."""
    from pipeline.errors import CheckFailed

    lake = open_lake((tmp_path / "lake").as_uri())
    dataset = load_dataset(REPO_ROOT / "expectations", "instructions")
    lake.write("incoming/instructions/a.jsonl", jsonl(line(good(1))))
    seq = stage_sources(lake, dataset)
    plan = json.loads(lake.read(layout.raw_plan("instructions", seq)))
    plan["sources"][0]["bytes"] = 1 << 40
    lake.write(layout.raw_plan("instructions", seq), json.dumps(plan).encode())
    with pytest.raises(CheckFailed, match=r"bytes, the staged plan says 1099511627776"):
        commit_batch(lake, dataset, seq)
    assert not BatchFiles(lake, "instructions", seq).committed()


def test_a_raw_copy_rewritten_after_the_driver_read_it_is_refused_by_the_chunk_task(tmp_path: Path,
                                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A lake writer who swaps a run's bytes (same length) between the driver's read and the task's
    gets the commit refused, naming the bytes; nothing is committed, and a re-run commits."""
    from pipeline.errors import CheckFailed
    from pipeline.ingest import parse

    lake = open_lake((tmp_path / "lake").as_uri())
    dataset = load_dataset(REPO_ROOT / "expectations", "instructions")
    data = jsonl(line(good(1)), line(good(2)))
    lake.write("incoming/instructions/a.jsonl", data)
    seq = stage_sources(lake, dataset)
    raw = layout.raw("instructions", seq, hashlib.sha256(data).hexdigest(), "jsonl")
    forged = data.replace(b"fact number 1 ", b"fact number 9 ")
    assert len(forged) == len(data) != forged
    [ref] = _planned_runs(lake, dataset, seq, tmp_path)["a.jsonl"]
    lake.write(raw, forged)
    with pytest.raises(CheckFailed, match=r"bytes 0\+\d+ \(lines 1\.\.2\) no longer match"):
        ref.read()  # type: ignore[attr-defined]

    read = parse.RunRef.read

    def swapped(self: parse.RunRef) -> parse.LineRun:
        lake.write(raw, forged)  # after the driver hashed the source, before the task reads its run
        return read(self)

    lake.write(raw, data)
    monkeypatch.setattr(parse.RunRef, "read", swapped)
    with pytest.raises(CheckFailed, match="no longer match"):
        commit_batch(lake, dataset, seq)
    assert not BatchFiles(lake, "instructions", seq).committed()
    monkeypatch.setattr(parse.RunRef, "read", read)
    lake.write(raw, data)
    assert commit_batch(lake, dataset, seq).data["counts"]["accepted"] == 2


def test_a_parquet_raw_copy_grown_by_a_lake_writer_is_refused_before_more_than_its_size_is_copied(
        tmp_path: Path) -> None:
    """The driver's private copy of a Parquet source stops one byte past the size staged and is
    checked at once: a raw object swapped for a far larger one neither fills the scratch disk
    nor gets its row groups planned."""
    from pipeline.errors import CheckFailed
    from pipeline.lake import sources as staging

    lake = open_lake((tmp_path / "lake").as_uri())
    dataset = load_dataset(REPO_ROOT / "expectations", "instructions")
    data = _groups([3], 150)
    lake.write("incoming/instructions/a.parquet", data)
    seq = stage_sources(lake, dataset)
    [source], _ = staging.load_plan(lake, "instructions", seq)
    lake.write(source.raw_key, data + b"\0" * (50 * len(data)))
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    with pytest.raises(CheckFailed, match="no longer match"):
        staging.open_source(lake, source, scratch, seekable=True)
    assert [p.stat().st_size for p in scratch.iterdir()] == [len(data) + 1]


def test_reading_parquet_never_aborts_the_process_across_fifty_runs(tmp_path: Path) -> None:
    """pyarrow's threaded in-memory Parquet read aborted `anchorlake rewards` at interpreter exit
    (exit 134) in about one run in four; every Parquet read is single-threaded now."""
    from concurrent.futures import ThreadPoolExecutor

    from conftest import base_env, cli

    lake = open_lake((tmp_path / "lake").as_uri())
    dataset = load_dataset(REPO_ROOT / "expectations", "instructions")
    lake.write("incoming/instructions/a.jsonl", jsonl(*(line(good(i)) for i in range(20))))
    commit_batch(lake, dataset, stage_sources(lake, dataset))
    env = base_env(tmp_path) | {"ANCHORLAKE_LAKE": lake.url}
    with ThreadPoolExecutor(2) as pool:
        runs = list(pool.map(lambda _: cli(env, "--json", "rewards", "--dataset", "instructions", check=False),
                             range(50)))
    assert [r.returncode for r in runs] == [0] * 50, next(r.stderr for r in runs if r.returncode)


def _chunked(block: object) -> object:
    """The block with every column cut into chunks, as a block of over 2 GiB of text comes."""
    from dataclasses import replace

    from pipeline.ingest.parse import block_types

    def cut(column: pa.Array) -> pa.ChunkedArray:
        half = len(column) // 2
        return pa.chunked_array([column.slice(0, half), column.slice(half)], column.type)

    return replace(block, table=pa.concat_tables([block.table.slice(0, 3), block.table.slice(3)]),  # type: ignore[type-var]
                   **{name: cut(getattr(block, name)) for name in block_types()})


def test_a_chunk_of_chunked_columns_spills_and_quarantines_what_one_of_whole_columns_does(tmp_path: Path) -> None:
    """Blocks whose columns are chunked (as a run of Parquet row groups over 2 GiB of text comes:
    Arrow cannot join it into one array, so the spill puts each record batch in slice order on its
    own) go through a chunk task as blocks of whole columns do: the same rows in each key slice, in
    arrival order, and the same quarantine."""
    from pipeline.ingest import chunks
    from pipeline.ingest import partitions as tasks
    from pipeline.ingest.parse import parse_source

    dataset = load_dataset(REPO_ROOT / "expectations", "instructions")
    rows = [good(i, contributor=f"0x{i % 7:040x}") for i in range(40)]
    rows[5]["consent"], rows[9]["language"] = False, "not a tag"
    body = jsonl(*(line(r) for r in rows[:20]), b"{not json", *(line(r) for r in rows[20:]), line(rows[0]))
    items = list(parse_source(dataset, 0, "a.jsonl", io.BytesIO(body), chunks.Deferring()))
    blocks = [item if isinstance(item, chunks.Block) else item.result() for item in items]  # type: ignore[attr-defined]
    found = []
    for name, given in (("whole", blocks), ("chunked", [_chunked(b) for b in blocks])):
        shuffle = tmp_path / name
        shuffle.mkdir()
        outcome = chunks.run_chunk(chunks.ChunkJob(str(shuffle), dataset, 3, tuple(given), 4))  # type: ignore[arg-type]
        slices = [tasks.read_shuffled(tasks.slice_file(shuffle, k, 3)).to_pylist() if rows else []
                  for k, rows in enumerate(outcome.slice_rows)]
        found.append((outcome.counts, outcome.slice_rows, slices,
                      tasks.read_shuffled(chunks.quarantine_file(shuffle, 3)).to_pylist()))
    assert found[0] == found[1]
    counts, slice_rows, slices, quarantine = found[0]
    assert sum(slice_rows) == 39 and sum(1 for rows in slice_rows if rows) > 1  # the duplicate is the dedupe task's
    assert all([r[tasks.ARRIVAL] for r in rows] == sorted(r[tasks.ARRIVAL] for r in rows) for rows in slices)
    assert sorted((r["line"], r["reason"]) for r in quarantine) == [(6, "no_consent"), (10, "invalid_language"),
                                                                     (21, "invalid_json")]


def test_a_small_parquet_upload_of_over_two_gib_of_text_is_quarantined_not_a_failed_chunk(tmp_path: Path) -> None:
    """A helper's attack: 8,300 rows of one 256 KiB text, dictionary-encoded, a few KB of Parquet
    in one row group. Its run holds over 2 GiB of text, which Arrow gives as a chunked column (one
    array cannot hold it); the chunk task failed on it, and so did every retry of the commit. Now
    the rows are typed and quarantined (the prompt is over its limit) like any others."""
    from pipeline.ingest import chunks, parse

    dataset = load_dataset(REPO_ROOT / "expectations", "instructions")
    rows = 8_300
    text = "y" * (dataset.max_record_bytes - 400)
    path = tmp_path / "s.parquet"
    pq.write_table(pa.table({"prompt": pa.array([text] * rows), "response": ["r"] * rows, "language": ["en"] * rows,
                             "consent": [True] * rows, "created_at": ["2024-01-01T00:00:00Z"] * rows,
                             "contributor": [ALICE] * rows}), path, compression="zstd")
    assert path.stat().st_size < 1 << 20
    with open(path, "rb") as f:
        parquet, texts = parse._parquet_file(dataset, f)
    [run] = parse._row_group_runs(parquet.metadata, str(path), "s.parquet", texts)
    shuffle = tmp_path / "shuffle"
    shuffle.mkdir()
    item = chunks.Deferred(parse._parquet_run, (dataset, 0, run), run.count)
    outcome = chunks.run_chunk(chunks.ChunkJob(str(shuffle), dataset, 0, (item,), 4))
    assert (outcome.counts, outcome.quarantined) == ([("quarantined", 0, rows)], rows)
