"""The `ray` engine (SPEC §13.11) on a real Ray head (loopback, 2 CPUs), against SeaweedFS and
anvil: the same batch plan as the local engine, the same committed bytes when the salts are
pinned, and a Ray worker killed mid-batch costs nothing."""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import random
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest

from pipeline.devnet import Anvil, RayHead, SeaweedFS

from conftest import ANCHORLAKE, REPO, base_env, cli, cli_json

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("ray")]  # one Ray head, on one pytest worker
SEED = "a test-only seed"
# Reports of GX runs: they say when GX ran (and GX's own ids), so they differ from run to run.
GX_REPORTS = ("validation.json", "data-docs/")


@pytest.fixture(scope="module")
def drop(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """8 files of 2,500 records from 300 contributors: some invalid, some duplicated; the last
    one a compressed CSV."""
    folder, rng = tmp_path_factory.mktemp("drop"), random.Random(13)
    contributors = [f"0x{rng.getrandbits(160):040x}" for _ in range(300)]
    seen: list[str] = []
    for f in range(8):
        lines = []
        for n in range(2500):
            prompt = rng.choice(seen) if seen and rng.random() < 0.02 else f"file {f} record {n}: {rng.random()}"
            seen.append(prompt)
            record = {"prompt": prompt, "response": "an answer", "language": rng.choice(["en", "fr", "EN"]),
                      "consent": rng.random() > 0.01, "created_at": "2026-11-27T10:00:00Z",
                      "contributor": rng.choice(contributors)}
            lines.append(json.dumps(record) if rng.random() > 0.01 else "{not json")
        if f == 7:  # a compressed CSV source: a split task parses it whole, chunk tasks check its blocks
            (folder / f"part-{f}.csv.gz").write_bytes(gzip.compress(_csv(lines).encode(), mtime=0))
        else:
            (folder / f"part-{f}.jsonl").write_text("\n".join(lines) + "\n")
    return sorted(str(p) for p in folder.iterdir())


def _csv(lines: list[str]) -> str:
    """JSON lines as CSV rows under a header (a line that is not JSON stays as it is)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["prompt", "response", "language", "consent", "created_at", "contributor"])
    for line in lines:
        if not line.startswith("{\""):
            out.write(line + "\n")
            continue
        record = json.loads(line)
        writer.writerow([str(v).lower() if isinstance(v, bool) else v for v in record.values()])
    return out.getvalue()


def _env(tmp: Path, seaweed: SeaweedFS, anvil: Anvil, ray_head: RayHead, engine: str) -> dict[str, str]:
    bucket = "ray-" + uuid.uuid4().hex[:12]
    seaweed.create_bucket(bucket)
    return (base_env(tmp) | seaweed.env()
            | {"ANCHORLAKE_LAKE": f"s3://{bucket}/anchorlake", "ANCHORLAKE_RPC_URL": anvil.url,
               "ANCHORLAKE_ENGINE": engine, "RAY_ADDRESS": ray_head.address, "ANCHORLAKE_TEST_SALT_SEED": SEED})


def _committed(env: dict[str, str], drop: list[str], *prefix: str) -> dict:
    cli(env, "up", "--quiet")
    cli(env, "contribute", "--quiet", "--dataset", "instructions", *drop)
    proc = subprocess.run([*prefix, ANCHORLAKE, "--json", "--quiet", "run", "--dataset", "instructions"], env=env,
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert [c["seq"] for c in report["committed"]] == [0] and report["unfinished"] == []
    return dict(report["committed"][0])


def _batch_files(env: dict[str, str], seaweed: SeaweedFS) -> dict[str, bytes]:
    """Batch 0's manifest and every file it pins, but for the time and the GX reports (anchor and
    publication records name each run's own transactions)."""
    import boto3

    bucket, _, prefix = env["ANCHORLAKE_LAKE"].removeprefix("s3://").partition("/")
    s3 = boto3.client("s3", endpoint_url=seaweed.endpoint, aws_access_key_id=seaweed.admin.access_key,
                      aws_secret_access_key=seaweed.admin.secret_key, region_name="us-east-1")
    folder = f"{prefix}/batches/instructions/000000/"
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=folder)["Contents"]]
    files = {k.removeprefix(folder): s3.get_object(Bucket=bucket, Key=k)["Body"].read() for k in keys}
    manifest = json.loads(files["manifest.json"])
    del manifest["created_at"]
    manifest["artifacts"] = [a for a in manifest["artifacts"] if not a["path"].startswith(GX_REPORTS)]
    pinned = {entry["path"] for entry in manifest["files"] + manifest["artifacts"]}
    assert pinned <= set(files)
    return {name: files[name] for name in pinned} | {"manifest.json": json.dumps(manifest, sort_keys=True).encode()}


@pytest.fixture(scope="module")
def local_batch(tmp_path_factory: pytest.TempPathFactory, seaweed: SeaweedFS, anvil: Anvil, ray_head: RayHead,
                drop: list[str]) -> tuple[dict, dict[str, bytes]]:
    """The batch the local engine commits on one core: what every other engine must commit."""
    env = _env(tmp_path_factory.mktemp("local-1"), seaweed, anvil, ray_head, "local")
    batch = _committed(env, drop, "taskset", "-c", "0")
    return batch, _batch_files(env, seaweed)


@pytest.mark.parametrize("engine", ["local", "ray"])
def test_every_engine_commits_the_bytes_the_local_engine_commits_on_one_core(
        engine: str, local_batch: tuple[dict, dict[str, bytes]], seaweed: SeaweedFS, anvil: Anvil,
        ray_head: RayHead, drop: list[str], tmp_path: Path) -> None:
    env = _env(tmp_path, seaweed, anvil, ray_head, engine)
    batch = _committed(env, drop)  # local: one worker per core, here two
    expected, files = local_batch
    assert batch["counts"] == expected["counts"] and sum(batch["counts"].values()) == 2 * 20_000
    assert batch["root"] == expected["root"]
    written = _batch_files(env, seaweed)
    assert sorted(written) == sorted(files)
    assert [name for name in files if written[name] != files[name]] == []
    assert len([n for n in files if n.startswith("data/")]) >= 1 and "tree.bin" in files
    rewards = cli_json(env, "rewards", "--dataset", "instructions")
    assert sum(int(r["amount"]) for r in rewards["rows"]) == int(rewards["rewards"]["pool"])


def _kill_a_ray_task(stop: threading.Event, killed: list[str], tasks: tuple[str, ...]) -> None:
    """SIGKILL the first Ray worker seen running one of `tasks`."""
    while not stop.is_set() and not killed:
        for pid in os.listdir("/proc"):
            try:
                title = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
            except (OSError, ValueError):
                continue
            if title.startswith(tasks):
                os.kill(int(pid), signal.SIGKILL)
                killed.append(title)
                return
        time.sleep(0.01)


@pytest.mark.parametrize(("tasks", "stall"), [
    (("ray::run_chunk",), None),  # parsing, typing, hashing, checking, spilling
    (("ray::dedupe_slice",), "partition.dedupe:3"),  # held there long enough to be found and killed
    (("ray::write_partition",), "partition.write:3"),
], ids=["map", "dedupe", "partition"])
def test_a_ray_worker_killed_mid_batch_loses_and_duplicates_nothing(
        tasks: tuple[str, ...], stall: str | None, local_batch: tuple[dict, dict[str, bytes]], seaweed: SeaweedFS,
        anvil: Anvil, ray_head: RayHead, drop: list[str], tmp_path: Path) -> None:
    env = _env(tmp_path, seaweed, anvil, ray_head, "ray") | ({"ANCHORLAKE_STALL": stall} if stall else {})
    stop, killed = threading.Event(), list[str]()
    killer = threading.Thread(target=_kill_a_ray_task, args=(stop, killed, tasks), daemon=True)
    killer.start()
    try:
        batch = _committed(env, drop)
    finally:
        stop.set()
        killer.join()
    assert killed, "no Ray task was seen running"
    expected, files = local_batch
    assert (batch["counts"], batch["root"]) == (expected["counts"], expected["root"])
    assert _batch_files(env, seaweed) == files  # parts, tree.bin, index, quarantine, rewards, manifest
    status = cli_json(env, "status", "--dataset", "instructions")["batches"]
    assert [(b["seq"], b["anchored"], b["root"]) for b in status] == [(0, True, expected["root"])]
    again = cli_json(env, "run", "--dataset", "instructions")  # nothing new: nothing committed, nothing anchored twice
    assert again["committed"] == [] and again["unfinished"] == []
