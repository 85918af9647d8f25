"""Property tests: whatever bytes a contributor drops, reading one source never raises, and every
record it yields is either typed or quarantined with a reason (nothing is lost on the way)."""

from __future__ import annotations

import gzip
import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.config import REPO_ROOT
from pipeline.datasets import load as load_dataset
from pipeline.ingest.chunks import Deferring
from pipeline.ingest.parse import Block, parse_source

pytestmark = pytest.mark.unit
DATASET = load_dataset(REPO_ROOT / "expectations", "instructions")
FIELDS = ("prompt", "response", "language", "consent", "created_at", "contributor", "salt", "mood")
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)
records = st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=6), json_values, max_size=8)


def read_all(name: str, data: bytes) -> list[Block]:
    """The source's records as the commit reads them: JSONL runs deferred to a chunk task, each
    parsed here as that task would."""
    items = list(parse_source(DATASET, 0, name, io.BytesIO(data), Deferring()))
    blocks = [item if isinstance(item, Block) else item.result() for item in items]  # type: ignore[attr-defined]
    assert blocks and all(isinstance(b, Block) for b in blocks)
    for block in blocks:  # a record is typed (it has its contributor and leaf) or quarantined with a reason
        for reason, contributor, leaf in zip(block.reason.to_pylist(), block.contributor.to_pylist(),
                                             block.leaf.to_pylist(), strict=True):
            assert reason is not None or (contributor is not None and leaf is not None)
    return blocks


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=2000),
       name=st.sampled_from(["a.jsonl", "a.csv", "a.parquet", "a.jsonl.gz", "a.csv.gz", "a.bin"]))
def test_random_bytes_in_any_format_never_raise(data: bytes, name: str) -> None:
    read_all(name, data)


@settings(max_examples=150, deadline=None)
@given(rows=st.lists(records, max_size=12), compress=st.booleans())
def test_random_json_records_are_each_typed_or_quarantined(rows: list[dict], compress: bool) -> None:
    lines = []
    for row in rows:
        try:
            lines.append(json.dumps(row, allow_nan=True).encode())
        except (TypeError, ValueError):
            lines.append(b"{not json")
    data = b"\n".join(lines) + b"\n"
    blocks = read_all("a.jsonl.gz" if compress else "a.jsonl", gzip.compress(data) if compress else data)
    counted = sum(len(b) for b in blocks)
    assert counted == max(len(rows), 1)  # an empty file is one `empty_source` entry


@settings(max_examples=100, deadline=None)
@given(cells=st.lists(st.lists(st.text(max_size=12), min_size=1, max_size=7), max_size=10))
def test_random_csv_never_raises(cells: list[list[str]]) -> None:
    read_all("a.csv", _csv_text(cells))


def _csv_text(cells: list[list[str]]) -> bytes:
    """A CSV source of the dataset's header and `cells`, as Python's csv module writes it."""
    import csv

    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["prompt", "response", "language", "consent", "created_at", "contributor"])
    writer.writerows(cells)
    return out.getvalue().encode("utf-8", "surrogatepass")


@settings(max_examples=60, deadline=None)
@given(rows=st.lists(st.fixed_dictionaries({
    "prompt": st.none() | st.text(max_size=30), "consent": st.none() | st.booleans(),
    "contributor": st.none() | st.text(max_size=42) | st.just("0x" + "ab" * 20),
    "created_at": st.none() | st.integers(min_value=-(2**62), max_value=2**62)}), max_size=8))
def test_random_parquet_never_raises(rows: list[dict]) -> None:
    table = pa.table({
        "prompt": pa.array([r["prompt"] for r in rows], pa.string()),
        "consent": pa.array([r["consent"] for r in rows], pa.bool_()),
        "contributor": pa.array([r["contributor"] for r in rows], pa.string()),
        "created_at": pa.array([r["created_at"] for r in rows], pa.timestamp("us", tz="UTC"))})
    buf = io.BytesIO()
    pq.write_table(table, buf)
    blocks = read_all("a.parquet", buf.getvalue())
    assert sum(len(b) for b in blocks) == max(len(rows), 1)


def _records(blocks: list[Block]) -> list[tuple]:
    """Every record as read, but for its salt (fresh each time): line, text, reason, values, key."""
    out = []
    for b in blocks:
        values = b.table.drop_columns(["salt"]).to_pylist()
        columns = [getattr(b, name).to_pylist() for name in ("line", "raw", "reason", "detail", "contributor", "key")]
        out += list(zip(*columns, values, strict=True))
    return out


_CSV_SOURCES = st.binary(max_size=600) | st.lists(st.lists(st.text(max_size=12), min_size=1, max_size=7),
                                                  max_size=10).map(_csv_text)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=_CSV_SOURCES, cut=st.integers(min_value=1, max_value=64))
def test_a_csv_source_reads_the_same_whole_in_a_chunk_task_or_streamed_by_the_driver(data: bytes, cut: int) -> None:
    """A small CSV source goes whole to a chunk task, which reads it from the lake; a larger one
    is streamed by the driver after the head it read to tell: both give the records of reading
    it directly, one by one, reason by reason."""
    import tempfile
    from unittest import mock

    from pipeline.ingest import parse
    from pipeline.lake.storage import open_lake

    with tempfile.TemporaryDirectory() as tmp:
        lake = open_lake(f"file://{tmp}")
        lake.write("raw/a.csv", data)
        stored = parse.Stored(lake, "raw/a.csv")
        direct = _records(read_all("a.csv", data))

        items = list(parse_source(DATASET, 0, "a.csv", io.BytesIO(data), Deferring(), stored))
        assert [type(item.args[-1]) for item in items] == [parse.RunRef]  # type: ignore[union-attr]
        assert _records([item.result() for item in items]) == direct  # type: ignore[union-attr]

        with mock.patch.object(parse, "CSV_TASK_BYTES", cut):  # now too large for a task when over `cut` bytes
            items = list(parse_source(DATASET, 0, "a.csv", io.BytesIO(data), Deferring(), stored))
        if len(data) > cut:
            assert all(isinstance(item, Block) for item in items)
        assert _records([item if isinstance(item, Block) else item.result() for item in items]) == direct  # type: ignore[union-attr]
