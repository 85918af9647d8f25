"""One Airflow DAG per declared dataset: stage -> commit -> anchor -> rewards -> receipts.

This file only wires tasks. Each task body is one call into `pipeline.stages` with explicit
arguments (through anchorlake_tasks.run_stage); pandas, boto3, web3 and Great Expectations are
imported inside those calls, never here. Settings come from the worker's environment (SPEC §11).
No new sources: `stage` is skipped, and so is everything after it. The commit runs in the worker
or as a Ray job (anchorlake_tasks.CommitBatch); each committed batch updates the dataset's Asset.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime, timedelta
from pathlib import Path

from airflow.sdk import dag, task
from airflow.sdk.exceptions import AirflowSkipException

HERE = str(Path(__file__).resolve().parent)
if HERE not in sys.path:  # Airflow puts the DAGs folder on sys.path; a DagBag loaded by hand may not
    sys.path.append(HERE)
from anchorlake_tasks import CommitBatch, run_stage  # noqa: E402

DATASETS_DIR = Path(__file__).resolve().parent.parent / "expectations"


def _dataset_names() -> list[str]:
    names = []
    for path in sorted(DATASETS_DIR.glob("*.dataset.json")):
        try:
            names.append(json.loads(path.read_text())["name"])
        except (ValueError, KeyError, OSError):
            continue  # a broken declaration fails its own DAG's tasks, not every DAG's import
    return names


def build_dag(dataset: str):  # type: ignore[no-untyped-def]
    @dag(
        dag_id=f"anchorlake_{dataset}",
        schedule=timedelta(hours=1),
        start_date=datetime(2026, 1, 1),
        catchup=False,
        max_active_runs=1,  # batches are numbered strictly in order
        default_args={"retries": 3, "retry_delay": timedelta(minutes=1)},
        tags=["anchorlake", dataset],
        doc_md=f"Ingest, validate, commit, anchor and reward the `{dataset}` dataset.",
    )
    def pipeline_dag():  # type: ignore[no-untyped-def]
        @task
        def stage() -> int:
            seq = run_stage("stage", dataset)
            if seq is None:
                raise AirflowSkipException(f"{dataset}: no new sources")
            return int(seq)

        committed = CommitBatch(task_id="commit", dataset=dataset, seq=stage())

        @task
        def anchor(seq: int) -> int:
            run_stage("anchor", dataset, seq)
            return seq

        @task
        def publish_rewards(seq: int) -> int:
            run_stage("publish_rewards", dataset, seq)
            return seq

        @task
        def publish_receipts(seq: int) -> int:
            return int(run_stage("publish_receipts", dataset, seq))

        @task
        def register_table(seq: int) -> list[int]:
            return list(run_stage("register_table", dataset))

        anchored = anchor(committed.output)
        publish_receipts(publish_rewards(anchored))
        register_table(anchored)

    return pipeline_dag()


for _name in _dataset_names():
    globals()[f"anchorlake_{_name}"] = build_dag(_name)
