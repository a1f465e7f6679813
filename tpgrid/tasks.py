"""Run independent calls as tasks on the current Dask client, or on local threads without one.

Fitting, the report and publishing each have a batch of independent calls (CV folds, element
analyses, figures, COGs) that the cluster's workers can share; run without a cluster (a plain
library call), the same calls run on a thread pool in this process. Every stage that waits for
tasks and reports how many are done (these batches, the cube's chunks, the chunk engine's) waits
through :func:`as_finished`.
"""

from __future__ import annotations

import concurrent.futures
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

#: ``progress(what, done, total)``: what is being computed (a layer, an element, a stage) and how
#: many of its ``total`` chunks or tasks are done.
Progress = Callable[[str, int, int], None]


_start_client: Callable[[], Any] | None = None
_starting = threading.Lock()


@contextmanager
def client_on_demand(start: Callable[[], Any]) -> Iterator[None]:
    """Within the block, the first :func:`current_client` that finds no client calls ``start()``,
    which must open one and make it current. A run whose every step is already up to date so
    never pays for starting (and stopping) a cluster."""
    global _start_client
    previous, _start_client = _start_client, start
    try:
        yield
    finally:
        _start_client = previous


def current_client() -> Any | None:
    """The current Dask client; one started by :func:`client_on_demand` if that is in force and
    none is open yet; None when there is none (work then runs in this process)."""
    from distributed import get_client

    try:
        return get_client()
    except ValueError:
        pass
    with _starting:  # two threads needing a client at once start one cluster
        try:
            return get_client()
        except ValueError:
            return None if _start_client is None else _start_client()


class TaskRunner:
    """Runs tasks on the current Dask client, or on ``local_threads`` threads when there is
    none (default: one per core)."""

    def __init__(self, local_threads: int | None = None) -> None:
        self.client: Any = current_client()
        threads = local_threads or os.cpu_count() or 1
        self._pool = concurrent.futures.ThreadPoolExecutor(threads) if self.client is None else None
        if self.client is not None:
            workers = self.client.scheduler_info(n_workers=-1)["workers"]
            self.description = f"dask: {len(workers)} workers at {self.client.scheduler.address}"
        else:
            self.description = f"local threads: {threads}"

    def share(self, *values: Any) -> list[Any]:
        """Send values that many tasks need to the workers once; pass what this returns (or
        tuples of it) as the tasks' arguments."""
        if self.client is None:
            return list(values)
        return list(self.client.scatter(list(values), hash=False))

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self.client is not None:
            return self.client.submit(fn, *args, pure=False)
        assert self._pool is not None
        return self._pool.submit(fn, *args)

    def gather(
        self, futures: list[Any], report: Callable[[int, int], None] | None = None
    ) -> list[Any]:
        """Results in submission order; ``report(done, total)`` as tasks finish."""
        return gather(futures, report)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()


@contextmanager
def task_runner(local_threads: int | None = None) -> Iterator[TaskRunner]:
    """A :class:`TaskRunner`, its local threads shut down on leaving."""
    runner = TaskRunner(local_threads)
    try:
        yield runner
    finally:
        runner.close()


def as_finished(futures: Sequence[Any]) -> Iterator[Any]:
    """``futures`` as they finish, whether Dask futures or futures of a local thread pool."""
    if not futures:
        return  # distributed's as_completed needs a client even for no futures
    if isinstance(futures[0], concurrent.futures.Future):
        yield from concurrent.futures.as_completed(futures)
        return
    from distributed import as_completed

    yield from as_completed(futures)


def gather(futures: Sequence[Any], report: Callable[[int, int], None] | None = None) -> list[Any]:
    """Results of ``futures`` in their order (raising the first failure); ``report(done,
    total)`` as they finish."""
    for done, _ in enumerate(as_finished(futures), start=1):
        if report:
            report(done, len(futures))
    return [future.result() for future in futures]
