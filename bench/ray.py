"""Benchmark: one batch through the Ray engine (SPEC §13.11), 1M and 10M records in the same run,
beside the local engine at 1M.

Generates the records (bench/ingest.py's generate(): 100 JSONL files, 10,000 contributors, 2%
invalid, 1% duplicates; 10M is about 3.3 GB), starts a Ray head with this machine's cores and
anvil on loopback (pipeline.devnet, as the tests do), then times, each on a fresh file:// lake with
its own contracts, the real CLI: the batch is staged, `anchorlake --json commit` is timed and its
memory sampled on its own, then `anchorlake --json run` does the stages after it:
  local  1M  ANCHORLAKE_ENGINE=local (forked workers)
  ray    1M  ANCHORLAKE_ENGINE=ray, RAY_ADDRESS=the head
  ray   10M  the same, ten times the rows
and prints for each the wall time, the commit's time and rows/s, the later stages' seconds, and
the commit's peak memory of the driver (the CLI's process and the workers it forks) and of the largest Ray worker
process: RSS, and USS (psutil, sampled every 0.5 s), since RSS counts the pages of Ray's shared
object store a process touched. The driver's peak at 10M against 1M says how flat it is.

    .venv/bin/python bench/ray.py [--small 1000000] [--large 10000000]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from ingest import generate  # noqa: E402
from run import ANCHORLAKE, MB, STAGES, BenchError, cli, lake_env, stop, watch  # noqa: E402

from pipeline import config  # noqa: E402
from pipeline.devnet import Anvil, RayHead  # noqa: E402
from pipeline.errors import ServiceUnavailable  # noqa: E402


class Peaks:
    """Peak memory, sampled every 0.5 s while a run goes on, of any one Ray worker process (title
    `ray::…`) and of the driver (the `anchorlake` process or a worker it forked): RSS, and USS, the
    memory a process alone holds. RSS counts pages of Ray's shared object store a process has
    touched, so for Ray's processes it overstates what each one costs."""

    def __init__(self) -> None:
        self.peaks = {"ray_rss": 0, "ray_uss": 0, "driver_uss": 0}
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> Peaks:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    def _sample(self) -> None:
        while not self._done.wait(0.5):
            for process in psutil.process_iter(["cmdline"]):
                line = process.info["cmdline"] or []
                ray = bool(line) and line[0].startswith("ray::")
                if not ray and not any(arg.endswith("/anchorlake") for arg in line[:2]):
                    continue
                with contextlib.suppress(psutil.Error):
                    memory = process.memory_full_info()
                    if ray:
                        self.peaks["ray_rss"] = max(self.peaks["ray_rss"], memory.rss)
                        self.peaks["ray_uss"] = max(self.peaks["ray_uss"], memory.uss)
                    else:
                        self.peaks["driver_uss"] = max(self.peaks["driver_uss"], memory.uss)


STAGE = ("from pipeline import config, stages; from pipeline.ingest.stage import stage_sources; s = config.load(); "
         "print(stage_sources(stages.lake_for(s), stages.dataset_for(s, 'instructions')))")


def measure(engine: str, data: Path, anvil: Anvil, head: RayHead) -> dict:
    """The batch staged (not timed), then `anchorlake commit` timed and sampled on its own (the
    partition work: its peaks say what the driver and the tasks hold), then `anchorlake run` for
    the stages after it (anchor, rewards, receipts)."""
    with tempfile.TemporaryDirectory(prefix=f"bench-ray-{engine}-") as name:
        tmp = Path(name)
        env = lake_env("file", tmp, anvil, None) | {"ANCHORLAKE_ENGINE": engine, "RAY_ADDRESS": head.address}
        cli(env, "up")
        cli(env, "contribute", "--dataset", "instructions", *map(str, sorted(data.glob("*.jsonl"))))
        staged = subprocess.run([sys.executable, "-c", STAGE], env=env, cwd=REPO, capture_output=True, text=True)
        if staged.returncode != 0 or staged.stdout.strip() != "0":
            raise BenchError(f"staging failed: {staged.stdout}{staged.stderr[-2000:]}")
        with Peaks() as peaks:
            commit = watch([ANCHORLAKE, "--json", "commit", "--dataset", "instructions", "--batch", "0"], env, tmp)
        rest = watch([ANCHORLAKE, "--json", "run", "--dataset", "instructions"], env, tmp)
    for what, result in (("commit", commit), ("run", rest)):
        if result["rc"] != 0:
            raise BenchError(f"anchorlake {what} ({engine}) exited {result['rc']}:\n{result['stderr'][-2000:]}")
    counts = json.loads(commit["stdout"])["counts"]
    assert counts["accepted"] + counts["quarantined"] + counts["duplicate"] == counts["input"], counts
    return {"seconds": commit["seconds"] + rest["seconds"], "commit": commit["seconds"],
            "stages": json.loads(rest["stdout"])["seconds"], "counts": counts,
            "driver_mb": max(commit["main_mb"], commit["max_mb"])} | {k + "_mb": v / MB for k, v in peaks.peaks.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--small", type=int, default=1_000_000)
    parser.add_argument("--large", type=int, default=10_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-ray-") as name:
        work = Path(name)
        sizes = {"small": args.small, "large": args.large}
        for label, records in sizes.items():
            (work / label).mkdir()
            started = time.perf_counter()
            generate(work / label, records, seed=1 if label == "small" else 2)
            print(f"generated {records:,} records in {time.perf_counter() - started:.0f} s", flush=True)
        head, anvil = RayHead(work / "ray", cpus=config.cores()), Anvil(work / "anvil")
        try:
            try:
                head.start()
                anvil.start()
            except ServiceUnavailable as e:
                raise BenchError(f"cannot start the services: {e}") from None
            cases = [("local", "small"), ("ray", "small"), ("ray", "large")]
            print(f"Ray head {head.address} with {config.cores()} CPUs; anvil {anvil.url}", flush=True)
            rows = []
            for engine, label in cases:
                r = measure(engine, work / label, anvil, head)
                stages = " ".join(f"{s} {float(r['stages'].get(s, 0)):.1f}" for s in STAGES if s not in ("stage", "commit"))
                print(f"  {engine:<5} {sizes[label]:>11,} records: {r['seconds']:7.1f} s, commit {r['commit']:.1f} s "
                      f"({sizes[label] / r['commit']:,.0f} records/s), then {stages} | commit's peak driver RSS "
                      f"{r['driver_mb']:,.0f} MB, USS {r['driver_uss_mb']:,.0f} MB; largest Ray worker RSS "
                      f"{r['ray_rss_mb']:,.0f} MB, USS {r['ray_uss_mb']:,.0f} MB", flush=True)
                rows.append((engine, label, r))
        finally:
            head.stop()
            stop(anvil)
        (_, _, local), (_, _, small), (_, _, large) = rows
        growth = sizes["large"] / sizes["small"]
        print(f"\nray {sizes['large']:,} / {sizes['small']:,} records: commit time x{large['commit'] / small['commit']:.1f} "
              f"for x{growth:.0f} the rows; commit's driver peak USS x{large['driver_uss_mb'] / small['driver_uss_mb']:.1f}, "
              f"largest Ray worker USS x{large['ray_uss_mb'] / max(small['ray_uss_mb'], 1):.1f}; local at {sizes['small']:,}: "
              f"commit {local['commit']:.1f} s, all {local['seconds']:.1f} s (ray/local commit "
              f"x{small['commit'] / local['commit']:.1f})")


if __name__ == "__main__":
    try:
        main()
    except BenchError as e:
        print(f"bench/ray.py: {e}", file=sys.stderr)
        sys.exit(1)
