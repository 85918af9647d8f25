"""Where parallel work runs (SPEC §13.11): worker processes on this machine, forked so each
inherits what the parent prepared before the fork (a batch's trees, a GX context, imported
modules), or tasks on a Ray cluster. Both sit behind concurrent.futures' Executor, and every
caller takes results in the order it submitted them, so nothing it writes depends on scheduling."""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any

from pipeline import config

PARALLEL_FROM_ROWS = 1 << 16  # below this many rows, worker processes cost more than they save
TASK_RETRIES = 3  # a Ray task whose worker died (a node lost, a process killed) runs again

log = logging.getLogger(__name__)


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
    # Each worker freezes what it inherits (a GX context and its modules: millions of objects), so
    # its garbage collector never walks them again, nor writes to the pages they share with this
    # process; it found nothing there to collect, and took a twentieth of a commit's time.
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("fork"), initializer=gc.freeze)


def engine_pool() -> Executor | None:
    """The batch engine's pool (ANCHORLAKE_ENGINE): `local`, forked workers (None on one core);
    `ray`, Ray tasks on the cluster at RAY_ADDRESS (a local Ray when it is unset)."""
    return RayPool() if config.engine() == "ray" else fork_pool()


def pool_width(pool: Executor | None) -> int:
    """How many tasks `pool` runs at once: its worker processes, or the Ray cluster's CPUs."""
    if pool is None:
        return 1
    if isinstance(pool, RayPool):
        import ray

        return max(1, int(ray.cluster_resources().get("CPU", 1)))
    return int(getattr(pool, "_max_workers", config.cores()))


class RayPool(Executor):
    """Each submit is one Ray task. The functions are pipeline's own, so each Ray worker imports
    them from the anchorlake package installed beside Ray; arguments and results travel by
    Ray's object store."""

    def __init__(self) -> None:
        import ray

        if not ray.is_initialized():
            _ray_messages_to_log()
            # A Ray worker's environment is its node's, not this process's: the seed this process
            # checked is passed, and an empty one when it has none (a node's own never applies).
            # A job's driver already runs in the job's environment, which holds it.
            seed = config.salt_seed()
            env = None if config.inside_ray_job() else {"env_vars": {
                "ANCHORLAKE_TEST_SALT_SEED": "" if seed is None else seed.decode(), **config.test_hooks()}}
            ray.init(configure_logging=False, log_to_driver=False, runtime_env=env)
            log.info("engine ray: %s CPUs", ray.cluster_resources().get("CPU", 0))
        self._remote: dict[Callable[..., Any], Any] = {}
        self._pending: set[Any] = set()  # tasks not yet done; a done one's result is let go with its future

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        import ray

        remote = self._remote.get(fn)
        if remote is None:
            remote = self._remote[fn] = ray.remote(max_retries=TASK_RETRIES)(fn)
        ref = remote.remote(*args, **kwargs)
        self._pending.add(ref)
        future: Future[Any] = ref.future()
        future.add_done_callback(lambda _: self._pending.discard(ref))
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        import ray

        if cancel_futures:
            for ref in list(self._pending):  # a finishing task's callback may take its ref out meanwhile
                ray.cancel(ref, force=True)
        self._pending.clear()


def _ray_messages_to_log() -> None:
    """Ray prints what it pushes to a driver (a worker died, a task is retried) on stdout, where
    the CLI's --json goes: send it to the log (stderr) instead. Ray has no setting for this, so
    its module function is replaced."""
    import ray._private.worker as ray_worker

    if not hasattr(ray_worker, "print_to_stdstream"):
        raise RuntimeError(f"this Ray ({ray_worker.__file__}) prints its messages another way; anchorlake's "
                           "--json output would not be kept clean: pin the Ray of requirements.txt")

    def to_log(data: dict[str, Any], ignore_prefix: bool) -> None:
        for line in data.get("lines", []):
            log.warning("ray (%s): %s", data.get("pid", "?"), line)

    ray_worker.print_to_stdstream = to_log
