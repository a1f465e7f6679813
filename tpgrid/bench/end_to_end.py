"""End to end: every element over the full plateau, and where the wall time went.

The bare kernel is timed on the same chunks with the same parallelism (no Dask, no I/O) beside
the prediction's wall time and task time (mean, variance, sd), so the cluster's overhead shows
apart from the kernel. The same prediction with the product's default layers (quantiles, the
calibrated interval, DI and AOA) is timed beside it, when the models have what they need.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from tpgrid.artifact import ModelArtifact
from tpgrid.bench.cluster import local_cluster
from tpgrid.bench.inputs import PlateauInputs
from tpgrid.bench.settings import Log
from tpgrid.core.blocks import MEAN_VARIANCE, model_input
from tpgrid.cube import VALID, cube_grid, open_cube
from tpgrid.memory import peak_rss_mib
from tpgrid.predict import DEFAULT_OPTIONS, predict_cube


@dataclass(frozen=True)
class EndToEndResult:
    """Every element over the full plateau, and where the time went.

    ``task_seconds`` sums the compute time of the prediction tasks (read chunk, build X, kernel,
    write); ``kernel_seconds`` is the wall time of the kernel alone on the same chunks with as
    many threads as workers (no Dask, no I/O, X built beforehand). ``layers_seconds`` is the
    wall time of the same prediction with the default layers (``layers``; None when the
    models lack their parts), and ``layers_peak_worker_rss_mib`` its peak worker memory.
    """

    elements: int
    n_trees: int
    workers: int
    chunk: int
    pixels: int  # valid pixels predicted, all elements together
    seconds: float
    task_seconds: float
    kernel_seconds: float
    peak_worker_rss_mib: float
    layers: tuple[str, ...] = ()
    layers_seconds: float | None = None
    layers_peak_worker_rss_mib: float | None = None

    def time_split(self) -> tuple[float, float, float]:
        """The wall time in three parts, seconds: the bare kernel, the rest of the task work
        (per worker) and what is outside the tasks (set-up, scheduling, idle workers)."""
        per_worker = self.task_seconds / self.workers
        return self.kernel_seconds, per_worker - self.kernel_seconds, self.seconds - per_worker


def end_to_end_benchmark(
    inputs: PlateauInputs, workdir: Path, workers: int, log: Log = lambda _: None
) -> EndToEndResult:
    """Predict every element over the plateau on ``workers`` workers, then time the bare
    kernel on the same chunks."""
    from distributed import get_task_stream

    out = workdir / "end_to_end.zarr"
    shutil.rmtree(out, ignore_errors=True)
    log(f"end to end: {len(inputs.models)} elements on {workers} workers")
    with local_cluster(workers) as client, get_task_stream(client) as stream:
        started = time.perf_counter()
        report = predict_cube(
            inputs.cube, inputs.models, out, options=MEAN_VARIANCE, overwrite=True
        )
        seconds = time.perf_counter() - started
        peak = max(client.run(peak_rss_mib).values())
    shutil.rmtree(out, ignore_errors=True)
    layers_seconds = layers_peak = None
    if not any(model.pixel_model.missing(DEFAULT_OPTIONS) for model in inputs.models):
        log("end to end: again with the default layers (quantiles, interval, DI, AOA)")
        with local_cluster(workers) as client:  # a fresh cluster: its own peak memory
            started = time.perf_counter()
            predict_cube(inputs.cube, inputs.models, out, overwrite=True)
            layers_seconds = time.perf_counter() - started
            layers_peak = max(client.run(peak_rss_mib).values())
        shutil.rmtree(out, ignore_errors=True)
    task_seconds = sum(
        part["stop"] - part["start"]
        for task in stream.data
        if str(task["key"]).startswith("tpgrid-predict-")
        for part in task["startstops"]
        if part["action"] == "compute"
    )
    log("end to end: the bare kernel on the same chunks")
    kernel_seconds = bare_kernel_seconds(inputs.cube, inputs.models, workers)
    return EndToEndResult(
        elements=len(inputs.models),
        n_trees=inputs.models[0].forest.n_trees,
        workers=workers,
        chunk=cube_grid(inputs.cube).spec.chunk,
        pixels=sum(e.pixels_predicted for e in report.elements),
        seconds=seconds,
        task_seconds=task_seconds,
        kernel_seconds=kernel_seconds,
        peak_worker_rss_mib=peak,
        layers=DEFAULT_OPTIONS.layers(),
        layers_seconds=layers_seconds,
        layers_peak_worker_rss_mib=layers_peak,
    )


def bare_kernel_seconds(cube: Path, models: Sequence[ModelArtifact], threads: int) -> float:
    """Wall time of the kernel alone over every chunk of every model on ``threads`` threads,
    each chunk's X built (as :func:`tpgrid.predict.predict_chunk` does) beforehand, the
    largest blocks first so that the threads finish together: the best the Dask layer could
    do with this kernel."""
    grid = cube_grid(cube)
    ds = open_cube(cube)
    valid = ds[VALID].values == 1
    needed = sorted({name for model in models for name in model.features.variables})
    values = {name: ds[name].values for name in needed}
    blocks = []
    for model in models:
        for w in grid.windows():
            inside = valid[w.rows, w.cols]
            chunk = {n: values[n][w.rows, w.cols][inside] for n in model.features.variables}
            X, _ = model_input(model.features, chunk, "nan")
            blocks.append((model.forest, X))
    blocks.sort(key=lambda block: -len(block[1]))
    with ThreadPoolExecutor(threads) as pool:
        started = time.perf_counter()
        list(pool.map(lambda block: block[0].predict_mean_variance(block[1]), blocks))
        return time.perf_counter() - started
