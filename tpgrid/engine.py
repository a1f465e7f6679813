"""The chunk engine: map a block function over a grid's chunks into a staged Zarr group, on the
current Dask client. Prediction and applicability are its users; another layer type (quantiles,
intervals) needs a block function and a layout, not new orchestration.

A run (:class:`ChunkRun`) lays out a staging group beside its output, or resumes the one a
killed run left; sends what every task needs (forests, training spaces) to each worker once,
under a key made of its content, so the task graph does not grow with it (and again, with the
tasks that needed it, if every worker that held it is lost); submits one task per
chunk, the largest chunks first; reports progress per element as chunks finish; and swaps the
group in when complete. A task writes its chunk, then marks it done (:func:`mark_done`), which
is what a resumed run, or a retried task, reads.

On failure the run cancels its tasks, waits until none still runs (a cancelled task that
already runs goes on writing, and would bring back a removed staging group) and removes the
staging group; an interrupted resumable run (Ctrl-C) keeps it to resume from. A failed chunk
task's error keeps its type and gains a note naming the element(s), the chunk and the stores.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Generic, TypeVar

import numpy as np
from distributed import Client, Future, Worker
from distributed.client import FutureCancelledError

from tpgrid.cube import VALID, read_window
from tpgrid.errors import ClusterError
from tpgrid.grid import ChunkWindow, TargetGrid
from tpgrid.store import VariableLayout, create_layout, finish, swap_in
from tpgrid.tasks import Progress, as_finished, current_client

#: How often a run sends its shared inputs again after losing every worker that held them.
SHARED_RESENDS = 3

#: While no worker is there to run a task, a warning this often, seconds.
WORKER_WAIT_NOTICE_S = 30.0

log = logging.getLogger(__name__)

#: Folder of per-chunk completion markers inside a staging group (removed before swap-in).
DONE_DIR = "_tpgrid_done"

Need = TypeVar("Need")  # what one element's block needs, e.g. its feature spec
Options = TypeVar("Options")  # options of every block of a run, e.g. the unseen-class policy
Shared = TypeVar("Shared")  # what every task needs, sent to each worker once: forests, spaces
Result = TypeVar("Result")  # what a task returns


@dataclass(frozen=True)
class ChunkJob(Generic[Need, Options]):
    """What one task needs besides the shared inputs: one grid chunk and the elements to
    compute in it, each with what its block needs; small, so the task graph stays small."""

    cube: Path
    out: Path  # the staging group the task writes into
    window: ChunkWindow
    elements: tuple[tuple[str, Need], ...]
    options: Options

    @property
    def key(self) -> str:
        return self.window.key

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(element for element, _ in self.elements)


# --- done markers --------------------------------------------------------------------------


def done_path(staging: Path, element: str, window: ChunkWindow) -> Path:
    return staging / DONE_DIR / element / window.key


def mark_done(staging: Path, element: str, window: ChunkWindow, doc: Mapping[str, Any]) -> None:
    """Record an element chunk as complete, after its data, with ``doc`` (what the block
    function needs to know of it later). Written to a temporary name and renamed, so a marker
    is never half there."""
    marker = done_path(staging, element, window)
    marker.parent.mkdir(parents=True, exist_ok=True)
    partial = marker.with_name(f".{marker.name}-{uuid.uuid4().hex[:8]}")
    partial.write_text(json.dumps(doc))
    partial.rename(marker)


def read_done(staging: Path, element: str, window: ChunkWindow) -> Any:
    """The document of an element chunk marked done; None when it is not (or unreadable)."""
    try:
        return json.loads(done_path(staging, element, window).read_text())
    except (OSError, ValueError):
        return None


# --- a run ---------------------------------------------------------------------------------


def cluster_client(what: str) -> Client:
    """The current Dask client; a :class:`ClusterError` saying how to open one if none is."""
    client: Client | None = current_client()
    if client is None:
        raise ClusterError(
            f"{what} needs a Dask client: open one first (tpgrid.client.dask_client(), or "
            "distributed.Client())"
        )
    return client


class ChunkRun:
    """One run of chunk tasks writing into the staging group ``staging``, swapped in as
    ``out`` by :meth:`finish`. Use it as a context manager: leaving it on an error cancels the
    tasks and cleans up.

    ``kind`` names the tasks on the cluster (``tpgrid-{kind}-{chunk}-…``), ``what`` the run
    in messages. A ``resumable`` run interrupted by Ctrl-C keeps its staging group and done
    markers for the next run with the same inputs.
    """

    def __init__(
        self, kind: str, what: str, staging: Path, out: Path, *, resumable: bool = False
    ) -> None:
        self.kind, self.what = kind, what
        self.staging, self.out = staging, out
        self.resumable = resumable
        self.client = cluster_client(what)
        self._futures: list[Future[Any]] = []

    def __enter__(self) -> ChunkRun:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if error is None:
            return
        self.client.cancel(self._futures)
        if isinstance(error, Exception):
            # A failed run leaves nothing behind.
            _wait_until_stopped(self.client, self._futures)
            shutil.rmtree(self.staging, ignore_errors=True)
        elif not self.resumable:
            shutil.rmtree(self.staging, ignore_errors=True)
        # else interrupted: like a killed run, it leaves its staging group to resume from

    def stage(self, grid: TargetGrid, layouts: Mapping[str, VariableLayout]) -> bool:
        """Lay out the staging group afresh, or (resumable, and a killed run left one) keep
        it: True when resuming."""
        if self.resumable and (self.staging / DONE_DIR).is_dir():
            return True
        shutil.rmtree(self.staging, ignore_errors=True)
        create_layout(self.staging, grid, layouts)
        (self.staging / DONE_DIR).mkdir()
        return False

    def map(
        self,
        block: Callable[[ChunkJob[Need, Options], Shared], Result],
        jobs: Sequence[ChunkJob[Need, Options]],
        shared: Shared,
        content: str,
        *,
        chunks: int,
        progress: Progress | None = None,
        done: Mapping[str, int] | None = None,
    ) -> Iterator[tuple[ChunkJob[Need, Options], Result]]:
        """Run ``block(job, shared)`` for every job on the cluster; yield each job with its
        result as it finishes (raising the first failure).

        ``shared`` reaches each worker once, under a key made of ``content`` (a string that
        changes with it). ``progress(element, chunks_done, chunks)`` is called as chunks finish,
        counting the ``done`` ones (carried over, resumed) too, each reported once up front.
        """
        counted = dict(done or {})
        for element, finished in counted.items():
            if progress:
                progress(element, finished, chunks)
        submitted = self._submit(block, jobs, shared, content)
        for resend in range(SHARED_RESENDS + 1):
            lost = []
            for future in as_finished(list(submitted)):
                job = submitted[future]
                try:
                    result = future.result()
                except Exception as exc:
                    # Scattered inputs are never recomputed: when every worker holding them is
                    # gone (batch jobs cancelled, preempted, out of walltime), the scheduler
                    # forgets them and cancels the tasks that need them. Send them again.
                    if isinstance(exc, FutureCancelledError) and resend < SHARED_RESENDS:
                        lost.append(job)
                        continue
                    exc.add_note(
                        f"in the {self.what} task of {', '.join(job.names)} for chunk {job.key} "
                        f"(rows {_span(job.window.rows)}, cols {_span(job.window.cols)}) of cube "
                        f"{job.cube}, writing {self.out} (staged in {job.out})"
                    )
                    raise
                for element in job.names:
                    counted[element] = counted.get(element, 0) + 1
                    if progress:
                        progress(element, counted[element], chunks)
                yield job, result
            if not lost:
                return
            submitted = self._submit(block, lost, shared, content)

    def finish(self, attrs: Mapping[str, Any]) -> None:
        """Drop the done markers, record ``attrs``, mark the group complete and swap it in."""
        shutil.rmtree(self.staging / DONE_DIR, ignore_errors=True)
        finish(self.staging, attrs)
        swap_in(self.staging, self.out)

    def _submit(
        self,
        block: Callable[[ChunkJob[Need, Options], Shared], Result],
        jobs: Sequence[ChunkJob[Need, Options]],
        shared: Shared,
        content: str,
    ) -> dict[Future[Result], ChunkJob[Need, Options]]:
        """Scatter ``shared`` to every worker once, then one task per job naming it by key:
        each future with its job."""
        if not jobs:
            return {}
        # One key for all of it: tasks then have a single dependency, which Dask treats as
        # "root-ish" and hands out from the scheduler as workers free up, in priority order.
        # With one key per forest (seven dependencies) it assigns every task to a worker up
        # front and balances by stealing, which left a worker idle for ~1 s at the end of a run.
        key = f"tpgrid-{self.kind}-shared-{hashlib.sha256(content.encode()).hexdigest()[:32]}"
        wait_for_a_worker(self.client)
        scattered = self.client.scatter({key: shared}, broadcast=True, hash=False)[key]
        # Largest chunks first (by priority: futures submitted together have no order): the
        # run then ends on small tasks rather than one worker finishing a large chunk alone.
        size = {
            job.key: int(np.count_nonzero(read_window(job.cube, VALID, job.window)))
            * len(job.elements)
            for job in jobs
        }
        ranked = sorted(jobs, key=lambda job: (-size[job.key], job.window.index))
        token = uuid.uuid4().hex[:8]
        futures = {
            self.client.submit(
                block,
                job,
                scattered,
                key=f"tpgrid-{self.kind}-{job.key}-{token}",
                priority=len(ranked) - rank,
            ): job
            for rank, job in enumerate(ranked)
        }
        self._futures += futures
        return futures


def wait_for_a_worker(client: Client, notice_every: float = WORKER_WAIT_NOTICE_S) -> None:
    """Wait until the scheduler has a worker, saying so every ``notice_every`` seconds.

    Without a time limit: a batch system's worker jobs may queue for hours. Scattering alone
    would give up after 30 s without workers, and waiting silently looks like a hang when the
    workers were never started.
    """
    waited = 0.0
    while True:
        try:
            client.wait_for_workers(1, timeout=notice_every)
            return
        except TimeoutError:
            waited += notice_every
            log.warning(
                "no Dask worker has joined the scheduler at %s for %.0f s; still waiting "
                "(start workers against it, or check that the batch jobs are queued and running)",
                "?" if client.scheduler is None else client.scheduler.address,
                waited,
            )


def _span(pixels: slice) -> str:
    return f"{pixels.start}:{pixels.stop}"


def _wait_until_stopped(client: Client, futures: Sequence[Future[Any]]) -> None:
    """Wait (up to a minute) until no worker still runs one of ``futures``' tasks.

    Cancelling a task that already runs does not stop it: it goes on to write its chunk, and
    would bring back a staging group removed before it ends.
    """
    keys = {future.key for future in futures}
    deadline = time.monotonic() + 60
    while keys and time.monotonic() < deadline:
        running: dict[str, list[Any]] = client.run(_running_keys)
        if keys.isdisjoint(key for on_worker in running.values() for key in on_worker):
            return
        time.sleep(0.1)


def _running_keys(dask_worker: Worker) -> list[Any]:
    """Keys of the tasks ``dask_worker`` is executing (cancelled ones included)."""
    return [task.key for task in dask_worker.state.executing]
