"""The column-wise typing of JSONL runs (ingest.columns) against the row-by-row rule it stands in
for: on every run, hostile or not, each record gets the same reason, detail, contributor, dedupe
key and committed values, and its leaf is the leaf of the values committed. And the JSONL reader
(parse._line_runs) cuts sources into the same lines as reading them line by line would."""

from __future__ import annotations

import io
import json

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.core.leaf import leaf_function, record_object
from pipeline.datasets import load
from pipeline.ingest import parse
from pipeline.ingest.columns import ColumnTyper

from conftest import REPO

pytestmark = pytest.mark.unit
DATASET = load(REPO / "expectations", "instructions")
COLUMNS = DATASET.committed_columns
LEAF = leaf_function(COLUMNS)
CHECKSUMMED = "0x52908400098527886E0F7030069857D2E4169EE7"  # EIP-55's own example
ADDRESSES = ["0x" + "ab" * 20, "0x" + "AB" * 20, CHECKSUMMED, CHECKSUMMED.lower(), "0x52908400098527886e0F7030069857D2E4169EE7",
             "0X" + "ab" * 20, "0x" + "ab" * 19, "ab" * 21, "", None, 5]
TIMES = ["2026-11-27T10:20:30Z", "2026-11-27T10:20:30.5Z", "2026-11-27T10:20:30.123456Z", "2026-11-27T10:20:30+00:00",
         "2026-11-27T10:20:30.1234567Z", "2026-11-27T10:20:30+05:30", "2026-11-27T10:20:30", "2026-11-27t10:20:30Z",
         "2026-11-27 10:20:30Z", "2024-02-29T00:00:00Z", "2026-02-29T00:00:00Z", "2026-04-31T00:00:00Z",
         "0000-01-01T00:00:00Z", "0001-01-01T00:00:00Z", "9999-12-31T23:59:59.999999Z", "9999-12-31T23:00:00-05:00",
         "2026-11-27T24:00:00Z", "2026-11-27T23:59:60Z", "2026-13-01T00:00:00Z", "２０２６-11-27T10:20:30Z",
         "2026-11-27", "", 17, None]
TEXTS = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=24) | st.sampled_from(
    ["  spaced \t out\n", "\x1c\x1dx\x1e\x1f", "ÉTÉ ß ﬁ", "a\u2028b", "\x00\x01\"\\", "x" * 17])
VALUES = {
    "prompt": TEXTS | st.none(), "response": TEXTS | st.none(), "language": st.sampled_from(["en", "fr-CA", "x" * 17]) | TEXTS,
    "consent": st.booleans() | st.sampled_from([None, 1, "true"]), "created_at": st.sampled_from(TIMES),
    "contributor": st.sampled_from(ADDRESSES),
}
EXTRA = st.sampled_from([{}, {}, {}, {"salt": "00"}, {"mood": "ok"}, {"count": 2**53}])
records = st.fixed_dictionaries({}, optional=VALUES).flatmap(lambda r: EXTRA.map(lambda e: {**r, **e}))
RAW_LINES = [b'{"prompt":"a","prompt":"b","contributor":"0x' + b"ab" * 20 + b'"}', b'{"prompt":"\\ud800"}', b"\xff\xfe",
             b'{"prompt":"a"} {"prompt":"b"}', b'{"prompt":"a"}\r{"prompt":"b"}', b"[1]", b'"x"', b"{", b"   ", b"\x0b",
             b'{"prompt":"deep","x":' + b"[" * 80 + b"]" * 80 + b"}", b'{"prompt":1e2}', b"\xef\xbb\xbf{}", b"null",
             b"{}null", b"{}{}", b'{"contributor":"0x' + b"ab" * 20 + b'"}\xef\xbb\xbf']
A = b'"contributor":"0x' + b"ab" * 20 + b'"'
FIRST_IN_RUN = [  # what a helper's attack found: each was committed, or crashed the process, before
    [b"null"], [b"  null", b"{" + A + b"}"],  # pyarrow 26 segfaults on a run whose first value is null
    [b"{" + A, b"}{" + A + b"}"],  # one object over two lines, two on the next: the row count matched
    [b"{" + A + b',"prompt":"X"', b"}{" + A + b',"prompt":"Y"}'],
    [b"\xef\xbb\xbf{" + A + b',"prompt":"p"}'],  # Arrow skips a byte order mark first in its input
]


def _slow(lines: list[tuple[int, bytes, bool]]) -> parse.Block:
    state = parse._state(DATASET)
    return parse.to_block(0, state.sealer.seal(list(parse._jsonl_lines(DATASET, state.typer, 0, iter(lines)))), COLUMNS)


def _rows(block: parse.Block) -> list[dict]:
    return block.table.to_pylist()


def _same(lines: list[bytes]) -> bool:
    """Both rules agree on the run; True if the column-wise rule typed any of it."""
    run = parse.LineRun(1, len(lines), b"\n".join(lines) + b"\n", frozenset())
    fast, slow = parse._jsonl_run(DATASET, 0, run), _slow(run.lines())
    names = ("line", "raw", "reason", "detail", "contributor", "key")
    assert [getattr(fast, n).to_pylist() for n in names] == [getattr(slow, n).to_pylist() for n in names]
    for got, want, reason, leaf in zip(_rows(fast), _rows(slow), fast.reason.to_pylist(), fast.leaf.to_pylist(),
                                       strict=True):
        assert {**got, "salt": None} == {**want, "salt": None}
        assert (leaf is None) == (reason is not None)
        if leaf is not None:
            assert leaf == LEAF(record_object(COLUMNS, got))
    lines = run.columns()
    return lines.shaped and ColumnTyper(DATASET).type(0, run.data, lines.numbers) is not None


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.lists(records, min_size=1, max_size=12), raw=st.lists(st.sampled_from(RAW_LINES), max_size=2))
def test_column_wise_typing_is_the_row_by_row_rule(rows: list[dict], raw: list[bytes]) -> None:
    _same([orjson.dumps(r) for r in rows] + raw)


def test_a_clean_run_is_typed_column_wise_and_agrees() -> None:
    rows = [{"prompt": f"Question {n}:  what\tis {n}?", "response": "Ünïcode ß and\nlines", "language": "en",
             "consent": True, "created_at": TIMES[n % 4], "contributor": ADDRESSES[n % 2]} for n in range(50)]
    assert _same([json.dumps(r).encode() for r in rows])


@pytest.mark.parametrize("line", RAW_LINES)
def test_a_run_arrow_reads_otherwise_goes_row_by_row(line: bytes) -> None:
    good = orjson.dumps({"prompt": "hello", "response": "x", "language": "en", "consent": True,
                         "created_at": TIMES[0], "contributor": ADDRESSES[0]})
    _same([good, line, good])


@pytest.mark.parametrize("lines", FIRST_IN_RUN)
def test_runs_arrow_would_read_otherwise_than_line_by_line_go_row_by_row(lines: list[bytes]) -> None:
    assert not _same(lines)  # the same results as the row-by-row rule, and none typed column-wise


@settings(max_examples=200, deadline=None)
@given(chunks=st.lists(st.sampled_from([b"{}", b"\n", b"\r\n", b"x" * 7, b"y" * 12, b" ", b"\xef\xbb\xbf"]), max_size=40),
       size=st.integers(1, 9), limit=st.integers(4, 12), max_lines=st.integers(1, 30))
def test_line_runs_are_the_lines_read_one_by_one(chunks: list[bytes], size: int, limit: int, max_lines: int) -> None:
    data = b"".join(chunks)
    expected, error = _by_line(data, limit, max_lines)
    got = []
    try:
        for run in parse._line_runs(io.BytesIO(data), limit, max_lines, size):
            assert run.first == len(got) + 1
            got += [(run.first + k, line, run.first + k in run.long)
                    for k, line in enumerate(run.data.split(b"\n")[:run.count])]
    except parse._CorruptSource as e:
        assert error == e.reason
    else:
        assert error is None
    assert [(n, line if long else line.rstrip(b"\r"), long) for n, line, long in got] == expected


def _by_line(data: bytes, limit: int, max_lines: int) -> tuple[list[tuple[int, bytes, bool]], str | None]:
    """Every line after a byte order mark, one at a time: (number, text without its end, or its head
    if over the limit)."""
    lines = data.removeprefix(b"\xef\xbb\xbf").split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    found = []
    for number, line in enumerate(lines, 1):
        if number > max_lines:
            return found, "too_many_rows"
        found.append((number, line[:min(parse.HEAD_BYTES, limit + 1)], True) if len(line) > limit else (number, line.rstrip(b"\r"), False))
    return found, None


def _parquet_source(path: object, groups: list[int], bad: set[int] = frozenset()) -> list[dict]:  # type: ignore[assignment]
    """A Parquet file of row groups of the given sizes; rows numbered in `bad` name no address."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows, at = [], 0
    with pq.ParquetWriter(str(path), pa.schema([("prompt", pa.string()), ("response", pa.string()), ("language", pa.string()),
                                                ("consent", pa.bool_()), ("created_at", pa.string()),
                                                ("contributor", pa.string())])) as writer:
        for size in groups:
            block = [{"prompt": f"question {at + i}", "response": f"answer {at + i}", "language": "en",
                      "consent": True, "created_at": "2026-11-27T10:20:30Z",
                      "contributor": "nobody" if at + i + 1 in bad else "0x" + f"{(at + i) % 7:02x}" * 20}
                     for i in range(size)]
            writer.write_table(pa.Table.from_pylist(block, schema=writer.schema), row_group_size=max(1, size))
            rows += block
            at += size
    return rows


@pytest.mark.parametrize("groups", [[5, 5, 30_000, 120_000, 7], [60_000], [1] * 50, [20_000, 20_000, 1], []])
def test_a_parquet_source_is_planned_as_runs_of_row_groups_covering_every_row_once(tmp_path, groups) -> None:
    import pyarrow.parquet as pq

    path = tmp_path / "s.parquet"
    _parquet_source(path, groups)
    runs = list(parse._row_group_runs(pq.ParquetFile(path).metadata, str(path), "s.parquet"))
    assert sum(r.count for r in runs) == sum(groups)
    assert [r.start for r in runs] == [sum(r.count for r in runs[:k]) for k in range(len(runs))]  # contiguous
    assert all(0 < r.count <= parse.PARQUET_SLICE_ROWS for r in runs)
    assert all(r.end == r.first + 1 or r.count <= parse.PARQUET_RUN_ROWS for r in runs)  # a run of groups is small
    for r in runs:  # a slice lies inside its one group; a run of whole groups starts at a group's first row
        group_rows = sum(groups[r.first:r.end])
        assert r.skip + r.count <= group_rows and (r.skip == 0 or r.end == r.first + 1)


def test_a_parquet_source_parsed_in_runs_gives_the_records_of_parsing_it_whole(tmp_path) -> None:
    """Every record, numbered, with its reason and values, whether the driver parses the source
    or chunk tasks parse its runs (slices of large row groups included)."""
    from concurrent.futures import Future

    from pipeline.ingest.chunks import Deferring

    path = tmp_path / "s.parquet"
    groups = [3, 70_000, 2, 55_001]
    _parquet_source(path, groups, bad={2, 4, 69_999, 70_004, 125_006})

    def flat(items: list) -> list[tuple]:
        blocks = [item if isinstance(item, parse.Block) else item.result() for item in items]
        return [(b.source, *row) for b in blocks for row in zip(
            b.line.to_pylist(), b.reason.to_pylist(), b.contributor.to_pylist(), b.key.to_pylist(), strict=True)]

    with open(path, "rb") as whole:
        parsed_here = list(parse.parse_source(DATASET, 4, "s.parquet", whole, Deferring()))
    with open(path, "rb") as planned:
        deferred = list(parse.parse_source(DATASET, 4, "s.parquet", planned, Deferring(),
                                           parse.Stored(None, "raw-key", str(path))))  # type: ignore[arg-type]
    assert all(isinstance(item, parse.Block) for item in parsed_here)
    assert deferred and not any(isinstance(item, (parse.Block, Future)) and not hasattr(item, "args") for item in deferred)
    assert all(isinstance(item.args[-1], parse.RowGroups) for item in deferred)  # the driver parsed nothing
    assert flat(deferred) == flat(parsed_here)
    assert [line for _, line, reason, _, _ in flat(deferred) if reason] == [2, 4, 69_999, 70_004, 125_006]
    assert len(flat(deferred)) == sum(groups)


LINE_SHAPES = [b'{"prompt":"a"}', b"{}", b"{ }", b' {"a":1}', b'{"a":1} ', b'{"a":1}\r', b"\r", b"", b"   ", b"\t",
               b"}", b"{", b"x{}", b"{}x", b"\xef\xbb\xbf{}", b'{"a":"\r"}', b"\x0b{}"]


@settings(max_examples=300, deadline=None)
@given(lines=st.lists(st.sampled_from(LINE_SHAPES), min_size=1, max_size=10), ended=st.booleans(),
       first=st.integers(1, 10**9), extra=st.booleans())
def test_a_runs_lines_as_columns_are_its_lines(lines: list[bytes], ended: bool, first: int, extra: bool) -> None:
    """The numpy reading of a run's lines (its common case: every line `{...}`, nothing around it)
    gives what reading them one by one gives: numbers and text of the lines that are not blank. A
    run whose bytes hold a line past its count (no reader makes one) is left to that reading."""
    extra = extra and len(lines) > 1
    run = parse.LineRun(first, len(lines) - extra, b"\n".join(lines) + (b"\n" if ended else b""), frozenset())
    columns, listed = run.columns(), run.lines()
    assert columns.numbers.tolist() == [number for number, _, _ in listed]
    assert columns.texts.to_pylist() == [text for _, text, _ in listed]
    assert columns.shaped == all(text.strip()[:1] == b"{" and text.strip()[-1:] == b"}" for _, text, _ in listed)
    pieces = run.data.split(b"\n")  # what numpy reads: `count` lines `{...}`, then no more than their last newline
    plain = pieces[run.count:] in ([], [b""]) and all(p[:1] == b"{" and p[-1:] == b"}" for p in pieces[:run.count])
    assert (run._plain_lines() is not None) == plain


def test_each_text_of_an_array_or_a_slice_of_it_hashes_to_its_own_sha256() -> None:
    import hashlib

    import pyarrow as pa

    from pipeline.lake.columnar import digests, hash_each

    texts = pa.array(["ab", "cdé", "f", "", "ghij"])
    for piece in (texts, texts.slice(1, 3), texts.slice(4), texts.slice(3, 1), texts.slice(5)):
        want = [hashlib.sha256(t.encode()).digest() for t in piece.to_pylist()]
        assert hash_each(piece) == want
        assert digests(want).to_pylist() == want and digests(want).type == pa.binary(32)
