"""The progress bar of long work (rate and time left, off with --quiet and --json), and the
verified pull recomputing leaves column-wise in one worker per core: the same files, root and
failures as one process computing them row by row."""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline import cli, progress, verify
from pipeline.core.leaf import leaf_function, record_object, timestamp_text
from pipeline.core.merkle import leaf_hash
from pipeline.core.merkle import root as merkle_root
from pipeline.datasets import Column, load
from pipeline.errors import CheckFailed
from pipeline.ingest.commit import commit_batch
from pipeline.ingest.stage import stage_sources
from pipeline.lake import columnar
from pipeline.lake import workers as workers_module
from pipeline.lake.batch import BatchFiles
from pipeline.lake.storage import open_lake
from pipeline.progress import Bar
from pipeline.pull import Destination, pull_batch

from conftest import REPO

pytestmark = pytest.mark.unit

TRICKY = ['plain', 'a "quoted" word', "back\\slash", "new\nline\ttab", "bell\x07 and \x1f", "é 日本 🎉", "\x00nul",
          "\u2028 and \x7f", "</script>"]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


# --- the progress bar ---------------------------------------------------------------------------


def test_the_bar_shows_the_rate_and_the_time_left_by_its_clock() -> None:
    clock, stream = Clock(), io.StringIO()
    shown = Bar("instructions batch 0", "rows", 1_000_000, stream, clock, tty=False)
    clock.now = 2.0
    shown.advance(250_000)
    assert stream.getvalue() == ""  # a plain line at most every REDRAW_PLAIN seconds
    assert shown.text() == "instructions batch 0: 250,000 of 1,000,000 rows (25%), 125,000 rows/s, ETA 6s"
    clock.now = 5.0
    shown.advance(250_000)
    clock.now = 6.0
    shown.advance(100_000)
    clock.now = 9.0
    shown.advance(400_000)
    shown.close()
    assert stream.getvalue().splitlines() == [
        "... instructions batch 0: 500,000 of 1,000,000 rows (50%), 100,000 rows/s, ETA 5s",
        "... instructions batch 0: 1,000,000 rows in 9s (111,111 rows/s)"]


def test_on_a_terminal_the_bar_is_redrawn_in_place_and_ended_with_a_newline() -> None:
    clock, stream = Clock(), io.StringIO()
    shown = Bar("auditing instructions", "rows", 4_000, stream, clock, tty=True)
    for step in range(1, 5):
        clock.now = step * 1.0
        shown.advance(1_000)
    shown.close()
    text = stream.getvalue()
    assert text.count("\r") == 5 and text.endswith("\n") and text.count("\n") == 1
    assert "\r... auditing instructions: 3,000 of 4,000 rows (75%), 1,000 rows/s, ETA 1s" + progress.CLEAR_TO_END in text
    assert text.endswith("\r... auditing instructions: 4,000 rows in 4s (1,000 rows/s)" + progress.CLEAR_TO_END + "\n")


def test_without_a_total_the_bar_shows_the_rate_alone_and_bytes_in_units() -> None:
    clock, stream = Clock(), io.StringIO()
    shown = Bar("contributing", "bytes", None, stream, clock, tty=False)
    clock.now = 6.0
    shown.advance(3_000_000)
    assert stream.getvalue() == "... contributing: 3.0 MB, 500.0 kB/s\n"
    assert Bar("c", "bytes", 2_500_000_000, stream, clock, tty=False).text(clock.now) == \
        "c: 0 bytes of 2.5 GB (0%), 0 bytes/s"


def test_work_that_ends_before_the_first_redraw_prints_nothing() -> None:
    clock, stream = Clock(), io.StringIO()
    with progress.bar("quick", "rows", 10, stream, clock, tty=True) as tick:
        clock.now = progress.REDRAW_TTY / 2
        tick(10)
    assert stream.getvalue() == ""


def test_durations_read_as_seconds_minutes_or_hours() -> None:
    assert [progress.duration(s) for s in (0, 42.4, 187, 3723)] == ["0s", "42s", "3:07", "1:02:03"]


def test_contributions_are_dropped_in_order_in_at_most_about_fifty_calls() -> None:
    files = [(Path(f"f{n}"), size) for n, size in enumerate([10 << 20] * 500 + [100 << 20] + [0] * 3)]
    groups = cli._groups(files)
    assert [f for g in groups for f in g] == files and 40 <= len(groups) <= 51 and all(groups)
    small = [(Path(f"s{n}"), 1000) for n in range(300)]
    assert cli._groups(small) == [small]  # under CONTRIBUTE_GROUP_BYTES: one call, as before


# --- a committed batch of several parts ---------------------------------------------------------


@pytest.fixture(scope="module")
def batch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A file:// lake holding one committed instructions batch of 7 parts, its text full of
    characters JSON escapes."""
    root = tmp_path_factory.mktemp("pull")
    rng = random.Random(12)
    contributors = [f"0x{rng.getrandbits(160):040x}" for _ in range(30)]
    incoming = root / "lake" / "incoming" / "instructions"
    incoming.mkdir(parents=True)
    for f in range(3):
        lines = [json.dumps({"prompt": f"file {f} line {n}: {rng.choice(TRICKY)}", "response": rng.choice(TRICKY),
                             "language": "en", "consent": True,
                             "created_at": f"20{10 + n % 20}-0{1 + n % 9}-11T0{n % 10}:00:00.{n:06d}Z",
                             "contributor": rng.choice(contributors)}) for n in range(220)]
        (incoming / f"part-{f}.jsonl").write_text("\n".join(lines) + "\n")
    lake, dataset = open_lake((root / "lake").as_uri()), load(REPO / "expectations", "instructions")
    manifest = commit_batch(lake, dataset, stage_sources(lake, dataset), chunk_records=100)  # type: ignore[arg-type]
    assert manifest.tree_size == 660 and len(manifest.data["files"]) == 7
    return root / "lake"


def _pull(lake: Path, target: Path, workers: int, monkeypatch: pytest.MonkeyPatch) -> dict:
    monkeypatch.setattr(workers_module.config, "cores", lambda: workers)
    monkeypatch.setattr(workers_module, "PARALLEL_FROM_ROWS", 0)
    files = BatchFiles(open_lake(lake.as_uri()), "instructions", 0)
    ticks: list[int] = []
    trusted = files.manifest().root
    result = pull_batch(files, load(REPO / "expectations", "instructions"), Destination(target, "instructions"),
                        lambda m: None if m.root == trusted else pytest.fail("not the trusted root"), ticks.append)
    assert sum(ticks) == result["rows"] and len(ticks) == 7
    return result


def _tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_parallel_pull_writes_the_same_files_and_root_as_one_process(
        batch: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    parallel = _pull(batch, tmp_path / "parallel", 2, monkeypatch)
    single = _pull(batch, tmp_path / "single", 1, monkeypatch)
    committed = batch / "batches" / "instructions" / "000000"
    assert parallel == single == {"seq": 0, "rows": 660, "root": parallel["root"], "verified": True,
                                  "manifest_sha256": hashlib.sha256((committed / "manifest.json").read_bytes()).hexdigest()}
    pulled = _tree(tmp_path / "parallel")
    assert pulled == _tree(tmp_path / "single")
    parts = {name: data for name, data in pulled.items() if name.startswith("000000/")}
    assert parts == {f"000000/{p.name}": p.read_bytes() for p in (committed / "data").iterdir()} and len(parts) == 7
    assert pulled[".anchorlake/000000/manifest.json"] == (committed / "manifest.json").read_bytes()
    dataset = load(REPO / "expectations", "instructions")
    leaf = leaf_function(dataset.committed_columns)
    by_rows = [leaf(record_object(dataset.committed_columns, row))
               for table in BatchFiles(open_lake(batch.as_uri()), "instructions", 0).parts() for row in table.to_pylist()]
    assert merkle_root(by_rows).hex() == parallel["root"]


@pytest.mark.parametrize("workers", [1, 2])
def test_a_flipped_byte_names_its_part_and_nothing_is_pulled(
        workers: int, batch: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lake = tmp_path / "lake"
    shutil.copytree(batch, lake)
    part = lake / "batches" / "instructions" / "000000" / "data" / "part-00003.parquet"
    data = bytearray(part.read_bytes())
    data[len(data) // 2] ^= 0x01
    part.write_bytes(bytes(data))
    with pytest.raises(CheckFailed) as failed:
        _pull(lake, tmp_path / "out", workers, monkeypatch)
    assert str(failed.value).startswith(f"{part.as_uri()}: SHA-256 differs from the manifest's ")
    assert not (tmp_path / "out" / "000000").exists()  # the folder is claimed, nothing lands in it


@pytest.mark.parametrize("workers", [1, 2])
def test_rows_that_recompute_to_another_root_are_refused_with_both_roots(
        workers: int, batch: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lake = tmp_path / "lake"
    shutil.copytree(batch, lake)
    manifest = lake / "batches" / "instructions" / "000000" / "manifest.json"
    real = json.loads(manifest.read_text())["merkle"]["root"]
    manifest.write_text(manifest.read_text().replace(real, "ab" * 32))
    with pytest.raises(CheckFailed, match=f"batch 0: the rows recompute to root {real} over 660 leaves, "
                                          f"the manifest says {'ab' * 32} over 660"):
        _pull(lake, tmp_path / "out", workers, monkeypatch)
    assert not (tmp_path / "out" / "000000").exists()  # the folder is claimed, nothing lands in it


# --- leaves, column-wise ------------------------------------------------------------------------

COLUMNS = (Column("text", "string"), Column("count", "int64"), Column("ok", "bool"), Column("at", "timestamp"),
           Column("contributor", "string"), Column("salt", "string"))
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
TIMES = st.datetimes(datetime(1, 1, 1), datetime(9999, 12, 31, 23, 59, 59, 999999)).map(lambda t: t.replace(tzinfo=UTC))
texts = st.none() | st.text(st.characters(codec="utf-8"), max_size=12) | st.sampled_from(TRICKY)
rows = st.fixed_dictionaries({
    "text": texts, "count": st.none() | st.integers(-2**63, 2**63 - 1), "ok": st.none() | st.booleans(),
    "at": st.none() | TIMES,
    "contributor": st.sampled_from(["0x" + "a" * 40, "0x" + "0" * 40]), "salt": texts})


def _table(values: list[dict], columns: tuple[Column, ...] = COLUMNS) -> pa.Table:
    types = {"string": pa.string(), "int64": pa.int64(), "bool": pa.bool_(), "timestamp": pa.timestamp("us", tz="UTC"),
             "float64": pa.float64(), "list<string>": pa.list_(pa.string())}
    return pa.table({c.name: pa.array([v[c.name] for v in values], types[c.type]) for c in columns})


def _by_rows(table: pa.Table, columns: tuple[Column, ...]) -> bytes:
    leaf = leaf_function(columns)
    return b"".join(leaf(record_object(columns, row)) for row in table.to_pylist())


@settings(max_examples=150, deadline=None)
@given(st.lists(rows, max_size=12))
def test_column_wise_leaves_are_the_row_by_row_leaves(values: list[dict]) -> None:
    table = _table(values)
    assert columnar.leaf_texts(table, COLUMNS) is not None
    assert verify.part_leaves(_parquet(table), COLUMNS, 0).leaves == _by_rows(table, COLUMNS)


def _texts_by_rows(column: pa.Array) -> list[str | None]:
    return [None if t is None else timestamp_text(t) for t in column.to_pylist()]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.none() | TIMES, max_size=30), st.integers(0, 4))
def test_column_wise_timestamp_text_is_the_row_by_row_text(values: list[datetime | None], skip: int) -> None:
    column = pa.array(values, pa.timestamp("us", tz="UTC")).slice(min(skip, len(values)))  # an offset into buffers
    assert columnar.timestamp_texts(column).to_pylist() == _texts_by_rows(column)


def test_column_wise_timestamp_text_on_every_new_year_and_the_days_around_every_february() -> None:
    days = [datetime(year, 1, 1, tzinfo=UTC) for year in range(1, 10000)]
    days += [datetime(year, 3, 1, tzinfo=UTC) + timedelta(days=d, microseconds=m)
             for year in (1, 4, 100, 400, 1582, 1600, 1700, 1900, 1970, 2000, 2024, 2100, 9996, 9999)
             for d in (-2, -1, 0) for m in (-1, 0, 1)]
    days += [datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC), datetime(1, 1, 1, 0, 0, 0, 1, tzinfo=UTC)]
    column = pa.array(days, pa.timestamp("us", tz="UTC"))
    assert columnar.timestamp_texts(column).to_pylist() == _texts_by_rows(column)


def test_floats_lists_and_other_arrow_types_take_the_row_by_row_rule() -> None:
    columns = (Column("score", "float64"), Column("tags", "list<string>"), Column("text", "string"))
    table = _table([{"score": 0.1, "tags": ["a", '"b"'], "text": "x"}, {"score": None, "tags": None, "text": None}],
                   columns)
    assert columnar.leaf_texts(table, columns) is None
    assert verify.part_leaves(_parquet(table), columns, None).leaves == _by_rows(table, columns)
    naive = pa.table({"at": pa.array([EPOCH.replace(tzinfo=None) + timedelta(days=3)], pa.timestamp("us"))})
    assert columnar.leaf_texts(naive, (Column("at", "timestamp"),)) is None
    missing = pa.table({"text": ["x"]})
    assert columnar.leaf_texts(missing, (Column("text", "string"), Column("other", "string"))) is None


def _parquet(table: pa.Table) -> bytes:
    import pyarrow.parquet as pq

    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 70), min_size=1, max_size=8), st.booleans())
def test_the_subtrees_of_contiguous_parts_fold_to_the_root_of_all_their_leaves(sizes: list[int], skew: bool) -> None:
    leaves = [leaf_hash(n.to_bytes(4, "big")) for n in range(sum(sizes))]
    parts, at = [], 0
    for size in sizes:
        blob = b"".join(leaves[at:at + size])
        start = at + 1 if skew and size == sizes[0] else at  # a manifest whose row counts are wrong
        parts.append(verify.PartLeaves(start, size, blob, verify._subtrees(leaves[at:at + size], start)))
        at += size
    assert verify._root(parts) == merkle_root(leaves)


# --- the command line: --quiet and --json show no progress --------------------------------------


def _cli(monkeypatch: pytest.MonkeyPatch, lake: Path, home: Path, *args: str) -> int:
    """`anchorlake ARGS` in this process on a file:// lake, every progress tick drawn."""
    monkeypatch.setattr(progress, "REDRAW_PLAIN", 0.0)
    for name in [n for n in os.environ if n.startswith(("ANCHORLAKE_", "AWS_"))]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("ANCHORLAKE_LAKE", lake.as_uri())
    monkeypatch.setenv("ANCHORLAKE_HOME", str(home))
    return cli.main(list(args))


@pytest.mark.parametrize("flags", [[], ["--quiet"], ["--json"]])
def test_pull_shows_progress_unless_quiet_or_json(
        flags: list[str], batch: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    code = _cli(monkeypatch, batch, tmp_path / "home", "pull", "--dataset", "instructions", "--dest",
                str(tmp_path / "d"), "--no-verify", *flags)
    err = capsys.readouterr().err
    assert code == 0 and (tmp_path / "d" / ".anchorlake" / "000000" / "manifest.json").exists()
    if flags:
        assert err == ""
    else:
        assert "... instructions batch 0: 100 of 660 rows (15%)" in err
        assert err.splitlines()[-1].startswith("... instructions batch 0: 660 rows in ")


@pytest.mark.parametrize("flags", [[], ["--quiet"], ["--json"]])
def test_contribute_shows_progress_in_bytes_unless_quiet_or_json(
        flags: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    names = []
    for n in range(3):
        names.append(str(tmp_path / f"c{n}.jsonl"))
        Path(names[-1]).write_text("x" * 1000 * (n + 1))
    monkeypatch.setattr(cli, "CONTRIBUTE_GROUP_BYTES", 0)  # one file a call, so the bar has steps
    code = _cli(monkeypatch, tmp_path / "lake", tmp_path / "home", *flags, "contribute", "--dataset", "instructions",
                *names)
    captured = capsys.readouterr()
    assert code == 0 and len(list((tmp_path / "lake" / "incoming" / "instructions").iterdir())) == 3
    if flags:
        assert captured.err == ""
    else:
        assert "... contributing to instructions: 1.0 kB of 6.0 kB (16%)" in captured.err
        assert captured.out.count("contributed ") == 3


def test_a_part_whose_text_could_outgrow_an_arrow_array_is_hashed_in_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    table = _table([{"text": text, "count": n, "ok": n % 2 == 0, "at": EPOCH + timedelta(seconds=n),
                     "contributor": "0x" + "b" * 40, "salt": f"{n:032x}"} for n, text in enumerate(TRICKY * 3)])
    monkeypatch.setattr(columnar, "TEXT_BYTES", 2_000)  # a few rows at a time
    assert verify.part_leaves(_parquet(table), COLUMNS, None).leaves == _by_rows(table, COLUMNS)
