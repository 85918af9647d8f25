"""RFC 9162 §2.1.4 consistency proofs between two sizes of one append-only tree (SPEC §13.9).

A proof shows that the tree of the first `first` leaves is a prefix of the tree of `second`
leaves, given only the two roots. Hashing is that of `pipeline.core.merkle`. Pure, no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from pipeline.core.merkle import ProofError, _split, node_hash


def consistency_proof(first: int, second: int, node: Callable[[int, int], bytes]) -> list[bytes]:
    """PROOF(first, D[0:second]) of RFC 9162 §2.1.4.1, deepest hash first.

    `node(lo, hi)` gives the hash of subtree [lo, hi) of the larger tree (a leaf hash when
    hi == lo + 1), e.g. `levels_node(build_levels(leaf_hashes))`. Requires
    0 < first <= second; first == second gives [].
    """
    if not 0 < first <= second:
        raise ValueError(f"no consistency proof from tree size {first} to {second}: needs 0 < first <= second")
    siblings: list[bytes] = []  # the SUBPROOF recursion's appended hashes, outermost first
    lo, hi = 0, second
    while hi != first:
        k = lo + _split(hi - lo)
        if first <= k:
            siblings.append(node(k, hi))
            hi = k
        else:
            siblings.append(node(lo, k))
            lo = k
    # SUBPROOF(m, D[m], b) adds MTH(D[m]) only when b is false, i.e. once the recursion went right.
    base = [node(lo, hi)] if lo else []
    return base + siblings[::-1]


def verify_consistency(first: int, second: int, first_root: bytes, second_root: bytes,
                       proof: Sequence[bytes]) -> None:
    """Check a consistency proof with the algorithm of RFC 9162 §2.1.4.2; raise ProofError unless
    the tree of `first` leaves with root `first_root` is a prefix of the tree of `second` leaves
    with root `second_root`. Requires 0 < first <= second; equal sizes need an empty proof and
    equal roots.

    The proof does not pin `second` on its own (a proof of (m, n) often also folds to the same
    root when checked as (m, n + 1)): sizes and roots must come together from an anchored or
    signed source."""
    if not 0 < first <= second:
        raise ProofError(f"no consistency proof from tree size {first} to {second}: needs 0 < first <= second")
    if first == second:
        _check_same_tree(first, first_root, second_root, proof)
        return
    if not proof:
        raise ProofError(f"the consistency proof from tree size {first} to {second} is empty")
    first_calculated, second_calculated = _roots_from_consistency(first, second, first_root, proof)
    if first_calculated != first_root:
        raise ProofError(f"the consistency proof from tree size {first} to {second} does not reach the first root: "
                         f"expected {first_root.hex()}, calculated {first_calculated.hex()}")
    if second_calculated != second_root:
        raise ProofError(f"the consistency proof from tree size {first} to {second} does not reach the second root: "
                         f"expected {second_root.hex()}, calculated {second_calculated.hex()}")


def _check_same_tree(size: int, first_root: bytes, second_root: bytes, proof: Sequence[bytes]) -> None:
    if proof:
        raise ProofError(f"a consistency proof between two trees of size {size} must be empty, "
                         f"it has {len(proof)} hashes")
    if first_root != second_root:
        raise ProofError(f"two trees of size {size} have different roots: {first_root.hex()} and {second_root.hex()}")


def _roots_from_consistency(first: int, second: int, first_root: bytes,
                            proof: Sequence[bytes]) -> tuple[bytes, bytes]:
    """RFC 9162 §2.1.4.2 steps 2-7: the (first, second) roots the proof implies. Requires
    0 < first < second and a non-empty proof; raises ProofError if the proof's length is wrong."""
    path = list(proof)
    if first & (first - 1) == 0:  # a power of two: the first tree is a subtree, its root is implied
        path.insert(0, first_root)
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError(f"the consistency proof from tree size {first} to {second} is too long "
                             f"({len(proof)} hashes)")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError(f"the consistency proof from tree size {first} to {second} is too short "
                         f"({len(proof)} hashes)")
    return fr, sr
