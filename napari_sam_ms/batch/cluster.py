"""Where a batch runs: in this process, on a local Dask cluster, or on an existing one.

One decision (:func:`choose_mode`):

- a ``distributed.Client`` given: its cluster;
- ``--scheduler ADDRESS``: the cluster of that scheduler (:data:`CONNECT_TIMEOUT` to reach it);
- ``--workers 0``: this process, without Dask (the command's behaviour before batches);
- ``--workers N``: a ``LocalCluster`` of N single-threaded worker processes on 127.0.0.1,
  each running MindSpore with ``max(1, cores // N)`` threads, so that N workers share the
  cores without oversubscribing them, each kept on cores of its own when they fit
  (:func:`core_sets`);
- no option: :data:`IN_PROCESS_MAX` inputs or fewer in this process, more on a
  ``LocalCluster`` of one worker per core (at most one per input).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

IN_PROCESS_MAX = 4
CONNECT_TIMEOUT = 6  # seconds to reach a scheduler before saying it is unreachable
# Dask's periodic work in a local cluster's scheduler, nannies and workers, slowed from
# 100 ms / 500 ms / 20 ms, as the committed throughput was measured (docs/batch.md: +7 % in
# a 30-image probe, nothing measurable in a 100-image run). A batch task lasts seconds.
LOCAL_INTERVALS = {
    "distributed.worker.memory.monitor-interval": "5s",
    "distributed.admin.system-monitor.interval": "5s",
    "distributed.admin.tick.interval": "1s",
}


class Mode(NamedTuple):
    """Where a batch runs and the line that says so."""

    kind: str  # "in-process", "local", "scheduler" or "client"
    workers: int  # worker processes of a local cluster (0 otherwise)
    cpu_threads: int | None  # MindSpore threads per worker (None: the worker's cores)
    message: str


def cores() -> int:
    """The cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def choose_mode(
    n_inputs: int, workers: int | None, scheduler: str | None, client: Any = None
) -> Mode:
    """Where a batch of ``n_inputs`` runs (rules: module docstring)."""
    what = f"{n_inputs} input{'s' if n_inputs != 1 else ''}"
    if client is not None:
        return Mode("client", 0, None, f"segmenting {what} on the given Dask client")
    if scheduler:
        return Mode("scheduler", 0, None, f"segmenting {what} on the Dask cluster at {scheduler}")
    why = ""
    if workers is None:
        few = n_inputs <= IN_PROCESS_MAX
        workers = 0 if few else max(1, min(cores(), n_inputs))
        why = (
            f" ({IN_PROCESS_MAX} or fewer inputs; --workers N for a Dask cluster)"
            if few
            else f" (more than {IN_PROCESS_MAX} inputs: one worker per core; --workers 0: "
            "in this process)"
        )
    if workers < 0:
        raise ValueError(f"--workers must be 0 or more, got {workers}")
    if workers == 0:
        return Mode("in-process", 0, None, f"segmenting {what} in this process{why}")
    threads = max(1, cores() // workers)
    return Mode(
        "local",
        workers,
        threads,
        f"segmenting {what} on a local Dask cluster of {workers} worker process"
        f"{'es' if workers != 1 else ''} with {threads} MindSpore thread"
        f"{'s' if threads != 1 else ''} each{why}",
    )


def thread_environ(threads: int) -> dict[str, str]:
    """OpenMP's, OpenBLAS's and MKL's thread variables at ``threads`` (a worker's MindSpore
    threads): what a worker process's environment must say for numpy and OpenCV."""
    return {f"{lib}_NUM_THREADS": str(threads) for lib in ("OMP", "OPENBLAS", "MKL")}


def core_sets(
    workers: int, threads: int, available: Sequence[int] | None = None
) -> list[tuple[int, ...]] | None:
    """The cores each worker of a local cluster is kept on: ``threads`` of ``available``
    (this process's cores) each, in order. None, and the workers are not pinned, when they
    would not fit (more threads than cores) or the platform cannot pin threads.

    Unpinned, MindSpore's runtime threads of two single-threaded workers wander to the other
    core and wait there busily: two workers made 32 images a minute unpinned and 50 pinned
    (docs/batch.md).
    """
    if available is None:
        if not hasattr(os, "sched_setaffinity") or not os.path.isdir("/proc/self/task"):
            return None
        available = sorted(os.sched_getaffinity(0))
    if workers < 1 or threads < 1 or workers * threads > len(available):
        return None
    return [tuple(available[i * threads : (i + 1) * threads]) for i in range(workers)]


def local_cluster(workers: int, cpu_threads: int) -> Any:
    """A ``LocalCluster`` of ``workers`` single-threaded worker processes on 127.0.0.1.

    Each worker starts with OpenMP's, OpenBLAS's and MKL's threads at ``cpu_threads`` (its
    MindSpore threads) and without glibc's ``MALLOC_TRIM_THRESHOLD_``: Dask's nanny sets
    1 thread each and 64 KiB trimming, which made a worker's whole-image run a third slower
    than the same run in this process (measured: docs/batch.md). Other pre-spawn variables
    of the Dask configuration are kept. Dask's monitors run at :data:`LOCAL_INTERVALS`.
    Worker i is kept on ``core_sets(workers, cpu_threads)[i]`` from its start (also when its
    nanny restarts it), before any model is loaded; not pinned when they do not fit.
    """
    import dask
    from distributed import LocalCluster

    from .worker import CorePlugin

    sets = core_sets(workers, cpu_threads)
    plugins = {CorePlugin(sets)} if sets is not None else set()

    env = dict(dask.config.get("distributed.nanny.pre-spawn-environ", default={}) or {})
    env.pop("MALLOC_TRIM_THRESHOLD_", None)
    env.update(thread_environ(cpu_threads))
    with dask.config.set({"distributed.nanny.pre-spawn-environ": env, **LOCAL_INTERVALS}):
        return LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address="127.0.0.1:0",  # its HTTP server too: on this machine only
            silence_logs=logging.ERROR,
            plugins=plugins,  # passed on to every worker (distributed.Worker's own argument)
        )


@contextlib.contextmanager
def connect(mode: Mode, client: Any = None, scheduler: str | None = None) -> Iterator[Any]:
    """A ``distributed.Client`` for ``mode``; a cluster started here is closed on exit
    (also after an error or Ctrl+C).

    Raises:
        ConnectionError: the scheduler cannot be reached within :data:`CONNECT_TIMEOUT`.
    """
    if mode.kind == "client":
        yield client
        return
    from distributed import Client

    if mode.kind == "scheduler":
        try:
            remote = Client(scheduler, timeout=CONNECT_TIMEOUT, set_as_default=False)
        except (OSError, TimeoutError) as exc:
            raise ConnectionError(
                f"cannot reach the Dask scheduler at {scheduler} within {CONNECT_TIMEOUT} s "
                f"({type(exc).__name__}); start one with 'dask scheduler' and workers with "
                "'dask worker ADDRESS', or use --workers N for a local cluster"
            ) from None
        with remote:
            yield remote
        return
    cluster = local_cluster(mode.workers, mode.cpu_threads or 1)
    try:
        with Client(cluster, set_as_default=False) as local:
            yield local
    finally:
        cluster.close()


def _has_dashboard() -> bool:
    """The dashboard needs bokeh; without it the cluster runs without one."""
    return importlib.util.find_spec("bokeh") is not None


def dashboard_line(client: Any, mode: Mode) -> str:
    """``dashboard: URL``, or why there is none."""
    link = None
    if mode.kind != "local" or _has_dashboard():
        try:
            link = client.dashboard_link
        except Exception:  # a scheduler without a dashboard
            link = None
    return f"dashboard: {link}" if link else "dashboard: none (Dask's dashboard needs bokeh)"
