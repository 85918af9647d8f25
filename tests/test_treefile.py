"""The stored tree serves the same proofs and root as the in-memory RFC 9162 tree."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.core.merkle import (
    EMPTY_ROOT,
    InclusionProof,
    build_levels,
    inclusion_path,
    leaf_hash,
    root,
    verify_inclusion,
)
from pipeline.core.treefile import TreeAssembler, encode, from_bytes, full_tiles

pytestmark = pytest.mark.unit


@settings(max_examples=80, deadline=None)
@given(st.integers(min_value=1, max_value=300), st.integers(min_value=0, max_value=4), st.data())
def test_stored_proofs_equal_in_memory_proofs_for_any_size_and_tile(size: int, height: int, data: st.DataObject) -> None:
    leaves = [leaf_hash(i.to_bytes(4, "big")) for i in range(size)]
    blob, top = encode(leaves, tile_height=height)
    assert top == root(leaves)
    stored = from_bytes(blob)
    assert stored.tree_size == size and stored.root() == top
    levels = build_levels(leaves)
    for index in {0, size - 1, data.draw(st.integers(0, size - 1))}:
        path = stored.proof(index)
        assert path == inclusion_path(levels, index)
        assert stored.leaf(index) == leaves[index]
        verify_inclusion(InclusionProof(index, size, tuple(path)), leaves[index], top)
    # The bulk form (receipts) serves the same paths, in any order of indices.
    order = data.draw(st.permutations(range(size)))
    prove = stored.prover()
    assert [prove(i) for i in order] == [inclusion_path(levels, i) for i in order]


def test_an_empty_tree_has_the_empty_root() -> None:
    blob, top = encode([])
    assert top == EMPTY_ROOT and from_bytes(blob).root() == EMPTY_ROOT
    with pytest.raises(IndexError):
        from_bytes(blob).proof(0)
    with pytest.raises(IndexError):
        from_bytes(blob).prover()(0)


def test_the_parallel_bulk_builder_writes_the_same_bytes() -> None:
    from pipeline.core.merkle import leaf_hashes
    from pipeline.core.treefile import PARALLEL_FROM, encode_entries

    entries = [i.to_bytes(4, "big") for i in range(PARALLEL_FROM + 1234)]
    assert encode_entries(entries, workers=2) == encode(leaf_hashes(entries))
    assert encode_entries(entries[:5000], workers=2) == encode(leaf_hashes(entries[:5000]))


@settings(max_examples=120, deadline=None)
@given(st.integers(min_value=0, max_value=200), st.integers(min_value=0, max_value=4), st.data())
def test_a_tree_assembled_from_runs_cut_anywhere_is_the_tree_encoded_whole(size: int, height: int,
                                                                            data: st.DataObject) -> None:
    # The partition tasks each tile their own run of leaves; the driver folds the runs in order.
    leaves = [leaf_hash(i.to_bytes(4, "big")) for i in range(size)]
    cuts = sorted(data.draw(st.lists(st.integers(0, size), max_size=6)))
    written: list[bytes] = []
    tree = TreeAssembler(size, written.append, height)
    for lo, hi in zip([0, *cuts], [*cuts, size], strict=True):
        head, blob, roots, tail = full_tiles(leaves[lo:hi], lo, height)
        assert len(head) + len(roots) * (1 << height) + len(tail) == hi - lo
        tree.leaves(head)
        if roots:
            tree.tiles(blob, roots)
        tree.leaves(tail)
    top = tree.finish()
    assert (b"".join(written), top) == encode(leaves, tile_height=height)


def test_an_assembled_tree_refuses_a_wrong_leaf_count_and_misplaced_tiles() -> None:
    leaves = [leaf_hash(i.to_bytes(4, "big")) for i in range(40)]
    tree = TreeAssembler(41, lambda _: None, 3)
    tree.leaves(leaves)
    with pytest.raises(ValueError, match="41 leaves, 40 were given"):
        tree.finish()
    tree = TreeAssembler(40, lambda _: None, 3)
    tree.leaves(leaves[:3])
    _, blob, roots, _ = full_tiles(leaves[8:16], 8, 3)
    with pytest.raises(ValueError, match="do not fill a tile"):
        tree.tiles(blob, roots)
