"""A fresh LocalCluster for each timed prediction, and the peak memory of its workers."""

from __future__ import annotations

import resource
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


def peak_rss_mib() -> float:
    """This process's peak resident memory, MiB: VmHWM on Linux, which (unlike ``ru_maxrss``)
    does not carry over the peak of the process that spawned this one."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
