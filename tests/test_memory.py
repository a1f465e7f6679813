"""Peak memory per stretch of work, on a real multi-process cluster: a worker's peak is its own
during the stretch, not its lifetime's."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import pytest
from distributed import Client

from tests.conftest import DaskProcesses
from tpgrid.memory import PeakMemoryMeter, peak_rss_mib, reset_peak_rss

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

BURST_MIB = 400


def burst() -> Callable[[int], int]:
    """A function that touches ``mib`` MiB, then frees it: the peak rises, the present use does
    not. Made here so that it is pickled by value (the workers cannot import the tests)."""

    def allocate_and_free(mib: int) -> int:
        array = np.ones(mib * 2**20 // 8)
        return int(array[::4096].sum() > 0)

    return allocate_and_free


def test_without_a_client_only_this_process_is_measured() -> None:
    # First in the module: the cluster's client below is not open yet.
    assert reset_peak_rss()  # Linux: the peak can be reset
    meter = PeakMemoryMeter()
    burst()(BURST_MIB)
    peak = meter.read()
    assert peak.worker_mib == {}
    assert peak.highest_worker_mib is None
    assert peak.process_mib >= 0.9 * BURST_MIB


@pytest.fixture(scope="module")
def client(dask_processes: DaskProcesses) -> Iterator[Client]:
    with Client(dask_processes.address) as client:
        yield client


def test_a_stretch_reports_the_burst_of_the_worker_that_had_it(client: Client) -> None:
    meter = PeakMemoryMeter()
    (worker, *_) = client.scheduler_info()["workers"]
    quiet = client.run(peak_rss_mib)
    client.submit(burst(), BURST_MIB, workers=[worker], pure=False).result()
    peak = meter.read()
    assert set(peak.worker_mib) == set(quiet)
    assert peak.worker_mib[worker] >= quiet[worker] + 0.9 * BURST_MIB
    assert peak.highest_worker_mib == peak.worker_mib[worker]
    for other in set(quiet) - {worker}:
        assert peak.worker_mib[other] < quiet[other] + 0.5 * BURST_MIB


def test_the_next_stretch_starts_from_the_present_not_the_old_peak(client: Client) -> None:
    client.run(burst(), BURST_MIB)
    before = client.run(peak_rss_mib)
    peak = PeakMemoryMeter().read()
    for address, mib in peak.worker_mib.items():
        assert mib < before[address] - 0.5 * BURST_MIB
