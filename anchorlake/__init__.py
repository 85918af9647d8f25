"""anchorlake for AI teams: `anchorlake.open_dataset(name, ...)` reads a dataset's batches after
verifying each against the chain (see pipeline.api)."""

from pipeline.api import AnchoredDataset, Unverified, open_dataset

__all__ = ["AnchoredDataset", "Unverified", "open_dataset"]
