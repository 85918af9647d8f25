"""One Airflow DAG per declared dataset: stage -> commit -> anchor -> rewards -> receipts.

This file only wires tasks. Each task body is one call into `pipeline.stages` with explicit
arguments; pandas, boto3, web3 and Great Expectations are imported inside those calls, never here.
Settings come from the worker's environment (SPEC §11).
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

from airflow.sdk import dag, task

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
        def stage() -> int | None:
            from pipeline import config, stages

            return stages.stage(config.load(), dataset)

        @task
        def commit(seq: int | None) -> int | None:
            from pipeline import config, stages

            if seq is None:
                return None
            return int(stages.commit(config.load(), dataset, seq)["seq"])

        @task
        def anchor(seq: int | None) -> int | None:
            from pipeline import config, stages

            if seq is not None:
                stages.anchor(config.load(), dataset, seq)
            return seq

        @task
        def publish_rewards(seq: int | None) -> int | None:
            from pipeline import config, stages

            if seq is not None:
                stages.publish_rewards(config.load(), dataset, seq)
            return seq

        @task
        def publish_receipts(seq: int | None) -> int:
            from pipeline import config, stages

            return 0 if seq is None else stages.publish_receipts(config.load(), dataset, seq)

        publish_receipts(publish_rewards(anchor(commit(stage()))))

    return pipeline_dag()


for _name in _dataset_names():
    globals()[f"anchorlake_{_name}"] = build_dag(_name)
