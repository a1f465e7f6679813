"""A pipeline on a real SLURM cluster: workers arrive as batch jobs and give a local run's bytes.

A single-node SLURM (tests/slurm.py: munged, slurmctld and slurmd as real processes) takes
the worker jobs dask-jobqueue submits for `tpgrid run --cluster slurm.yaml`, run exactly as a
user would. The published COGs and the prediction chunks must equal those of a run on local
worker processes, byte for byte, also when a worker's job is cancelled (`scancel`) while the
prediction is under way. Skipped, with the reason, only where SLURM cannot be started (not
root, or apt-get could not install it).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.slurm import Slurm, ensure_binaries, slurm_cluster

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

TPGRID = str(Path(sys.executable).with_name("tpgrid"))

#: Two elements, no report; forests large enough that prediction takes a few seconds, so a
#: job can be cancelled while it runs.
SETTINGS: dict[str, Any] = {
    "name": "slurm",
    "synthetic": {"size": "small", "seed": 0},
    "fit": {
        "elements": ["Fe", "Ni"],
        "n_trees": 1000,
        "search_trees": 10,
        "cv_folds": 3,
        "search_grid": {"max_features": [0.5], "min_samples_leaf": [2]},
    },
    "report": {"enabled": False},
}

#: cluster/slurm.yaml sized for this machine: two one-core jobs on the test partition.
JOB_NAME = "tpgrid-worker"
#: A prediction's staging group, where a chunk is marked done when written.
STAGING = ".prediction.zarr.staging-*"


def cluster_spec(slurm: Slurm, jobs: int, processes: int) -> dict[str, Any]:
    return {
        "kind": "slurm",
        "jobs": jobs,
        "cores": processes,  # one thread per worker
        "memory": "2GiB",
        "processes": processes,
        "walltime": "00:10:00",
        "queue": slurm.partition,
        "log_directory": "slurm-logs",
    }


@pytest.fixture(scope="module")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Slurm]:
    if (reason := ensure_binaries()) is not None:
        pytest.skip(reason)
    with slurm_cluster(tmp_path_factory.mktemp("slurm")) as cluster:
        yield cluster


def run(folder: Path, *options: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """`tpgrid run` of :data:`SETTINGS` with its workdir in ``folder``, started, not awaited."""
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "pipeline.yaml"
    config.write_text(yaml.safe_dump(SETTINGS | {"workdir": "work"}))
    return subprocess.Popen(
        [TPGRID, "run", str(config), *options],
        cwd=folder,
        env={**(env or os.environ), "COLUMNS": "200"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finished(process: subprocess.Popen[str], timeout: float = 300) -> str:
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()  # its cluster's jobs are cancelled when the SLURM fixture ends
        output, _ = process.communicate()
        pytest.fail(f"tpgrid run did not finish within {timeout:.0f} s:\n{output}")
    assert process.returncode == 0, output
    return output


def outputs(workdir: Path) -> dict[str, str]:
    """sha256 of every prediction chunk and every published COG (its whole file)."""
    chunks = sorted((workdir / "prediction.zarr").glob("*/c/*/*"))
    cogs = sorted((workdir / "published" / "current").glob("*.tif"))
    layers = {path.parts[-4] for path in chunks}  # prediction.zarr/<layer>/c/<row>/<col>
    assert {layer.split("_")[0] for layer in layers} == {"Fe", "Ni"}, layers
    assert len(chunks) == 9 * len(layers), chunks  # every layer in all 9 chunks
    assert {path.stem.split("_")[0] for path in cogs} == {"Fe", "Ni"}, cogs
    return {
        str(path.relative_to(workdir)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in chunks + cogs
    }


@pytest.fixture(scope="module")
def local_outputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("local")
    finished(run(folder, "--workers", "2"))
    return outputs(folder / "work")


@dataclass
class QueueWatch:
    """squeue polled in a thread while a run goes on; ``then`` is called once per poll."""

    slurm: Slurm
    then: Callable[[list[dict[str, str]]], None] = lambda jobs: None
    seen: list[list[dict[str, str]]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __enter__(self) -> QueueWatch:
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _poll(self) -> None:
        while not self._stop.wait(0.3):
            jobs = self.slurm.jobs()
            self.seen.append(jobs)
            self.then(jobs)

    def running(self) -> set[str]:
        """Ids of the worker jobs seen running on the node."""
        return {
            job["id"]
            for jobs in self.seen
            for job in jobs
            if job["name"] == JOB_NAME and job["state"] == "RUNNING"
        }


def start_slurm_run(
    slurm: Slurm, folder: Path, jobs: int, processes: int, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    """`tpgrid run` in ``folder`` with a cluster spec file, as a user would start it."""
    spec = folder / "slurm.yaml"
    spec.write_text(yaml.safe_dump(cluster_spec(slurm, jobs, processes)))
    return run(folder, "--cluster", str(spec), env=slurm.env | (env or {}))


@dataclass
class SlurmRun:
    folder: Path
    output: str
    watch: QueueWatch


@pytest.fixture(scope="module")
def slurm_run(slurm: Slurm, tmp_path_factory: pytest.TempPathFactory) -> SlurmRun:
    """The whole pipeline (plateau, cube, fit, predict, publish) on SLURM worker jobs."""
    folder = tmp_path_factory.mktemp("slurm-run")
    with QueueWatch(slurm) as watch:
        output = finished(start_slurm_run(slurm, folder, jobs=2, processes=1))
    return SlurmRun(folder, output, watch)


def test_a_pipeline_on_slurm_jobs_equals_a_local_run(
    slurm_run: SlurmRun, local_outputs: dict[str, str]
) -> None:
    jobs = slurm_run.watch.running()
    assert len(jobs) == 2, slurm_run.watch.seen
    for job in jobs:  # each job's worker joined the run's scheduler
        log = (slurm_run.folder / "slurm-logs" / f"{JOB_NAME}-{job}.err").read_text()
        assert "Registered to:" in log, log
    assert outputs(slurm_run.folder / "work") == local_outputs
    assert not list(slurm_run.folder.glob("slurm-*.out"))  # job logs in their own folder


@pytest.mark.parametrize("processes", [1, 2], ids=["1 worker", "2 workers"])
def test_the_only_worker_job_cancelled_mid_prediction_is_replaced_and_changes_nothing(
    slurm: Slurm,
    slurm_run: SlurmRun,
    local_outputs: dict[str, str],
    tmp_path: Path,
    processes: int,
) -> None:
    # The same run again from its cube and models: only predict and publish have work to do,
    # on one job (of one or two worker processes), cancelled once the first chunk is written.
    # The forests went to its workers alone: the run must submit a new job and send them again.
    folder = tmp_path / "run"
    shutil.copytree(slurm_run.folder, folder, symlinks=True)
    workdir = folder / "work"
    shutil.rmtree(workdir / "prediction.zarr")
    shutil.rmtree(workdir / "published")
    cancelled: list[str] = []

    def cancel_at_first_prediction_chunk(jobs: list[dict[str, str]]) -> None:
        running = [job["id"] for job in jobs if job["state"] == "RUNNING"]
        if not cancelled and running and any(workdir.glob(f"{STAGING}/_tpgrid_done/*/*")):
            slurm.command("scancel", running[0])
            cancelled.append(running[0])

    # The cluster gives a lost worker this long to come back before replacing its job.
    quick = {"DASK_DISTRIBUTED__DEPLOY__LOST_WORKER_TIMEOUT": "1s"}
    with QueueWatch(slurm, cancel_at_first_prediction_chunk) as watch:
        finished(start_slurm_run(slurm, folder, jobs=1, processes=processes, env=quick))

    assert len(cancelled) == 1, "the prediction ended before its job could be cancelled"
    assert len(watch.running() - set(cancelled)) == 1, watch.seen  # its replacement
    record = json.loads(max((workdir / "runs").glob("*.json")).read_text())
    (predict,) = [step for step in record["steps"] if step["name"] == "predict"]
    assert predict["detail"] == "18 of 18 element chunks"
    assert not list(workdir.glob(STAGING))  # the prediction completed and was swapped in
    assert outputs(workdir) == local_outputs
