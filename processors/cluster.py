"""Dask clusters for processing: the worker settings that coffea chunks need, and a local cluster.

Example:
    >>> from wfit.processors import local_cluster, run_templates  # doctest: +SKIP
    >>> with local_cluster(2) as client:  # doctest: +SKIP
    ...     run = run_templates(fileset, processor, client=client)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

__all__ = ["local_cluster", "worker_settings"]


def worker_settings(trim_malloc: bool = False) -> dict[str, Any]:
    """Dask config for throughput of coffea chunks in worker processes (set it while workers start).

    * distributed's ``MALLOC_TRIM_THRESHOLD_`` worker setting is removed (unless ``trim_malloc``): with it
      each chunk costs about twice as much (glibc returns freed memory to the OS after every large
      awkward/numpy allocation);
    * the workers' statistical profiler is off: it samples every thread's stack each 10 ms, taking the GIL
      from the chunk being processed; on 2 cores, 2 workers processed 1M toy events in 3.0 s with it and
      2.8 s without (1 worker: 5.0 s either way).

    Returns:
        ``{config key: value}`` for :func:`dask.config.set`.
    """
    import dask

    env = dict(dask.config.get("distributed.nanny.pre-spawn-environ", default={}) or {})
    if not trim_malloc:
        env.pop("MALLOC_TRIM_THRESHOLD_", None)
    return {"distributed.nanny.pre-spawn-environ": env, "distributed.worker.profile.enabled": False}


@contextlib.contextmanager
def local_cluster(n_workers: int = 2, *, processes: bool = True, trim_malloc: bool = False) -> Iterator[Any]:
    """A ``distributed`` LocalCluster bound to 127.0.0.1 with a Client, closed on exit.

    Args:
        n_workers: Worker processes (one thread each).
        processes: Worker processes (True) or threads in this process (False).
        trim_malloc: Keep distributed's ``MALLOC_TRIM_THRESHOLD_`` worker setting. It is removed by
            default: with it each chunk costs about twice as much (glibc returns freed memory to the OS
            after every large awkward/numpy allocation).

    Yields:
        The ``distributed.Client``.
    """
    import dask
    from distributed import Client, LocalCluster

    with dask.config.set(worker_settings(trim_malloc)):
        cluster = LocalCluster(
            n_workers=n_workers,
            threads_per_worker=1,
            processes=processes,
            host="127.0.0.1",
            dashboard_address=None,
            # The scheduler's HTTP server (/health, /metrics) still starts without a dashboard, on port 8787
            # unless told otherwise: a second cluster on the machine would fail to start.
            scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
        )
        try:
            with Client(cluster) as client:
                yield client
        finally:
            cluster.close()
