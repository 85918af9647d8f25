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


def _run(stage: str, *args):  # type: ignore[no-untyped-def]
    """Call one stage of pipeline.stages. Transient errors (S3 or the RPC unreachable) raise as
    they are, so Airflow retries; terminal ones (bad input, a conflict on chain) fail at once."""
    from airflow.sdk.exceptions import AirflowFailException

    from pipeline import config, stages
    from pipeline.errors import AnchorlakeError, redact

    try:
        return getattr(stages, stage)(config.load(overrides=_connections()), *args)
    except AnchorlakeError as e:
        if e.transient:
            raise
        raise AirflowFailException(redact(f"{type(e).__name__}: {e}")) from None


def _connections() -> dict[str, str]:
    """Settings from the Connections `anchorlake_lake`, `anchorlake_chain` and, for the keys of the
    distributor and the treasury, `anchorlake_distributor` and `anchorlake_treasury`, where defined.
    The admin key is never needed by a DAG."""
    from airflow.sdk import BaseHook

    from pipeline import config

    def connection(conn_id: str) -> object | None:
        try:
            return BaseHook.get_connection(conn_id)
        except Exception:  # not defined: the worker's environment applies
            return None

    signers = {role: connection(f"anchorlake_{role}") for role in ("distributor", "treasury")}
    return config.from_connections(connection("anchorlake_lake"), connection("anchorlake_chain"), signers)


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
            return _run("stage", dataset)

        @task
        def commit(seq: int | None) -> int | None:
            return None if seq is None else int(_run("commit", dataset, seq)["seq"])

        @task
        def anchor(seq: int | None) -> int | None:
            if seq is not None:
                _run("anchor", dataset, seq)
            return seq

        @task
        def publish_rewards(seq: int | None) -> int | None:
            if seq is not None:
                _run("publish_rewards", dataset, seq)
            return seq

        @task
        def publish_receipts(seq: int | None) -> int:
            return 0 if seq is None else int(_run("publish_receipts", dataset, seq))

        publish_receipts(publish_rewards(anchor(commit(stage()))))

    return pipeline_dag()


for _name in _dataset_names():
    globals()[f"anchorlake_{_name}"] = build_dag(_name)
