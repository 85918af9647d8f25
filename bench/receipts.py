"""Benchmark: every contributor's receipt (anchorlake.receipt/2, SPEC §13.4) for one committed batch.

Commits one batch of N records (default 1,000,000 from 10,000 contributors; the generator of
bench/ingest.py) on a file:// lake, then prints medians of --runs:
  receipts  pipeline.receipts.build_receipts: parts and tree.bin checked against the manifest,
            one range proof per contributor, the receipts JSON Lines file, its offsets, the index
  floor     pyarrow reading the same data parts, nothing else (measured in the same run)
and the receipts' bytes beside the budget: the accepted rows as JSON plus 2 KB per contributor.

    .venv/bin/python bench/receipts.py [--records 1000000] [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from ingest import generate  # noqa: E402

from pipeline.config import REPO_ROOT  # noqa: E402
from pipeline.datasets import load  # noqa: E402
from pipeline.ingest.commit import commit_batch  # noqa: E402
from pipeline.ingest.stage import stage_sources  # noqa: E402
from pipeline.lake import layout  # noqa: E402
from pipeline.lake.batch import BatchFiles  # noqa: E402
from pipeline.lake.storage import open_lake  # noqa: E402
from pipeline.receipts import build_receipts, json_records  # noqa: E402


def timed(fn: Callable[[], object], runs: int, before: Callable[[], object] = lambda: None) -> float:
    times = []
    for _ in range(runs):
        before()  # not timed
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-receipts-") as tmp:
        root = Path(tmp) / "lake"
        lake = open_lake(root.as_uri())
        drop = Path(tmp) / "drop"
        drop.mkdir()
        generate(drop, args.records)
        for path in sorted(drop.iterdir()):
            lake.write_file(layout.incoming("instructions") + path.name, path)
        dataset = load(REPO_ROOT / "expectations", "instructions")
        manifest = commit_batch(lake, dataset, stage_sources(lake, dataset))  # type: ignore[arg-type]
        files = BatchFiles(lake, "instructions", manifest.seq)
        parts = [root / layout.batch("instructions", manifest.seq) / entry["path"] for entry in manifest.data["files"]]
        print(f"batch of {manifest.tree_size:,} rows committed; medians of {args.runs} runs", flush=True)

        def fresh() -> None:  # each run writes the receipts of a batch that has none, as `run` does
            shutil.rmtree(root / layout.receipts("instructions", 0), ignore_errors=True)
            os.sync()  # the writes of the run before are not this run's to wait for

        receipts = timed(lambda: build_receipts(BatchFiles(lake, "instructions", 0), dataset), args.runs, fresh)
        floor = timed(lambda: [pq.read_table(p) for p in parts], args.runs)
        contributors = len(files.receipt_contributors())
        written = sum(p.stat().st_size for p in (root / layout.receipts("instructions", 0)).glob("receipts-*.jsonl.gz"))
        data_json = sum(len(orjson.dumps(r)) for table in files.parts()
                        for r in json_records(table, dataset.committed_columns))
        print(f"receipts  {contributors:,} contributors, {manifest.tree_size:,} rows: {receipts:.2f} s "
              f"(target <= 2 s); floor, pyarrow reading the parts: {floor:.2f} s ({receipts / floor:.1f}x)")
        budget = data_json + 2048 * contributors
        print(f"bytes     {written:,} in receipts; accepted rows as JSON {data_json:,} + 2 KB per contributor = "
              f"{budget:,} ({written / budget:.2f} of the budget; {(written - data_json) / contributors:,.0f} B "
              "per contributor beyond the rows)")


if __name__ == "__main__":
    main()
