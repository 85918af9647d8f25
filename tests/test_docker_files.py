"""The deployment files in docker/ parse and agree with the code (no Docker engine here)."""

from __future__ import annotations

import json

import pytest
import yaml

from conftest import REPO

pytestmark = pytest.mark.unit


def test_compose_file_wires_s3_chain_airflow_on_celery_and_ray() -> None:
    compose = yaml.safe_load((REPO / "docker" / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"s3", "chain", "postgres", "redis", "airflow-init", "airflow-apiserver",
                             "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer", "airflow-worker",
                             "ray-head", "ray-worker"}
    airflow = [name for name in services if name.startswith("airflow") and name != "airflow-worker"]
    env = services["airflow-worker"]["environment"]
    secrets = ("ANCHORLAKE_ANCHORER_KEY", "ANCHORLAKE_DISTRIBUTOR_KEY", "ANCHORLAKE_TREASURY_KEY", "ANCHORLAKE_SEAL_KEY",
               "AWS_SECRET_ACCESS_KEY")
    for name in airflow:  # only the worker runs tasks, so only it holds the lake's and the chain's secrets
        assert services[name]["environment"] == {k: v for k, v in env.items() if k not in secrets + ("AWS_ACCESS_KEY_ID",)}
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor" and env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://")
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://")
    assert services["airflow-worker"]["entrypoint"] == ["airflow", "celery", "worker"]
    assert services["airflow-triggerer"]["entrypoint"] == ["airflow", "triggerer"]  # deferred commits wait there
    assert env["ANCHORLAKE_LAKE"].startswith("s3://") and env["ANCHORLAKE_RPC_URL"] == "http://chain:8545"
    assert (env["ANCHORLAKE_ENGINE"], env["ANCHORLAKE_RAY_JOBS"]) == ("ray", "http://ray-head:8265")
    for name in secrets + ("AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__CORE__FERNET_KEY"):
        assert "${" in env[name], f"{name} comes from the environment, never from the file"
    assert "ANCHORLAKE_ADMIN_KEY" not in env, "the admin key stays off the workers"
    assert "${" in env["ANCHORLAKE_ADMIN_ADDRESS"]
    assert "-s3.port.iceberg=0" in services["s3"]["command"]
    head, worker = services["ray-head"], services["ray-worker"]
    assert head["entrypoint"][:4] == ["ray", "start", "--head", "--block"] and "--dashboard-port=8265" in head["entrypoint"]
    assert "--address=ray-head:6379" in worker["entrypoint"]
    ray_env = head["environment"]
    assert ray_env == worker["environment"] and "${" in ray_env["ANCHORLAKE_SEAL_KEY"]
    assert not {k for k in ray_env if k.endswith("_KEY") and k.startswith("ANCHORLAKE_")} - {"ANCHORLAKE_SEAL_KEY"}, \
        "the Ray nodes commit: they hold the seal key, no chain key"
    shuffle = ray_env["ANCHORLAKE_SCRATCH"]  # the commit's tasks exchange partitions there: every node mounts it
    assert head["volumes"] == worker["volumes"] == [f"shuffle:{shuffle}"] and "shuffle" in compose["volumes"]


def test_dockerfile_installs_the_pinned_files_and_builds_the_contracts() -> None:
    lines = [line.strip() for line in (REPO / "docker" / "Dockerfile").read_text().splitlines()]
    instructions = [line.split()[0] for line in lines if line and not line.startswith("#")]
    assert instructions[0] == "FROM" and "USER" in instructions
    text = "\n".join(lines)
    assert "pip install -r requirements.txt" in text and "npm ci --ignore-scripts" in text
    assert "python -m anchoring.compile" in text
    for copied in ("pipeline", "anchoring", "expectations", "dags"):
        assert f"COPY {copied} " in text
    assert "pip install -r docker/requirements-celery.txt" in text  # the compose file's executor and database
    celery = (REPO / "docker" / "requirements-celery.txt").read_text()
    assert "apache-airflow-providers-celery==" in celery and "psycopg2-binary==" in celery


def test_example_identities_have_an_admin_and_a_reader_scoped_to_what_readers_may_see() -> None:
    """The reader reads and lists batches/, receipts/, deployments/ and iceberg/ of the compose file's lake,
    nothing else (not incoming/, raw/, private/ or state/) and writes nothing."""
    from pipeline.lake.layout import reader_actions

    identities = json.loads((REPO / "docker" / "identities.example.json").read_text())["identities"]
    actions = {i["name"]: set(i["actions"]) for i in identities}
    assert "Write" in actions["anchorlake-admin"]
    compose = yaml.safe_load((REPO / "docker" / "compose.yaml").read_text())
    lake = compose["services"]["airflow-worker"]["environment"]["ANCHORLAKE_LAKE"]
    assert actions["ai-team-reader"] == set(reader_actions(lake))
    assert not any(a.split(":")[0] in ("Write", "Admin", "Tagging") for a in actions["ai-team-reader"])
