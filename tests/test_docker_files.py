"""The deployment files in docker/ parse and agree with the code (no Docker engine here)."""

from __future__ import annotations

import json

import pytest
import yaml

from conftest import REPO

pytestmark = pytest.mark.unit


def test_compose_file_wires_s3_chain_and_airflow() -> None:
    compose = yaml.safe_load((REPO / "docker" / "compose.yaml").read_text())
    assert set(compose["services"]) == {"s3", "chain", "airflow"}
    env = compose["services"]["airflow"]["environment"]
    assert env["ANCHORLAKE_LAKE"].startswith("s3://") and env["ANCHORLAKE_RPC_URL"] == "http://chain:8545"
    for role in ("ANCHORER", "DISTRIBUTOR", "TREASURY"):
        assert "${" in env[f"ANCHORLAKE_{role}_KEY"], "keys come from the environment, never from the file"
    assert "ANCHORLAKE_ADMIN_KEY" not in env, "the admin key stays off the workers"
    assert "${" in env["ANCHORLAKE_ADMIN_ADDRESS"]
    assert "-s3.port.iceberg=0" in compose["services"]["s3"]["command"]


def test_dockerfile_installs_the_pinned_files_and_builds_the_contracts() -> None:
    lines = [line.strip() for line in (REPO / "docker" / "Dockerfile").read_text().splitlines()]
    instructions = [line.split()[0] for line in lines if line and not line.startswith("#")]
    assert instructions[0] == "FROM" and "USER" in instructions
    text = "\n".join(lines)
    assert "pip install -r requirements.txt" in text and "npm ci --ignore-scripts" in text
    assert "python -m anchoring.compile" in text
    for copied in ("pipeline", "anchoring", "expectations", "dags"):
        assert f"COPY {copied} " in text


def test_example_identities_have_an_admin_and_a_reader_scoped_to_what_readers_may_see() -> None:
    """The reader reads and lists batches/, receipts/ and deployments/ of the compose file's lake,
    nothing else (not incoming/, raw/, private/ or state/) and writes nothing."""
    from pipeline.lake.layout import reader_actions

    identities = json.loads((REPO / "docker" / "identities.example.json").read_text())["identities"]
    actions = {i["name"]: set(i["actions"]) for i in identities}
    assert "Write" in actions["anchorlake-admin"]
    compose = yaml.safe_load((REPO / "docker" / "compose.yaml").read_text())
    lake = compose["services"]["airflow"]["environment"]["ANCHORLAKE_LAKE"]
    assert actions["ai-team-reader"] == set(reader_actions(lake))
    assert not any(a.split(":")[0] in ("Write", "Admin", "Tagging") for a in actions["ai-team-reader"])
