"""Dedupe keys of earlier batches, held compactly for lookup (numpy, 32 bytes a key)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pipeline.lake.batch import BatchFiles
from pipeline.lake.storage import Lake


class PriorKeys:
    """Every dedupe key committed by batches 0..seq-1 and the record id of its first row."""

    def __init__(self, keys: np.ndarray, record_ids: np.ndarray) -> None:
        order = np.argsort(keys, kind="stable")
        self.keys = keys[order]
        self.record_ids = record_ids[order]

    @classmethod
    def load(cls, lake: Lake, dataset: str, seq: int) -> PriorKeys:
        keys: list[np.ndarray] = []
        ids: list[np.ndarray] = []
        for earlier in range(seq):
            table = BatchFiles(lake, dataset, earlier).index(["dedupe_key", "record_id"])
            keys.append(np.array(table.column("dedupe_key").to_pylist(), dtype="S32"))
            ids.append(np.array(table.column("record_id").to_pylist(), dtype="S64"))
        if not keys:
            return cls(np.array([], dtype="S32"), np.array([], dtype="S64"))
        # A key seen in two earlier batches can only be in the first: later copies were duplicates.
        return cls(np.concatenate(keys), np.concatenate(ids))

    def lookup(self, keys: Sequence[bytes]) -> list[str | None]:
        """Record id of the earlier row with each key, or None."""
        if len(self.keys) == 0 or not keys:
            return [None] * len(keys)
        wanted = np.array(keys, dtype="S32")
        positions = np.searchsorted(self.keys, wanted)
        positions[positions == len(self.keys)] = 0
        hits = self.keys[positions] == wanted
        return [self.record_ids[p].decode() if hit else None for p, hit in zip(positions, hits, strict=True)]
