"""The stored Merkle tree of a batch (`tree.bin`): every node, laid out so that any leaf's
inclusion proof is served with two ranged reads, without re-reading or re-hashing the data.

Layout (integers big-endian):
  header  8 bytes magic b"ALTREE01", u64 tree_size, u32 tile_height k, u32 reserved
  tiles   the leaves in tiles of T = 2**k; per tile, all its levels (leaf level first), each
          hash 32 bytes. Every tile but the last is full: (2T - 1) hashes.
  top     all levels of the RFC 9162 tree over the tile roots.
Because RFC 9162 splits a range at the largest power of two below its size, every split above
tile size falls on a tile boundary: a leaf's path is its path inside the tile, then its tile's
path in the top tree. Pure: bytes in, bytes out.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from pipeline.core.merkle import (
    EMPTY_ROOT,
    HASH_SIZE,
    build_levels,
    inclusion_path,
    leaf_hashes,
    root_from_levels,
)
from pipeline.errors import FormatError

MAGIC = b"ALTREE01"
HEADER = struct.Struct(">8sQII")
DEFAULT_TILE_HEIGHT = 10


def _level_sizes(leaves: int) -> list[int]:
    sizes = [leaves]
    while sizes[-1] > 1:
        sizes.append((sizes[-1] + 1) // 2)
    return sizes


def _level_offsets(leaves: int) -> list[int]:
    """Where each level of a tree of `leaves` starts, in hashes, when stored level by level."""
    offsets = [0]
    for size in _level_sizes(leaves)[:-1]:
        offsets.append(offsets[-1] + size)
    return offsets


def _flatten(levels: Sequence[Sequence[bytes]]) -> bytes:
    return b"".join(b"".join(level) for level in levels)


def _tiles(leaves: Sequence[bytes], tile: int, start: int, stop: int) -> tuple[bytes, list[bytes]]:
    """The stored form of the tiles over leaves[start:stop] and their roots."""
    parts: list[bytes] = []
    roots = []
    for first in range(start, stop, tile):
        levels = build_levels(leaves[first:min(first + tile, stop)])
        for level in levels:
            parts += level
        roots.append(root_from_levels(levels))
    return b"".join(parts), roots


def encode(leaves: Sequence[bytes], tile_height: int = DEFAULT_TILE_HEIGHT) -> tuple[bytes, bytes]:
    """Return (tree file bytes, root) for the given leaf hashes."""
    tile = 1 << tile_height
    blob, roots = _tiles(leaves, tile, 0, len(leaves))
    top = build_levels(roots)
    data = b"".join([HEADER.pack(MAGIC, len(leaves), tile_height, 0), blob, _flatten(top)])
    return data, (root_from_levels(top) if leaves else EMPTY_ROOT)


def full_tiles(leaves: Sequence[bytes], first: int, tile_height: int = DEFAULT_TILE_HEIGHT
               ) -> tuple[list[bytes], bytes, list[bytes], list[bytes]]:
    """The tiles of a run of leaves at tree positions [first, first + len(leaves)), for building a
    tree in pieces: (head, blob, roots, tail). `blob` is the stored form of the tiles wholly inside
    the run and `roots` their roots; `head` the leaves before the first tile boundary in it and
    `tail` those after the last (all of them, when no tile lies wholly inside). Requires first >= 0."""
    tile = 1 << tile_height
    start = min(len(leaves), -first % tile)
    stop = start + (len(leaves) - start) // tile * tile
    if stop <= start:
        return list(leaves), b"", [], []
    blob, roots = _tiles(leaves, tile, start, stop)
    return list(leaves[:start]), blob, roots, list(leaves[stop:])


class TreeAssembler:
    """Writes a tree file of `size` leaves through `write(bytes)` from runs given in leaf order as
    full_tiles() cuts them: loose leaves are tiled here, whole tiles are copied. Holds one tile of
    leaves and every tile root (32 bytes per 2**tile_height leaves). Same bytes as encode()."""

    def __init__(self, size: int, write: Callable[[bytes], Any], tile_height: int = DEFAULT_TILE_HEIGHT) -> None:
        self.size, self.write, self.tile_height = size, write, tile_height
        self.tile = 1 << tile_height
        self.loose: list[bytes] = []
        self.roots: list[bytes] = []
        self.placed = 0
        write(HEADER.pack(MAGIC, size, tile_height, 0))

    def leaves(self, leaves: Sequence[bytes]) -> None:
        """Leaves not yet tiled. Requires them to start where the tree so far ends."""
        self.loose += leaves
        self.placed += len(leaves)
        full = len(self.loose) // self.tile * self.tile
        if full:
            blob, roots = _tiles(self.loose, self.tile, 0, full)
            self.write(blob)
            self.roots += roots
            del self.loose[:full]

    def tiles(self, blob: bytes | Iterator[bytes], roots: Sequence[bytes]) -> None:
        """Whole tiles (their stored form, in pieces if an iterator). Requires the tree so far to
        end on a tile boundary."""
        if roots and self.loose:
            raise ValueError(f"{len(self.loose)} leaves before these tiles do not fill a tile")
        for piece in [blob] if isinstance(blob, bytes) else blob:
            self.write(piece)
        self.roots += roots
        self.placed += len(roots) * self.tile

    def finish(self) -> bytes:
        """Write the last (partial) tile and the top levels; the root. Requires `size` leaves placed."""
        if self.placed != self.size:
            raise ValueError(f"the tree was declared with {self.size} leaves, {self.placed} were given")
        if self.loose:
            blob, roots = _tiles(self.loose, self.tile, 0, len(self.loose))
            self.write(blob)
            self.roots += roots
            self.loose = []
        top = build_levels(self.roots)
        self.write(_flatten(top))
        return root_from_levels(top) if self.size else EMPTY_ROOT


_ENTRIES: Sequence[bytes] = ()
PARALLEL_FROM = 1 << 17  # below this many entries, worker processes cost more than they save


def _entries_worker(span: tuple[int, int, int]) -> tuple[bytes, list[bytes]]:
    start, stop, tile = span
    leaves = leaf_hashes(_ENTRIES[start:stop])
    return _tiles(leaves, tile, 0, len(leaves))


def encode_entries(entries: Sequence[bytes], tile_height: int = DEFAULT_TILE_HEIGHT,
                   workers: int | None = None) -> tuple[bytes, bytes]:
    """encode() over the leaf hashes of `entries` (leaf bytes), hashing and building tiles in one
    forked worker per core for large batches. Same bytes and root as encode(leaf_hashes(entries))."""
    global _ENTRIES
    tile = 1 << tile_height
    n = len(entries)
    if workers is None:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if workers < 2 or n < PARALLEL_FROM:
        return encode(leaf_hashes(entries), tile_height)
    import multiprocessing

    tiles_each = -(-((n + tile - 1) // tile) // workers)  # ceil: contiguous runs of whole tiles
    spans = [(a, min(n, a + tiles_each * tile), tile) for a in range(0, n, tiles_each * tile)]
    _ENTRIES = entries  # inherited by the forked workers, not pickled
    try:
        with multiprocessing.get_context("fork").Pool(len(spans)) as pool:
            results = pool.map(_entries_worker, spans)
    finally:
        _ENTRIES = ()
    roots = [r for _, rs in results for r in rs]
    top = build_levels(roots)
    blob = b"".join([HEADER.pack(MAGIC, n, tile_height, 0), *(b for b, _ in results), _flatten(top)])
    return blob, root_from_levels(top)


def _levels(data: bytes, offset: int, leaves: int) -> list[list[bytes]]:
    """The levels (leaf level first) of a tree of `leaves` stored level by level from `offset`."""
    levels = []
    for size in _level_sizes(leaves):
        levels.append([data[offset + i * HASH_SIZE: offset + (i + 1) * HASH_SIZE] for i in range(size)])
        offset += size * HASH_SIZE
    return levels


class TreeFile:
    """Reads proofs from a stored tree through `read(offset, length)` (a ranged read)."""

    def __init__(self, read: Callable[[int, int], bytes], source: str = "stored tree") -> None:
        self.read, self.source = read, source
        magic, self.tree_size, self.tile_height, _ = HEADER.unpack(read(0, HEADER.size))
        if magic != MAGIC:
            raise FormatError(source, "magic", f"expected {MAGIC!r}")
        self.tile = 1 << self.tile_height
        self.tiles = (self.tree_size + self.tile - 1) // self.tile
        self.slot = (2 * self.tile - 1) * HASH_SIZE

    def _tile_leaves(self, t: int) -> int:
        return min(self.tile, self.tree_size - t * self.tile)

    def _tile_offset(self, t: int) -> int:
        return HEADER.size + t * self.slot

    def _top_offset(self) -> int:
        last = self.tiles - 1
        return self._tile_offset(last) + sum(_level_sizes(self._tile_leaves(last))) * HASH_SIZE

    def _check(self, index: int) -> int:
        if not 0 <= index < self.tree_size:
            raise IndexError(f"leaf index {index} is outside a tree of size {self.tree_size}")
        return index >> self.tile_height

    def proof(self, index: int) -> list[bytes]:
        """RFC 9162 inclusion path of leaf `index`, with two reads. Requires 0 <= index < tree_size."""
        t = self._check(index)
        leaves = self._tile_leaves(t)
        tile = _levels(self.read(self._tile_offset(t), sum(_level_sizes(leaves)) * HASH_SIZE), 0, leaves)
        top = _levels(self.read(self._top_offset(), sum(_level_sizes(self.tiles)) * HASH_SIZE), 0, self.tiles)
        return inclusion_path(tile, index - t * self.tile) + inclusion_path(top, t)

    def prover(self) -> Callable[[int], list[bytes]]:
        """A function giving the inclusion path of any leaf, from one read of the whole tree;
        each tile is unpacked once, when first asked for. Requires 0 <= index < tree_size."""
        if self.tree_size == 0:
            return self.proof  # no leaf to prove: it raises IndexError for any index
        top_offset = self._top_offset()
        whole = self.read(0, top_offset + sum(_level_sizes(self.tiles)) * HASH_SIZE)
        top = _levels(whole, top_offset, self.tiles)
        tiles: dict[int, list[list[bytes]]] = {}

        def prove(index: int) -> list[bytes]:
            t = self._check(index)
            tile = tiles.get(t)
            if tile is None:
                tile = tiles[t] = _levels(whole, self._tile_offset(t), self._tile_leaves(t))
            return inclusion_path(tile, index - t * self.tile) + inclusion_path(top, t)

        return prove

    def node_reader(self) -> Callable[[int, int], bytes]:
        """`node(lo, hi)`, the hash of subtree [lo, hi) of an RFC 9162 split, for range proofs
        (see merkle.range_proof), from one read of the whole tree."""
        top_offset = self._top_offset()
        whole = self.read(0, top_offset + sum(_level_sizes(self.tiles)) * HASH_SIZE)
        k = self.tile_height
        full, last = _level_offsets(self.tile), _level_offsets(self._tile_leaves(self.tiles - 1)) if self.tiles else []
        top = _level_offsets(self.tiles)

        def node(lo: int, hi: int) -> bytes:
            level = (hi - lo - 1).bit_length()  # subtree_position(lo, hi), inlined: a hot loop
            index = lo >> level
            if level <= k:
                t = lo >> k
                at = self._tile_offset(t) + ((last if t == self.tiles - 1 else full)[level]
                                             + index - (t << (k - level))) * HASH_SIZE
            else:
                at = top_offset + (top[level - k] + index) * HASH_SIZE
            return whole[at:at + HASH_SIZE]

        return node

    def leaf(self, index: int) -> bytes:
        t = index >> self.tile_height
        return self.read(self._tile_offset(t) + (index - t * self.tile) * HASH_SIZE, HASH_SIZE)

    def root(self) -> bytes:
        if self.tree_size == 0:
            return EMPTY_ROOT
        return self.read(self._top_offset() + (sum(_level_sizes(self.tiles)) - 1) * HASH_SIZE, HASH_SIZE)


def from_bytes(data: bytes, source: str = "stored tree") -> TreeFile:
    return TreeFile(lambda offset, length: data[offset:offset + length], source)
