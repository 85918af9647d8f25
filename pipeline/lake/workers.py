"""Worker processes on this machine: one per core, forked, so each inherits what the parent
prepared before the fork (a batch's trees, a GX context, imported modules) instead of building it."""

from __future__ import annotations

from concurrent.futures import Executor

from pipeline import config

PARALLEL_FROM_ROWS = 1 << 16  # below this many rows, worker processes cost more than they save


def fork_pool(jobs: int | None = None, rows: int | None = None) -> Executor | None:
    """One forked worker per core, at most `jobs`; None on one core, for fewer than two jobs or for
    fewer than PARALLEL_FROM_ROWS `rows`."""
    cores = config.cores()
    if cores < 2 or (jobs is not None and jobs < 2) or (rows is not None and rows < PARALLEL_FROM_ROWS):
        return None
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    import numpy  # noqa: F401  imported once, before the fork, rather than in every worker
    import orjson  # noqa: F401
    import pyarrow.compute  # noqa: F401
    import pyarrow.dataset  # noqa: F401  what pq.read_table imports on first use (with pandas: 0.5 s)
    import pyarrow.parquet  # noqa: F401

    workers = cores if jobs is None else min(cores, jobs)
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("fork"))
