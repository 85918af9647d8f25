"""Benchmark: ingest, validation, dedupe and commit of one large batch, beside the floor.

Generates N records (default 1,000,000: about 300 bytes each, in 100 JSONL files, from 10,000
contributors, 2% invalid, 1% duplicates), then times in fresh processes:
  floor      pyarrow reading the same JSONL files and writing Parquet, nothing else
  anchorlake stage_sources + commit_batch on a file:// lake (copy to raw/, parse, type, GX suite,
             dedupe, salts, leaves, Merkle root, Parquet parts, quarantine, rewards, manifest)
and prints the median wall time of each, their ratio (the figure we track) and peak memory.

    .venv/bin/python bench/ingest.py [--records 1000000] [--runs 3]

Invalid records here are ones pyarrow can still read (bad contributor, no consent, bad language,
short or null prompt, unknown column), so the floor reads exactly the same bytes.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FILES = 100


def generate(directory: Path, records: int, seed: int = 1) -> int:
    rng = random.Random(seed)
    contributors = [f"0x{rng.getrandbits(160):040x}" for _ in range(10_000)]
    words = "the of and to in is you that it he was for on are as with his they at be this have from".split()
    per_file = records // FILES
    written = 0
    recent: list[str] = []
    for f in range(FILES):
        lines = []
        for i in range(per_file):
            n = f * per_file + i
            roll = rng.random()
            if roll < 0.01 and recent:  # duplicate of an earlier record, by another contributor
                record = json.loads(rng.choice(recent))
                record["contributor"] = rng.choice(contributors)
            else:
                prompt = f"Q{n}: " + " ".join(rng.choices(words, k=12))
                record = {"prompt": prompt, "response": " ".join(rng.choices(words, k=30)), "language": "en",
                          "consent": True, "created_at": f"2026-11-{1 + n % 28:02d}T{n % 24:02d}:{n % 60:02d}:00Z",
                          "contributor": rng.choice(contributors)}
                if 0.01 <= roll < 0.03:  # 2% invalid, in kinds pyarrow still reads
                    kind = n % 5
                    if kind == 0:
                        record["contributor"] = "0x" + "z" * 40
                    elif kind == 1:
                        record["consent"] = False
                    elif kind == 2:
                        record["language"] = "English"
                    elif kind == 3:
                        record["prompt"] = "hi"
                    else:
                        record["prompt"] = None
                line = json.dumps(record)
                if len(recent) < 1000:
                    recent.append(line)
                elif rng.random() < 0.01:
                    recent[rng.randrange(1000)] = line
            lines.append(json.dumps(record))
            written += 1
        (directory / f"contrib-{f:03d}.jsonl").write_text("\n".join(lines) + "\n")
    return written


def run_floor(data: Path, out: Path) -> None:
    import pyarrow as pa
    import pyarrow.json as pj
    import pyarrow.parquet as pq

    schema = pa.schema([("prompt", pa.string()), ("response", pa.string()), ("language", pa.string()),
                        ("consent", pa.bool_()), ("created_at", pa.timestamp("us", tz="UTC")),
                        ("contributor", pa.string())])
    options = pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
    for path in sorted(data.glob("*.jsonl")):
        table = pj.read_json(path, parse_options=options)
        pq.write_table(table, out / (path.stem + ".parquet"), compression="zstd")


def run_anchorlake(data: Path, out: Path) -> dict:
    sys.path.insert(0, str(REPO))
    from pipeline.datasets import load
    from pipeline.ingest.commit import commit_batch
    from pipeline.ingest.stage import stage_sources
    from pipeline.lake.storage import open_lake

    lake = open_lake(out.as_uri())
    dataset = load(REPO / "expectations", "instructions")
    incoming = out / "incoming" / "instructions"
    incoming.mkdir(parents=True)
    for path in sorted(data.glob("*.jsonl")):  # the drop zone is filled before the clock starts
        shutil.copyfile(path, incoming / path.name)
    import great_expectations  # noqa: F401  imported before the clock: a worker has it loaded

    start = time.perf_counter()
    seq = stage_sources(lake, dataset)
    manifest = commit_batch(lake, dataset, seq)  # type: ignore[arg-type]
    elapsed = time.perf_counter() - start
    return {"seconds": elapsed, "counts": manifest.data["counts"]}


def child(mode: str, data: Path) -> None:
    with tempfile.TemporaryDirectory(prefix=f"bench-{mode}-") as tmp:
        start = time.perf_counter()
        result = run_floor(data, Path(tmp)) if mode == "floor" else run_anchorlake(data, Path(tmp))
        elapsed = time.perf_counter() - start
        report = result or {}
        report.setdefault("seconds", elapsed)
        report["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(report))


def measure(mode: str, data: Path) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", mode, "--data", str(data)], capture_output=True,
                          text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--child")
    parser.add_argument("--data")
    args = parser.parse_args()
    if args.child:
        child(args.child, Path(args.data))
        return
    with tempfile.TemporaryDirectory(prefix="bench-data-") as tmp:
        data = Path(tmp)
        records = generate(data, args.records)
        size = sum(p.stat().st_size for p in data.glob("*.jsonl"))
        print(f"input: {records:,} records in {FILES} files, {size / 1e6:.0f} MB ({size / records:.0f} bytes/record)")
        floors, ours = [], []
        for run in range(args.runs):
            floors.append(measure("floor", data))
            ours.append(measure("anchorlake", data))
            print(f"run {run + 1}: floor {floors[-1]['seconds']:.2f} s, anchorlake {ours[-1]['seconds']:.2f} s "
                  f"(peak {ours[-1]['peak_mb']:.0f} MB)", flush=True)
        floor = statistics.median(r["seconds"] for r in floors)
        mine = statistics.median(r["seconds"] for r in ours)
        print(f"counts: {ours[-1]['counts']}")
        print(f"floor (pyarrow JSONL -> Parquet): median {floor:.2f} s, peak {max(r['peak_mb'] for r in floors):.0f} MB")
        print(f"anchorlake ingest+validate+dedupe+commit: median {mine:.2f} s "
              f"({records / mine:,.0f} records/s), peak {max(r['peak_mb'] for r in ours):.0f} MB")
        print(f"ratio to floor: {mine / floor:.1f}x   targets: <= 20 s and <= 2048 MB")


if __name__ == "__main__":
    main()
