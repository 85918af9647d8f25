"""Benchmark: `anchorlake.open_dataset` verified over one anchored batch, beside the unverified read.

Generates N records (default 1,000,000 from 10,000 contributors: bench/ingest.py's generate()),
starts anvil (pipeline.devnet, as the tests do), deploys the contracts and runs the batch through
`anchorlake run` on a file:// lake. Then, in fresh processes, medians of --runs:
  verified     open_dataset(name, lake, rpc, contract).to_table() with an empty cache: every part
               read and hashed, every leaf and the root recomputed (one worker per core), the
               manifest checked against BatchAnchor, the parts copied into the cache, then read
  cached       the same call again on that cache: the copies re-hashed, the manifest re-checked
               on chain, nothing downloaded or recomputed
  unverified   open_dataset(..., verify=False).to_table() with an empty cache (copies only)
  read floor   pyarrow.dataset over the lake's own Parquet parts, .to_table(): no check at all

    .venv/bin/python bench/open_dataset.py [--records 1000000] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from ingest import generate  # noqa: E402
from run import BenchError, cli, lake_env, services  # noqa: E402

MODES = ("verified", "cached", "unverified", "floor")


def child(mode: str, lake: str, rpc: str, contract: str, cache: str) -> None:
    import pyarrow.dataset as pads
    import web3  # noqa: F401  about 1 s to import (anchoring.chain imports it on first use): once per process

    import anchorlake

    start = time.perf_counter()
    if mode == "floor":
        parts = sorted(Path(lake.removeprefix("file://")).glob("batches/instructions/*/data/*.parquet"))
        table = pads.dataset([str(p) for p in parts], format="parquet").to_table()
    else:
        table = anchorlake.open_dataset("instructions", lake=lake, rpc=rpc, contract=contract,
                                        verify=mode != "unverified", cache=cache).to_table()
    print(json.dumps({"seconds": time.perf_counter() - start, "rows": table.num_rows}))


def measure(mode: str, env: dict[str, str], contract: str, cache: Path) -> dict:
    proc = subprocess.run([sys.executable, "-W", "ignore", __file__, "--child", mode, "--lake", env["ANCHORLAKE_LAKE"],
                           "--rpc", env["ANCHORLAKE_RPC_URL"], "--contract", contract, "--cache", str(cache)],
                          capture_output=True, text=True, env=env, cwd=REPO)
    if proc.returncode != 0:
        raise BenchError(f"{mode} failed:\n{proc.stderr[-2000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def bench(records: int, runs: int, work: Path) -> None:
    with services(work, s3=False) as (anvil, _):
        env = lake_env("file", work, anvil, None)
        cli(env, "up", "-o", str(work / "deployment.json"))
        contract = json.loads((work / "deployment.json").read_text())["BatchAnchor"]
        drop = work / "drop"
        drop.mkdir()
        generate(drop, records)
        cli(env, "contribute", "--dataset", "instructions", *sorted(str(p) for p in drop.iterdir()))
        cli(env, "run", "--dataset", "instructions")
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        print(f"{records:,} records committed and anchored; {cores} cores; medians of {runs} runs", flush=True)
        times: dict[str, list[float]] = {mode: [] for mode in MODES}
        rows = set()
        for run in range(runs):
            cache = work / f"cache-{run}"
            for mode in MODES:
                result = measure(mode, env, contract, cache if mode != "unverified" else work / f"plain-{run}")
                times[mode].append(result["seconds"])
                rows.add(result["rows"])
            print(f"run {run + 1}: " + ", ".join(f"{m} {times[m][-1]:.2f} s" for m in MODES)
                  + f" (load average {os.getloadavg()[0]:.1f})", flush=True)
        if len(rows) != 1:
            raise BenchError(f"the modes read different row counts: {sorted(rows)}")
        verified, cached, unverified, floor = (statistics.median(times[m]) for m in MODES)
        n = rows.pop()
        print(f"open_dataset verified, empty cache: {verified:.2f} s ({n / verified:,.0f} rows/s), "
              f"{verified / floor:.1f}x the read floor")
        print(f"open_dataset verified, cached:      {cached:.2f} s, {cached / floor:.1f}x the read floor")
        print(f"open_dataset unverified:            {unverified:.2f} s, {unverified / floor:.1f}x the read floor")
        print(f"read floor (pyarrow.dataset over the lake's parts): {floor:.2f} s for {n:,} rows")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--child", choices=MODES)
    for flag in ("--lake", "--rpc", "--contract", "--cache"):
        parser.add_argument(flag)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.lake, args.rpc, args.contract, args.cache)
        return
    try:
        with tempfile.TemporaryDirectory(prefix="bench-open-") as tmp:
            bench(args.records, args.runs, Path(tmp))
    except BenchError as e:
        sys.exit(f"bench/open_dataset.py: {e}")


if __name__ == "__main__":
    main()
