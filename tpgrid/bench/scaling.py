"""Scaling: the whole prediction on a LocalCluster, by cube chunk size and number of workers."""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tpgrid.artifact import ModelArtifact
from tpgrid.bench.cluster import local_cluster
from tpgrid.bench.inputs import PlateauInputs, cube_with_chunk
from tpgrid.bench.settings import Log
from tpgrid.core.blocks import MEAN_VARIANCE
from tpgrid.memory import peak_rss_mib
from tpgrid.predict import predict_cube


@dataclass(frozen=True)
class ScalingRun:
    """One prediction of every model over a cube on ``workers`` single-threaded workers
    (mean, variance, sd: the forest kernel's throughput)."""

    chunk: int
    workers: int
    seconds: float
    pixels: int  # valid pixels times elements predicted
    n_trees: int
    peak_worker_rss_mib: float  # largest peak resident memory of one worker process

    @property
    def pixel_trees_per_s(self) -> float:
        return self.pixels * self.n_trees / self.seconds


def predict_timed(
    cube: Path, models: Sequence[ModelArtifact], out: Path, workers: int, chunk: int
) -> ScalingRun:
    """Predict every model over ``cube`` into ``out`` (replaced) on a fresh LocalCluster."""
    shutil.rmtree(out, ignore_errors=True)
    with local_cluster(workers) as client:
        started = time.perf_counter()
        report = predict_cube(cube, models, out, options=MEAN_VARIANCE, overwrite=True)
        seconds = time.perf_counter() - started
        peak = max(client.run(peak_rss_mib).values())
    shutil.rmtree(out, ignore_errors=True)
    pixels = sum(e.pixels_predicted for e in report.elements)
    n_trees = models[0].forest.n_trees
    return ScalingRun(chunk, workers, seconds, pixels, n_trees, peak)


def scaling_benchmark(
    workdir: Path,
    inputs: PlateauInputs,
    chunks: Sequence[int],
    workers: Sequence[int],
    log: Log = lambda _: None,
) -> list[ScalingRun]:
    """Every model over the plateau for each cube chunk size and worker count."""
    runs = []
    for chunk in chunks:
        cube = cube_with_chunk(workdir, inputs.files, chunk, log)
        for n in workers:
            log(f"scaling: {len(inputs.models)} elements, chunks {chunk}², {n} worker(s)")
            runs.append(predict_timed(cube, inputs.models, workdir / "scaling.zarr", n, chunk))
    return runs
