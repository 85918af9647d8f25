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
    node_hash,
    root,
    root_from_inclusion,
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
