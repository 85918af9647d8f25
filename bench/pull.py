"""Benchmark: a verified pull of one committed batch, beside its floors.

Commits one batch of N records (default 1,000,000 from 10,000 contributors; the generator of
bench/ingest.py) on a file:// lake, then times in fresh processes, medians of --runs:
  pull        pipeline.pull.pull_batch: every data part read and checked against the manifest's
              SHA-256, every row's leaf and the root recomputed (one worker per core) and compared
              with the manifest's, the manifest with the root the commit returned (the trusted root:
              no chain here, so no RPC), then the parts and manifest written to a fresh folder
  pull, one process   the same with one worker (the single-process path)
  read floor  pyarrow reading the same Parquet files, nothing else (pq.read_table of each part)
  hash floor  what the checks must hash, at the speed of OpenSSL's own loop, one core:
              the parts' bytes (hashlib.sha256 over them, read beforehand), plus the tree: one
              SHA-256 per leaf (0x00 + its JSON, at their mean size) and one per inner node
              (65 bytes), each priced by `openssl speed -bytes B sha256` run here
and prints the ratio pull / (read floor + hash floor). Targets: <= 3x, and <= 5 s for 1M rows.

    .venv/bin/python bench/pull.py [--records 1000000] [--runs 3]
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

MODES = ("pull", "pull1", "read", "hash")


def commit(lake_dir: Path, records: int) -> dict:
    from pipeline.datasets import load
    from pipeline.ingest.commit import commit_batch
    from pipeline.ingest.stage import stage_sources
    from pipeline.lake import layout
    from pipeline.lake.storage import open_lake

    lake = open_lake(lake_dir.as_uri())
    with tempfile.TemporaryDirectory(prefix="bench-pull-drop-") as drop:
        generate(Path(drop), records)
        for path in sorted(Path(drop).iterdir()):
            lake.write_file(layout.incoming("instructions") + path.name, path)
    dataset = load(REPO / "expectations", "instructions")
    manifest = commit_batch(lake, dataset, stage_sources(lake, dataset))  # type: ignore[arg-type]
    return {"root": manifest.root, "rows": manifest.tree_size, "parts": len(manifest.data["files"]),
            "bytes": sum(f["bytes"] for f in manifest.data["files"])}


def parts(lake_dir: Path) -> list[Path]:
    return sorted((lake_dir / "batches" / "instructions" / "000000" / "data").glob("*.parquet"))


def leaf_bytes(lake_dir: Path) -> int:
    """How many bytes the leaf hashes of the batch take in: 0x00 + the JSON of each row."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from pipeline.datasets import load
    from pipeline.lake.columnar import leaf_texts

    columns = load(REPO / "expectations", "instructions").committed_columns
    return sum(pc.sum(pc.binary_length(leaf_texts(pq.read_table(path), columns))).as_py() for path in parts(lake_dir))


def openssl_seconds(size: int) -> float:
    """Seconds one SHA-256 of a `size`-byte message takes in `openssl speed` (OpenSSL's own loop,
    no Python between calls). It reports its counts on stderr."""
    out = subprocess.run(["openssl", "speed", "-mr", "-seconds", "1", "-bytes", str(size), "sha256"],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=True).stdout
    count, _, seconds = next(line for line in out.splitlines() if line.startswith("+R:"))[3:].split(":")
    return float(seconds) / int(count)


def run_pull(lake_dir: Path, root: str, workers: int | None) -> float:
    import numpy  # noqa: F401  imported before the clock, as for the floor
    import orjson  # noqa: F401
    import pyarrow.compute  # noqa: F401
    import pyarrow.dataset  # noqa: F401
    import pyarrow.parquet  # noqa: F401

    from pipeline.datasets import load
    from pipeline.errors import CheckFailed
    from pipeline.lake.batch import BatchFiles
    from pipeline.lake.storage import open_lake
    from pipeline.pull import Destination, pull_batch

    if workers is not None:  # the pool takes one worker per core config.cores() gives
        from pipeline import config

        config.cores = lambda: workers
    dataset = load(REPO / "expectations", "instructions")

    def trusted(manifest: object) -> None:
        if manifest.root != root:  # type: ignore[attr-defined]
            raise CheckFailed(f"the manifest's root is not the trusted root {root}")

    with tempfile.TemporaryDirectory(prefix="bench-pull-dest-") as dest:
        start = time.perf_counter()
        files = BatchFiles(open_lake(lake_dir.as_uri()), "instructions", 0)
        pull_batch(files, dataset, Destination(Path(dest), "instructions"), trusted)
        return time.perf_counter() - start


def run_read(lake_dir: Path) -> float:
    import pyarrow.dataset  # noqa: F401  what pq.read_table imports on first use, before the clock
    import pyarrow.parquet as pq

    start = time.perf_counter()
    for path in parts(lake_dir):
        pq.read_table(path)
    return time.perf_counter() - start


def run_hash(lake_dir: Path) -> float:
    import hashlib

    data = [path.read_bytes() for path in parts(lake_dir)]
    start = time.perf_counter()
    for blob in data:
        hashlib.sha256(blob).digest()
    return time.perf_counter() - start


def child(mode: str, lake_dir: Path, root: str) -> None:
    seconds = {"pull": lambda: run_pull(lake_dir, root, None), "pull1": lambda: run_pull(lake_dir, root, 1),
               "read": lambda: run_read(lake_dir), "hash": lambda: run_hash(lake_dir)}[mode]()
    print(json.dumps({"seconds": seconds}))


def measure(mode: str, lake_dir: Path, root: str) -> tuple[float, float]:
    """(wall seconds of the timed work, CPU seconds of the whole child and its workers)."""
    before = os.times()
    proc = subprocess.run([sys.executable, __file__, "--child", mode, "--lake", str(lake_dir), "--root", root],
                          capture_output=True, text=True, check=True)
    after = os.times()
    cpu = after.children_user + after.children_system - before.children_user - before.children_system
    return float(json.loads(proc.stdout.strip().splitlines()[-1])["seconds"]), cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--child", choices=MODES)
    parser.add_argument("--lake")
    parser.add_argument("--root")
    args = parser.parse_args()
    if args.child:
        child(args.child, Path(args.lake), args.root)
        return
    with tempfile.TemporaryDirectory(prefix="bench-pull-") as tmp:
        lake_dir = Path(tmp) / "lake"
        batch = commit(lake_dir, args.records)
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        print(f"batch of {batch['rows']:,} rows in {batch['parts']} parts, {batch['bytes'] / 1e6:.0f} MB of Parquet; "
              f"{cores} cores, load average {os.getloadavg()[0]:.1f}; medians of {args.runs} runs", flush=True)
        leaf_size = leaf_bytes(lake_dir) / batch["rows"]
        tree = (batch["rows"] * openssl_seconds(round(leaf_size)) + (batch["rows"] - 1) * openssl_seconds(65))
        times: dict[str, list[float]] = {mode: [] for mode in MODES}
        cpu: dict[str, list[float]] = {mode: [] for mode in MODES}
        for run in range(args.runs):
            for mode in MODES:
                wall, used = measure(mode, lake_dir, batch["root"])
                times[mode].append(wall)
                cpu[mode].append(used)
            print(f"run {run + 1}: " + ", ".join(f"{mode} {times[mode][-1]:.2f} s" for mode in MODES)
                  + f" (load average {os.getloadavg()[0]:.1f})", flush=True)
        pull, one, read, hashed = (statistics.median(times[mode]) for mode in MODES)
        print(f"verified pull (copy + verify, {cores} workers): {pull:.2f} s ({batch['rows'] / pull:,.0f} rows/s; "
              f"processes' CPU {statistics.median(cpu['pull']):.2f} s, imports included)")
        print(f"verified pull, one process:  {one:.2f} s ({batch['rows'] / one:,.0f} rows/s; "
              f"CPU {statistics.median(cpu['pull1']):.2f} s, imports included)")
        print(f"read floor (pq.read_table of each part): {read:.2f} s")
        print(f"hash floor: {hashed + tree:.3f} s = the parts' {batch['bytes'] / 1e6:.0f} MB (hashlib.sha256): {hashed:.3f} s "
              f"+ the tree (openssl speed: {batch['rows']:,} leaves of {leaf_size:.0f} B mean and "
              f"{batch['rows'] - 1:,} nodes of 65 B): {tree:.3f} s")
        print(f"ratio pull / (read floor + parts' hash): {pull / (read + hashed):.1f}x (the tree not counted)")
        print(f"ratio pull / (read floor + hash floor): {pull / (read + hashed + tree):.1f}x   "
              "targets: <= 3x, <= 5 s for 1M rows")


if __name__ == "__main__":
    main()
