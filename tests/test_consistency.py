"""RFC 9162 consistency proofs (SPEC §13.9), checked against pymerkle 7 (an independent implementation)."""

from __future__ import annotations

import random
from collections.abc import Callable

import pymerkle
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pymerkle import InmemoryTree
from pymerkle.proof import ConsistencyProof

from pipeline.core.consistency import consistency_proof, verify_consistency
from pipeline.core.merkle import ProofError, build_levels, leaf_hash, levels_node, root

pytestmark = pytest.mark.unit

MAX_SIZE = 200
_rng = random.Random(9162)
ENTRIES = [_rng.randbytes(_rng.randrange(0, 40)) for _ in range(MAX_SIZE + 1)]
LEAVES = [leaf_hash(e) for e in ENTRIES]  # pymerkle's default (security on) hashes an entry as RFC 9162 does
ROOTS = [root(LEAVES[:size]) for size in range(MAX_SIZE + 2)]


def node_of(size: int) -> Callable[[int, int], bytes]:
    """`node(lo, hi)` for the tree of the first `size` leaves."""
    return levels_node(build_levels(LEAVES[:size]))


def proof_of(first: int, second: int) -> list[bytes]:
    return consistency_proof(first, second, node_of(second))


def rfc9162_from_pymerkle(proof: ConsistencyProof, first_root: bytes) -> list[bytes]:
    """RFC 9162's hash list, rebuilt from pymerkle's path.

    pymerkle walks the same splits as SUBPROOF and differs in two ways:
    1. For first < second the walk reaches a node whose left child holds exactly the rest of the
       first tree (m == k). RFC 9162 takes that left child and the right child's root; pymerkle
       goes on down to the right child's first leaf, so its path starts with that leaf and its
       inclusion siblings (subset bits 0), which fold by `rule` to the right child's root, and then
       has the left child (the first subset bit 1). RFC 9162 lists the left child first.
    2. RFC 9162 leaves that left child out when it is the whole first tree (its hash is the first
       root, which the verifier has); pymerkle keeps it. So for first == second pymerkle's path is
       [root] and RFC 9162's is [].
    """
    path = list(proof.path)
    if proof.subset[0] == 0:
        split = proof.subset.index(1)
        right = path[0]
        for bit, digest in zip(proof.rule, path[1:split], strict=False):
            right = proof.hasher.hash_pair(digest, right) if bit else proof.hasher.hash_pair(right, digest)
        path = [path[split], right, *path[split + 1:]]
    return path[1:] if path[0] == first_root else path


def flipped(digest: bytes, bit: int) -> bytes:
    out = bytearray(digest)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


# --- agreement with pymerkle -------------------------------------------------------------------


def test_proofs_for_every_pair_of_sizes_up_to_200_verify_and_match_pymerkles() -> None:
    tree = InmemoryTree(algorithm="sha256")
    for entry in ENTRIES[:MAX_SIZE]:
        tree.append_entry(entry)
    their_roots = [b""] + [tree.get_root(size) for size in range(1, MAX_SIZE + 1)]
    assert their_roots[1:] == ROOTS[1:MAX_SIZE + 1]
    for second in range(1, MAX_SIZE + 1):
        node = node_of(second)
        for first in range(1, second + 1):
            ours = consistency_proof(first, second, node)
            verify_consistency(first, second, their_roots[first], their_roots[second], ours)
            theirs = tree.prove_consistency(first, second)
            pymerkle.verify_consistency(their_roots[first], their_roots[second], theirs,
                                        prior_size=first, later_size=second)
            assert ours == rfc9162_from_pymerkle(theirs, their_roots[first]), (first, second)


def test_rfc6962_known_answers() -> None:
    # consistencyProofs of transparency-dev/merkle proof/verify_test.go (from certificate-transparency's
    # C++ ReferenceSnapshotConsistency), over the 8 standard RFC 6962 test leaves.
    leaves = [leaf_hash(bytes.fromhex(h)) for h in ("", "00", "10", "2021", "3031", "40414243", "5051525354555657",
                                                      "606162636465666768696a6b6c6d6e6f")]
    node = levels_node(build_levels(leaves))
    expected = {
        (1, 8): ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                 "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                 "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"],
        (6, 8): ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                 "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                 "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"],
        (8, 8): [],
    }
    for (first, second), hashes in expected.items():
        assert [h.hex() for h in consistency_proof(first, second, node)] == hashes
    five = levels_node(build_levels(leaves[:5]))
    assert [h.hex() for h in consistency_proof(2, 5, five)] == [
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]


# --- rejections --------------------------------------------------------------------------------



def sampled_pairs() -> list[tuple[int, int]]:
    """Every (first, second) with first < second <= 40, and 40 random ones up to MAX_SIZE."""
    rng = random.Random(6962)
    larger = [rng.randrange(41, MAX_SIZE + 1) for _ in range(40)]
    return [(m, n) for n in range(2, 41) for m in range(1, n)] + [(rng.randrange(1, n), n) for n in larger]


SAMPLED_PAIRS = sampled_pairs()


def test_a_bit_flipped_in_any_hash_of_the_proof_is_rejected() -> None:
    bits = (0, 7, 8, 63, 64, 100, 127, 128, 200, 248, 255)  # both ends of the first and last bytes, some inside
    for first, second in SAMPLED_PAIRS:
        proof = proof_of(first, second)
        for hop in range(len(proof)):
            for bit in bits:
                tampered = [*proof[:hop], flipped(proof[hop], bit), *proof[hop + 1:]]
                with pytest.raises(ProofError, match="does not reach the (first|second) root"):
                    verify_consistency(first, second, ROOTS[first], ROOTS[second], tampered)


def test_a_removed_or_appended_hash_is_rejected() -> None:
    for first, second in SAMPLED_PAIRS:
        proof = proof_of(first, second)
        for hop in range(len(proof)):
            with pytest.raises(ProofError):
                verify_consistency(first, second, ROOTS[first], ROOTS[second], proof[:hop] + proof[hop + 1:])
        for extra in (proof[-1], ROOTS[second], LEAVES[0]):
            with pytest.raises(ProofError, match="too long"):
                verify_consistency(first, second, ROOTS[first], ROOTS[second], [*proof, extra])


def test_a_proof_is_rejected_for_neighbouring_sizes() -> None:
    # With the roots of the sizes claimed. (Only the root binds `second`: with the same roots, a
    # proof of (m, n) folds to the same root for most (m, n + 1), as the RFC's algorithm allows.
    # Roots and sizes come together from a signed or anchored source.)
    for first, second in SAMPLED_PAIRS:
        proof = proof_of(first, second)
        with pytest.raises(ProofError):
            verify_consistency(first, second + 1, ROOTS[first], ROOTS[second + 1], proof)
        for first_root in (ROOTS[first], ROOTS[first + 1]):
            with pytest.raises(ProofError):
                verify_consistency(first + 1, second, first_root, ROOTS[second], proof)


def test_swapped_or_wrong_roots_are_rejected() -> None:
    for first, second in SAMPLED_PAIRS:
        proof = proof_of(first, second)
        with pytest.raises(ProofError):
            verify_consistency(first, second, ROOTS[second], ROOTS[first], proof)
        # A first tree of 2^k leaves is a subtree of the second: its root is not in the proof but
        # taken as given, so a wrong one shows up at the second root.
        with pytest.raises(ProofError, match="does not reach the (first|second) root"):
            verify_consistency(first, second, flipped(ROOTS[first], 3), ROOTS[second], proof)
        with pytest.raises(ProofError, match="second root"):
            verify_consistency(first, second, ROOTS[first], flipped(ROOTS[second], 3), proof)


def test_bad_sizes_are_rejected() -> None:
    proof = proof_of(3, 7)
    for first, second in ((8, 7), (0, 7), (-1, 7), (0, 0)):
        with pytest.raises(ProofError, match="needs 0 < first <= second"):
            verify_consistency(first, second, ROOTS[3], ROOTS[7], proof)
        with pytest.raises(ValueError, match="needs 0 < first <= second"):
            consistency_proof(first, second, node_of(7))
    with pytest.raises(ProofError, match="is empty"):
        verify_consistency(3, 7, ROOTS[3], ROOTS[7], [])


def test_equal_sizes_need_an_empty_proof_and_equal_roots() -> None:
    for size in (1, 2, 5, 8, 200):
        assert proof_of(size, size) == []
        verify_consistency(size, size, ROOTS[size], ROOTS[size], [])
        with pytest.raises(ProofError, match="must be empty"):
            verify_consistency(size, size, ROOTS[size], ROOTS[size], [ROOTS[size]])
        with pytest.raises(ProofError, match="different roots"):
            verify_consistency(size, size, ROOTS[size], ROOTS[size + 1], [])


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=1, max_value=MAX_SIZE), st.data())
def test_a_proof_verifies_and_any_single_bit_flip_is_rejected(second: int, data: st.DataObject) -> None:
    first = data.draw(st.integers(1, second))
    proof = proof_of(first, second)
    verify_consistency(first, second, ROOTS[first], ROOTS[second], proof)
    if proof:
        hop = data.draw(st.integers(0, len(proof) - 1))
        bit = data.draw(st.integers(0, 255))
        tampered = [*proof[:hop], flipped(proof[hop], bit), *proof[hop + 1:]]
        with pytest.raises(ProofError):
            verify_consistency(first, second, ROOTS[first], ROOTS[second], tampered)
