"""The lake's conditional create on both back-ends; killed runs re-run without loss or
duplication; the embedded devnet keeps its chain across down/up."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from pipeline.config import S3Settings
from pipeline.errors import AlreadyExists
from pipeline.lake import layout
from pipeline.lake.storage import open_lake

from conftest import ANCHORLAKE, REPO, base_env, cli, cli_json, trust_args

SAMPLES = sorted(str(p) for p in (REPO / "samples" / "instructions").glob("*.jsonl"))


@pytest.mark.integration
@pytest.mark.parametrize("backend", ["file", "s3"])
def test_only_one_of_many_concurrent_creates_wins(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    if backend == "file":
        lake = open_lake((tmp_path / "lake").as_uri())
    else:
        seaweed = request.getfixturevalue("seaweed")
        seaweed.create_bucket("create-race")
        env = seaweed.env()
        lake = open_lake(f"s3://create-race/{tmp_path.name}", S3Settings(env["AWS_ENDPOINT_URL"],
                         env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]))

    def attempt(i: int) -> bool:
        try:
            lake.create("batches/d/000000/manifest.json", f"writer {i}".encode())
            return True
        except AlreadyExists:
            return False

    with ThreadPoolExecutor(8) as pool:
        wins = list(pool.map(attempt, range(16)))
    assert wins.count(True) == 1
    assert lake.read("batches/d/000000/manifest.json") == f"writer {wins.index(True)}".encode()


@pytest.mark.e2e
def test_a_run_killed_at_any_moment_reruns_to_exactly_one_anchored_batch(file_env: dict[str, str], tmp_path: Path) -> None:
    file_env = file_env | {"ANCHORLAKE_LEASE_SECONDS": "3"}  # a killed commit's lease expires quickly
    cli(file_env, "up")
    cli(file_env, "contribute", "--dataset", "instructions", *SAMPLES)
    lake = Path(file_env["ANCHORLAKE_LAKE"][len("file://"):])
    # Kill the run at increasing delays, so it dies in different stages; then let it finish.
    for delay in (0.5, 1.5, 2.5, 3.5):
        proc = subprocess.Popen([ANCHORLAKE, "--quiet", "run", "--dataset", "instructions"], env=file_env, cwd=REPO,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        time.sleep(delay)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    cli(file_env, "run", "--dataset", "instructions")
    again = cli_json(file_env, "run", "--dataset", "instructions")
    assert again["committed"] == []
    status = cli_json(file_env, "status", "--dataset", "instructions")["batches"]
    assert [(b["seq"], b["anchored"], b["counts"]["input"]) for b in status] == [(0, True, 30)]
    assert not (lake / "batches/instructions/000001").exists()
    # Exactly one BatchAnchored event for the dataset; the anchor record matches the manifest.
    from eth_hash.auto import keccak

    from anchoring.chain import Chain

    deployment = json.loads((lake / "deployments/31337.json").read_text())
    chain = Chain(file_env["ANCHORLAKE_RPC_URL"])
    events = [e for e in chain.contract("BatchAnchor", deployment["BatchAnchor"]).events.BatchAnchored.get_logs(from_block=0)
              if e["args"]["datasetId"] == keccak(b"instructions")]
    assert len(events) == 1
    anchor = json.loads((lake / "batches/instructions/000000/anchor.json").read_text())
    assert anchor["root"] == status[0]["root"] and anchor["manifest_sha256"] == status[0]["manifest_sha256"]
    receipts = [str(p) for p in (lake / "receipts/instructions/000000").glob("receipts-*.jsonl.gz")]
    verified = cli_json(file_env, "verify", *receipts, *trust_args(file_env, lake.parent))
    assert verified["ok"] and len(verified["receipts"]) == 5


@pytest.mark.e2e
def test_the_embedded_devnet_keeps_its_chain_across_down_and_up(tmp_path: Path) -> None:
    env = base_env(tmp_path)
    env.pop("ANCHORLAKE_ANCHORER_KEY")
    try:
        first = cli_json(env, "up")["deployment"]
        cli(env, "contribute", "--dataset", "instructions", *SAMPLES)
        cli(env, "run", "--dataset", "instructions")
        cli(env, "down")
        second = cli_json(env, "up")["deployment"]
        assert second == first  # nothing redeployed: the chain state survived
        receipt = tmp_path / "r.json"
        cli(env, "receipt", "--dataset", "instructions", "--batch", "0", "--contributor",
            "0x2222222222222222222222222222222222222222", "-o", str(receipt))
        assert cli(env, "verify", str(receipt), *trust_args(env, tmp_path)).returncode == 0
    finally:
        cli(env, "down", check=False)
    record = json.loads((tmp_path / "home" / "devnet" / "devnet.json").read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(record["pid"], 0)


@pytest.mark.integration
def test_two_writers_committing_one_batch_leave_one_consistent_batch(tmp_path: Path) -> None:
    import hashlib
    import io

    import pyarrow.parquet as pq

    from pipeline.config import REPO_ROOT
    from pipeline.datasets import load
    from pipeline.ingest.commit import commit_batch
    from pipeline.ingest.stage import stage_sources
    from pipeline.lake import layout

    lake = open_lake((tmp_path / "lake").as_uri())
    dataset = load(REPO_ROOT / "expectations", "instructions")
    for path in SAMPLES:
        lake.write(f"incoming/instructions/{Path(path).name}", Path(path).read_bytes())
    seq = stage_sources(lake, dataset)
    with ThreadPoolExecutor(2) as pool:
        manifests = list(pool.map(lambda _: commit_batch(lake, dataset, seq, chunk_records=7), range(2)))
    assert manifests[0].sha256 == manifests[1].sha256
    for entry in manifests[0].data["files"] + manifests[0].data["artifacts"]:
        data = lake.read(layout.batch("instructions", 0) + entry["path"])
        assert hashlib.sha256(data).hexdigest() == entry["sha256"], entry["path"]
    rows = sum(pq.read_table(io.BytesIO(lake.read(layout.batch("instructions", 0) + f["path"]))).num_rows
               for f in manifests[0].data["files"])
    assert rows == manifests[0].tree_size == 25


@pytest.mark.integration
def test_a_live_lease_of_another_writer_holds_the_batch_and_an_expired_one_does_not(tmp_path: Path) -> None:
    import json as _json

    from pipeline.config import REPO_ROOT
    from pipeline.datasets import load
    from pipeline.ingest.commit import commit_batch
    from pipeline.ingest.stage import stage_sources
    from pipeline.lake.lease import LeaseBusy

    lake = open_lake((tmp_path / "lake").as_uri())
    dataset = load(REPO_ROOT / "expectations", "instructions")
    lake.write("incoming/instructions/a.jsonl", Path(SAMPLES[0]).read_bytes())
    seq = stage_sources(lake, dataset)
    lease = "state/instructions/000000/lease-00000000.json"
    lake.create(lease, _json.dumps({"format": "anchorlake.lease/1", "owner": "someone", "expires_at": time.time() + 60}).encode())
    with pytest.raises(LeaseBusy):
        commit_batch(lake, dataset, seq, lease_ttl=1)
    lake.write(lease, _json.dumps({"format": "anchorlake.lease/1", "owner": "someone", "expires_at": time.time() - 1}).encode())
    assert commit_batch(lake, dataset, seq, lease_ttl=30).data["counts"]["input"] == 14


@pytest.mark.e2e
def test_the_demo_runs_the_main_job_twice_and_leaves_nothing_running(tmp_path: Path) -> None:
    env = base_env(tmp_path)
    env.pop("ANCHORLAKE_ANCHORER_KEY")
    first = cli(env, "demo")
    assert "committed now" in first.stdout and "verified against the chain" in first.stdout.splitlines()[-1]
    second = cli(env, "demo")
    assert "committed earlier" in second.stdout and "verified against the chain" in second.stdout.splitlines()[-1]
    record = json.loads((tmp_path / "home" / "devnet" / "devnet.json").read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(record["pid"], 0)


@pytest.mark.parametrize("stall", ["commit.built", "batch.fenced"])
def test_a_writer_stalled_past_its_lease_never_changes_the_committed_batch(s3_env: dict[str, str], stall: str) -> None:
    """Writer A stalls past its lease, either after building its parts (commit.built) or between its
    fence check and its first create (batch.fenced: the request already on its way); writer B takes
    the lease over and commits under its own names. When A wakes up, it stops at its fence or
    creates only names of its own generation: every file of the batch is byte-identical."""
    from pipeline import config

    env = s3_env | {"ANCHORLAKE_LEASE_SECONDS": "2"}
    cli(env, "up")
    cli(env, "contribute", "--dataset", "instructions", *sorted(str(p) for p in (REPO / "samples" / "instructions").glob("*.jsonl")))
    settings = config.load(env)
    lake = open_lake(settings.lake_url, settings.s3)
    batch = "batches/instructions/000000/"
    stalled = subprocess.Popen([ANCHORLAKE, "run", "--dataset", "instructions"], cwd=REPO, text=True,
                               env=env | {"ANCHORLAKE_STALL": f"{stall}:20"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not lake.exists(layout.lease("instructions", 0, 0)):  # A holds the lease, then stalls
            assert stalled.poll() is None and time.monotonic() < deadline, stalled.communicate()
            time.sleep(0.2)
        cli(env, "run", "--dataset", "instructions")  # B: waits out A's lease, takes it over, commits
        manifest = json.loads(lake.read(batch + "manifest.json"))
        assert [f["path"] for f in manifest["files"]] == ["data/part-00000-g1.parquet"]  # B's own names
        assert "tree-g1.bin" in [a["path"] for a in manifest["artifacts"]]
        before = {o.key: lake.read(o.key) for o in lake.list(batch)}
        _, err = stalled.communicate(timeout=120)
        assert stalled.returncode == 3 and ("lease" in err or "is committed" in err), err
        after = {o.key: lake.read(o.key) for o in lake.list(batch)}
        assert {k: v for k, v in after.items() if k in before} == before
        assert all(layout.plain_name(k) == k for k in set(after) - set(before))  # only A's own names, if any
    finally:
        if stalled.poll() is None:
            stalled.kill()
    assert cli_json(env, "status", "--dataset", "instructions")["batches"][0]["anchored"] is True
