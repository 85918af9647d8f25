"""RFC 9162 Merkle core, checked against pymerkle 7 (an independent implementation)."""

from __future__ import annotations

import hashlib
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pymerkle import InmemoryTree

from pipeline.core.merkle import (
    EMPTY_ROOT,
    InclusionProof,
    ProofError,
    build_levels,
    inclusion_path,
    leaf_hash,
    levels_node,
    node_hash,
    range_proof,
    range_proof_length,
    root,
    root_from_inclusion,
    root_from_range,
    verify_inclusion,
)
from pipeline.errors import RootMismatchError

pytestmark = pytest.mark.unit


def pymerkle_root(entries: list[bytes]) -> bytes:
    tree = InmemoryTree(algorithm="sha256")
    for e in entries:
        tree.append_entry(e)
    return tree.get_root() if entries else hashlib.sha256(b"").digest()


def test_roots_equal_pymerkle_for_every_size_up_to_300() -> None:
    entries = [f"entry-{i}".encode() for i in range(300)]
    tree = InmemoryTree(algorithm="sha256")
    assert root([]) == EMPTY_ROOT == hashlib.sha256(b"").digest()
    for n in range(1, 301):
        tree.append_entry(entries[n - 1])
        assert root([leaf_hash(e) for e in entries[:n]]) == tree.get_state(n), n


def test_roots_equal_pymerkle_for_random_larger_trees() -> None:
    rng = random.Random(9162)
    for n in (rng.randrange(300, 5000) for _ in range(4)):
        entries = [rng.randbytes(rng.randrange(0, 40)) for _ in range(n)]
        assert root([leaf_hash(e) for e in entries]) == pymerkle_root(entries)


def test_rfc6962_known_answers() -> None:
    # Vectors from RFC 6962 test data (certificate-transparency-go merkletree tests):
    # printf '' | sha256sum; leaf hash of the empty string; root of the 8 standard leaves.
    assert EMPTY_ROOT.hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert leaf_hash(b"").hex() == "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
    leaves = [bytes.fromhex(h) for h in ("", "00", "10", "2021", "3031", "40414243", "5051525354555657",
                                          "606162636465666768696a6b6c6d6e6f")]
    assert root([leaf_hash(x) for x in leaves]).hex() == \
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"


def test_second_preimage_attack_fails_with_domain_separation() -> None:
    # Presenting an inner node's children as a leaf must not reproduce the root.
    leaves = [leaf_hash(bytes([i])) for i in range(4)]
    levels = build_levels(leaves)
    forged_leaf_data = levels[0][0] + levels[0][1]  # the bytes that hash to the left inner node
    forged = [leaf_hash(forged_leaf_data), node_hash(levels[0][2], levels[0][3])]
    assert root(forged) != root(leaves)
    # Without the 0x00/0x01 prefixes the attack would work: show the naive tree collides.
    naive = lambda a, b: hashlib.sha256(a + b).digest()  # noqa: E731
    raw = [hashlib.sha256(bytes([i])).digest() for i in range(4)]
    assert naive(naive(raw[0], raw[1]), naive(raw[2], raw[3])) == naive(hashlib.sha256(raw[0] + raw[1]).digest(),
                                                                        naive(raw[2], raw[3]))


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=1, max_value=200), st.data())
def test_every_leaf_is_provable_and_any_flipped_bit_is_rejected(size: int, data: st.DataObject) -> None:
    entries = [i.to_bytes(4, "big") for i in range(size)]
    leaves = [leaf_hash(e) for e in entries]
    levels = build_levels(leaves)
    top = levels[-1][0]
    index = data.draw(st.integers(0, size - 1))
    proof = InclusionProof(index, size, tuple(inclusion_path(levels, index)))
    verify_inclusion(proof, leaves[index], top)
    if proof.path:
        hop = data.draw(st.integers(0, len(proof.path) - 1))
        bit = data.draw(st.integers(0, 255))
        bad = bytearray(proof.path[hop])
        bad[bit // 8] ^= 1 << (bit % 8)
        tampered = InclusionProof(index, size, proof.path[:hop] + (bytes(bad),) + proof.path[hop + 1:])
        with pytest.raises(RootMismatchError):
            verify_inclusion(tampered, leaves[index], top)
    flipped = bytearray(leaves[index])
    flipped[0] ^= 1
    with pytest.raises(RootMismatchError):
        verify_inclusion(proof, bytes(flipped), top)


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=2, max_value=200), st.data())
def test_a_wrong_index_or_tree_size_is_rejected(size: int, data: st.DataObject) -> None:
    leaves = [leaf_hash(i.to_bytes(4, "big")) for i in range(size)]
    levels = build_levels(leaves)
    top = levels[-1][0]
    index = data.draw(st.integers(0, size - 1))
    path = tuple(inclusion_path(levels, index))
    other = data.draw(st.integers(0, size - 1).filter(lambda i: i != index))
    with pytest.raises((RootMismatchError, ProofError)):
        verify_inclusion(InclusionProof(other, size, path), leaves[index], top)
    with pytest.raises((RootMismatchError, ProofError)):
        verify_inclusion(InclusionProof(index, size, path), leaves[other], top)


def test_index_at_or_past_size_is_a_proof_error() -> None:
    with pytest.raises(ProofError):
        root_from_inclusion(InclusionProof(3, 3, ()), leaf_hash(b"x"))


# --- range proofs (SPEC §13.3) ------------------------------------------------------------------


def _ranges(n: int, rng: random.Random) -> set[tuple[int, int]]:
    """Every range of a tree of up to 64 leaves; of a larger one, ranges of one or two leaves at
    random, prefixes and suffixes at random, and random ones (60 of each)."""
    if n <= 64:
        return {(s, e) for s in range(n) for e in range(s + 1, n + 1)}
    found = set()
    for _ in range(60):
        s = rng.randrange(n)
        found |= {(s, min(n, s + rng.choice((1, 2)))), (0, rng.randrange(1, n + 1)), (rng.randrange(n), n),
                  (s, rng.randrange(s + 1, n + 1))}
    return found


def test_range_proofs_fold_to_the_pymerkle_root_for_every_size_up_to_300() -> None:
    rng = random.Random(13)
    entries = [f"entry-{i}".encode() for i in range(300)]
    reference = InmemoryTree(algorithm="sha256")
    for n in range(1, 301):
        reference.append_entry(entries[n - 1])
        expected = reference.get_state(n)
        leaves = [leaf_hash(e) for e in entries[:n]]
        node = levels_node(build_levels(leaves))
        for start, end in _ranges(n, rng):
            proof = range_proof(n, start, end, node)
            assert root_from_range(n, start, end, leaves[start:end], proof) == expected, (n, start, end)
            assert len(proof) == range_proof_length(n, start, end) <= 2 * max(1, (n - 1).bit_length())
            if n <= 40:  # each proof hash is the MTH of that subtree, computed by pymerkle
                for h, (lo, hi) in zip(proof, _disjoint_subtrees(n, start, end), strict=True):
                    assert h == pymerkle_root(entries[lo:hi])


def _disjoint_subtrees(n: int, start: int, end: int) -> list[tuple[int, int]]:
    """The subtrees a range proof lists, by the recursion written out as a loop (left to right)."""
    found, stack = [], [(0, n)]
    while stack:
        lo, hi = stack.pop()
        if hi <= start or end <= lo:
            found.append((lo, hi))
        elif not (start <= lo and hi <= end):
            k = 1 << ((hi - lo - 1).bit_length() - 1)
            stack += [(lo + k, hi), (lo, lo + k)]
    return found


def test_a_one_leaf_range_proof_holds_the_inclusion_path_left_to_right() -> None:
    for n in range(1, 130):
        leaves = [leaf_hash(i.to_bytes(2, "big")) for i in range(n)]
        levels = build_levels(leaves)
        for i in range(n):
            proof = range_proof(n, i, i + 1, levels_node(levels))
            path = inclusion_path(levels, i)
            # left siblings (top down), then right siblings (bottom up): the path's hashes by position
            lefts = [p for level, p in enumerate(path) if (i >> _level_of(path, levels, i, level)) & 1]
            assert sorted(proof) == sorted(path) and proof[:len(lefts)] == lefts[::-1], (n, i)


def _level_of(path: list[bytes], levels: list[list[bytes]], index: int, position: int) -> int:
    """The tree level of the `position`-th hash of leaf `index`'s path (levels without a sibling
    are skipped in a path)."""
    seen = -1
    for level, hashes in enumerate(levels[:-1]):
        if (index >> level) ^ 1 < len(hashes):
            seen += 1
            if seen == position:
                return level
    raise AssertionError("no such path position")


def test_range_proofs_reject_flipped_bits_shifted_ranges_and_changed_leaves() -> None:
    rng = random.Random(3)
    for n in list(range(2, 70)) + [rng.randrange(70, 3000) for _ in range(20)]:
        leaves = [leaf_hash(rng.randbytes(8)) for _ in range(n)]
        node = levels_node(build_levels(leaves))
        expected = root(leaves)
        for start, end in rng.sample(sorted(_ranges(n, rng)), min(40, n * (n + 1) // 2)):
            proof = range_proof(n, start, end, node)
            bad: list[tuple[int, int, int, list[bytes], list[bytes]]] = []
            if proof:
                at, bit = rng.randrange(len(proof)), 1 << rng.randrange(8)
                flipped = [*proof[:at], bytes([proof[at][0] ^ bit]) + proof[at][1:], *proof[at + 1:]]
                bad += [(n, start, end, leaves[start:end], flipped), (n, start, end, leaves[start:end], proof[:-1]),
                        (n, start, end, leaves[start:end], proof + proof[:1])]
            at = rng.randrange(start, end)
            bad.append((n, start, end, [bytes([h[0] ^ 1]) + h[1:] if i == at else h
                                        for i, h in enumerate(leaves[start:end], start)], proof))
            if end < n:
                bad.append((n, start + 1, end + 1, leaves[start:end], proof))
            if start > 0:
                bad.append((n, start - 1, end - 1, leaves[start:end], proof))
            # (A wrong tree size may fold to the same root: a proof does not bind the size, which
            # verifiers check against the anchored one.)
            for size, s, e, shown, hashes in bad:
                try:
                    assert root_from_range(size, s, e, shown, hashes) != expected, (n, start, end, size, s, e)
                except ProofError:
                    pass


def test_range_proofs_of_malformed_ranges_are_refused() -> None:
    leaves = [leaf_hash(b"a"), leaf_hash(b"b"), leaf_hash(b"c")]
    node = levels_node(build_levels(leaves))
    for start, end in ((0, 0), (2, 1), (-1, 1), (0, 4)):
        with pytest.raises(IndexError):
            range_proof(3, start, end, node)
        with pytest.raises(ProofError):
            root_from_range(3, start, end, leaves[max(0, start):max(0, end)], [])
    with pytest.raises(ProofError, match="holds 2 leaves, 1 were given"):
        root_from_range(3, 0, 2, leaves[:1], range_proof(3, 0, 2, node))
