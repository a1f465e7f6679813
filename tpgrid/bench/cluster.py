"""A fresh LocalCluster for each timed prediction, so its workers' peak memory is the run's."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def local_cluster(workers: int) -> Iterator[Any]:
    """A fresh LocalCluster of single-threaded worker processes and its client: fresh, so each
    worker's peak memory belongs to this run alone."""
    from distributed import Client, LocalCluster

    from tpgrid.client import worker_environment

    with (
        LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=":0",
            env=worker_environment(),
        ) as cluster,
        Client(cluster) as client,
    ):
        client.wait_for_workers(workers)
        yield client
