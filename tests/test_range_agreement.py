"""The page's range-proof verifier (web/verify.mjs `rootFromRange`, `rangeProofLength`) agrees with
the Python reference (pipeline/core/merkle.py `range_proof`, `root_from_range`,
`range_proof_length`, SPEC §13.3) on 1,000 random (tree size, range) cases and on tampered
variants of them: the same root, or both reject. One `node` process runs every case."""

from __future__ import annotations

import json
import math
import random
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from pipeline.core.merkle import (
    ProofError,
    build_levels,
    leaf_hash,
    levels_node,
    range_proof,
    range_proof_length,
    root_from_levels,
    root_from_range,
)

pytestmark = pytest.mark.unit
REPO = Path(__file__).resolve().parent.parent
DRIVER = REPO / "tests" / "page" / "range_agreement.mjs"
SEED = 9162
CASES = 1000
MAX_SIZE = 5000
# Sizes at the edges of RFC 9162's split, besides the random ones.
EDGE_SIZES = (1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 4095, 4096, 4097, MAX_SIZE)
TAMPERINGS = ("proof bit flipped", "leaf bit flipped", "range shifted left", "range shifted right",
              "tree size + 1", "tree size - 1", "proof hash dropped", "proof hash added", "leaf dropped")
PER_CASE = 3  # a genuine case and two tampered variants of it, the kinds taken in turn


def node() -> str:
    found = shutil.which("node")
    assert found, "node (20) is required: the verifier page's code runs in it"
    return found


def flip_bit(data: bytes, rng: random.Random) -> bytes:
    bit = rng.randrange(len(data) * 8)
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def log_uniform(rng: random.Random, high: int) -> int:
    """An integer in [1, high], small ones as likely per octave as large ones."""
    return min(high, int(math.exp(rng.uniform(0, math.log(high + 1)))))


def random_span(rng: random.Random, size: int, n: int) -> tuple[int, int]:
    """A range of a tree of `size`: mostly a contributor's few rows, sometimes the whole tree or an edge leaf."""
    kind = n % 10
    if kind == 0 and size <= 128:
        return 0, size
    if kind == 1:
        return (0, 1) if n % 20 == 1 else (size - 1, size)
    length = log_uniform(rng, min(size, 300 if kind == 2 else 48))
    start = rng.randrange(size - length + 1)
    return start, start + length


def tamper(kind: str, case: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """A copy of `case` (leaf and proof hashes as bytes) changed the named way."""
    size, start, end = case["size"], case["start"], case["end"]
    leaves, proof = list(case["leaves"]), list(case["proof"])
    if kind == "proof bit flipped" and proof:
        i = rng.randrange(len(proof))
        proof[i] = flip_bit(proof[i], rng)
    elif kind == "proof bit flipped" or kind == "leaf bit flipped":
        i = rng.randrange(len(leaves))
        leaves[i] = flip_bit(leaves[i], rng)
    elif kind == "range shifted left":
        start, end = start - 1, end - 1
    elif kind == "range shifted right":
        start, end = start + 1, end + 1
    elif kind == "tree size + 1":
        size += 1
    elif kind == "tree size - 1":
        size -= 1
    elif kind == "proof hash dropped" and proof:
        del proof[rng.randrange(len(proof))]
    elif kind in ("proof hash dropped", "proof hash added"):
        proof.insert(rng.randrange(len(proof) + 1), rng.randbytes(32))
    elif kind == "leaf dropped":
        del leaves[rng.randrange(len(leaves))]
    return {"size": size, "start": start, "end": end, "leaves": leaves, "proof": proof, "kind": kind}


def python_answer(case: dict[str, Any]) -> dict[str, Any]:
    try:
        root: str | None = root_from_range(case["size"], case["start"], case["end"], case["leaves"], case["proof"]).hex()
    except ProofError:
        root = None
    try:
        length: int | None = range_proof_length(case["size"], case["start"], case["end"])
    except IndexError:
        length = None
    return {"root": root, "length": length}


def build_cases() -> tuple[list[dict[str, Any]], list[str]]:
    """Genuine cases, each followed by its PER_CASE - 1 tampered variants; and each genuine case's true root."""
    rng = random.Random(SEED)
    pool = [leaf_hash(n.to_bytes(4, "big")) for n in range(MAX_SIZE + 1)]
    cases, roots = [], []
    for n in range(CASES):
        size = EDGE_SIZES[n] if n < len(EDGE_SIZES) else log_uniform(rng, MAX_SIZE)
        start, end = random_span(rng, size, n)
        levels = build_levels(pool[:size])
        genuine = {"size": size, "start": start, "end": end, "leaves": pool[start:end],
                   "proof": range_proof(size, start, end, levels_node(levels)), "kind": "genuine"}
        roots.append(root_from_levels(levels).hex())
        cases.append(genuine)
        for k in range((PER_CASE - 1) * n, (PER_CASE - 1) * (n + 1)):
            cases.append(tamper(TAMPERINGS[k % len(TAMPERINGS)], genuine, rng))
    return cases, roots


def run_node(cases: list[dict[str, Any]], folder: Path) -> list[dict[str, Any]]:
    source = folder / "cases.json"
    source.write_text(json.dumps([{"size": c["size"], "start": c["start"], "end": c["end"],
                                   "leaves": [h.hex() for h in c["leaves"]], "proof": [h.hex() for h in c["proof"]]}
                                  for c in cases]))
    proc = subprocess.run([node(), str(DRIVER), str(source)], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    return list(json.loads(proc.stdout))


def test_the_page_and_the_python_reference_agree_on_every_range_proof_genuine_or_tampered(tmp_path: Path) -> None:
    cases, roots = build_cases()
    python = [python_answer(c) for c in cases]
    javascript = run_node(cases, tmp_path)
    assert len(javascript) == len(cases)

    # Every genuine proof folds to the tree's root in both, over the whole spread of sizes and ranges.
    genuine = [i for i, c in enumerate(cases) if c["kind"] == "genuine"]
    assert [python[i]["root"] for i in genuine] == roots
    assert [javascript[i]["root"] for i in genuine] == roots
    assert max(cases[i]["size"] for i in genuine) == MAX_SIZE
    assert any(cases[i]["end"] - cases[i]["start"] > 100 for i in genuine)

    disagreements = [(c["kind"], c["size"], c["start"], c["end"], len(c["leaves"]), len(c["proof"]), python[i], javascript[i])
                     for i, c in enumerate(cases) if python[i] != javascript[i]]
    assert not disagreements, f"{len(disagreements)} disagreements, the first: {disagreements[:3]}"

    # The tampered variants exercise both outcomes: rejected outright, or folded to a root. A tree
    # size that keeps the proof's shape reaches the very same root: a proof alone does not bind the
    # tree size (SPEC §7), which is why verifiers compare the anchored size.
    by_kind: dict[str, set[str]] = {}
    for i, c in enumerate(cases):
        root = python[i]["root"]
        outcome = "rejected" if root is None else "same root" if root == roots[i // PER_CASE] else "other root"
        by_kind.setdefault(c["kind"], set()).add(outcome)
    assert by_kind["genuine"] == {"same root"}
    for kind in ("proof bit flipped", "leaf bit flipped"):
        assert by_kind[kind] == {"other root"}, kind
    for kind in ("proof hash dropped", "proof hash added", "leaf dropped"):
        assert by_kind[kind] == {"rejected"}, kind
    for kind in ("range shifted left", "range shifted right"):
        assert by_kind[kind] == {"rejected", "other root"}, (kind, by_kind[kind])
    for kind in ("tree size + 1", "tree size - 1"):
        assert by_kind[kind] == {"rejected", "same root"}, (kind, by_kind[kind])

