"""Every tagged record is read back through a validating reader, and every batch file through
BatchFiles, checked against the manifest: a wrong tag, a wrong field or a changed byte is a
clear error naming the file and the field, never a KeyError later on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.core import records
from pipeline.core.manifest import parse as parse_manifest
from pipeline.errors import CheckFailed, ConflictError, FormatError, NotFound
from pipeline.lake import layout
from pipeline.lake.batch import BatchFiles
from pipeline.lake.lease import Lease
from pipeline.lake.records import create_once, deployment_for, load_deployment, read_record
from pipeline.lake.sources import load_plan
from pipeline.lake.storage import Lake, open_lake

pytestmark = pytest.mark.unit

TX = "0x" + "ab" * 32
ANCHOR = {"chain_id": 31337, "contract": "0x" + "11" * 20, "dataset_id": "0x" + "22" * 32, "seq": 0,
          "root": "33" * 32, "manifest_sha256": "44" * 32, "tx_hash": TX, "block_number": 7,
          "block_hash": "0x" + "55" * 32, "confirmations": 1}
EXAMPLES = [
    (records.ANCHOR, ANCHOR),
    (records.REWARDS_PUBLICATION, {"chain_id": 1, "contract": "0x" + "11" * 20, "seq": 0, "root": "66" * 32,
                                   "cumulative_total": "1000", "tx_hash": TX, "block_number": 3}),
    (records.SOURCES, {"dataset": "instructions", "seq": 0, "sources": [], "skipped": []}),
    (records.RECEIPTS_INDEX, {"dataset": "instructions", "seq": 0, "receipts": 5, "offsets": "receipts-" + "ab" * 16,
                              "files": ["receipts-" + "cd" * 16],
                              "anchor_block_hash": TX}),
    (records.LEASE, {"owner": "me", "expires_at": 1.5}),
    (records.TX_INTENT, {"what": "anchoring", "chain_id": 1, "from": "0x" + "11" * 20, "nonce": 0,
                         "attempts": []}),
    (records.DEPLOYMENT, {"chain_id": 1, "BatchAnchor": "0x" + "77" * 20}),
]


@pytest.fixture
def lake(tmp_path: Path) -> Lake:
    return open_lake((tmp_path / "lake").as_uri())


@pytest.mark.parametrize(("kind", "example"), EXAMPLES, ids=[k.format for k, _ in EXAMPLES])
def test_each_record_kind_reads_back_what_it_wrote(kind: records.RecordKind, example: dict) -> None:
    assert kind.load(kind.dump(example), "x.json") == {"format": kind.format, **example}


@pytest.mark.parametrize(("kind", "example"), EXAMPLES, ids=[k.format for k, _ in EXAMPLES])
def test_a_record_with_another_format_tag_is_refused_naming_the_file(kind: records.RecordKind, example: dict) -> None:
    other, other_example = next((k, e) for k, e in EXAMPLES if k is not kind)
    with pytest.raises(FormatError, match=r"x\.json: format: expected"):
        kind.load(other.dump(other_example), "x.json")
    with pytest.raises(FormatError, match=r"x\.json: invalid JSON"):
        kind.load(b"{not json", "x.json")


@pytest.mark.parametrize(("field", "value"), [("tx_hash", "0x12"), ("seq", -1), ("seq", True), ("root", None),
                                              ("contract", "0x" + "AB" * 20), ("block_number", "7")])
def test_a_bad_field_is_named(field: str, value: object) -> None:
    body = dict(ANCHOR, format=records.ANCHOR.format, **{field: value})
    with pytest.raises(FormatError, match=rf"anchor\.json: {field}: "):
        records.ANCHOR.load(json.dumps(body).encode(), "anchor.json")
    with pytest.raises(FormatError):
        records.ANCHOR.dump(dict(ANCHOR, **{field: value}))  # nor is a bad record ever written


def test_planted_records_in_the_lake_are_refused_by_every_reader(lake: Lake) -> None:
    wrong = records.LEASE.dump({"owner": "x", "expires_at": 0})
    files = BatchFiles(lake, "instructions", 0)
    lake.write(layout.anchor_current("instructions", 0), wrong)
    with pytest.raises(FormatError, match="anchor-current.json: format"):
        files.anchor()
    lake.write(layout.batch_file("instructions", 0, layout.REWARDS_PUBLISHED), wrong)
    with pytest.raises(FormatError, match="rewards-published.json: format"):
        files.rewards_publication()
    lake.write(layout.intent("instructions", 0, "anchor"), wrong)
    with pytest.raises(FormatError, match="anchor-intent.json: format"):
        files.intents("anchor").load()
    lake.write(layout.receipts_index("instructions", 0), wrong)
    assert files.receipts_anchor() is None  # the batch is not finished: its receipts are written again
    with pytest.raises(FormatError, match="index.json: format"):
        files.receipt("0x" + "11" * 20)
    lake.write(layout.raw_plan("instructions", 0), wrong)
    with pytest.raises(FormatError, match="sources.json: format"):
        load_plan(lake, "instructions", 0)
    lake.write(layout.deployment(1), wrong)
    with pytest.raises(FormatError, match="1.json: format"):
        load_deployment(lake, 1)
    lake.write(layout.lease("instructions", 1, 0), records.ANCHOR.dump(ANCHOR))
    with pytest.raises(FormatError, match="lease-00000000.json: format"):
        Lease(lake, "instructions", 1, ttl=1).acquire(wait=0)


def test_a_deployment_record_for_another_chain_or_without_an_anchor_contract_is_refused(lake: Lake) -> None:
    lake.write(layout.deployment(5), records.DEPLOYMENT.dump({"chain_id": 1}))
    with pytest.raises(ConflictError, match="is for chain 1"):
        load_deployment(lake, 5)
    with pytest.raises(NotFound, match="no contracts are deployed on chain 9"):
        deployment_for(lake, 9)
    assert deployment_for(lake, 9, {"BatchAnchor": "0x" + "AA" * 20})["BatchAnchor"] == "0x" + "aa" * 20


def test_a_write_once_record_accepts_the_same_values_and_refuses_others(lake: Lake) -> None:
    key = layout.batch_file("instructions", 0, layout.ANCHOR)
    create_once(lake, key, records.ANCHOR, ANCHOR)
    create_once(lake, key, records.ANCHOR, dict(ANCHOR, confirmations=5))  # same anchor, seen later
    with pytest.raises(ConflictError, match="tx_hash"):
        create_once(lake, key, records.ANCHOR, dict(ANCHOR, tx_hash="0x" + "cd" * 32))
    assert read_record(lake, key, records.ANCHOR) == {"format": records.ANCHOR.format, **ANCHOR}


def _committed_batch(lake: Lake) -> BatchFiles:
    """A minimal committed batch: one part, one pinned artifact, a manifest pinning both."""
    files = BatchFiles(lake, "instructions", 0)
    part = files.write(layout.part(0), b"PAR1 rows")
    tree = files.write(layout.TREE, b"tree bytes")
    body = {"format": "anchorlake.manifest/1", "dataset": "instructions", "seq": 0, "created_at": "now",
            "previous": None, "sources": [], "counts": {"input": 0, "accepted": 0, "quarantined": 0, "duplicate": 0},
            "schema": {"columns": []}, "suite": {}, "files": [part | {"rows": 0}], "artifacts": [tree],
            "merkle": {"hash": "sha256-rfc9162", "tree_size": 0, "root": "00" * 32}, "rewards": {}}
    assert files.create_manifest(body)
    assert not BatchFiles(lake, "instructions", 0).create_manifest(body)  # the commit point is created once
    return files


def test_batch_files_are_read_only_as_the_manifest_pins_them(lake: Lake) -> None:
    files = _committed_batch(lake)
    assert files.read(layout.part(0)) == b"PAR1 rows" and files.read(layout.TREE) == b"tree bytes"
    assert parse_manifest(files.manifest_bytes(), "m").sha256 == files.manifest().sha256
    lake.write(files.key(layout.TREE), b"tree bytez")
    with pytest.raises(CheckFailed, match="tree.bin: SHA-256 differs from the manifest's"):
        BatchFiles(lake, "instructions", 0).read(layout.TREE)
    lake.write(files.key(layout.REWARDS_TREE), b"{}")
    with pytest.raises(CheckFailed, match="the manifest of instructions batch 0 pins no rewards-tree.json"):
        BatchFiles(lake, "instructions", 0).rewards_tree()


def test_every_batch_file_is_created_once_under_its_writers_own_name(lake: Lake, tmp_path: Path) -> None:
    """Write-once by construction: a writer that took the lease over (generation 2) names its files
    apart, each created by a conditional create; the same name again with other bytes is refused,
    and readers find each artifact under the name the manifest gives."""
    files = BatchFiles(lake, "instructions", 0)
    files.generation = 2
    assert files.write(layout.part(0), b"PAR1 rows")["path"] == "data/part-00000-g2.parquet"
    tree = files.write(layout.TREE, b"tree bytes")
    assert tree["path"] == "tree-g2.bin" and lake.read(files.key("tree-g2.bin")) == b"tree bytes"
    assert files.write(layout.TREE, b"tree bytes") == tree  # a retried create that had landed
    with pytest.raises(CheckFailed, match="tree-g2.bin exists already with other bytes"):
        files.write(layout.TREE, b"other bytes")
    assert lake.read(files.key("tree-g2.bin")) == b"tree bytes"
    local = tmp_path / "rejected.parquet"
    local.write_bytes(b"rejected rows")
    private = files.move_private(local)
    assert private == "private/instructions/000000/rejected-g2.parquet"
    assert lake.read(private) == b"rejected rows" and not local.exists()
    local.write_bytes(b"other rejected rows")  # a file moved in once: the same name again is refused
    with pytest.raises(CheckFailed, match="rejected-g2.parquet exists already with other bytes"):
        files.move_private(local)
    assert lake.read(private) == b"rejected rows"
    body = {"format": "anchorlake.manifest/1", "dataset": "instructions", "seq": 0, "created_at": "now",
            "previous": None, "sources": [], "counts": {"input": 0, "accepted": 0, "quarantined": 0, "duplicate": 0},
            "schema": {"columns": []}, "suite": {}, "files": [], "artifacts": [tree],
            "merkle": {"hash": "sha256-rfc9162", "tree_size": 0, "root": "00" * 32}, "rewards": {}}
    assert files.create_manifest(body)
    lake.write(files.key(layout.TREE), b"planted beside it")  # the plain name: not what the manifest pins
    assert BatchFiles(lake, "instructions", 0).artifact(layout.TREE) == b"tree bytes"
    assert [layout.plain_name(n) for n in ("tree-g2.bin", "data/part-00003-g11.parquet", "data-docs/index-g1.html",
                                           "rewards-tree.json", "x-g0.bin")] == [
        "tree.bin", "data/part-00003.parquet", "data-docs/index.html", "rewards-tree.json", "x-g0.bin"]


def test_a_manifest_failing_its_own_checks_is_a_format_error(lake: Lake) -> None:
    files = _committed_batch(lake)
    data = json.loads(files.manifest_bytes())
    data["counts"]["accepted"] = 1
    lake.write(files.key(layout.MANIFEST), json.dumps(data).encode())
    with pytest.raises(FormatError, match="manifest.json: counts: input != accepted"):
        BatchFiles(lake, "instructions", 0).manifest()


@pytest.mark.parametrize(("url", "shown"), [
    ("http://127.0.0.1:8545", "http://127.0.0.1:8545"),
    ("https://mainnet.infura.io/v3/0123abcdKEY", "https://mainnet.infura.io/…"),
    ("https://user:pw@rpc.example:8443/?apikey=KEY", "https://***@rpc.example:8443/…"),
    ("wss://eth.example/ws/KEY", "wss://eth.example/…"),
    ("file:///srv/lake", "file:///srv/lake"),
    ("HTTPS://user:pw@Eth.Example/v3/KEY", "https://***@eth.example/…"),
    ("http://host:notaport/v3/KEY", "http://…"),
])
def test_urls_in_messages_lose_their_credentials_and_keys(url: str, shown: str) -> None:
    from pipeline.errors import redact, redact_url

    assert redact_url(url) == shown
    assert redact(f"chain RPC at {url} cannot be reached") == f"chain RPC at {shown} cannot be reached"
