"""The peak memory of this process and of the current Dask client's workers over a stretch of
work, such as one step of a run: what a user sizes workers by.

On Linux a process's peak resident memory is VmHWM, which writing ``5`` to
``/proc/self/clear_refs`` resets; each stretch resets it in this process and on every worker
first, so the peak read at its end is the stretch's own. Where that cannot be done the peak is
the process's peak since it started (``ru_maxrss``), which is never lower than the stretch's.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass
from typing import Any

_STATUS = "/proc/self/status"
_CLEAR_REFS = "/proc/self/clear_refs"


def peak_rss_mib() -> float:
    """This process's peak resident memory, MiB: VmHWM on Linux, which (unlike ``ru_maxrss``)
    neither carries over the peak of the process that spawned this one nor outlives a reset."""
    try:
        with open(_STATUS) as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_rss() -> bool:
    """Make this process's peak its present resident memory; False where the system cannot."""
    try:
        with open(_CLEAR_REFS, "w") as clear_refs:
            clear_refs.write("5")
    except OSError:
        return False
    return True


@dataclass(frozen=True)
class PeakMemory:
    """Peak resident memory over a stretch of work, MiB: this process's, and each worker's by
    address (empty when no Dask client was open at the stretch's end)."""

    process_mib: float
    worker_mib: dict[str, float]

    @property
    def highest_worker_mib(self) -> float | None:
        return max(self.worker_mib.values()) if self.worker_mib else None


class PeakMemoryMeter:
    """Measures :class:`PeakMemory` from its creation to :meth:`read`.

    Workers that join during the stretch (a cluster started on demand, a SLURM job replacing a
    cancelled one) report their peak since they started, which lies inside the stretch. It
    never starts a cluster, and a worker that fails to answer is left out rather than failing
    the work it measures.
    """

    def __init__(self) -> None:
        reset_peak_rss()
        client = _open_client()
        if client is not None:
            client.run(reset_peak_rss, on_error="ignore")

    def read(self) -> PeakMemory:
        client = _open_client()
        workers: dict[str, Any] = {}
        if client is not None:
            workers = client.run(peak_rss_mib, on_error="ignore")
        return PeakMemory(
            round(peak_rss_mib(), 1),
            {address: round(float(mib), 1) for address, mib in sorted(workers.items())},
        )


def _open_client() -> Any | None:
    """The current Dask client if one is open; never starts one."""
    from distributed import get_client

    try:
        return get_client()
    except ValueError:
        return None
