"""The Dask user's alternative: what the dask-ml and xarray tutorials show, beside tpgrid.

On the same cube, forests and cluster as the end-to-end section, three ways to predict every
element over the cube, each written to Zarr:

1. tpgrid (:func:`tpgrid.predict.predict_cube`, mean + variance): the forests scattered to each
   worker once, one task per cube chunk;
2. ``dask_ml.wrappers.ParallelPostFit`` around the scikit-learn forest (mean only): the cube's
   variables stacked into a dask array of (pixels, columns) rows, one partition per cube chunk
   (its valid pixels, built by :meth:`~tpgrid.core.features.FeatureSpec.matrix` in a
   ``map_blocks``), ``.predict(X)``, the result rechunked and written with ``to_zarr``;
3. ``xarray.apply_ufunc(..., dask="parallelized")`` around a per-chunk function that loops over
   ``estimator.estimators_`` (mean + variance), the estimator captured in its closure.

Each alternative's output is checked against tpgrid's on the valid pixels before its time is
reported (:class:`~tpgrid.errors.EngineMismatchError` otherwise). tpgrid stores float32, so the
check allows that rounding (half a float32 ulp of each value) and :data:`EXACT` of the value
scale beyond it. Bytes sent to workers are measured where they arrive: a worker plugin
(:class:`ReceivedBytes`) pickles each task's spec as the worker receives it and each piece of
data that reaches the worker without being computed there (scattered, or fetched from another
worker), which is what crossed the wire in pickled form.
"""

from __future__ import annotations

import pickle
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import xarray as xr
from distributed.diagnostics.plugin import WorkerPlugin

from tpgrid.artifact import ModelArtifact
from tpgrid.bench.cluster import local_cluster
from tpgrid.bench.engines import EXACT
from tpgrid.bench.settings import Log
from tpgrid.core.arrays import F64
from tpgrid.core.blocks import MEAN_VARIANCE
from tpgrid.core.features import FeatureSpec
from tpgrid.cube import VALID, cube_grid, open_cube
from tpgrid.errors import EngineMismatchError
from tpgrid.grid import ChunkWindow
from tpgrid.memory import peak_rss_mib
from tpgrid.outputs.layers import open_prediction, variable_name
from tpgrid.predict import predict_cube

TPGRID = "tpgrid"
DASK_ML = "dask-ml ParallelPostFit"
APPLY_UFUNC = "xarray apply_ufunc, loop over trees"
#: Rows per partition of ParallelPostFit's output as written: to_zarr needs regular chunks.
_OUTPUT_ROWS = 2**18


@dataclass(frozen=True)
class AlternativeRun:
    """One engine's prediction of every element: wall time, peak worker memory, and the bytes
    that reached the workers (pickled task specs, and data they did not compute)."""

    engine: str
    output: Literal["mean+variance", "mean"]
    seconds: float
    peak_worker_rss_mib: float
    tasks: int  # tasks the workers received
    task_bytes: int  # their pickled specs
    scattered_bytes: int  # data the client put on the workers
    fetched_bytes: int  # data one worker fetched from another
    measure_seconds: float  # the workers' time spent pickling to measure the bytes
    max_error: float  # beyond tpgrid's float32 rounding, relative to the value scale

    @property
    def bytes_to_workers(self) -> int:
        return self.task_bytes + self.scattered_bytes + self.fetched_bytes


@dataclass(frozen=True)
class AlternativesResult:
    """The engines on the same cube, forests and cluster; ``skipped`` names any not run."""

    elements: int
    n_trees: int
    workers: int
    chunk: int
    chunks: int
    pixels: int  # valid pixels compared, all elements together
    model_bytes: int  # the scikit-learn forests pickled, all elements together
    runs: list[AlternativeRun]
    skipped: dict[str, str] = field(default_factory=dict)

    def run(self, engine: str) -> AlternativeRun:
        return next(run for run in self.runs if run.engine == engine)


class ReceivedBytes(WorkerPlugin):
    """Counts, on one worker, the pickled size of every task spec it receives and of every
    piece of data that reaches it without being computed there: fetched from another worker
    (it was in flight) or scattered by the client."""

    name = "tpgrid-bench-received-bytes"

    def setup(self, worker: Any) -> None:
        self.worker = worker
        self.seen: set[Any] = set()
        self.tasks = self.task_bytes = self.scattered_bytes = self.fetched_bytes = 0
        self.seconds = 0.0

    def transition(self, key: Any, start: str, finish: str, *args: Any, **kwargs: Any) -> None:
        from distributed.protocol.pickle import dumps

        started = time.perf_counter()
        state = self.worker.state.tasks.get(key)
        if state is not None and state.run_spec is not None and key not in self.seen:
            self.seen.add(key)
            self.tasks += 1
            self.task_bytes += len(dumps(state.run_spec))
        elif finish == "memory" and start != "executing" and key in self.worker.data:
            size = len(dumps(self.worker.data[key]))
            if start == "flight":
                self.fetched_bytes += size
            else:
                self.scattered_bytes += size
        self.seconds += time.perf_counter() - started


def _received(dask_worker: Any) -> tuple[int, int, int, int, float]:
    plugin = dask_worker.plugins[ReceivedBytes.name]
    return (
        plugin.tasks,
        plugin.task_bytes,
        plugin.scattered_bytes,
        plugin.fetched_bytes,
        plugin.seconds,
    )


#: An engine: predicts every model over the cube into a Zarr store on the current client.
Predict = Callable[[Path, Sequence[ModelArtifact], Mapping[str, Any], Path], None]


def alternatives_benchmark(
    cube: Path,
    models: Sequence[ModelArtifact],
    estimators: Mapping[str, Any],
    workdir: Path,
    workers: int,
    log: Log = lambda _: None,
) -> AlternativesResult:
    """tpgrid, then each alternative, on a fresh LocalCluster of ``workers`` single-threaded
    processes each; ``estimators`` are the models' scikit-learn forests by element. An
    alternative whose output differs from tpgrid's raises :class:`EngineMismatchError`."""
    engines: list[tuple[str, Literal["mean+variance", "mean"], Predict]] = [
        (TPGRID, "mean+variance", _tpgrid),
    ]
    skipped: dict[str, str] = {}
    try:
        import dask_ml.wrappers  # noqa: F401
    except ImportError as exc:
        skipped[DASK_ML] = f'{exc.name or exc} is not installed: pip install "tpgrid[bench]"'
    else:
        engines.append((DASK_ML, "mean", _parallel_post_fit))
    engines.append((APPLY_UFUNC, "mean+variance", _apply_ufunc))
    for model in models:
        estimators[model.element].set_params(n_jobs=1)  # one thread per worker
    outputs = workdir / "alternatives"
    shutil.rmtree(outputs, ignore_errors=True)
    outputs.mkdir(parents=True)
    runs: list[AlternativeRun] = []
    reference: dict[str, tuple[F64, F64]] = {}
    for name, output, predict in engines:
        out = outputs / f"{len(runs)}.zarr"
        log(f"alternatives: {name}, {len(models)} elements on {workers} workers")
        with local_cluster(workers) as client:
            client.register_plugin(ReceivedBytes())
            started = time.perf_counter()
            predict(cube, models, estimators, out)
            seconds = time.perf_counter() - started
            peak = max(client.run(peak_rss_mib).values())
            received = list(client.run(_received).values())
        got = _read_output(name, cube, models, out)
        if name == TPGRID:
            reference, error = got, 0.0
        else:
            error = _check(name, output, got, reference)
        tasks, task_bytes, scattered, fetched, measure = (
            sum(part) for part in zip(*received, strict=True)
        )
        counts = (int(tasks), int(task_bytes), int(scattered), int(fetched))
        runs.append(AlternativeRun(name, output, seconds, peak, *counts, float(measure), error))
        shutil.rmtree(out, ignore_errors=True)
    return AlternativesResult(
        elements=len(models),
        n_trees=models[0].forest.n_trees,
        workers=workers,
        chunk=cube_grid(cube).spec.chunk,
        chunks=len(list(cube_grid(cube).windows())),
        pixels=sum(mean.size for mean, _ in reference.values()),
        model_bytes=sum(len(pickle.dumps(estimators[m.element])) for m in models),
        runs=runs,
        skipped=skipped,
    )


# --- the engines ---------------------------------------------------------------------------------


def _tpgrid(
    cube: Path, models: Sequence[ModelArtifact], estimators: Mapping[str, Any], out: Path
) -> None:
    predict_cube(cube, models, out, options=MEAN_VARIANCE, overwrite=True)


def _parallel_post_fit(
    cube: Path, models: Sequence[ModelArtifact], estimators: Mapping[str, Any], out: Path
) -> None:
    import dask.array as da
    from dask.base import compute
    from dask_ml.wrappers import ParallelPostFit

    ds = open_cube(cube)
    stores = []
    for model in models:
        X = stacked_rows(ds, model.features, _windows(cube))
        mean = ParallelPostFit(estimators[model.element]).predict(X)
        stores.append(
            da.to_zarr(
                mean.rechunk(_OUTPUT_ROWS),
                str(out / variable_name(model.element, "mean")),
                compute=False,
            )
        )
    compute(*stores)


def stacked_rows(ds: xr.Dataset, features: FeatureSpec, windows: Sequence[ChunkWindow]) -> Any:
    """The model's rows as a dask array (valid pixels, columns): one partition per cube chunk
    with valid pixels, in the order of ``windows``, built by ``features.matrix`` in a
    ``map_blocks`` over the stacked chunk (variables, then the valid layer)."""
    import dask.array as da

    layers = [ds[name].data.astype(np.float32) for name in features.variables]
    stack = da.stack([*layers, ds[VALID].data.astype(np.float32)])
    valid = ds[VALID].values == 1
    parts = []
    for w in windows:
        count = int(valid[w.rows, w.cols].sum())
        if count:  # scikit-learn refuses an empty partition
            parts.append(
                da.map_blocks(
                    _chunk_rows,
                    stack[:, w.rows, w.cols],
                    features=features,
                    drop_axis=0,
                    chunks=((count,), (features.n_columns,)),
                    dtype=np.float32,
                )
            )
    return da.concatenate(parts, axis=0)


def _chunk_rows(block: Any, features: FeatureSpec) -> Any:
    inside = block[-1] == 1
    X, _ = features.matrix({name: block[i][inside] for i, name in enumerate(features.variables)})
    return X


def _apply_ufunc(
    cube: Path, models: Sequence[ModelArtifact], estimators: Mapping[str, Any], out: Path
) -> None:
    ds = open_cube(cube)
    layers = {}
    for model in models:
        names = model.features.variables
        mean, variance = xr.apply_ufunc(
            tree_loop(estimators[model.element], model.features),
            *[ds[name] for name in names],
            ds[VALID],
            dask="parallelized",
            output_core_dims=[[], []],
            output_dtypes=[np.float64, np.float64],
        )
        layers[variable_name(model.element, "mean")] = mean
        layers[variable_name(model.element, "variance")] = variance
    xr.Dataset(layers).to_zarr(out, mode="w", zarr_format=3)


def tree_loop(estimator: Any, features: FeatureSpec) -> Callable[..., tuple[F64, F64]]:
    """The tutorial's per-chunk function: X from the chunk's valid pixels, then each tree's
    ``predict`` summed into mean and variance; the estimator travels in its closure."""

    def mean_variance(*arrays: Any) -> tuple[F64, F64]:
        *values, valid = arrays
        inside = valid == 1
        X, _ = features.matrix(
            {n: v[inside] for n, v in zip(features.variables, values, strict=True)}
        )
        s1, s2 = np.zeros(X.shape[0]), np.zeros(X.shape[0])
        if X.shape[0]:  # scikit-learn refuses no rows
            for tree in estimator.estimators_:
                p = tree.predict(X)
                s1 += p
                s2 += p * p
        n = len(estimator.estimators_)
        mean, variance = np.full(valid.shape, np.nan), np.full(valid.shape, np.nan)
        mean[inside] = s1 / n
        variance[inside] = np.maximum(s2 / n - (s1 / n) ** 2, 0.0)
        return mean, variance

    return mean_variance


# --- the check -----------------------------------------------------------------------------------


def _windows(cube: Path) -> list[ChunkWindow]:
    return list(cube_grid(cube).windows())


def _read_output(
    engine: str, cube: Path, models: Sequence[ModelArtifact], out: Path
) -> dict[str, tuple[F64, F64]]:
    """Each element's mean and variance (NaN where none) over the cube's valid pixels, in chunk
    order; ParallelPostFit's output is in that order already."""
    import zarr

    valid = open_cube(cube)[VALID].values == 1
    windows = _windows(cube)

    def valid_pixels(raster: Any) -> F64:
        raster = np.asarray(raster, dtype=np.float64)
        return np.concatenate([raster[w.rows, w.cols][valid[w.rows, w.cols]] for w in windows])

    found = {}
    for model in models:
        mean_name = variable_name(model.element, "mean")
        variance_name = variable_name(model.element, "variance")
        if engine == DASK_ML:
            mean = np.asarray(zarr.open_array(str(out / mean_name), mode="r")[:], np.float64)
            found[model.element] = (mean, np.full(mean.shape, np.nan))
            continue
        ds = open_prediction(out)[0] if engine == TPGRID else xr.open_zarr(out)
        found[model.element] = (
            valid_pixels(ds[mean_name].values),
            valid_pixels(ds[variance_name].values),
        )
    return found


def _check(
    engine: str,
    output: str,
    got: Mapping[str, tuple[F64, F64]],
    reference: Mapping[str, tuple[F64, F64]],
) -> float:
    """The engine's largest difference from tpgrid beyond tpgrid's float32 rounding, relative to
    each layer's value scale, on the pixels tpgrid predicted; raises beyond :data:`EXACT`."""
    worst = 0.0
    for element, (want_mean, want_variance) in reference.items():
        pairs = [(got[element][0], want_mean)]
        if output == "mean+variance":
            pairs.append((got[element][1], want_variance))
        for have, want in pairs:
            worst = max(worst, stored_error(have, want))
    if not worst <= EXACT:
        raise EngineMismatchError(
            f"engine {engine!r} differs from tpgrid's prediction by {worst:.3g} of the value "
            f"scale beyond float32 rounding (tolerance {EXACT:g}): it is not reported"
        )
    return worst


def stored_error(got: F64, want: F64) -> float:
    """Largest |got - want| beyond half a float32 ulp of ``want`` (tpgrid stores float32),
    over the largest |want|, where ``want`` is finite; inf if shapes differ or got is not."""
    if got.shape != want.shape:
        return float("inf")
    keep = np.isfinite(want)
    have, want = got[keep], want[keep]
    if not np.isfinite(have).all():
        return float("inf")
    scale = max(float(np.max(np.abs(want), initial=0.0)), np.finfo(np.float64).tiny)
    excess = np.abs(have - want) - np.abs(want) * 2.0**-24
    return float(max(np.max(excess, initial=0.0), 0.0) / scale)
