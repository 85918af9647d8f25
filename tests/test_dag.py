"""The DAG file imports cleanly under Airflow and wires one DAG per declared dataset."""

from __future__ import annotations

import ast
import json
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, trust_args

pytestmark = pytest.mark.e2e
AIRFLOW = str(Path(sys.executable).parent / "airflow")


def test_dagbag_has_no_import_errors_and_one_dag_per_dataset(tmp_path: Path) -> None:
    script = f"""
from airflow.models.dagbag import DagBag
bag = DagBag(dag_folder={str(REPO / 'dags')!r})
assert not bag.import_errors, bag.import_errors
print("DAGS", sorted(bag.dag_ids))
for dag_id in bag.dag_ids:
    print("TASKS", dag_id, [t.task_id for t in bag.dags[dag_id].topological_sort()])
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")} | {
        "AIRFLOW_HOME": str(tmp_path / "airflow"), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "True"}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith(("DAGS", "TASKS"))]
    assert lines[0] == "DAGS ['anchorlake_critiques', 'anchorlake_instructions', 'anchorlake_preferences']"
    assert "TASKS anchorlake_instructions ['stage', 'commit', 'anchor', 'publish_rewards', 'publish_receipts', 'register_table']" in lines


@pytest.mark.parametrize("name", ["anchorlake_datasets.py", "anchorlake_tasks.py"])
def test_the_dag_files_import_no_heavy_library_at_top_level(name: str) -> None:
    tree = ast.parse((REPO / "dags" / name).read_text())
    top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    names = {(n.module or "") if isinstance(n, ast.ImportFrom) else a.name for n in top for a in n.names}
    assert names and not names & {"pandas", "boto3", "web3", "great_expectations", "pyarrow", "pipeline", "ray"}


def _airflow_env(file_env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    """Airflow over the test's lake and chain; under Airflow they come from Connections, not from
    ANCHORLAKE_* variables."""
    env = file_env | {"AIRFLOW_HOME": str(tmp_path / "airflow"), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                      "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags")}
    env["AIRFLOW_CONN_ANCHORLAKE_LAKE"] = json.dumps({"conn_type": "generic",
                                                      "extra": {"lake": env.pop("ANCHORLAKE_LAKE")}})
    env["AIRFLOW_CONN_ANCHORLAKE_CHAIN"] = json.dumps({"conn_type": "generic", "password": env.pop(
        "ANCHORLAKE_ANCHORER_KEY"), "extra": {"rpc_url": env.pop("ANCHORLAKE_RPC_URL"), "confirmations": 1}})
    migrate = subprocess.run([AIRFLOW, "db", "migrate"], env=env, capture_output=True, text=True, timeout=300)
    assert migrate.returncode == 0, migrate.stderr[-2000:]
    return env


def _dags_test(env: dict[str, str]) -> str:
    run = subprocess.run([AIRFLOW, "dags", "test", "anchorlake_instructions"], env=env, capture_output=True,
                         text=True, timeout=600)
    output = run.stdout + run.stderr
    assert run.returncode == 0 and "state=success" in output, output[-3000:]
    return output


def _asset_events(env: dict[str, str]) -> list[dict]:
    """The events of the dataset's Asset, oldest first, from Airflow's metadata database."""
    with sqlite3.connect(Path(env["AIRFLOW_HOME"]) / "airflow.db") as db:
        rows = db.execute("SELECT e.extra, e.source_task_id FROM asset_event e JOIN asset a ON a.id = e.asset_id "
                          "WHERE a.uri = 'anchorlake://instructions/' ORDER BY e.id").fetchall()
    return [json.loads(extra) | {"task": task} for extra, task in rows]


def _contribute_samples(env: dict[str, str]) -> None:
    from conftest import cli

    cli(env, "up")
    cli(env, "contribute", "--dataset", "instructions",
        *sorted(str(p) for p in (REPO / "samples" / "instructions").glob("*.jsonl")))


def test_airflow_runs_the_dag_end_to_end_and_the_receipts_verify(file_env: dict[str, str], tmp_path: Path) -> None:
    from conftest import cli_json

    _contribute_samples(file_env)
    env = _airflow_env(file_env, tmp_path)
    output = _dags_test(env)
    assert "instructions batch 0 committed: 30 records, 25 accepted, 4 quarantined, 1 duplicate; root" in output
    lake = Path(file_env["ANCHORLAKE_LAKE"][len("file://"):])
    assert (lake / "batches/instructions/000000/anchor.json").exists()
    receipts = [str(p) for p in (lake / "receipts/instructions/000000").glob("receipts-*.jsonl.gz")]
    verified = cli_json(file_env, "verify", *receipts, *trust_args(file_env, lake.parent))
    assert verified["ok"] and len(verified["receipts"]) == 5
    manifest = json.loads((lake / "batches/instructions/000000/manifest.json").read_text())
    [event] = _asset_events(env)
    assert (event["seq"], event["root"], event["task"]) == (0, manifest["merkle"]["root"], "commit")

    # Nothing new: the run ends at `stage`, skipped, with no error and no Asset event.
    again = _dags_test(env)
    assert "no new sources" in again and not re.search(r"\bERROR\b|XCom.*not found|Traceback", again), again[-3000:]
    assert len(_asset_events(env)) == 1


@pytest.mark.xdist_group("ray")
def test_with_the_ray_engine_the_commit_is_a_ray_job_and_the_asset_names_the_batch(
        file_env: dict[str, str], tmp_path: Path, ray_head) -> None:  # type: ignore[no-untyped-def]
    _contribute_samples(file_env)
    env = _airflow_env(file_env, tmp_path) | {"ANCHORLAKE_ENGINE": "ray", "ANCHORLAKE_RAY_JOBS": ray_head.dashboard,
                                              "ANCHORLAKE_SEAL_KEY": ray_head.env["ANCHORLAKE_SEAL_KEY"]}
    output = _dags_test(env)
    assert re.search(r"Ray job anchorlake-instructions-000000-\S+ submitted", output), output[-3000:]
    lake = Path(file_env["ANCHORLAKE_LAKE"][len("file://"):])
    manifest = json.loads((lake / "batches/instructions/000000/manifest.json").read_text())
    assert manifest["counts"] == {"input": 30, "accepted": 25, "quarantined": 4, "duplicate": 1}
    assert (lake / "batches/instructions/000000/anchor.json").exists()  # anchored by the worker, sealed by the job
    [event] = _asset_events(env)
    assert (event["seq"], event["root"]) == (0, manifest["merkle"]["root"])
