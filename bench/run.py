"""Benchmark: `anchorlake run --dataset instructions` end to end, as the real CLI, beside the floor.

Generates N records (default 1,000,000 in 100 JSONL files, from 10,000 contributors, 2% invalid,
1% duplicates: bench/ingest.py's generate()), starts anvil and, for s3, SeaweedFS on loopback
(pipeline.devnet, as the tests do), then in each of --runs rounds times, in fresh processes:
  floor   pyarrow reading the same JSONL files and writing Parquet (bench/ingest.py's run_floor)
  file    `anchorlake --json run --dataset instructions` on a fresh file:// lake
  s3      the same on a fresh SeaweedFS bucket
Each lake gets its own contracts (`anchorlake up`) and the files dropped into incoming/instructions/
(`anchorlake contribute`) before the clock starts. Per run it prints the wall time, the per-stage
seconds the CLI reports, and the peak RSS of the anchorlake main process and of its largest forked
worker (psutil, sampled every 0.1 s; "max" is the kernel's exact peak of any one process in the
tree, from wait4). Then per store: medians, ratio to the floor (target <= 5x), peak RSS (target
<= 1.5 GB) and the counts, asserting accepted + quarantined + duplicate == input.

    .venv/bin/python bench/run.py [--records 1000000] [--runs 3] [--store file|s3|both]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from ingest import FILES, generate, run_floor  # noqa: E402

from pipeline.config import DEVNET_KEYS, key_variable  # noqa: E402
from pipeline.devnet import Anvil, SeaweedFS  # noqa: E402
from pipeline.errors import ServiceUnavailable  # noqa: E402

ANCHORLAKE = str(REPO / ".venv" / "bin" / "anchorlake")
STAGES = ("stage", "commit", "anchor", "rewards", "receipts", "table")
MB = 1024 * 1024


class BenchError(Exception):
    """A failure to report in one message, without a traceback."""


def floor_child(data: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-floor-") as tmp:
        start = time.perf_counter()
        run_floor(data, Path(tmp))
        seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "peak_mb": peak}))


def measure_floor(data: Path) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--floor", str(data)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise BenchError(f"the floor failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def stop(service: Anvil | SeaweedFS) -> None:
    """Stop a service and anything left in its process group (each runs in its own session)."""
    pgid = service.process.pid if service.process else None
    service.stop()
    if pgid is not None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)


@contextlib.contextmanager
def services(workdir: Path, s3: bool) -> Iterator[tuple[Anvil, SeaweedFS | None]]:
    started: list[Anvil | SeaweedFS] = []
    try:
        try:
            anvil = Anvil(workdir=workdir / "anvil")
            started.append(anvil)
            anvil.start()
            seaweed = SeaweedFS(workdir=workdir / "seaweedfs") if s3 else None
            if seaweed is not None:
                started.append(seaweed)
                seaweed.start()
        except ServiceUnavailable as e:
            raise BenchError(f"cannot start the services: {e}") from None
        yield anvil, seaweed
    finally:
        for service in reversed(started):
            stop(service)


def lake_env(store: str, tmp: Path, anvil: Anvil, seaweed: SeaweedFS | None) -> dict[str, str]:
    """The environment of one run: a fresh lake, a fresh ANCHORLAKE_HOME, the devnet's role keys."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANCHORLAKE_", "AWS_"))}
    env |= {key_variable(role): key for role, key in DEVNET_KEYS.items()}
    env |= {"ANCHORLAKE_HOME": str(tmp / "home"), "ANCHORLAKE_RPC_URL": anvil.url}
    if store == "file":
        return env | {"ANCHORLAKE_LAKE": (tmp / "lake").as_uri()}
    assert seaweed is not None
    bucket = "bench-" + uuid.uuid4().hex[:12]
    seaweed.create_bucket(bucket)
    return env | seaweed.env() | {"ANCHORLAKE_LAKE": f"s3://{bucket}/anchorlake"}


def cli(env: dict[str, str], *args: str) -> None:
    proc = subprocess.run([ANCHORLAKE, "--quiet", *args], env=env, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BenchError(f"anchorlake {args[0]} exited {proc.returncode}:\n{proc.stderr[-2000:]}")


def watch(args: list[str], env: dict[str, str], tmp: Path) -> dict:
    """Run the CLI; its wall time, exit status, output and peak RSS (main, largest worker, any one)."""
    peaks = {"main": 0, "child": 0}
    done = threading.Event()

    def sample(pid: int) -> None:
        with contextlib.suppress(psutil.NoSuchProcess):
            main = psutil.Process(pid)
            while not done.wait(0.1):
                peaks["main"] = max(peaks["main"], main.memory_info().rss)
                for child in main.children(recursive=True):
                    with contextlib.suppress(psutil.NoSuchProcess):
                        peaks["child"] = max(peaks["child"], child.memory_info().rss)

    with open(tmp / "stdout", "wb") as out, open(tmp / "stderr", "wb") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(args, env=env, cwd=REPO, stdout=out, stderr=err, start_new_session=True)
        sampler = threading.Thread(target=sample, args=(proc.pid,), daemon=True)
        sampler.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
        finally:
            done.set()
        seconds = time.perf_counter() - start
    sampler.join()
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4; tell Popen
    return {"seconds": seconds, "rc": proc.returncode, "stdout": (tmp / "stdout").read_text(),
            "stderr": (tmp / "stderr").read_text(errors="replace"), "main_mb": peaks["main"] / MB,
            "child_mb": peaks["child"] / MB, "max_mb": usage.ru_maxrss / 1024}


def measure_run(store: str, data: Path, anvil: Anvil, seaweed: SeaweedFS | None) -> dict:
    """One `anchorlake run` on a fresh lake with contracts of its own; the drop is not timed."""
    with tempfile.TemporaryDirectory(prefix=f"bench-run-{store}-") as name:
        tmp = Path(name)
        env = lake_env(store, tmp, anvil, seaweed)
        cli(env, "up")
        cli(env, "contribute", "--dataset", "instructions", *map(str, sorted(data.glob("*.jsonl"))))
        result = watch([ANCHORLAKE, "--json", "run", "--dataset", "instructions"], env, tmp)
    if result["rc"] != 0:
        raise BenchError(f"anchorlake run on {store} exited {result['rc']}:\n{result['stderr'][-2000:]}")
    report = json.loads(result["stdout"])
    if len(report["committed"]) != 1:
        raise BenchError(f"anchorlake run on {store} committed {len(report['committed'])} batches, not 1")
    stages = {name: float(report["seconds"].get(name, 0.0)) for name in STAGES}
    keep = ("seconds", "main_mb", "child_mb", "max_mb")
    return {k: result[k] for k in keep} | {"stages": stages, "counts": report["committed"][0]["counts"]}


def describe(store: str, r: dict, floor: float) -> str:
    stages = " ".join(f"{name} {r['stages'][name]:.1f}" for name in STAGES)
    other = r["seconds"] - sum(r["stages"].values())
    return (f"  {store:<5} {r['seconds']:7.2f} s ({r['seconds'] / floor:4.1f}x floor)  {stages}  other {other:.1f}  "
            f"| peak RSS main {r['main_mb']:.0f} MB, largest worker {r['child_mb']:.0f} MB, max {r['max_mb']:.0f} MB")


def check_counts(store: str, results: list[dict], records: int) -> dict:
    counts = results[0]["counts"]
    if any(r["counts"] != counts for r in results):
        raise BenchError(f"{store}: the counts differ between runs: {[r['counts'] for r in results]}")
    assert counts["accepted"] + counts["quarantined"] + counts["duplicate"] == counts["input"], counts
    assert counts["input"] == records, (counts, records)
    return counts


def summary(results: dict[str, list[dict]], floors: list[dict], records: int) -> None:
    floor = statistics.median(f["seconds"] for f in floors)
    print(f"\nmedians of {len(floors)} run(s); floor (pyarrow JSONL -> Parquet) {floor:.2f} s, "
          f"peak {max(f['peak_mb'] for f in floors):.0f} MB")
    print(f"{'store':<6}{'total s':>9}{'ratio':>7}" + "".join(f"{s:>9}" for s in (*STAGES, "other"))
          + f"{'main MB':>9}{'worker MB':>10}{'max MB':>8}")
    for store, runs in results.items():
        total = statistics.median(r["seconds"] for r in runs)
        stages = [statistics.median(r["stages"][s] for r in runs) for s in STAGES]
        other = statistics.median(r["seconds"] - sum(r["stages"].values()) for r in runs)
        peaks = [max(r[k] for r in runs) for k in ("main_mb", "child_mb", "max_mb")]
        print(f"{store:<6}{total:9.2f}{total / floor:6.1f}x" + "".join(f"{s:9.2f}" for s in (*stages, other))
              + f"{peaks[0]:9.0f}{peaks[1]:10.0f}{peaks[2]:8.0f}")
    print("targets: ratio <= 5x, peak RSS <= 1.5 GB (1536 MB)")
    for store, runs in results.items():
        c = check_counts(store, runs, records)
        print(f"{store:<6}counts: {c['input']:,} input = {c['accepted']:,} accepted + {c['quarantined']:,} quarantined"
              f" + {c['duplicate']:,} duplicate")


def bench(args: argparse.Namespace, data: Path, work: Path) -> None:
    if not Path(ANCHORLAKE).exists():
        raise BenchError(f"{ANCHORLAKE} is missing: run `make setup` first")
    records = generate(data, args.records)
    size = sum(p.stat().st_size for p in data.glob("*.jsonl"))
    print(f"input: {records:,} records in {FILES} files, {size / 1e6:.0f} MB; stores: {', '.join(args.stores)}",
          flush=True)
    floors: list[dict] = []
    results: dict[str, list[dict]] = {store: [] for store in args.stores}
    with services(work, "s3" in args.stores) as (anvil, seaweed):
        print(f"anvil {anvil.url}" + (f", SeaweedFS {seaweed.endpoint}" if seaweed else ""), flush=True)
        for run in range(args.runs):
            floors.append(measure_floor(data))
            print(f"run {run + 1}: floor {floors[-1]['seconds']:.2f} s", flush=True)
            for store in args.stores:
                results[store].append(measure_run(store, data, anvil, seaweed))
                print(describe(store, results[store][-1], floors[-1]["seconds"]), flush=True)
    summary(results, floors, records)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--store", choices=("file", "s3", "both"), default="both")
    parser.add_argument("--floor", help=argparse.SUPPRESS)  # child mode: time the floor on this directory
    args = parser.parse_args()
    if args.floor:
        floor_child(Path(args.floor))
        return
    if args.records < FILES or args.runs < 1:
        parser.error(f"--records must be at least {FILES} and --runs at least 1")
    args.stores = ["file", "s3"] if args.store == "both" else [args.store]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("bench/run.py: terminated; the services it started are stopped"))
    try:
        with tempfile.TemporaryDirectory(prefix="bench-run-") as tmp:
            (Path(tmp) / "data").mkdir()
            bench(args, Path(tmp) / "data", Path(tmp))
    except BenchError as e:
        sys.exit(f"bench/run.py: {e}")
    except KeyboardInterrupt:
        sys.exit("bench/run.py: interrupted; the services it started are stopped")


if __name__ == "__main__":
    main()
