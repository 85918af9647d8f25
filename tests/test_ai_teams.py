"""What AI teams do with a dataset (SPEC §13.9), on a file:// lake of three anchored batches on the
real anvil: a pulled folder every common reader loads as it is, pulls that resume and name every
bad batch, `anchorlake.open_dataset`, and the provable history with its consistency proofs."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.dataset as pads
import pytest
from pymerkle import InmemoryTree

from conftest import REPO, base_env, cli, cli_json, contribute_one

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("ai_teams")]  # one worker builds the lake once
SAMPLES = sorted(str(p) for p in (REPO / "samples" / "instructions").glob("*.jsonl"))
ALICE, BOB = "0x1111111111111111111111111111111111111111", "0x2222222222222222222222222222222222222222"
ROWS = 25 + 1 + 1  # the samples' accepted rows, then one new record in each later batch


@pytest.fixture(scope="module")
def anchored(tmp_path_factory: pytest.TempPathFactory, anvil: object) -> dict:
    """Three committed and anchored `instructions` batches; the lake folder, its env and the trust flags."""
    root = tmp_path_factory.mktemp("ai")
    env = base_env(root) | {"ANCHORLAKE_LAKE": (root / "lake").as_uri(), "ANCHORLAKE_RPC_URL": anvil.url}  # type: ignore[attr-defined]
    cli(env, "up", "--quiet", "-o", str(root / "trusted-deployment.json"))
    cli(env, "contribute", "--dataset", "instructions", *SAMPLES)
    cli(env, "run", "--dataset", "instructions")
    for prompt, who in (("What is a ledger?", ALICE), ("What is a Merkle tree?", BOB)):
        contribute_one(env, root, prompt, who)
        cli(env, "run", "--dataset", "instructions")
    deployment = json.loads((root / "trusted-deployment.json").read_text())
    return {"lake": root / "lake", "env": env, "contract": deployment["BatchAnchor"], "rpc": anvil.url,  # type: ignore[attr-defined]
            "trust": ["--deployment", str(root / "trusted-deployment.json"), "--dataset", "instructions"]}


@pytest.fixture
def lake(anchored: dict, tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A copy of the anchored lake this test may damage, and the env pointing at it."""
    copy = tmp_path / "lake"
    shutil.copytree(anchored["lake"], copy)
    return copy, anchored["env"] | {"ANCHORLAKE_LAKE": copy.as_uri()}


def _manifest(lake: Path, seq: int) -> Path:
    return lake / "batches" / "instructions" / f"{seq:06d}" / "manifest.json"


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


# --- the pulled folder --------------------------------------------------------------------------

def test_a_pulled_folder_loads_in_one_line_with_pandas_pyarrow_polars_duckdb_and_hugging_face(
        anchored: dict, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    pulled = cli_json(anchored["env"], "pull", *anchored["trust"], "--dest", str(dest))
    assert [(b["seq"], b["verified"]) for b in pulled["pulled"]] == [(0, True), (1, True), (2, True)]
    assert pulled["failed"] == [] and pulled["kept"] == []
    loaders = {  # each exactly as README shows it
        "pandas": "import pandas as pd; t = pd.read_parquet(dest)",
        "pyarrow": "import pyarrow.dataset as ds; t = ds.dataset(dest).to_table()",
        "polars": "import polars as pl; t = pl.read_parquet(f'{dest}/**/*.parquet')",
        "duckdb": "import duckdb; t = duckdb.sql(f\"select * from '{dest}/**/*.parquet'\").df()",
        "datasets": "import datasets; t = datasets.load_dataset('parquet', data_dir=dest)['train']",
    }
    shapes = {}
    for name, line in loaders.items():
        script = f"dest = {str(dest)!r}\n{line}\nimport json; print(json.dumps([len(t), sorted(t.column_names if hasattr(t, 'column_names') else t.columns)]))"
        proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                              env=os.environ | {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1",
                                                "HF_DATASETS_OFFLINE": "1"})
        assert proc.returncode == 0, (name, proc.stderr[-2000:])
        shapes[name] = json.loads(proc.stdout.splitlines()[-1])
    expected = sorted(["prompt", "response", "language", "consent", "created_at", "contributor", "salt"])
    assert all(shape == [ROWS, expected] for shape in shapes.values()), shapes
    meta = dest / ".anchorlake"
    assert sorted(p.name for p in dest.iterdir()) == [".anchorlake", ".croissant.json", "000000", "000001", "000002"]
    for seq in range(3):
        assert (meta / f"{seq:06d}" / "manifest.json").read_bytes() == _manifest(anchored["lake"], seq).read_bytes()
    croissant = json.loads((dest / ".croissant.json").read_text())
    assert croissant["conformsTo"] == "http://mlcommons.org/croissant/1.1"


def test_a_pull_resumes_keeps_what_it_verified_and_fetches_what_changed(anchored: dict, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    pull = ["pull", *anchored["trust"], "--dest", str(dest)]
    cli_json(anchored["env"], *pull)
    again = cli_json(anchored["env"], *pull)
    assert (again["pulled"], [b["seq"] for b in again["kept"]]) == ([], [0, 1, 2])
    _flip(dest / "000001" / "part-00000.parquet")  # damaged on the team's own disk: fetched again
    repaired = cli_json(anchored["env"], *pull)
    assert ([b["seq"] for b in repaired["pulled"]], [b["seq"] for b in repaired["kept"]]) == ([1], [0, 2])
    assert pads.dataset(str(dest)).count_rows() == ROWS
    other = cli(anchored["env"], "pull", "--dataset", "preferences", "--dest", str(dest), "--no-verify", check=False)
    assert other.returncode == 2 and "holds a pull of dataset 'instructions'" in other.stderr, other.stderr


def test_a_pull_names_every_bad_batch_and_still_delivers_the_good_ones(
        lake: tuple[Path, dict[str, str]], anchored: dict, tmp_path: Path) -> None:
    folder, env = lake
    flipped = folder / "batches/instructions/000001/data/part-00000.parquet"
    _flip(flipped)
    (folder / "batches/instructions/000002/data/part-00000.parquet").unlink()
    dest = tmp_path / "dest"
    proc = cli(env, "--json", "pull", *anchored["trust"], "--dest", str(dest), check=False)
    report = json.loads(proc.stdout)
    assert proc.returncode == 1 and [b["seq"] for b in report["pulled"]] == [0], proc.stderr
    failures = [line for line in proc.stderr.splitlines() if line.startswith("FAIL")]
    assert len(failures) == 2 and "batch 1" in failures[0] and flipped.as_uri() in failures[0], failures
    assert "batch 2" in failures[1] and "part-00000.parquet" in failures[1], failures
    assert sorted(p.name for p in dest.iterdir()) == [".anchorlake", ".croissant.json", "000000"]
    assert pads.dataset(str(dest)).count_rows() == 25


def test_a_pull_killed_after_placing_a_batch_resumes_to_the_same_folder(anchored: dict, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    pull = ["pull", *anchored["trust"], "--dest", str(dest)]
    killed = cli(anchored["env"] | {"ANCHORLAKE_FAULT": "pull.installed"}, *pull, check=False)
    assert killed.returncode == -9 and (dest / "000000").exists(), killed.stderr
    resumed = cli_json(anchored["env"], *pull)
    assert [b["seq"] for b in resumed["pulled"]] == [0, 1, 2]  # the batch placed but not recorded: again
    assert pads.dataset(str(dest)).count_rows() == ROWS
    assert not (dest / ".anchorlake" / "incoming").exists() or not any((dest / ".anchorlake" / "incoming").iterdir())


def test_a_killed_pull_leaves_nothing_a_parquet_glob_would_read(anchored: dict, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    cli(anchored["env"] | {"ANCHORLAKE_FAULT": "pull.installed"}, "pull", *anchored["trust"], "--dest", str(dest),
        check=False)
    assert sorted(p.name for p in dest.rglob("*.parquet*")) == ["part-00000.parquet.partial"]  # placed, not named


def test_two_pulls_into_one_folder_take_turns(anchored: dict, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    command = [str(REPO / ".venv" / "bin" / "anchorlake"), "--quiet", "pull", *anchored["trust"], "--dest", str(dest)]
    both = [subprocess.Popen(command, env=anchored["env"], cwd=REPO, stderr=subprocess.PIPE, text=True)
            for _ in range(2)]
    assert [p.wait(timeout=300) for p in both] == [0, 0], [p.stderr.read() for p in both if p.stderr]
    assert pads.dataset(str(dest)).count_rows() == ROWS


def test_a_pull_removes_what_no_pulled_manifest_names(anchored: dict, tmp_path: Path) -> None:
    """The attack: rows slipped into a pulled folder (a file beside a batch's parts, a batch folder
    of its own, a symlink) would be read with the verified ones."""
    dest = tmp_path / "dest"
    pull = ["pull", *anchored["trust"], "--dest", str(dest)]
    cli_json(anchored["env"], *pull)
    shutil.copy(dest / "000000" / "part-00000.parquet", dest / "000001" / "part-00001.parquet")
    (dest / "000007").mkdir()
    shutil.copy(dest / "000000" / "part-00000.parquet", dest / "000007" / "part-00000.parquet")
    (dest / "000002" / "part-00000.parquet").unlink()
    (dest / "000002" / "part-00000.parquet").symlink_to(dest / "000000" / "part-00000.parquet")
    again = cli_json(anchored["env"], *pull)
    assert ([b["seq"] for b in again["kept"]], [b["seq"] for b in again["pulled"]]) == ([0, 1], [2])
    assert sorted(again["removed"]) == ["000001/part-00001.parquet", "000007"]
    assert pads.dataset(str(dest)).count_rows() == ROWS


def test_manifests_moved_between_batches_or_unreadable_parts_fail_their_batch_alone(
        lake: tuple[Path, dict[str, str]], anchored: dict, tmp_path: Path) -> None:
    """The attacks: batch 1's manifest and part copied over batch 2 (a pull that took it would
    deliver batch 1 twice and batch 2 never); batch 0's part replaced by bytes that are no Parquet
    and its manifest's pin updated to match (the decoder must never see them)."""
    folder, env = lake
    batches = folder / "batches" / "instructions"
    for name in ("manifest.json", "data/part-00000.parquet"):
        shutil.copy(batches / "000001" / name, batches / "000002" / name)
    part = batches / "000000" / "data" / "part-00000.parquet"
    part.write_bytes(b"PAR1" + b"\0" * 100 + b"PAR1")
    manifest = json.loads((batches / "000000" / "manifest.json").read_text())
    manifest["files"][0] |= {"sha256": hashlib.sha256(part.read_bytes()).hexdigest(), "bytes": 108}
    (batches / "000000" / "manifest.json").write_text(json.dumps(manifest))
    dest = tmp_path / "dest"
    proc = cli(env, "--json", "pull", *anchored["trust"], "--dest", str(dest), check=False)
    report = json.loads(proc.stdout)
    assert proc.returncode == 1 and [b["seq"] for b in report["pulled"]] == [1], proc.stderr
    errors = {f["seq"]: f["error"] for f in report["failed"]}
    assert "differs from the anchored manifest hash" in errors[0], errors
    assert "is the manifest of instructions batch 1, not of instructions batch 2" in errors[2], errors
    assert pads.dataset(str(dest)).count_rows() == 1


# --- open_dataset -------------------------------------------------------------------------------

@pytest.fixture
def api_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The calling process's environment holds nothing of anchorlake: every trust anchor is an argument."""
    for name in [n for n in os.environ if n.startswith(("ANCHORLAKE_", "AWS_"))]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("ANCHORLAKE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ANCHORLAKE_CACHE", str(tmp_path / "cache"))


def test_open_dataset_verifies_every_batch_and_names_the_training_set(anchored: dict, api_env: None) -> None:
    import anchorlake

    opened = anchorlake.open_dataset("instructions", lake=anchored["lake"].as_uri(), rpc=anchored["rpc"],
                                     contract=anchored["contract"])
    assert isinstance(opened, pads.Dataset) and opened.verified
    frame = opened.to_pandas()
    assert len(frame) == opened.to_table().num_rows == ROWS and set(frame["contributor"]) >= {ALICE, BOB}
    last = hashlib.sha256(_manifest(anchored["lake"], 2).read_bytes()).hexdigest()
    assert opened.citation == ("instructions", 2, last)
    one = anchorlake.open_dataset("instructions", lake=anchored["lake"].as_uri(), rpc=anchored["rpc"],
                                  contract=anchored["contract"], batches=[1])
    assert one.count_rows() == 1 and [b["seq"] for b in one.batches] == [1]
    assert one.citation is None  # batch 1 alone is not the history up to it


def test_open_dataset_names_the_batch_and_file_of_a_flipped_byte_and_says_when_it_did_not_verify(
        lake: tuple[Path, dict[str, str]], anchored: dict, api_env: None) -> None:
    import anchorlake
    from pipeline.errors import CheckFailed

    folder, _ = lake
    flipped = folder / "batches/instructions/000001/data/part-00000.parquet"
    _flip(flipped)
    with pytest.raises(CheckFailed) as failed:
        anchorlake.open_dataset("instructions", lake=folder.as_uri(), rpc=anchored["rpc"], contract=anchored["contract"])
    assert "batch 1" in str(failed.value) and flipped.as_uri() in str(failed.value)
    assert "batch 0" not in str(failed.value) and "batch 2" not in str(failed.value)
    with pytest.warns(anchorlake.Unverified, match="WITHOUT verification"):
        unverified = anchorlake.open_dataset("instructions", lake=anchored["lake"].as_uri(), verify=False)
    assert not unverified.verified and unverified.count_rows() == ROWS
    with pytest.raises(Exception, match="needs the chain and the BatchAnchor you trust"):
        anchorlake.open_dataset("instructions", lake=anchored["lake"].as_uri(), rpc=anchored["rpc"])


# --- provable history ---------------------------------------------------------------------------

def test_each_manifest_carries_the_history_root_over_every_earlier_manifest(anchored: dict) -> None:
    reference = InmemoryTree(algorithm="sha256")  # the independent implementation of RFC 9162
    for seq in range(3):
        raw = _manifest(anchored["lake"], seq).read_bytes()
        history = json.loads(raw)["history"]
        expected = reference.get_root().hex() if seq else hashlib.sha256(b"").hexdigest()
        assert history == {"tree_size": seq, "root": expected}
        reference.append_entry(hashlib.sha256(raw).digest())


def test_a_history_proof_verifies_against_the_chain_and_a_doctored_one_does_not(anchored: dict, tmp_path: Path) -> None:
    proof = tmp_path / "proof.json"
    document = cli_json(anchored["env"], "history", *anchored["trust"], "--from", "1", "--to", "2", "-o", str(proof))
    assert (document["from"]["seq"], document["to"]["seq"], len(document["proof"])) == (1, 2, 1)
    ok = cli(anchored["env"], "verify", str(proof), *anchored["trust"])
    assert "OK" in ok.stdout and "prefix of the history anchored at batch 2" in ok.stdout
    doctored = json.loads(proof.read_text())
    doctored["proof"][0] = "00" * 32
    (tmp_path / "doctored.json").write_text(json.dumps(doctored))
    bad = cli(anchored["env"], "verify", str(tmp_path / "doctored.json"), *anchored["trust"], check=False)
    assert bad.returncode == 1 and "FAIL" in bad.stderr and "does not reach" in bad.stderr, bad.stderr
    renamed = json.loads(proof.read_text()) | {"dataset": "preferences"}
    (tmp_path / "renamed.json").write_text(json.dumps(renamed))
    other = cli(anchored["env"], "verify", str(tmp_path / "renamed.json"), *anchored["trust"], check=False)
    assert other.returncode == 1 and "not 'instructions'" in other.stderr, other.stderr
    for damage in ({"proof": ["zz" * 32]}, {"proof": "00"}, {"to": {"seq": 2}}, {"from": None}):
        (tmp_path / "bad.json").write_text(json.dumps(json.loads(proof.read_text()) | damage))
        bad = cli(anchored["env"], "verify", str(tmp_path / "bad.json"), *anchored["trust"], check=False)
        assert bad.returncode == 2 and bad.stderr.startswith("FAIL") and "Traceback" not in bad.stderr, (damage, bad.stderr)


def test_a_rewritten_older_manifest_is_found_through_a_later_batchs_anchored_history(
        lake: tuple[Path, dict[str, str]], anchored: dict) -> None:
    folder, env = lake
    manifest = _manifest(folder, 0)
    data = json.loads(manifest.read_text())
    data["created_at"] = data["created_at"].replace("2", "1", 1)  # the past, quietly rewritten
    manifest.write_text(json.dumps(data))
    history = cli(env, "history", *anchored["trust"], "--to", "2", check=False)
    assert history.returncode == 1 and "batch 0" in history.stderr and "history was rewritten" in history.stderr, \
        history.stderr
    audit = cli(env, "audit", *anchored["trust"], check=False)
    assert audit.returncode == 1 and "batch 0" in audit.stderr, audit.stderr


def test_the_table_command_reports_a_table_kept_by_the_runs_and_rebuilds_it_from_the_lake(
        anchored: dict, lake: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    assert cli_json(anchored["env"], "table", "--dataset", "instructions")["added"] == []  # each run registered its batch
    _, env = lake
    env = env | {"ANCHORLAKE_HOME": str(tmp_path / "elsewhere")}  # a catalog of its own, empty
    assert cli_json(env, "table", "--dataset", "instructions")["added"] == [0, 1, 2]
    rebuilt = cli_json(env, "table", "--dataset", "instructions", "--rebuild")
    assert (rebuilt["table"], rebuilt["added"]) == ("anchorlake.instructions", [0, 1, 2])
