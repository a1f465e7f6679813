"""Dask clients: a LocalCluster on this machine, or an existing scheduler by address.

Work is submitted through whatever client is current, so library functions never need one
passed in; the CLI opens one here and closes it when the command ends.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from distributed import Client, LocalCluster

from tpgrid.errors import ClusterError

ADDRESS_ENV = "DASK_SCHEDULER_ADDRESS"


@contextmanager
def dask_client(
    address: str | None = None, n_workers: int | None = None, threads_per_worker: int = 1
) -> Iterator[Client]:
    """A client to ``address`` (or ``$DASK_SCHEDULER_ADDRESS``), else a LocalCluster of worker
    processes on 127.0.0.1 (one per core by default, one thread each: the numba kernels
    release the GIL, but reprojection and compression scale better across processes)."""
    address = address or os.environ.get(ADDRESS_ENV)
    if address:
        try:
            client = Client(address, timeout="10s")
        except OSError as exc:
            raise ClusterError(
                f"cannot reach the Dask scheduler at {address}: start it, or fix the address "
                f"(--scheduler-address / ${ADDRESS_ENV})"
            ) from exc
        with client:
            yield client
        return
    workers = n_workers or max(1, os.cpu_count() or 1)
    with (
        LocalCluster(
            n_workers=workers,
            threads_per_worker=threads_per_worker,
            host="127.0.0.1",
            dashboard_address="127.0.0.1:0",
            processes=True,
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client
