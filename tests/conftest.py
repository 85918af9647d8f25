"""Shared fixtures. Integration tests run against real SeaweedFS and anvil processes on
loopback, started here once per session; a service that cannot start fails the run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.config import DEVNET_KEYS, key_variable
from pipeline.devnet import Anvil, Identity, RayHead, SeaweedFS
from pipeline.lake.layout import reader_actions

REPO = Path(__file__).resolve().parent.parent
ANCHORLAKE = str(Path(sys.executable).parent / "anchorlake")
# anvil's account 9: has gas money and no role anywhere (accounts 0-3 are the devnet's four roles).
OUTSIDER_KEY = "0x2a871d0798f97d79848a013d4936a73bf4cc922c825d33c1cf7073dff6d409c6"
# The one lake the test SeaweedFS's read-only identity is scoped to (its identities are fixed at start).
READER_LAKE = "s3://published/anchorlake"


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    reader = Identity("ai-team-reader", "ai-team-reader", "ai-team-reader-secret", reader_actions(READER_LAKE))
    server = SeaweedFS(workdir=tmp_path_factory.mktemp("seaweedfs"), reader=reader).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def anvil(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Anvil]:
    node = Anvil(workdir=tmp_path_factory.mktemp("anvil")).start()
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture(scope="session")
def ray_head(tmp_path_factory: pytest.TempPathFactory, seaweed: SeaweedFS) -> Iterator[RayHead]:
    """A Ray head with 2 CPUs; its nodes hold the S3 credentials and the seal key, as a cluster's
    would (a job's submission carries no secret). Tests using it share one pytest worker
    (xdist_group "ray")."""
    head = RayHead(tmp_path_factory.mktemp("ray"), env=seaweed.env() | {"ANCHORLAKE_SEAL_KEY": "a test seal key"})
    head.start()
    try:
        yield head
    finally:
        head.stop()


@pytest.fixture
def file_env(tmp_path: Path, anvil: Anvil) -> dict[str, str]:
    """Environment for a CLI run over a fresh file:// lake and the session's anvil."""
    return base_env(tmp_path) | {"ANCHORLAKE_LAKE": (tmp_path / "lake").as_uri(), "ANCHORLAKE_RPC_URL": anvil.url}


@pytest.fixture
def s3_env(tmp_path: Path, anvil: Anvil, seaweed: SeaweedFS) -> dict[str, str]:
    """Environment for a CLI run over a fresh s3:// lake on SeaweedFS (admin identity)."""
    bucket = "lake-" + uuid.uuid4().hex[:12]
    seaweed.create_bucket(bucket)
    return (base_env(tmp_path) | seaweed.env()
            | {"ANCHORLAKE_LAKE": f"s3://{bucket}/anchorlake", "ANCHORLAKE_RPC_URL": anvil.url})


@pytest.fixture
def published_env(tmp_path: Path, anvil: Anvil, seaweed: SeaweedFS) -> dict[str, str]:
    """Environment for a CLI run over READER_LAKE (admin identity), emptied first: the one lake the
    test SeaweedFS's read-only identity is scoped to (its identities file is fixed at start)."""
    import boto3

    bucket, _, prefix = READER_LAKE.removeprefix("s3://").partition("/")
    seaweed.create_bucket(bucket)
    admin = boto3.resource("s3", endpoint_url=seaweed.endpoint, aws_access_key_id=seaweed.admin.access_key,
                           aws_secret_access_key=seaweed.admin.secret_key, region_name="us-east-1")
    admin.Bucket(bucket).objects.filter(Prefix=prefix + "/").delete()
    return base_env(tmp_path) | seaweed.env() | {"ANCHORLAKE_LAKE": READER_LAKE, "ANCHORLAKE_RPC_URL": anvil.url}


def base_env(tmp_path: Path) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("ANCHORLAKE_", "AWS_"))}
    return keep | {"ANCHORLAKE_HOME": str(tmp_path / "home")} | {key_variable(r): k for r, k in DEVNET_KEYS.items()}


def cli(env: dict[str, str], *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run the real `anchorlake` console script."""
    proc = subprocess.run([ANCHORLAKE, *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    if check and proc.returncode != 0:
        raise AssertionError(f"anchorlake {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}\n{proc.stdout}")
    return proc


def cli_json(env: dict[str, str], *args: str) -> dict:
    return json.loads(cli(env, "--json", "--quiet", *args).stdout)


def trust_args(env: dict[str, str], tmp_path: Path, dataset: str = "instructions") -> list[str]:
    """What a verifying user brings, never read from a receipt: the deployment they trust (here
    the one `anchorlake up` reports) and the name of the dataset."""
    path = tmp_path / "trusted-deployment.json"
    if not path.exists():
        cli(env, "up", "--quiet", "-o", str(path))
    return ["--deployment", str(path), "--dataset", dataset]


def contribute_one(env: dict[str, str], tmp_path: Path, prompt: str, contributor: str) -> None:
    """Drop one good `instructions` record: new data for the next batch."""
    path = tmp_path / f"one-{uuid.uuid4().hex[:8]}.jsonl"
    path.write_text(json.dumps({"prompt": prompt, "response": "An answer.", "language": "en", "consent": True,
                                "created_at": "2026-11-20T08:00:00Z", "contributor": contributor}) + "\n")
    cli(env, "contribute", "--dataset", "instructions", str(path))
