"""RFC 9162 Merkle tree: hashing, roots, inclusion proofs (SPEC §4, §5). Pure, no I/O.

leaf hash = SHA-256(0x00 || leaf bytes); node = SHA-256(0x01 || left || right).
Indices are 0-based. pymerkle 7 (`InmemoryTree(algorithm="sha256")`) computes the same roots.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pipeline.errors import CheckFailed, RootMismatchError

HASH_SIZE = 32
LEAF_PREFIX = b"\x00"  # RFC 9162 §2.1.1 domain separation: a leaf can never pass for a node
NODE_PREFIX = b"\x01"
EMPTY_ROOT = hashlib.sha256(b"").digest()


def leaf_hash(leaf: bytes) -> bytes:
    return hashlib.sha256(LEAF_PREFIX + leaf).digest()


def leaf_hashes(leaves: Sequence[bytes]) -> list[bytes]:
    """leaf_hash of each, in order (the bulk form)."""
    sha = hashlib.sha256
    return [sha(LEAF_PREFIX + leaf).digest() for leaf in leaves]


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(NODE_PREFIX + left + right).digest()


def build_levels(leaves: Sequence[bytes]) -> list[list[bytes]]:
    """All levels of the tree over leaf hashes, leaf level first.

    A node without a right sibling is carried up unchanged, which yields exactly the RFC 9162
    tree (split at the largest power of two below n). Empty input gives [[]].
    """
    levels: list[list[bytes]] = [list(leaves)]
    current = levels[0]
    sha = hashlib.sha256
    while len(current) > 1:
        nxt = [sha(NODE_PREFIX + left + right).digest() for left, right in zip(current[0::2], current[1::2], strict=False)]
        if len(current) % 2:
            nxt.append(current[-1])
        levels.append(nxt)
        current = nxt
    return levels


def root_from_levels(levels: Sequence[Sequence[bytes]]) -> bytes:
    top = levels[-1]
    return top[0] if top else EMPTY_ROOT


def root(leaf_hashes: Sequence[bytes]) -> bytes:
    """Merkle tree hash over the given leaf hashes (EMPTY_ROOT for none)."""
    return root_from_levels(build_levels(leaf_hashes))


def inclusion_path(levels: Sequence[Sequence[bytes]], index: int) -> list[bytes]:
    """RFC 9162 inclusion path for leaf `index`, leaf level first.

    Requires 0 <= index < len(levels[0]).
    """
    size = len(levels[0])
    if not 0 <= index < size:
        raise IndexError(f"leaf index {index} is outside a tree of size {size}")
    path: list[bytes] = []
    for level in levels[:-1]:
        sibling = index ^ 1
        if sibling < len(level):
            path.append(level[sibling])
        index >>= 1
    return path


@dataclass(frozen=True)
class InclusionProof:
    leaf_index: int
    tree_size: int
    path: tuple[bytes, ...]


class ProofError(CheckFailed):
    """An inclusion proof is malformed for its tree (index or path length)."""


def root_from_inclusion(proof: InclusionProof, leaf: bytes) -> bytes:
    """Fold a leaf hash along its path (RFC 9162 §2.1.3.2) and return the root it implies.

    Requires 0 <= leaf_index < tree_size; raises ProofError if the path length is wrong.
    """
    if not 0 <= proof.leaf_index < proof.tree_size:
        raise ProofError(f"leaf index {proof.leaf_index} is not below tree size {proof.tree_size}")
    fn, sn, r = proof.leaf_index, proof.tree_size - 1, leaf
    for p in proof.path:
        if sn == 0:
            raise ProofError(f"path is longer than a tree of size {proof.tree_size} allows")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError(f"path is shorter than a tree of size {proof.tree_size} needs")
    return r


def verify_inclusion(proof: InclusionProof, leaf: bytes, expected_root: bytes) -> None:
    """Raise RootMismatchError unless `leaf` folds along the proof to `expected_root`."""
    calculated = root_from_inclusion(proof, leaf)
    if calculated != expected_root:
        raise RootMismatchError(expected_root.hex(), calculated.hex())


# --- range proofs (SPEC §13.3) ------------------------------------------------------------------


def _split(size: int) -> int:
    """RFC 9162's k: the largest power of two smaller than `size` (size >= 2)."""
    return 1 << ((size - 1).bit_length() - 1)


def subtree_position(lo: int, hi: int) -> tuple[int, int]:
    """(level, index) of the node for subtree [lo, hi) of an RFC 9162 split (a power-of-two-aligned
    block, or the right edge of a tree) in levels built by `build_levels`."""
    level = (hi - lo - 1).bit_length()
    return level, lo >> level


def range_proof(size: int, start: int, end: int, node: Callable[[int, int], bytes]) -> list[bytes]:
    """The hashes of the maximal subtrees disjoint from leaves [start, end), left to right
    (SPEC §13.3). `node(lo, hi)` gives the hash of subtree [lo, hi). Requires 0 <= start < end <= size."""
    if not 0 <= start < end <= size:
        raise IndexError(f"range [{start}, {end}) is not a non-empty range of a tree of size {size}")
    proof: list[bytes] = []
    pending = [(0, size)]  # subtrees still to look at, the leftmost last
    while pending:
        lo, hi = pending.pop()
        if hi <= start or end <= lo:
            proof.append(node(lo, hi))
        elif lo < start or end < hi:
            k = lo + (1 << ((hi - lo - 1).bit_length() - 1))  # lo + _split(hi - lo), inlined: a hot loop
            pending += ((k, hi), (lo, k))
    return proof


def levels_node(levels: Sequence[Sequence[bytes]]) -> Callable[[int, int], bytes]:
    """`node(lo, hi)` for range_proof over a tree held as its levels (see build_levels)."""
    def node(lo: int, hi: int) -> bytes:
        level, index = subtree_position(lo, hi)
        return levels[level][index]

    return node


def root_from_range(size: int, start: int, end: int, leaves: Sequence[bytes], proof: Sequence[bytes]) -> bytes:
    """The root that the leaf hashes of [start, end) and a range proof imply (SPEC §13.3): the
    same recursion, taking hashes from `proof` in order. Raises ProofError unless the range fits
    the tree, there is one leaf per position, and the proof is consumed exactly."""
    if not 0 <= start < end <= size:
        raise ProofError(f"range [{start}, {end}) is not a non-empty range of a tree of size {size}")
    if len(leaves) != end - start:
        raise ProofError(f"range [{start}, {end}) holds {end - start} leaves, {len(leaves)} were given")
    given = iter(proof)
    used = 0

    def walk(lo: int, hi: int) -> bytes:
        nonlocal used
        if hi <= start or end <= lo:
            used += 1
            taken = next(given, None)
            if taken is None:
                raise ProofError(f"the proof has {used - 1} hashes, a range [{start}, {end}) of {size} needs more")
            return taken
        if start <= lo and hi <= end:
            return root(leaves[lo - start:hi - start])
        k = _split(hi - lo)
        return node_hash(walk(lo, lo + k), walk(lo + k, hi))

    calculated = walk(0, size)
    if used != len(proof):
        raise ProofError(f"the proof has {len(proof)} hashes, a range [{start}, {end}) of {size} needs {used}")
    return calculated


def range_proof_length(size: int, start: int, end: int) -> int:
    """How many hashes the range proof of [start, end) in a tree of `size` has."""
    return len(range_proof(size, start, end, lambda lo, hi: b""))
