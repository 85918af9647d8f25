"""RFC 9162 Merkle tree: hashing, roots, inclusion proofs (SPEC §4, §5). Pure, no I/O.

leaf hash = SHA-256(0x00 || leaf bytes); node = SHA-256(0x01 || left || right).
Indices are 0-based. pymerkle 7 (`InmemoryTree(algorithm="sha256")`) computes the same roots.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
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
