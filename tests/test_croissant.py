"""Croissant 1.1 metadata (issue 14): the document of a pulled dataset validates in mlcroissant,
the reference reader, without errors or warnings, pins each data file's SHA-256, and reads back
through mlcroissant row for row what the Parquet holds; licence and RAI fields come from the
dataset declaration, whose unknown RAI keys are refused. Offline: no test here opens a socket."""

from __future__ import annotations

import hashlib
import json
import logging
import socket
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any

import mlcroissant as mlc
import pyarrow.parquet as pq
import pytest

from pipeline import croissant
from pipeline.core import manifest, merkle
from pipeline.core.leaf import leaf_function
from pipeline.datasets import RAI_KEYS, Dataset, available, load, parse
from pipeline.errors import BadInput, FormatError
from pipeline.lake import columnar, layout

from conftest import REPO

pytestmark = [
    pytest.mark.unit,
    # Deprecations inside mlcroissant 1.1.1 and its rdflib, not in what we give them.
    pytest.mark.filterwarnings("ignore:ConjunctiveGraph is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:The inplace keyword in DataFrame.reset_index is deprecated"),
]
EXPECTATIONS = REPO / "expectations"
HIDDEN = ".anchorlake/croissant.json"  # the pull layout: data in <seq>/part-NNNNN.parquet, metadata hidden
# Where mlcroissant reads the record set back: it matches a FileSet's files only under the JSON-LD's
# own folder, so the document must sit at the pull's root (hidden, so pandas and HF ignore it).
ROOT = ".croissant.json"

ALL_TYPES = {
    "format": "anchorlake.dataset/1", "name": "typed", "description": "Every column type once.",
    "license": "CC-BY-4.0",
    "rai": {"dataCollection": "Written by test contributors.", "dataCollectionType": "User-generated content data",
            "personalSensitiveInformation": "None: synthetic test rows."},
    "columns": [{"name": "text", "type": "string", "description": "Some text."}, {"name": "count", "type": "int64"},
                {"name": "score", "type": "float64"}, {"name": "ok", "type": "bool"},
                {"name": "at", "type": "timestamp"}, {"name": "tags", "type": "list<string>"}],
    "dedupe_key": ["text"], "suite": "typed.suite.json",
    "rewards": {"rule": "proportional/1", "pool": "100", "unit": "points", "payout": "points"},
}
A = "0x" + "a" * 40
B = "0x" + "b" * 40
BATCH_ROWS = [
    [{"text": "first", "count": 1, "score": 0.5, "ok": True, "at": "2026-11-27T10:00:00.000001Z", "tags": ["x", "y"],
      "contributor": A, "salt": "0" * 32},
     {"text": "second", "count": None, "score": None, "ok": None, "at": None, "tags": None,
      "contributor": B, "salt": "1" * 32}],
    [{"text": "third", "count": -7, "score": 1e-3, "ok": False, "at": "1999-12-31T23:59:59.999999Z", "tags": [],
      "contributor": A, "salt": "2" * 32}],
    [{"text": "fourth", "count": 2**40, "score": -2.25, "ok": True, "at": "2026-11-28T00:00:00.000000Z",
      "tags": ["ü"], "contributor": B, "salt": "3" * 32}],
]


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No network: mlcroissant reads local files and an inline @context, and must not need more."""
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"network access attempted: {args[1:]!r}")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def typed_dataset() -> Dataset:
    return parse(ALL_TYPES, "typed.dataset.json", EXPECTATIONS)


def write_batch(dest: Path, dataset: Dataset, seq: int, parts: list[list[dict[str, Any]]],
                earlier: list[manifest.Manifest]) -> manifest.Manifest:
    """Write batch `seq`'s parts as a pull does (`dest/<seq>/part-NNNNN.parquet`) and return its manifest,
    built as SPEC §6 says and read back through the validating reader."""
    columns = dataset.committed_columns
    files, leaves = [], []
    for number, rows in enumerate(parts):
        path = dest / layout.seq_part(seq) / PurePosixPath(layout.part(number)).name
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(columnar.arrow_table(columns, {c.name: [r[c.name] for r in rows] for c in columns}), path)
        data = path.read_bytes()
        files.append({"path": layout.part(number), "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data),
                      "rows": len(rows)})
        leaves += [leaf_function(columns)(row) for row in rows]
    previous = earlier[-1] if earlier else None
    accepted = len(leaves)
    body = {
        "format": manifest.FORMAT, "dataset": dataset.name, "seq": seq, "created_at": f"2026-11-2{7 + seq}T12:00:00.000000Z",
        "previous": None if previous is None else {"seq": previous.seq, "manifest_sha256": previous.sha256},
        "history": {"tree_size": seq, "root": merkle.root(merkle.leaf_hashes(
            [bytes.fromhex(m.sha256) for m in earlier])).hex()},
        "sources": [], "skipped_sources": [],
        "counts": {"input": accepted + 3, "accepted": accepted, "quarantined": 2, "duplicate": 1},
        "schema": {"columns": [{"name": c.name, "type": c.type} for c in columns]},
        "suite": {"name": "typed.suite.json", "sha256": "0" * 64}, "files": files, "artifacts": [],
        "merkle": {"hash": manifest.MERKLE_HASH, "tree_size": accepted, "root": merkle.root(leaves).hex()},
        "rewards": {"unit": "points", "pool": "100", "total": "100", "rule": "proportional/1", "root": "0" * 64},
    }
    return manifest.parse(manifest.serialize(body), f"batch {seq}")


def pulled(dest: Path, dataset: Dataset, batches: list[list[list[dict[str, Any]]]]) -> list[manifest.Manifest]:
    manifests: list[manifest.Manifest] = []
    for seq, parts in enumerate(batches):
        manifests.append(write_batch(dest, dataset, seq, parts, manifests))
    return manifests


def url_from(folder: str) -> Callable[[int, str], str]:
    """contentUrl of a pulled data file, relative to a document in `folder` of the pull ('' = its root)."""
    up = "../" * len(PurePosixPath(folder).parts)
    return lambda seq, path: f"{up}{layout.seq_part(seq)}/{PurePosixPath(path).name}"


def write_document(dest: Path, where: str, document: dict[str, Any]) -> Path:
    path = dest / where
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2))
    return path


def opened(path: Path, caplog: pytest.LogCaptureFixture) -> mlc.Dataset:
    """The document as mlcroissant reads it; fails on any error or warning it reports or logs."""
    with caplog.at_level(logging.WARNING):
        ds = mlc.Dataset(jsonld=path)
    issues = ds.metadata.ctx.issues
    assert (issues.errors, issues.warnings) == (set(), set())
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    return ds


def plain(value: Any) -> Any:
    """A value as mlcroissant yields it (bytes text, pandas timestamps) in Python's plain types."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, list):
        return [plain(v) for v in value]
    if hasattr(value, "to_pydatetime"):
        return value.to_pydatetime()
    return value


def records(ds: mlc.Dataset, record_set: str) -> Iterator[dict[str, Any]]:
    prefix = f"{record_set}/"
    for record in ds.records(record_set=record_set):
        yield {name.removeprefix(prefix): plain(value) for name, value in record.items()}


def parquet_rows(dest: Path, manifests: list[manifest.Manifest]) -> list[dict[str, Any]]:
    return [row for m in manifests for entry in m.data["files"]
            for row in pq.read_table(dest / layout.seq_part(m.seq) / PurePosixPath(entry["path"]).name).to_pylist()]


@pytest.fixture
def pull(tmp_path: Path) -> tuple[Path, Dataset, list[manifest.Manifest]]:
    """A pull of the typed dataset: batch 0 in two parts, batch 1 in one."""
    dataset = typed_dataset()
    dest = tmp_path / "dest"
    return dest, dataset, pulled(dest, dataset, [[BATCH_ROWS[0], BATCH_ROWS[1]], [BATCH_ROWS[2]]])


def test_the_hidden_document_validates_and_its_file_objects_resolve_to_the_pinned_files(
        pull: tuple[Path, Dataset, list[manifest.Manifest]], caplog: pytest.LogCaptureFixture) -> None:
    dest, dataset, manifests = pull
    path = write_document(dest, HIDDEN, croissant.document(dataset, manifests, url_from(".anchorlake")))
    ds = opened(path, caplog)
    # mlcroissant resolves a relative contentUrl against the JSON-LD file's folder.
    assert ds.metadata.ctx.folder == path.parent
    objects = {o.uuid: o for o in ds.metadata.file_objects}
    assert sorted(objects) == ["batch-000000/data/part-00000.parquet", "batch-000000/data/part-00001.parquet",
                               "batch-000001/data/part-00000.parquet"]
    for m in manifests:
        for entry in m.data["files"]:
            node = objects[f"batch-{m.seq:06d}/{entry['path']}"]
            data = (ds.metadata.ctx.folder / node.content_url).read_bytes()
            assert node.sha256 == entry["sha256"] == hashlib.sha256(data).hexdigest()
            assert node.content_size == f"{len(data)} B"
            assert node.encoding_formats == ["application/x-parquet"]


def test_mlcroissant_reads_every_row_back_as_the_parquet_holds_it(
        pull: tuple[Path, Dataset, list[manifest.Manifest]], caplog: pytest.LogCaptureFixture) -> None:
    dest, dataset, manifests = pull
    ds = opened(write_document(dest, ROOT, croissant.document(dataset, manifests, url_from(""))), caplog)
    read = list(records(ds, croissant.ROWS))
    expected = parquet_rows(dest, manifests)
    assert len(read) == len(expected) == sum(m.tree_size for m in manifests) == 4
    assert read == expected  # same values, same (leaf) order, nulls as None
    assert isinstance(read[0]["at"], datetime) and read[0]["tags"] == ["x", "y"] and read[3]["count"] == 2**40


def test_from_the_hidden_folder_mlcroissant_finds_no_rows_so_the_document_belongs_at_the_root(
        pull: tuple[Path, Dataset, list[manifest.Manifest]], caplog: pytest.LogCaptureFixture) -> None:
    """mlcroissant matches a FileSet's `includes` only under the JSON-LD's folder, and says nothing
    when `../` paths match no file: the record set is just empty. (If this starts to fail, a newer
    mlcroissant reads upwards and the document can move into .anchorlake/.)"""
    dest, dataset, manifests = pull
    path = write_document(dest, HIDDEN, croissant.document(dataset, manifests, url_from(".anchorlake")))
    assert list(opened(path, caplog).records(record_set=croissant.ROWS)) == []


def test_the_batches_record_set_names_what_each_batch_committed(
        pull: tuple[Path, Dataset, list[manifest.Manifest]], caplog: pytest.LogCaptureFixture) -> None:
    dest, dataset, manifests = pull
    document = croissant.document(dataset, manifests, url_from(""), contributors={0: 2, 1: 1})
    read = list(records(opened(write_document(dest, ROOT, document), caplog), croissant.BATCHES))
    assert [(r["seq"], r["manifest_sha256"], r["merkle_root"], r["rows"], r["first_row"], r["contributors"])
            for r in read] == [(0, manifests[0].sha256, manifests[0].root, 3, 0, 2),
                               (1, manifests[1].sha256, manifests[1].root, 1, 3, 1)]
    assert read[1]["history_root"] == manifests[1].data["history"]["root"]
    assert (read[0]["quarantined"], read[0]["duplicate"]) == (2, 1)


def test_the_document_cites_the_last_batch_and_carries_the_declaration(
        pull: tuple[Path, Dataset, list[manifest.Manifest]]) -> None:
    _, dataset, manifests = pull
    document = croissant.document(dataset, manifests, url_from(""))
    last = manifests[-1]
    assert document["conformsTo"] == "http://mlcommons.org/croissant/1.1"
    assert document["version"] == "1.1.0" and document["datePublished"] == last.data["created_at"]
    assert f"({dataset.name}, 1, {last.sha256})" in document["citeAs"]
    assert document["license"] == "https://spdx.org/licenses/CC-BY-4.0.html"
    assert {k: v for k, v in document.items() if k.startswith("rai:")} == {
        f"rai:{k}": v for k, v in ALL_TYPES["rai"].items()}
    assert document["description"].startswith("Every column type once.")
    fields = {f["name"]: f for f in document["recordSet"][0]["field"]}
    assert list(fields) == [c.name for c in dataset.committed_columns]
    assert {name: f["dataType"] for name, f in fields.items()} == {
        "text": "sc:Text", "count": "sc:Integer", "score": "sc:Float", "ok": "sc:Boolean", "at": "sc:DateTime",
        "tags": "sc:Text", "contributor": "sc:Text", "salt": "sc:Text"}
    assert fields["tags"]["isArray"] is True and "isArray" not in fields["text"]
    assert "attribution" in fields["contributor"]["description"] and "CSPRNG" in fields["salt"]["description"]
    assert fields["text"]["description"] == "Some text."


@pytest.mark.parametrize("name", available(EXPECTATIONS))
def test_every_sample_declaration_gives_a_valid_readable_document(name: str, tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    dataset = load(EXPECTATIONS, name)
    assert dataset.license and dict(dataset.rai).keys() >= {"dataCollection", "dataCollectionType",
                                                            "personalSensitiveInformation", "dataUseCases",
                                                            "dataLimitations", "dataBiases"}
    rows = [sample_row(dataset, i) for i in range(3)]
    manifests = pulled(tmp_path, dataset, [[rows[:2]], [rows[2:]]])
    ds = opened(write_document(tmp_path, ROOT, croissant.document(dataset, manifests, url_from(""))), caplog)
    assert list(records(ds, croissant.ROWS)) == parquet_rows(tmp_path, manifests)


def sample_row(dataset: Dataset, i: int) -> dict[str, Any]:
    values = {"string": f"text {i}", "int64": i, "float64": i / 4, "bool": True,
              "timestamp": f"2026-11-2{i}T08:00:00.000000Z", "list<string>": [f"tag {i}"]}
    return {c.name: values[c.type] for c in dataset.columns} | {"contributor": A, "salt": f"{i:032x}"}


def test_a_declaration_with_an_unknown_rai_key_is_refused(tmp_path: Path) -> None:
    declaration = ALL_TYPES | {"rai": {"dataCollection": "ok", "dataColection": "misspelled"}}
    (tmp_path / "typed.dataset.json").write_text(json.dumps(declaration))
    with pytest.raises(FormatError) as refused:
        load(tmp_path, "typed")
    message = str(refused.value)
    assert "typed.dataset.json" in message and "rai" in message and "unknown key 'dataColection'" in message
    assert "dataCollection" in message  # the known keys are listed


@pytest.mark.parametrize("change, field", [
    ({"rai": {"dataBiases": 3}}, "rai.dataBiases"),
    ({"rai": ["dataBiases"]}, "rai"),
    ({"license": "CC BY 4.0"}, "license"),
    ({"license": 4}, "license"),
    ({"description": ["x"]}, "description"),
])
def test_a_badly_typed_licence_or_rai_field_is_refused(change: dict[str, Any], field: str) -> None:
    with pytest.raises(FormatError) as refused:
        parse(ALL_TYPES | change, "typed.dataset.json", EXPECTATIONS)
    assert refused.value.field == field


def test_licence_and_rai_are_optional_and_rai_keys_are_croissant_names() -> None:
    bare = parse({k: v for k, v in ALL_TYPES.items() if k not in ("license", "rai")}, "t", EXPECTATIONS)
    assert (bare.license, bare.rai) == (None, ())
    assert parse(ALL_TYPES | {"license": "https://example.org/terms"}, "t", EXPECTATIONS).license
    assert all(k[0].islower() and " " not in k for k in RAI_KEYS) and len(set(RAI_KEYS)) == len(RAI_KEYS)


def test_manifests_out_of_order_or_of_another_dataset_are_refused(
        pull: tuple[Path, Dataset, list[manifest.Manifest]]) -> None:
    _, dataset, manifests = pull
    for wrong in ([], manifests[::-1], [manifests[0], manifests[0]]):
        with pytest.raises(BadInput, match="no committed batch|strictly increasing"):
            croissant.document(dataset, wrong, url_from(""))
    other = parse(ALL_TYPES | {"name": "other"}, "other.dataset.json", EXPECTATIONS)
    with pytest.raises(BadInput, match="is of dataset 'typed', not 'other'"):
        croissant.document(other, manifests, url_from(""))
