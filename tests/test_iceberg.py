"""The lake as Iceberg tables: batches committed through the real CLI and anchored on anvil are
registered one snapshot each (add_files of the anchored parts themselves, a tag per seq), read back
with pyiceberg and DuckDB, kept idempotent through a kill, rebuilt from the lake, and refused when
the lake does not match what its manifests and anchors pin."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import duckdb
import pyarrow.parquet as pq
import pytest

from pipeline import config, iceberg, stages
from pipeline.datasets import Dataset, load
from pipeline.devnet import Anvil, free_port
from pipeline.errors import BadInput, CheckFailed, ServiceUnavailable
from pipeline.lake.storage import open_lake

from conftest import REPO, base_env, cli, contribute_one

pytestmark = pytest.mark.integration
SAMPLES = sorted(str(p) for p in (REPO / "samples" / "instructions").glob("*.jsonl"))
ALICE = "0x1111111111111111111111111111111111111111"
PROPERTIES = (iceberg.SEQ, iceberg.ROOT, iceberg.MANIFEST_SHA256, iceberg.TX_HASH, iceberg.CHAIN_ID)
SYNC = """
from pipeline import config, iceberg, stages
settings = config.load()
print(stages.register_table(settings, "instructions"))
"""


@pytest.fixture(scope="module")
def lake_env(tmp_path_factory: pytest.TempPathFactory, anvil: Anvil) -> dict[str, str]:
    """A file:// lake with batches 0 and 1 committed and anchored, and batch 2 committed but not
    anchored (its run killed once the anchor transaction was signed)."""
    root = tmp_path_factory.mktemp("iceberg")
    env = base_env(root) | {"ANCHORLAKE_LAKE": (root / "lake").as_uri(), "ANCHORLAKE_RPC_URL": anvil.url}
    cli(env, "up")
    cli(env, "contribute", "--dataset", "instructions", *SAMPLES)
    cli(env, "run", "--dataset", "instructions")
    contribute_one(env, root, "What is an Iceberg snapshot?", ALICE)
    cli(env, "run", "--dataset", "instructions")
    contribute_one(env, root, "What is an Iceberg tag?", ALICE)
    killed = cli(env | {"ANCHORLAKE_FAULT": "chain.after_sign"}, "run", "--dataset", "instructions", check=False)
    assert killed.returncode == -9, killed.stderr
    batch2 = lake_path(env) / "batches/instructions/000002"
    assert (batch2 / "manifest.json").exists() and not (batch2 / "anchor.json").exists()
    return env


@pytest.fixture
def dataset() -> Dataset:
    return load(REPO / "expectations", "instructions")


@pytest.fixture(autouse=True)
def no_configured_catalog(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ANCHORLAKE_ICEBERG_CATALOG", "ANCHORLAKE_ICEBERG_WAREHOUSE", "ANCHORLAKE_FAULT"):
        monkeypatch.delenv(name, raising=False)


def lake_path(env: dict[str, str]) -> Path:
    return Path(urlparse(env["ANCHORLAKE_LAKE"]).path)


def own_catalog(env: dict[str, str], folder: Path) -> Any:
    """A catalog of this test's own: a SQLite file and a warehouse in `folder`."""
    return iceberg.catalog(config.load(env), uri=f"sqlite:///{folder / 'catalog.db'}",
                           warehouse=(folder / "warehouse").as_uri())


def sync(env: dict[str, str], dataset: Dataset, catalog: Any, rebuild: bool = False) -> list[int]:
    settings = config.load(env)
    return iceberg.sync(open_lake(settings.lake_url, settings.s3), dataset, catalog,
                        stages.anchored_on_chain(settings, dataset), rebuild)


def expected_summary(lake: Path, seq: int) -> dict[str, str]:
    """What the snapshot of batch `seq` must carry, read from its manifest and anchor.json."""
    batch = lake / "batches/instructions" / f"{seq:06d}"
    manifest, anchor = (batch / "manifest.json").read_bytes(), json.loads((batch / "anchor.json").read_text())
    root = json.loads(manifest)["merkle"]["root"]
    assert anchor["root"] == root
    return {iceberg.SEQ: str(seq), iceberg.ROOT: root, iceberg.MANIFEST_SHA256: hashlib.sha256(manifest).hexdigest(),
            iceberg.TX_HASH: anchor["tx_hash"], iceberg.CHAIN_ID: str(anchor["chain_id"])}


def summaries(table: Any) -> list[dict[str, str]]:
    return [{name: snapshot.summary.get(name) for name in PROPERTIES}
            for _, snapshot in sorted(iceberg.registered(table).items())]


def batch_rows(lake: Path, seq: int) -> list[dict[str, Any]]:
    """The rows of batch `seq` as its data parts hold them, in leaf order."""
    batch = lake / "batches/instructions" / f"{seq:06d}"
    return [row for entry in json.loads((batch / "manifest.json").read_text())["files"]
            for row in pq.read_table(batch / entry["path"]).to_pylist()]


def tagged_rows(table: Any, seq: int) -> list[dict[str, Any]]:
    return list(table.scan(snapshot_id=table.refs()[iceberg.tag(seq)].snapshot_id).to_arrow().to_pylist())


# --- registering ------------------------------------------------------------------------------


@pytest.mark.xdist_group("iceberg")
def test_each_anchored_batch_becomes_one_tagged_snapshot_carrying_its_anchor(lake_env: dict[str, str],
                                                                             dataset: Dataset) -> None:
    settings, lake = config.load(lake_env), lake_path(lake_env)
    catalog = iceberg.catalog(settings)  # the defaults: SQLite beside the default lake, warehouse <lake>/iceberg
    # `anchorlake run` registered batches 0 and 1 as each was anchored; batch 2 is committed, not
    # anchored: not registered.
    assert sync(lake_env, dataset, catalog) == []
    assert (settings.home / "iceberg.db").is_file()
    table = catalog.load_table("anchorlake.instructions")
    assert table.metadata_location.startswith((lake / "iceberg").as_uri() + "/")

    assert len(table.snapshots()) == 2
    assert summaries(table) == [expected_summary(lake, 0), expected_summary(lake, 1)]
    tags = {name: ref.snapshot_id for name, ref in table.refs().items() if name != "main"}
    assert tags == {iceberg.tag(seq): snapshot.snapshot_id for seq, snapshot in iceberg.registered(table).items()}
    assert set(tags) == {"seq-000000", "seq-000001"}

    # The snapshots point at the anchored parts themselves: no copy, no rewrite.
    files = [task.file.file_path for task in table.scan().plan_files()]
    assert sorted(files) == sorted((lake / f"batches/instructions/{seq:06d}/data/part-00000.parquet").as_uri()
                                   for seq in (0, 1))
    assert tagged_rows(table, 0) == batch_rows(lake, 0) and len(batch_rows(lake, 0)) == 25
    latest = table.scan().to_arrow().to_pylist()
    assert sorted(latest, key=lambda r: r["salt"]) == sorted(batch_rows(lake, 0) + batch_rows(lake, 1),
                                                             key=lambda r: r["salt"])

    assert sync(lake_env, dataset, catalog) == []  # nothing new: nothing added
    assert len(catalog.load_table("anchorlake.instructions").snapshots()) == 2


@pytest.mark.xdist_group("iceberg")
def test_duckdb_reads_a_snapshot_from_the_local_files(lake_env: dict[str, str], dataset: Dataset,
                                                      tmp_path: Path) -> None:
    """DuckDB's own iceberg extension is installed from the internet (`INSTALL iceberg`); offline it
    can be loaded only if it is already on the machine. Either way pyiceberg hands DuckDB the
    snapshot (to_duckdb), and DuckDB reads the very Parquet files the snapshot lists."""
    catalog = own_catalog(lake_env, tmp_path)
    sync(lake_env, dataset, catalog)
    table = catalog.load_table("anchorlake.instructions")
    scan = table.scan(snapshot_id=table.refs()[iceberg.tag(0)].snapshot_id)
    salts = sorted(row["salt"] for row in batch_rows(lake_path(lake_env), 0))

    con = scan.to_duckdb("batch0")
    assert [r[0] for r in con.sql("SELECT salt FROM batch0 ORDER BY salt").fetchall()] == salts
    paths = [urlparse(task.file.file_path).path for task in scan.plan_files()]
    plain = duckdb.connect(config={"autoinstall_known_extensions": False, "autoload_known_extensions": False})
    assert [r[0] for r in plain.read_parquet(paths).order("salt").select("salt").fetchall()] == salts
    if duckdb_iceberg(plain):
        query = f"SELECT count(*) FROM iceberg_scan('{urlparse(table.metadata_location).path}')"
        assert plain.sql(query).fetchone() == (len(salts) + len(batch_rows(lake_path(lake_env), 1)),)


def duckdb_iceberg(con: duckdb.DuckDBPyConnection) -> bool:
    """Whether DuckDB's iceberg extension loads without the network (it must be installed already)."""
    try:
        con.sql("LOAD iceberg")
    except duckdb.Error:
        return False
    return True


@pytest.mark.xdist_group("iceberg")
def test_a_sync_killed_between_a_snapshot_and_its_tag_only_tags_it_when_run_again(lake_env: dict[str, str],
                                                                                  dataset: Dataset,
                                                                                  tmp_path: Path) -> None:
    env = lake_env | {"ANCHORLAKE_ICEBERG_CATALOG": f"sqlite:///{tmp_path / 'catalog.db'}",
                      "ANCHORLAKE_ICEBERG_WAREHOUSE": (tmp_path / "warehouse").as_uri()}
    killed = subprocess.run([sys.executable, "-c", SYNC], env=env | {"ANCHORLAKE_FAULT": "iceberg.added"}, cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert killed.returncode == -9, killed.stderr  # SIGKILL right after batch 0's add_files
    catalog = own_catalog(lake_env, tmp_path)
    table = catalog.load_table("anchorlake.instructions")
    assert list(iceberg.registered(table)) == [0] and set(table.refs()) == {"main"}

    again = subprocess.run([sys.executable, "-c", SYNC], env=env, cwd=REPO, capture_output=True, text=True,
                           timeout=120)
    assert again.returncode == 0 and again.stdout.strip() == "[1]", again.stderr  # batch 0 was only tagged
    table = catalog.load_table("anchorlake.instructions")
    assert len(table.snapshots()) == 2 and summaries(table) == [expected_summary(lake_path(lake_env), s) for s in (0, 1)]
    assert {"seq-000000", "seq-000001"} <= set(table.refs())
    assert len(list(table.scan().plan_files())) == 2  # each part once


@pytest.mark.xdist_group("iceberg")
def test_rebuild_gives_the_same_rows_and_summaries(lake_env: dict[str, str], dataset: Dataset,
                                                   tmp_path: Path) -> None:
    catalog = own_catalog(lake_env, tmp_path)
    sync(lake_env, dataset, catalog)
    before = catalog.load_table("anchorlake.instructions")
    rows = before.scan().to_arrow().to_pylist()
    assert sync(lake_env, dataset, catalog, rebuild=True) == [0, 1]
    after = catalog.load_table("anchorlake.instructions")
    assert summaries(after) == summaries(before)
    assert {s.snapshot_id for s in after.snapshots()}.isdisjoint(s.snapshot_id for s in before.snapshots())
    assert after.scan().to_arrow().to_pylist() == rows
    assert [tagged_rows(after, seq) for seq in (0, 1)] == [tagged_rows(before, seq) for seq in (0, 1)]


# --- refusing -----------------------------------------------------------------------------------


def copied(env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    """The environment of a copy of the lake, to be tampered with."""
    shutil.copytree(lake_path(env), tmp_path / "lake", ignore=shutil.ignore_patterns("iceberg"))
    return env | {"ANCHORLAKE_LAKE": (tmp_path / "lake").as_uri()}


@pytest.mark.xdist_group("iceberg")
def test_a_tampered_data_part_is_refused_and_no_batch_after_it_registered(lake_env: dict[str, str],
                                                                          dataset: Dataset, tmp_path: Path) -> None:
    env = copied(lake_env, tmp_path)
    part = tmp_path / "lake/batches/instructions/000001/data/part-00000.parquet"
    data = bytearray(part.read_bytes())
    data[len(data) // 2] ^= 1
    part.write_bytes(bytes(data))
    catalog = own_catalog(env, tmp_path)
    with pytest.raises(CheckFailed, match=r"part-00000\.parquet: SHA-256 differs from the manifest's"):
        sync(env, dataset, catalog)
    assert list(iceberg.registered(catalog.load_table("anchorlake.instructions"))) == [0]


@pytest.mark.xdist_group("iceberg")
def test_an_anchor_record_naming_another_manifest_is_refused(lake_env: dict[str, str], dataset: Dataset,
                                                            tmp_path: Path) -> None:
    env = copied(lake_env, tmp_path)
    path = tmp_path / "lake/batches/instructions/000000/anchor.json"
    record = json.loads(path.read_text())
    record["manifest_sha256"] = "ab" * 32
    path.write_text(json.dumps(record))
    catalog = own_catalog(env, tmp_path)
    with pytest.raises(CheckFailed, match="anchor record of instructions batch 0 names manifest_sha256 abab"):
        sync(env, dataset, catalog)
    assert iceberg.registered(catalog.load_table("anchorlake.instructions")) == {}


@pytest.mark.xdist_group("iceberg")
def test_a_batch_whose_anchor_is_missing_stops_the_sync_there(lake_env: dict[str, str], dataset: Dataset,
                                                             tmp_path: Path) -> None:
    env = copied(lake_env, tmp_path)
    (tmp_path / "lake/batches/instructions/000000/anchor.json").unlink()
    catalog = own_catalog(env, tmp_path)
    assert sync(env, dataset, catalog) == []  # batch 1 is anchored, but comes after batch 0
    assert iceberg.registered(catalog.load_table("anchorlake.instructions")) == {}


@pytest.mark.xdist_group("iceberg")
def test_a_forged_anchor_record_does_not_register_a_batch_the_chain_does_not_hold(
        lake_env: dict[str, str], dataset: Dataset, tmp_path: Path) -> None:
    """The attack: batch 2 is committed but not anchored; whoever writes the lake copies batch 1's
    anchor.json over to it with batch 2's seq, manifest hash and root."""
    env = copied(lake_env, tmp_path)
    batches = tmp_path / "lake/batches/instructions"
    manifest = json.loads((batches / "000002/manifest.json").read_text())
    forged = json.loads((batches / "000001/anchor.json").read_text()) | {
        "seq": 2, "root": manifest["merkle"]["root"],
        "manifest_sha256": hashlib.sha256((batches / "000002/manifest.json").read_bytes()).hexdigest()}
    (batches / "000002/anchor.json").write_text(json.dumps(forged))
    catalog = own_catalog(env, tmp_path)
    assert sync(env, dataset, catalog) == [0, 1]
    assert list(iceberg.registered(catalog.load_table("anchorlake.instructions"))) == [0, 1]


# --- on S3, and the configuration ---------------------------------------------------------------


def test_an_s3_lake_is_registered_with_its_endpoint_and_keys(s3_env: dict[str, str], dataset: Dataset,
                                                             tmp_path: Path) -> None:
    cli(s3_env, "up")
    cli(s3_env, "contribute", "--dataset", "instructions", *SAMPLES)
    cli(s3_env, "run", "--dataset", "instructions")
    settings = config.load(s3_env)
    catalog = iceberg.catalog(settings, uri=f"sqlite:///{tmp_path / 'catalog.db'}")
    assert sync(s3_env, dataset, catalog) == [0]
    table = catalog.load_table("anchorlake.instructions")
    lake = s3_env["ANCHORLAKE_LAKE"]
    assert table.metadata_location.startswith(f"{lake}/iceberg/")
    assert [t.file.file_path for t in table.scan().plan_files()] == [f"{lake}/batches/instructions/000000/data/part-00000.parquet"]
    rows = tagged_rows(table, 0)
    assert len(rows) == 25 and len({r["salt"] for r in rows}) == 25
    assert table.current_snapshot().summary.get(iceberg.SEQ) == "0"  # type: ignore[union-attr]


def test_the_catalog_is_one_variable_with_a_default_beside_the_lake(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert config.iceberg_catalog(home, {}) == (f"sqlite:///{home / 'iceberg.db'}", None)
    given = {"ANCHORLAKE_ICEBERG_CATALOG": "rest:https://catalog.example/api", "ANCHORLAKE_ICEBERG_WAREHOUSE": "wh"}
    assert config.iceberg_catalog(home, given) == ("rest:https://catalog.example/api", "wh")
    for wrong in ("catalog.db", "rest:catalog.example", "/tmp/x.db"):
        with pytest.raises(BadInput, match="ANCHORLAKE_ICEBERG_CATALOG must be"):
            config.iceberg_catalog(home, {"ANCHORLAKE_ICEBERG_CATALOG": wrong})


def test_a_catalog_that_cannot_be_opened_or_reached_says_so_in_one_line(tmp_path: Path) -> None:
    settings = config.load(base_env(tmp_path))
    with pytest.raises(ServiceUnavailable, match=r"the Iceberg catalog http://127\.0\.0\.1:\d+ cannot be reached"):
        iceberg.catalog(settings, uri=f"rest:http://127.0.0.1:{free_port()}")
    with pytest.raises(BadInput, match=r"the Iceberg catalog nosuchdb://u:\*\*\*@host/db cannot be opened"):
        iceberg.catalog(settings, uri="nosuchdb://u:secret@host/db")
