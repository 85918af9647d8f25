"""The commit task of a dataset DAG, and the trigger that waits for a Ray job (SPEC §13.11).

With ANCHORLAKE_RAY_JOBS (a Ray cluster's job-submission address, its dashboard) the commit is
submitted as a Ray job, `anchorlake --json commit --dataset D --batch SEQ`, and the task defers:
the triggerer polls the job and the worker slot is free meanwhile. The job runs with the
cluster's own settings and secrets (its nodes' environment); the submission carries only the
dataset, the batch and non-secret settings, since anyone who can read the Ray dashboard reads it.
Without it the task commits in this worker. Either way the dataset's Asset gets an event with the
batch's seq, root and manifest hash. Ray is imported only inside these calls.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.sdk import Asset, BaseOperator
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSkipException
from airflow.triggers.base import BaseTrigger, TriggerEvent

# Settings a commit job may be given in its submission (what it reads, never a key or a secret).
JOB_SETTINGS = ("ANCHORLAKE_LAKE", "ANCHORLAKE_ENGINE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION",
                "ANCHORLAKE_LEASE_SECONDS", "ANCHORLAKE_TEST_SALT_SEED")
POLL_SECONDS = 2.0
AGENT_WAIT = 120.0


def run_stage(stage: str, *args: Any) -> Any:
    """Call one stage of pipeline.stages. Transient errors (S3 or the RPC unreachable) raise as
    they are, so Airflow retries; terminal ones (bad input, a conflict on chain) fail at once."""
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


def dataset_asset(dataset: str) -> Asset:
    """The dataset's Asset: one event per committed batch."""
    return Asset(name=f"anchorlake.{dataset}", uri=f"anchorlake://{dataset}", group="anchorlake")


class CommitBatch(BaseOperator):
    """Commit the batch `stage` returned (None: no new sources, the run ends here, skipped)."""

    template_fields = ("seq",)

    def __init__(self, *, dataset: str, seq: Any, **kwargs: Any) -> None:
        super().__init__(outlets=[dataset_asset(dataset)], **kwargs)
        self.dataset, self.seq = dataset, seq

    def execute(self, context: Any) -> int:
        if self.seq is None:
            raise AirflowSkipException(f"{self.dataset}: no new sources, nothing to commit")
        seq = int(self.seq)
        jobs = os.environ.get("ANCHORLAKE_RAY_JOBS")
        if not jobs:
            return self._committed(context, run_stage("commit", self.dataset, seq))
        job = _submit(jobs, self.dataset, seq, context["ti"].try_number)
        self.log.info("%s batch %d: Ray job %s submitted to %s; waiting in the triggerer", self.dataset, seq, job, jobs)
        self.defer(trigger=RayJobTrigger(jobs, job), method_name="job_finished")

    def job_finished(self, context: Any, event: dict[str, Any]) -> int:
        seq = int(self.seq)  # rendered again when the task resumes
        if event["status"] != "SUCCEEDED":
            raise AirflowException(f"Ray job {event['job']} ended {event['status']}: {event['logs'][-2000:]}")
        batch = _last_json(event["logs"])
        if batch.get("seq") != seq:
            raise AirflowFailException(f"Ray job {event['job']} reports batch {batch.get('seq')!r}, not {seq}")
        return self._committed(context, batch)

    def _committed(self, context: Any, batch: dict[str, Any]) -> int:
        counts = batch["counts"]
        self.log.info("%s batch %d committed: %d records, %d accepted, %d quarantined, %d duplicate; root %s",
                      self.dataset, batch["seq"], counts["input"], counts["accepted"], counts["quarantined"],
                      counts["duplicate"], batch["root"])
        context["outlet_events"][dataset_asset(self.dataset)].extra = {
            "seq": batch["seq"], "root": batch["root"], "manifest_sha256": batch["manifest_sha256"], "counts": counts}
        return int(batch["seq"])


def _submit(address: str, dataset: str, seq: int, attempt: int) -> str:
    """Submit the commit of batch `seq` as a Ray job; its id. A retried task submits again: the
    commit takes the batch's lease, and a batch already committed is returned as it is. A head
    that has just started has no job agent for a while: that is waited out (AGENT_WAIT seconds)."""
    from ray.job_submission import JobSubmissionClient

    given = dict(os.environ) | _connections()  # what this worker's commit would use, Connections included
    settings = {name: given[name] for name in JOB_SETTINGS if given.get(name)}
    client, deadline = JobSubmissionClient(address), time.monotonic() + AGENT_WAIT
    while True:
        try:
            return str(client.submit_job(
                entrypoint=f"anchorlake --json --quiet commit --dataset {dataset} --batch {seq}",
                submission_id=f"anchorlake-{dataset}-{seq:06d}-{attempt}-{os.urandom(3).hex()}",
                runtime_env={"env_vars": settings}, metadata={"dataset": dataset, "batch": str(seq)}))
        except RuntimeError as e:
            if "No available agent" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(2)


def _last_json(logs: str) -> dict[str, Any]:
    """The JSON document `anchorlake --json` printed last in a job's logs."""
    start = logs.rfind("\n{")
    try:
        return dict(json.loads(logs[start + 1 if start >= 0 else 0:]))
    except ValueError:
        raise AirflowException(f"the Ray job printed no result: {logs[-2000:]}") from None


class RayJobTrigger(BaseTrigger):
    """Fires once Ray job `job` at `address` has ended, with its status and logs."""

    def __init__(self, address: str, job: str, poll: float = POLL_SECONDS) -> None:
        super().__init__()
        self.address, self.job, self.poll = address, job, poll

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return f"{__name__}.RayJobTrigger", {"address": self.address, "job": self.job, "poll": self.poll}

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from ray.job_submission import JobSubmissionClient

        client = JobSubmissionClient(self.address)
        while True:
            status = await asyncio.to_thread(client.get_job_status, self.job)
            if status.is_terminal():
                logs = await asyncio.to_thread(client.get_job_logs, self.job)
                yield TriggerEvent({"job": self.job, "status": str(status.value), "logs": logs[-100_000:]})
                return
            await asyncio.sleep(self.poll)
