"""Benchmark: one batch through the Ray engine (SPEC §13.11), 1M and 10M records in the same run,
beside the local engine at 1M.

Generates the records (bench/ingest.py's generate(): 100 JSONL files, 10,000 contributors, 2%
invalid, 1% duplicates; 10M is about 3.3 GB), starts a Ray head with this machine's cores and
anvil on loopback (pipeline.devnet, as the tests do), then times, each on a fresh file:// lake with
its own contracts, `anchorlake --json run --dataset instructions` as the real CLI:
  local  1M  ANCHORLAKE_ENGINE=local (forked workers)
  ray    1M  ANCHORLAKE_ENGINE=ray, RAY_ADDRESS=the head
  ray   10M  the same, ten times the rows
and prints for each the wall time, rows/s, the per-stage seconds the CLI reports, the peak RSS of
the driver (the CLI's process, with its forked workers) and of the largest Ray worker process
(psutil, sampled every 0.2 s). The driver's peak at 10M against 1M says how flat it is.

    .venv/bin/python bench/ray.py [--small 1000000] [--large 10000000]
"""

from __future__ import annotations

import argparse
import json
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


class RayWorkers:
    """The peak RSS of any one Ray worker process (title `ray::…`) while it runs."""

    def __init__(self) -> None:
        self.peak = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> RayWorkers:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    def _sample(self) -> None:
        while not self._done.wait(0.2):
            for process in psutil.process_iter(["cmdline", "memory_info"]):
                line = process.info["cmdline"] or []
                if line and line[0].startswith("ray::") and process.info["memory_info"] is not None:
                    self.peak = max(self.peak, process.info["memory_info"].rss)


def measure(engine: str, data: Path, anvil: Anvil, head: RayHead) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"bench-ray-{engine}-") as name:
        tmp = Path(name)
        env = lake_env("file", tmp, anvil, None) | {"ANCHORLAKE_ENGINE": engine, "RAY_ADDRESS": head.address}
        cli(env, "up")
        cli(env, "contribute", "--dataset", "instructions", *map(str, sorted(data.glob("*.jsonl"))))
        with RayWorkers() as workers:
            result = watch([ANCHORLAKE, "--json", "run", "--dataset", "instructions"], env, tmp)
    if result["rc"] != 0:
        raise BenchError(f"anchorlake run ({engine}) exited {result['rc']}:\n{result['stderr'][-2000:]}")
    report = json.loads(result["stdout"])
    counts = report["committed"][0]["counts"]
    assert counts["accepted"] + counts["quarantined"] + counts["duplicate"] == counts["input"], counts
    return {"seconds": result["seconds"], "stages": report["seconds"], "counts": counts,
            "driver_mb": max(result["main_mb"], result["max_mb"]), "ray_worker_mb": workers.peak / MB}


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
                stages = " ".join(f"{s} {float(r['stages'].get(s, 0)):.1f}" for s in STAGES)
                print(f"  {engine:<5} {sizes[label]:>11,} records: {r['seconds']:7.1f} s, "
                      f"{sizes[label] / r['seconds']:9,.0f} records/s ({stages}) | peak RSS driver "
                      f"{r['driver_mb']:,.0f} MB, largest Ray worker {r['ray_worker_mb']:,.0f} MB", flush=True)
                rows.append((engine, label, r))
        finally:
            head.stop()
            stop(anvil)
        (_, _, local), (_, _, small), (_, _, large) = rows
        growth = sizes["large"] / sizes["small"]
        print(f"\nray {sizes['large']:,} / {sizes['small']:,} records: time x{large['seconds'] / small['seconds']:.1f} "
              f"for x{growth:.0f} the rows; driver peak x{large['driver_mb'] / small['driver_mb']:.1f}, largest Ray "
              f"worker x{large['ray_worker_mb'] / max(small['ray_worker_mb'], 1):.1f}; local at {sizes['small']:,}: "
              f"{local['seconds']:.1f} s (ray/local x{small['seconds'] / local['seconds']:.1f})")


if __name__ == "__main__":
    try:
        main()
    except BenchError as e:
        print(f"bench/ray.py: {e}", file=sys.stderr)
        sys.exit(1)
