"""Benchmark: Merkle commitments, proof serving and receipt verification.

    .venv/bin/python bench/merkle.py [--leaves 1000000] [--runs 3]

1. Building the root and the stored proof data (tree.bin) for N leaves from their entries
   (treefile.encode_entries: leaf hashing and tiles in one worker per core), beside pymerkle 7's
   InmemoryTree building the same tree in the same run (same root checked).
   Target: at least 10x faster.
2. Serving one proof of a committed N-leaf tree from a real SeaweedFS (started here, loopback):
   median over 50 random leaves. Target: <= 50 ms.
3. Verifying a 100-row receipt offline, in process and as `anchorlake verify --root` (a whole
   process, start-up included). Target: <= 100 ms.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pymerkle import InmemoryTree  # noqa: E402

from pipeline.config import S3Settings  # noqa: E402
from pipeline.core.merkle import leaf_hash, range_proof  # noqa: E402
from pipeline.core.receipt import parse as parse_receipt  # noqa: E402
from pipeline.core.receipt import verify_rows  # noqa: E402
from pipeline.core.treefile import TreeFile, encode_entries, from_bytes  # noqa: E402
from pipeline.devnet import SeaweedFS  # noqa: E402
from pipeline.lake import layout  # noqa: E402
from pipeline.lake.storage import open_lake  # noqa: E402


def entries(n: int) -> list[bytes]:
    rng = random.Random(7)
    contributor = "0x" + "ab" * 20
    return [json.dumps({"contributor": contributor, "prompt": f"p{i}", "salt": f"{rng.getrandbits(128):032x}"},
                       sort_keys=True, separators=(",", ":")).encode() for i in range(n)]


def ours(data: list[bytes]) -> tuple[float, bytes, bytes]:
    start = time.perf_counter()
    blob, root = encode_entries(data)
    return time.perf_counter() - start, root, blob


def theirs(data: list[bytes]) -> tuple[float, bytes]:
    start = time.perf_counter()
    tree = InmemoryTree(algorithm="sha256")
    for e in data:
        tree.append_entry(e)
    root = tree.get_root() if hasattr(tree, "get_root") and data else tree.get_state()
    return time.perf_counter() - start, root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--leaves", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    data = entries(args.leaves)
    print(f"1. building the tree over {args.leaves:,} leaves")
    mine, ref = [], []
    for run in range(args.runs):
        t_ours, root, blob = ours(data)
        t_ref, ref_root = theirs(data)
        assert root == ref_root, "roots differ from pymerkle"
        mine.append(t_ours)
        ref.append(t_ref)
        print(f"   run {run + 1}: anchorlake {t_ours:.2f} s (root + tree.bin, {len(blob) / 1e6:.0f} MB), "
              f"pymerkle InmemoryTree {t_ref:.2f} s, same root {root.hex()[:16]}…", flush=True)
    print(f"   median: anchorlake {statistics.median(mine):.2f} s, pymerkle {statistics.median(ref):.2f} s, "
          f"ratio {statistics.median(ref) / statistics.median(mine):.1f}x (target >= 10x)")

    print("2. serving one proof from SeaweedFS")
    with tempfile.TemporaryDirectory(prefix="bench-s3-") as tmp:
        server = SeaweedFS(Path(tmp)).start()
        try:
            server.create_bucket("bench")
            env = server.env()
            lake = open_lake("s3://bench/lake", S3Settings(env["AWS_ENDPOINT_URL"], env["AWS_ACCESS_KEY_ID"],
                                                           env["AWS_SECRET_ACCESS_KEY"]))
            key = layout.batch_file("bench", 0, layout.TREE)
            lake.write(key, blob)
            rng = random.Random(1)
            times = []
            for _ in range(50):
                index = rng.randrange(args.leaves)
                start = time.perf_counter()
                stored = TreeFile(lambda offset, length: lake.read_range(key, offset, length))  # what serve_proof reads
                path = stored.proof(index)
                leaf = stored.leaf(index)
                times.append(time.perf_counter() - start)
                assert leaf == leaf_hash(data[index]) and len(path) == 20
            print(f"   median {statistics.median(times) * 1000:.1f} ms, max {max(times) * 1000:.1f} ms over 50 proofs "
                  f"(target <= 50 ms)")
        finally:
            server.stop()

    print("3. verifying a 100-row receipt (anchorlake.receipt/2: one range, one range proof) offline")
    stored = from_bytes(blob)
    start = random.Random(2).randrange(args.leaves - 100)
    rows = [{"record": json.loads(data[index])} for index in range(start, start + 100)]
    proof = range_proof(args.leaves, start, start + 100, stored.node_reader())
    receipt = {"format": "anchorlake.receipt/2", "dataset": "bench", "seq": 0, "contributor": "0x" + "ab" * 20,
               "root": root.hex(), "tree_size": args.leaves, "manifest_sha256": hashlib.sha256(b"m").hexdigest(),
               "anchor": None, "range": {"start": start, "end": start + 100}, "proof": [p.hex() for p in proof],
               "rows": rows, "reward": None}
    raw = json.dumps(receipt).encode()
    times = []
    for _ in range(20):
        start = time.perf_counter()
        assert not verify_rows(parse_receipt(raw, "bench"))
        times.append(time.perf_counter() - start)
    with tempfile.NamedTemporaryFile("wb", suffix=".json", delete=False) as f:
        f.write(raw)
    cli_times = []
    for _ in range(5):
        start = time.perf_counter()
        proc = subprocess.run([str(Path(sys.executable).parent / "anchorlake"), "--quiet", "verify", f.name,
                               "--root", root.hex(), "--tree-size", str(args.leaves)], capture_output=True, text=True)
        cli_times.append(time.perf_counter() - start)
        assert proc.returncode == 0, proc.stderr
    os.unlink(f.name)
    print(f"   in process: median {statistics.median(times) * 1000:.1f} ms; "
          f"`anchorlake verify --root` process: median {statistics.median(cli_times) * 1000:.0f} ms (target <= 100 ms)")


if __name__ == "__main__":
    main()
