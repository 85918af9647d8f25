"""Benchmark: writing every contributor's receipt for one committed batch, from tree.bin.

Commits one batch of N records (default 200,000 from 10,000 contributors; the generator of
bench/ingest.py) on a file:// lake, then times, medians of --runs:
  receipts   pipeline.receipts.build_receipts: parts and tree.bin checked against the manifest,
             every row's record and inclusion path, one JSON file per contributor, the index
  paths      the inclusion paths alone, served from the stored tree (tree.bin)
  baseline   the same paths from the tree rebuilt out of index.parquet's leaves (how receipts
             were built before tree.bin was read), measured in the same run

    .venv/bin/python bench/receipts.py [--records 200000] [--runs 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from ingest import generate  # noqa: E402

from pipeline.config import REPO_ROOT  # noqa: E402
from pipeline.core.merkle import build_levels, inclusion_path  # noqa: E402
from pipeline.datasets import load  # noqa: E402
from pipeline.ingest.commit import commit_batch  # noqa: E402
from pipeline.ingest.stage import stage_sources  # noqa: E402
from pipeline.lake import layout  # noqa: E402
from pipeline.lake.batch import BatchFiles  # noqa: E402
from pipeline.lake.storage import open_lake  # noqa: E402
from pipeline.receipts import build_receipts  # noqa: E402


def timed(fn: object, runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-receipts-") as tmp:
        lake = open_lake((Path(tmp) / "lake").as_uri())
        drop = Path(tmp) / "drop"
        drop.mkdir()
        generate(drop, args.records)
        for path in sorted(drop.iterdir()):
            lake.write_file(layout.incoming("instructions") + path.name, path)
        dataset = load(REPO_ROOT / "expectations", "instructions")
        manifest = commit_batch(lake, dataset, stage_sources(lake, dataset))
        files = BatchFiles(lake, "instructions", manifest.seq)
        print(f"batch of {manifest.tree_size:,} rows committed; medians of {args.runs} runs", flush=True)

        count = build_receipts(files, dataset)
        receipts = timed(lambda: build_receipts(BatchFiles(lake, "instructions", 0), dataset), args.runs)
        print(f"receipts  {count:,} contributors, {manifest.tree_size:,} rows: {receipts:.2f} s")

        indices = list(range(manifest.tree_size))
        def from_tree() -> None:
            prove = BatchFiles(lake, "instructions", 0).tree().prover()
            for i in indices:
                prove(i)

        stored = timed(from_tree, args.runs)

        def rebuilt() -> None:
            table = BatchFiles(lake, "instructions", 0).index(["record_id"])
            levels = build_levels([bytes.fromhex(h) for h in table.column("record_id").to_pylist()])
            for i in indices:
                inclusion_path(levels, i)

        baseline = timed(rebuilt, args.runs)
        print(f"paths     from tree.bin {stored:.2f} s; baseline, tree rebuilt from the index: {baseline:.2f} s "
              f"({baseline / stored:.1f}x)")


if __name__ == "__main__":
    main()
