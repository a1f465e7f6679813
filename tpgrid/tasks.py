"""Run independent calls as tasks on the current Dask client, or on local threads without one.

Fitting, the report and publishing each have a batch of independent calls (CV folds, element
analyses, figures, COGs) that the cluster's workers can share; run without a cluster (a plain
library call), the same calls run on a thread pool in this process.
"""

from __future__ import annotations

import concurrent.futures
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


class TaskRunner:
    """Runs tasks on the current Dask client, or on ``local_threads`` threads when there is
    none (default: one per core)."""

    def __init__(self, local_threads: int | None = None) -> None:
        from distributed import get_client

        try:
            self.client: Any = get_client()
        except ValueError:
            self.client = None
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
        if self.client is not None:
            from distributed import as_completed

            finished: Iterator[Any] = as_completed(futures)
        else:
            finished = concurrent.futures.as_completed(futures)
        for done, _ in enumerate(finished, start=1):
            if report:
                report(done, len(futures))
        return [future.result() for future in futures]

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
