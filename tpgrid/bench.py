"""Prediction-throughput benchmark: tpgrid against the engines users would pick instead.

Three measurements, each returning plain data (:func:`run_benchmark` runs them in turn and
:func:`write_report` writes a JSON result, a markdown table and a PNG plot):

1. **Kernel** (:func:`kernel_benchmark`): one forest, the same float32 rows and the same number
   of threads for every engine — tpgrid (mean + variance), scikit-learn ``predict`` (mean), a
   loop over scikit-learn's trees (mean + variance), ONNX Runtime via skl2onnx (mean), treelite's
   GTIL (mean, and per tree). Every engine's output is checked against numpy's mean and variance
   of scikit-learn's per-tree predictions before it is timed; an engine that disagrees is refused
   (:class:`~tpgrid.errors.EngineMismatchError`). Engines whose package is missing are skipped
   and named. Rows come in two kinds: whole cube chunks in raster order (spatially coherent, as
   the prediction sees them) and valid pixels drawn at random over the plateau (worst case).
2. **Scaling** (:func:`scaling_benchmark`): the whole prediction
   (:func:`tpgrid.predict.predict_cube`) on a LocalCluster of 1 and 2 single-threaded workers,
   for cubes chunked from 256² to 2048², with each run's peak worker memory.
3. **End to end** (:func:`end_to_end_benchmark`): every element over the full plateau, with the
   task time and the bare kernel time (same chunks, same parallelism, no Dask, no I/O) beside
   the wall time, so the cluster's overhead shows apart from the kernel.

The forests are those :func:`tpgrid.model.fit_models` fits on the synthetic plateau (500 trees
per element, hyperparameters as its search picks them), so tree depth is what users get.
Everything derives from one seed; the plateau, cubes and models are kept in a work directory
and reused by later runs. ``forest="reference"`` times docs/performance.md's forest on synthetic
rows instead (kernel only). Timings are best-of-``repeats`` wall times, engines taking turns
within each repeat so that other work on the machine hits them alike; the spread is reported.
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
import os
import platform
import resource
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from tpgrid.artifact import ModelArtifact, load_estimator
from tpgrid.core.forest import PackedForest, Walk, pack_forest
from tpgrid.cube import VALID, build_cube, cube_grid, open_cube
from tpgrid.errors import ConfigError, EngineMismatchError
from tpgrid.grid import TargetGrid, load_grid_spec
from tpgrid.model import FitSettings, fit_models
from tpgrid.predict import load_models, model_input, predict_cube
from tpgrid.sources import load_catalog
from tpgrid.synthetic import PlateauFiles, reuse_or_write_plateau

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
#: An engine's answer for rows X: the mean per row, and the variance when it gives one.
Prediction = tuple[F64, F64 | None]
Log = Callable[[str], None]

SECTIONS = ("kernel", "scaling", "end_to_end")
#: Largest error accepted, relative to the largest |mean| (and largest variance) of the rows:
#: float64 engines must agree to rounding; ONNX Runtime computes in float32.
EXACT, FLOAT32 = 1e-9, 1e-5
#: Rows of one per-tree prediction block (rows x 500 trees x 8 B stays near 80 MB).
_BLOCK_ROWS = 20_000


# --- engines ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Engine:
    """A way to predict the forest: ``predict(X)`` gives the mean per row, and the variance
    when ``output`` is "mean+variance"; ``peer`` is False for tpgrid and its variants."""

    name: str
    output: Literal["mean+variance", "mean"]
    predict: Callable[[F32], Prediction]
    tolerance: float = EXACT
    peer: bool = True


def reference_prediction(estimator: Any, X: F32) -> tuple[F64, F64]:
    """numpy's mean and population variance of scikit-learn's per-tree predictions."""
    mean, variance = np.empty(X.shape[0]), np.empty(X.shape[0])
    for start in range(0, X.shape[0], _BLOCK_ROWS):
        rows = slice(start, start + _BLOCK_ROWS)
        per_tree = np.stack([tree.predict(X[rows]) for tree in estimator.estimators_], axis=1)
        mean[rows], variance[rows] = per_tree.mean(axis=1), per_tree.var(axis=1)
    return mean, variance


def check_engine(engine: Engine, got: Prediction, reference: tuple[F64, F64]) -> float:
    """The engine's largest error relative to the rows' value scale; raises
    :class:`EngineMismatchError` beyond ``engine.tolerance`` (the engine is then not timed)."""
    errors = [_relative_error(got[0], reference[0])]
    if engine.output == "mean+variance":
        if got[1] is None:
            raise EngineMismatchError(f"engine {engine.name!r} gave no variance")
        errors.append(_relative_error(got[1], reference[1]))
    worst = max(errors)
    if not worst <= engine.tolerance:
        raise EngineMismatchError(
            f"engine {engine.name!r} differs from scikit-learn's per-tree predictions by "
            f"{worst:.3g} of the value scale (tolerance {engine.tolerance:g}): it is not timed; "
            "check its version and conversion"
        )
    return worst


def _relative_error(got: npt.ArrayLike, want: F64) -> float:
    got = np.asarray(got, dtype=np.float64).reshape(want.shape)
    scale = max(float(np.max(np.abs(want), initial=0.0)), np.finfo(np.float64).tiny)
    if got.shape != want.shape or not np.isfinite(got).all():
        return float("inf")
    return float(np.max(np.abs(got - want), initial=0.0) / scale)


def _split_rows(
    pool: ThreadPoolExecutor, threads: int, X: F32, fn: Callable[[F32], tuple[F64, F64]]
) -> tuple[F64, F64]:
    """``fn`` on ``threads`` contiguous parts of the rows at once (the kernels release the GIL)."""
    parts = list(pool.map(fn, np.array_split(X, threads)))
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def tpgrid_engines(packed: PackedForest, pool: ThreadPoolExecutor, threads: int) -> list[Engine]:
    """tpgrid as used by the prediction, and variants that show where its speed comes from."""

    def walked(walk: Walk, n: int) -> Callable[[F32], Prediction]:
        return lambda X: _split_rows(
            pool, n, X, lambda part: packed.predict_mean_variance(part, walk=walk)
        )

    return [
        Engine("tpgrid", "mean+variance", walked("auto", threads), peer=False),
        Engine("tpgrid, 1 thread", "mean+variance", walked("auto", 1), peer=False),
        Engine("tpgrid, packets only", "mean+variance", walked("packets", threads), peer=False),
        Engine("tpgrid, lockstep only", "mean+variance", walked("lockstep", threads), peer=False),
    ]


def peer_engines(
    estimator: Any, pool: ThreadPoolExecutor, threads: int
) -> tuple[list[Engine], dict[str, str]]:
    """The engines a user would pick instead, and those skipped (name → why)."""
    estimator.set_params(n_jobs=threads)

    def tree_loop(X: F32) -> tuple[F64, F64]:
        s1, s2 = np.zeros(X.shape[0]), np.zeros(X.shape[0])
        for tree in estimator.estimators_:
            p = tree.predict(X)
            s1 += p
            s2 += p * p
        n = len(estimator.estimators_)
        return s1 / n, np.maximum(s2 / n - (s1 / n) ** 2, 0.0)

    engines = [
        Engine("scikit-learn predict", "mean", lambda X: (estimator.predict(X), None)),
        Engine(
            "scikit-learn, loop over trees",
            "mean+variance",
            lambda X: _split_rows(pool, threads, X, tree_loop),
        ),
    ]
    skipped: dict[str, str] = {}
    for name, make in (("ONNX Runtime", _onnx_engines), ("treelite GTIL", _treelite_engines)):
        try:
            engines += make(estimator, threads)
        except ImportError as exc:
            skipped[name] = f'{exc.name or exc} is not installed: pip install "tpgrid[bench]"'
    return engines, skipped


def _onnx_engines(estimator: Any, threads: int) -> list[Engine]:
    import onnxruntime
    from skl2onnx import to_onnx

    model = to_onnx(
        estimator,
        np.zeros((1, estimator.n_features_in_), dtype=np.float32),
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    name = session.get_inputs()[0].name

    def predict(X: F32) -> Prediction:
        return np.asarray(session.run(None, {name: X})[0], dtype=np.float64).ravel(), None

    return [Engine("ONNX Runtime (skl2onnx)", "mean", predict, tolerance=FLOAT32)]


def _treelite_engines(estimator: Any, threads: int) -> list[Engine]:
    import treelite
    import treelite.gtil

    model = treelite.sklearn.import_model(estimator)

    def mean(X: F32) -> Prediction:
        return np.asarray(treelite.gtil.predict(model, X, nthread=threads)).ravel(), None

    def per_tree(X: F32) -> Prediction:
        m, v = np.empty(X.shape[0]), np.empty(X.shape[0])
        for start in range(0, X.shape[0], _BLOCK_ROWS):
            rows = slice(start, start + _BLOCK_ROWS)
            trees = treelite.gtil.predict_per_tree(model, X[rows], nthread=threads)
            trees = np.asarray(trees).reshape(X[rows].shape[0], -1)
            m[rows], v[rows] = trees.mean(axis=1), trees.var(axis=1)
        return m, v

    return [
        Engine("treelite GTIL", "mean", mean),
        Engine("treelite GTIL, per tree", "mean+variance", per_tree),
    ]


# --- 1. kernel throughput --------------------------------------------------------------------


@dataclass(frozen=True)
class EngineTiming:
    """One engine on one kind of rows: wall time of every repeat, and its checked error."""

    engine: str
    output: str
    peer: bool
    seconds: list[float]
    error: float


@dataclass(frozen=True)
class RowsResult:
    """Every engine on one kind of rows."""

    kind: str
    n_pixels: int
    n_trees: int
    visits_per_pixel_tree: float  # internal nodes passed per pixel and tree (path length)
    timings: list[EngineTiming]

    def ns_per_pixel_tree(self, engine: str) -> float:
        """Best wall time of ``engine`` in ns per pixel·tree."""
        timing = next(t for t in self.timings if t.engine == engine)
        return min(timing.seconds) * 1e9 / (self.n_pixels * self.n_trees)


@dataclass(frozen=True)
class KernelResult:
    forest: dict[str, Any]
    threads: int
    repeats: int
    skipped: dict[str, str]
    rows: list[RowsResult]


def time_runs(runs: Mapping[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Wall seconds of every repeat of each run (after one untimed call each). Runs take turns
    within each repeat, so a burst of other work hits them alike."""
    for run in runs.values():
        run()
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            seconds[name].append(time.perf_counter() - start)
    return seconds


def kernel_benchmark(
    estimator: Any,
    pixels: Mapping[str, F32],
    *,
    threads: int = 2,
    repeats: int = 5,
    extra_engines: Sequence[Engine] = (),
    log: Log = lambda _: None,
) -> KernelResult:
    """Check, then time, every engine on each kind of rows in ``pixels`` (name → float32 X).

    ``extra_engines`` are checked and timed like the others (a test passes a wrong one).
    """
    packed = pack_forest(estimator)
    with ThreadPoolExecutor(threads) as pool:
        peers, skipped = peer_engines(estimator, pool, threads)
        engines = [*tpgrid_engines(packed, pool, threads), *peers, *extra_engines]
        results = []
        for kind, X in pixels.items():
            log(f"kernel, {kind} rows: checking {len(engines)} engines on {X.shape[0]:,} rows")
            reference = reference_prediction(estimator, X)
            errors = {e.name: check_engine(e, e.predict(X), reference) for e in engines}
            log(f"kernel, {kind} rows: timing, {repeats} repeats")
            seconds = time_runs({e.name: functools.partial(e.predict, X) for e in engines}, repeats)
            timings = [
                EngineTiming(e.name, e.output, e.peer, seconds[e.name], errors[e.name])
                for e in engines
            ]
            visits = mean_node_visits(estimator, X[:10_000])
            results.append(RowsResult(kind, X.shape[0], packed.n_trees, visits, timings))
    forest = {
        "n_trees": packed.n_trees,
        "n_nodes": packed.n_nodes,
        "n_features": packed.n_features,
        "max_depth": max(int(tree.get_depth()) for tree in estimator.estimators_),
        "packed_mib": round(packed.nbytes / 2**20, 2),
        "params": {
            k: v
            for k, v in estimator.get_params().items()
            if k in ("max_features", "min_samples_leaf", "max_depth", "bootstrap")
        },
    }
    return KernelResult(forest, threads, repeats, skipped, results)


def mean_node_visits(estimator: Any, X: F32) -> float:
    """Internal nodes a pixel passes per tree on average (the depth of the leaf it reaches)."""
    leaves = estimator.apply(X)  # (n, n_trees) scikit-learn node ids
    total = sum(
        int(_node_depths(tree.tree_)[leaves[:, t]].sum())
        for t, tree in enumerate(estimator.estimators_)
    )
    return total / max(int(leaves.size), 1)


def _node_depths(tree: Any) -> npt.NDArray[np.int64]:
    depth = np.zeros(tree.node_count, dtype=np.int64)
    level, d = np.array([0]), 0
    while level.size:
        depth[level] = d
        parents = level[tree.children_left[level] >= 0]
        level = np.concatenate([tree.children_left[parents], tree.children_right[parents]])
        d += 1
    return depth


# --- the synthetic plateau: inputs of every section ---------------------------------------------


@dataclass(frozen=True)
class PlateauInputs:
    """The synthetic plateau, its cube and the element models fitted on it."""

    files: PlateauFiles
    cube: Path
    models: list[ModelArtifact]
    model_dir: Path


def prepare_plateau(workdir: Path, size: str, seed: int, log: Log) -> PlateauInputs:
    """Write (or reuse) the synthetic plateau, its cube and 500-tree models in ``workdir``."""
    log(f"plateau ({size}, seed {seed}) in {workdir / 'plateau'}")
    files = reuse_or_write_plateau(workdir / "plateau", size=size, seed=seed)
    cube = cube_with_chunk(workdir, files, None, log)
    model_dir = workdir / "models"
    log(f"models (tpgrid.model.fit_models, 500 trees, seed {seed}) in {model_dir}")
    fit_models(
        files.sites, cube, model_dir, FitSettings(n_trees=500, seed=seed), reuse_unchanged=True
    )
    return PlateauInputs(files, cube, load_models(model_dir), model_dir)


def cube_with_chunk(workdir: Path, files: PlateauFiles, chunk: int | None, log: Log) -> Path:
    """The plateau's cube, chunked as its grid says or ``chunk`` px square (built once)."""
    spec = load_grid_spec(files.grid)
    if chunk is not None:
        spec = spec.model_copy(update={"chunk": chunk})
    path = workdir / f"cube-{spec.chunk}.zarr"
    log(f"cube in chunks of {spec.chunk}² px: {path}")
    build_cube(load_catalog(files.catalog), TargetGrid.from_spec(spec), path)
    return path


def plateau_pixels(cube: Path, model: ModelArtifact, n_rows: int, seed: int) -> dict[str, F32]:
    """``n_rows`` rows of the model's features in two kinds: "chunks" (valid pixels of whole
    cube chunks in raster order, fullest chunks first) and "random" (valid pixels drawn at
    random over the plateau). Rows with a missing value or an unseen class are left out."""
    grid = cube_grid(cube)
    ds = open_cube(cube)
    valid = ds[VALID].values == 1
    values = {name: ds[name].values for name in model.features.variables}

    def rows_of(selection: Any) -> F32:
        X, unseen = model.features.matrix({k: v[selection] for k, v in values.items()})
        return np.ascontiguousarray(X[~unseen & ~np.isnan(X).any(axis=1)])

    chunks: list[F32] = []
    for window in sorted(grid.windows(), key=lambda w: -int(valid[w.rows, w.cols].sum())):
        if sum(part.shape[0] for part in chunks) >= n_rows:
            break
        rows, cols = np.nonzero(valid[window.rows, window.cols])  # raster order
        chunks.append(rows_of((rows + window.rows.start, cols + window.cols.start)))
    rows, cols = np.nonzero(valid)
    pick = np.random.default_rng(seed).choice(rows.size, min(rows.size, 2 * n_rows), replace=False)
    return {
        "chunks": np.concatenate(chunks)[:n_rows],
        "random": rows_of((rows[pick], cols[pick]))[:n_rows],
    }


# --- 2. scaling on a LocalCluster -----------------------------------------------------------


@dataclass(frozen=True)
class ScalingRun:
    """One prediction of every model over a cube on ``workers`` single-threaded workers."""

    chunk: int
    workers: int
    seconds: float
    pixels: int  # valid pixels times elements predicted
    n_trees: int
    peak_worker_rss_mib: float  # largest peak resident memory of one worker process

    @property
    def pixel_trees_per_s(self) -> float:
        return self.pixels * self.n_trees / self.seconds


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


def _peak_rss_mib() -> float:
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


def predict_timed(
    cube: Path, models: Sequence[ModelArtifact], out: Path, workers: int, chunk: int
) -> ScalingRun:
    """Predict every model over ``cube`` into ``out`` (replaced) on a fresh LocalCluster."""
    shutil.rmtree(out, ignore_errors=True)
    with local_cluster(workers) as client:
        started = time.perf_counter()
        report = predict_cube(cube, models, out, overwrite=True)
        seconds = time.perf_counter() - started
        peak = max(client.run(_peak_rss_mib).values())
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


# --- 3. end to end -------------------------------------------------------------------------


@dataclass(frozen=True)
class EndToEndResult:
    """Every element over the full plateau, and where the time went.

    ``task_seconds`` sums the compute time of the prediction tasks (read chunk, build X, kernel,
    write); ``kernel_seconds`` is the wall time of the kernel alone on the same chunks with as
    many threads as workers (no Dask, no I/O, X built beforehand).
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
        report = predict_cube(inputs.cube, inputs.models, out, overwrite=True)
        seconds = time.perf_counter() - started
        peak = max(client.run(_peak_rss_mib).values())
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
    )


def bare_kernel_seconds(cube: Path, models: Sequence[ModelArtifact], threads: int) -> float:
    """Wall time of the kernel alone over every chunk of every model on ``threads`` threads,
    each chunk's X built (as :func:`tpgrid.predict.predict_block` does) beforehand, the
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


# --- the whole benchmark ---------------------------------------------------------------------


@dataclass(frozen=True)
class BenchSettings:
    """What :func:`run_benchmark` measures, and where it keeps its inputs."""

    workdir: Path
    size: str = "full"
    seed: int = 0
    forest: str = "plateau"  # or "reference": docs/performance.md's forest on synthetic rows
    element: str = "Fe"
    rows: int = 100_000
    threads: int = 2
    repeats: int = 5
    sections: tuple[str, ...] = SECTIONS
    chunks: tuple[int, ...] | None = None  # default: the grid's chunk / 2, x1, x2, x4
    workers: tuple[int, ...] = (1, 2)

    def __post_init__(self) -> None:
        unknown = set(self.sections) - set(SECTIONS)
        if unknown:
            raise ConfigError(
                f"unknown benchmark sections {sorted(unknown)}: choose from {SECTIONS}"
            )
        if self.forest not in ("plateau", "reference"):
            raise ConfigError(f"forest {self.forest!r} is not 'plateau' or 'reference'")
        if self.forest == "reference" and set(self.sections) - {"kernel"}:
            raise ConfigError("the reference forest has no plateau: run only the kernel section")


@dataclass(frozen=True)
class BenchResult:
    settings: dict[str, Any]
    machine: dict[str, Any]
    kernel: KernelResult | None = None
    scaling: list[ScalingRun] = field(default_factory=list)
    end_to_end: EndToEndResult | None = None

    def to_json(self) -> dict[str, Any]:
        """Everything measured, plus the derived tables and the targets with their verdicts."""
        doc = asdict(self)
        doc["targets"] = [asdict(t) | {"met": t.met} for t in targets(self)]
        if self.kernel is not None:
            doc["kernel"]["table"] = kernel_rows(self.kernel)
        for entry, run in zip(doc["scaling"], self.scaling, strict=True):
            entry["pixel_trees_per_s"] = run.pixel_trees_per_s
        return doc


def run_benchmark(settings: BenchSettings, log: Log = lambda _: None) -> BenchResult:
    """Run the sections of ``settings`` in turn; see the module docstring."""
    load_before = os.getloadavg()
    kernel = None
    inputs = None
    if settings.forest == "reference":
        estimator = build_reference_forest(seed=settings.seed, n_jobs=settings.threads)
        n_features = estimator.n_features_in_
        pixels = {
            "coherent": coherent_rows(settings.rows, n_features, settings.seed),
            "random": random_rows(settings.rows, n_features, settings.seed),
        }
    else:
        inputs = prepare_plateau(settings.workdir, settings.size, settings.seed, log)
        if "kernel" in settings.sections:
            model = _model_of(inputs, settings.element)
            estimator = load_estimator(inputs.model_dir / settings.element)
            pixels = plateau_pixels(inputs.cube, model, settings.rows, settings.seed)
    if "kernel" in settings.sections:
        kernel = kernel_benchmark(
            estimator, pixels, threads=settings.threads, repeats=settings.repeats, log=log
        )
    scaling: list[ScalingRun] = []
    end_to_end = None
    if inputs is not None and "scaling" in settings.sections:
        chunk = cube_grid(inputs.cube).spec.chunk
        chunks = settings.chunks or (chunk // 2, chunk, 2 * chunk, 4 * chunk)
        scaling = scaling_benchmark(settings.workdir, inputs, chunks, settings.workers, log)
    if inputs is not None and "end_to_end" in settings.sections:
        end_to_end = end_to_end_benchmark(inputs, settings.workdir, max(settings.workers), log)
    machine = machine_info() | {
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }
    chosen = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(settings).items()}
    return BenchResult(chosen, machine, kernel, scaling, end_to_end)


def _model_of(inputs: PlateauInputs, element: str) -> ModelArtifact:
    for model in inputs.models:
        if model.element == element:
            return model
    fitted = [m.element for m in inputs.models]
    raise ConfigError(f"no model for element {element!r}: the plateau's models are {fitted}")


def machine_info() -> dict[str, Any]:
    """CPU, cores and the versions of everything timed."""
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info if "model name" in line)
    except (OSError, StopIteration):
        pass
    versions: dict[str, str | None] = {}
    for package in ("tpgrid", "numba", "numpy", "scikit-learn", "onnxruntime", "skl2onnx",
                    "treelite", "dask", "distributed"):  # fmt: skip
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version()} | {
        "versions": versions
    }


# --- targets and the report ------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """One goal of the benchmark: ``measured`` against ``goal`` (a ratio or seconds)."""

    name: str
    rows: str
    measured: float
    goal: float
    higher_is_better: bool = True

    @property
    def met(self) -> bool:
        if self.higher_is_better:
            return self.measured >= self.goal
        return self.measured <= self.goal


#: tpgrid's speed-up over each peer that the benchmark aims for.
SPEED_UP_GOALS = {
    "scikit-learn, loop over trees": 5.0,
    "scikit-learn predict": 2.0,
    "ONNX Runtime (skl2onnx)": 1.0,
    "treelite GTIL": 1.0,
}


def targets(result: BenchResult) -> list[Target]:
    """Every goal that the measured sections speak to."""
    found = []
    if result.kernel is not None:
        for rows in result.kernel.rows:
            ours = rows.ns_per_pixel_tree("tpgrid")
            names = {t.engine for t in rows.timings}
            for peer, goal in SPEED_UP_GOALS.items():
                if peer in names:
                    ratio = rows.ns_per_pixel_tree(peer) / ours
                    found.append(Target(f"tpgrid vs {peer}", rows.kind, ratio, goal))
    by_chunk: dict[int, dict[int, ScalingRun]] = {}
    for run in result.scaling:
        by_chunk.setdefault(run.chunk, {})[run.workers] = run
    for chunk, runs in sorted(by_chunk.items()):
        if 1 in runs and 2 in runs:
            ratio = runs[2].pixel_trees_per_s / runs[1].pixel_trees_per_s
            found.append(Target("2 workers vs 1", f"chunks {chunk}²", ratio, 1.8))
    e2e = result.end_to_end
    if e2e is not None:
        overhead = e2e.seconds / e2e.kernel_seconds - 1
        found.append(
            Target("Dask layer over the bare kernel", "full plateau", overhead, 0.10, False)
        )
        found.append(
            Target("full plateau, wall seconds", "full plateau", e2e.seconds, 300.0, False)
        )
    return found


def kernel_rows(kernel: KernelResult) -> list[dict[str, Any]]:
    """The kernel section as table rows: one per engine and kind of rows."""
    table = []
    for rows in kernel.rows:
        ours = rows.ns_per_pixel_tree("tpgrid")
        for timing in rows.timings:
            ns = rows.ns_per_pixel_tree(timing.engine)
            spread = np.array(timing.seconds) * 1e9 / (rows.n_pixels * rows.n_trees)
            table.append(
                {
                    "rows": rows.kind,
                    "engine": timing.engine,
                    "output": timing.output,
                    "ns_per_pixel_tree": round(ns, 3),
                    "ns_median": round(float(np.median(spread)), 3),
                    "ns_worst": round(float(spread.max()), 3),
                    "mpixel_trees_per_s": round(1e3 / ns, 1),
                    "ns_per_node_visit": round(ns / rows.visits_per_pixel_tree, 3),
                    "tpgrid_speed_up": round(ns / ours, 2),
                    "max_error": timing.error,
                }
            )
    return table


@dataclass(frozen=True)
class ReportFiles:
    json: Path
    markdown: Path
    plot: Path


def write_report(result: BenchResult, out: Path) -> ReportFiles:
    """Write ``bench.json``, ``bench.md`` and ``bench.png`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    files = ReportFiles(out / "bench.json", out / "bench.md", out / "bench.png")
    files.json.write_text(json.dumps(result.to_json(), indent=2, default=_plain) + "\n")
    files.markdown.write_text(markdown(result))
    plot(result, files.plot)
    return files


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value)} is not JSON serialisable")


def markdown(result: BenchResult) -> str:
    """The result as markdown tables: kernel, scaling, end to end, targets."""
    parts = []
    machine = result.machine
    parts.append(
        f"Machine: {machine['cpu']}, {machine['cores']} cores; load average before "
        f"{machine['load_average_before'][0]}, after {machine['load_average_after'][0]}."
    )
    kernel = result.kernel
    if kernel is not None:
        forest = kernel.forest
        parts.append(
            f"### Kernel throughput\n\nForest: {forest['n_trees']} trees, {forest['n_nodes']:,} "
            f"nodes, max depth {forest['max_depth']}, {forest['n_features']} columns "
            f"({forest['params']}); {kernel.threads} threads for every engine; best of "
            f"{kernel.repeats} repeats (median and worst beside it)."
        )
        for rows in kernel.rows:
            table = [
                {k: v for k, v in r.items() if k != "rows"}
                for r in kernel_rows(kernel)
                if r["rows"] == rows.kind
            ]
            parts.append(
                f"**{rows.kind} rows**: {rows.n_pixels:,} pixels, "
                f"{rows.visits_per_pixel_tree:.2f} node visits per pixel·tree.\n\n"
                + markdown_table(table)
            )
        if kernel.skipped:
            parts.append("Skipped: " + "; ".join(f"{k} ({v})" for k, v in kernel.skipped.items()))
    if result.scaling:
        table = [
            {
                "chunk (px)": f"{r.chunk}²",
                "workers": r.workers,
                "seconds": round(r.seconds, 1),
                "M pixel·trees/s": round(r.pixel_trees_per_s / 1e6, 1),
                "peak worker RSS (MiB)": round(r.peak_worker_rss_mib),
            }
            for r in result.scaling
        ]
        parts.append("### Scaling on a LocalCluster\n\n" + markdown_table(table))
    e2e = result.end_to_end
    if e2e is not None:
        kernel_s, tasks_s, wall_s = e2e.time_split()
        rows_ = [
            ("wall time, s", f"{e2e.seconds:.1f}"),
            ("pixels predicted (all elements)", f"{e2e.pixels:,}"),
            ("pixels/s", f"{e2e.pixels / e2e.seconds:,.0f}"),
            ("M pixel·trees/s", f"{e2e.pixels * e2e.n_trees / e2e.seconds / 1e6:.1f}"),
            ("of the wall time: bare kernel (same chunks, same threads), s", f"{kernel_s:.1f}"),
            ("of the wall time: rest of the tasks (read, X, write), s", f"{tasks_s:.1f}"),
            ("of the wall time: outside tasks (set-up, scheduling, idle), s", f"{wall_s:.1f}"),
            ("peak worker RSS, MiB", f"{e2e.peak_worker_rss_mib:.0f}"),
        ]
        parts.append(
            f"### End to end\n\n{e2e.elements} elements x {e2e.n_trees} trees, chunks "
            f"{e2e.chunk}², {e2e.workers} workers.\n\n"
            + markdown_table([{"": name, "value": value} for name, value in rows_])
        )
    found = targets(result)
    if found:
        table = [
            {
                "target": t.name,
                "rows": t.rows,
                "goal": f"{'≥' if t.higher_is_better else '≤'} {t.goal:g}",
                "measured": f"{t.measured:.3g}",
                "met": "yes" if t.met else "**no**",
            }
            for t in found
        ]
        parts.append("### Targets\n\n" + markdown_table(table))
    return "\n\n".join(parts) + "\n"


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """A GitHub markdown table with the keys of the first row as its header."""
    if not rows:
        return ""
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += [
        "| "
        + " | ".join(f"{row[k]:g}" if isinstance(row[k], float) else str(row[k]) for k in header)
        + " |"
        for row in rows
    ]
    return "\n".join(lines)


def plot(result: BenchResult, path: Path) -> None:
    """Throughput per engine and kind of rows; scaling with chunk size and workers."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = (
        int(result.kernel is not None) + int(bool(result.scaling)) + int(bool(result.end_to_end))
    )
    figure = Figure(figsize=(6.5 * max(panels, 1), 4.8), layout="constrained")
    FigureCanvasAgg(figure)
    k = 1
    if result.kernel is not None:
        axes = figure.add_subplot(1, max(panels, 1), k)
        k += 1
        kinds = [r.kind for r in result.kernel.rows]
        engines = [t.engine for t in result.kernel.rows[0].timings]
        width = 0.8 / len(kinds)
        for j, rows in enumerate(result.kernel.rows):
            rates = [1e3 / rows.ns_per_pixel_tree(e) for e in engines]
            axes.barh(np.arange(len(engines)) + j * width, rates, width, label=f"{kinds[j]} rows")
        axes.set_yticks(np.arange(len(engines)) + width * (len(kinds) - 1) / 2, engines)
        axes.invert_yaxis()
        axes.set_xscale("log")
        axes.set_xlabel(f"M pixel·trees per second ({result.kernel.threads} threads)")
        axes.set_title("Kernel throughput (higher is better)")
        axes.legend()
    if result.scaling:
        axes = figure.add_subplot(1, max(panels, 1), k)
        for workers in sorted({r.workers for r in result.scaling}):
            runs = sorted(
                (r for r in result.scaling if r.workers == workers), key=lambda r: r.chunk
            )
            axes.plot(
                [r.chunk for r in runs],
                [r.pixel_trees_per_s / 1e6 for r in runs],
                marker="o",
                label=f"{workers} worker{'s' if workers > 1 else ''}",
            )
        axes.set_xscale("log", base=2)
        axes.set_xlabel("cube chunk edge (px)")
        axes.set_ylabel("M pixel·trees per second")
        axes.set_title("Full prediction on a LocalCluster")
        axes.legend()
        k += 1
    if result.end_to_end is not None:
        e2e = result.end_to_end
        axes = figure.add_subplot(1, max(panels, 1), k)
        left = 0.0
        for part, seconds in zip(
            ("bare kernel", "rest of the tasks", "outside tasks"), e2e.time_split(), strict=True
        ):
            axes.barh([0], [seconds], left=left, label=f"{part}: {seconds:.1f} s")
            left += seconds
        axes.set_yticks([])
        axes.set_xlabel("seconds of wall time")
        axes.set_title(
            f"Full plateau, {e2e.elements} elements x {e2e.n_trees} trees, {e2e.workers} workers"
        )
        axes.legend(loc="upper center", bbox_to_anchor=(0.5, -0.25))
    figure.savefig(path, dpi=110)


# --- the reference forest of docs/performance.md (kernel section only) -----------------------


def reference_target(X: F32) -> F64:
    """A nonlinear target on standard-normal covariates, so the trees grow deep and uneven."""
    x = X.astype(np.float64)
    y: F64 = (
        np.sin(2.0 * x[:, 0])
        + x[:, 1] * x[:, 2]
        + np.where(x[:, 3] > 0.3, 1.5, -0.5) * x[:, 4]
        + 0.5 * np.abs(x[:, 5] - x[:, 6])
        + 0.3 * x[:, 7:].sum(axis=1)
    )
    return y


def build_reference_forest(
    n_trees: int = 500, n_rows: int = 1600, n_features: int = 18, seed: int = 0, n_jobs: int = 2
) -> Any:
    """The reference ``RandomForestRegressor`` of docs/performance.md, on float32 rows."""
    from sklearn.ensemble import RandomForestRegressor

    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n_rows, n_features)).astype(np.float32)
    y = reference_target(X) + 0.2 * rng.standard_normal(n_rows)
    forest = RandomForestRegressor(
        n_estimators=n_trees, max_features=1 / 3, random_state=seed, n_jobs=n_jobs
    )
    return forest.fit(X, y)


def random_rows(n_rows: int, n_features: int, seed: int) -> F32:
    """Independent standard-normal float32 rows: every pixel takes its own path (worst case)."""
    return np.random.default_rng(seed + 1).standard_normal((n_rows, n_features)).astype(np.float32)


def coherent_rows(n_rows: int, n_features: int, seed: int, wavelength_px: float = 64.0) -> F32:
    """Rows of a square raster, row-major, whose covariates are smooth standard-normal fields
    (white noise low-passed in Fourier space, features ~``wavelength_px`` pixels across)."""
    rng = np.random.default_rng(seed + 2)
    side = int(np.ceil(np.sqrt(n_rows)))
    freq = np.hypot(*np.meshgrid(np.fft.fftfreq(side), np.fft.rfftfreq(side), indexing="ij"))
    low_pass = np.exp(-((freq * wavelength_px) ** 2))
    fields = np.empty((side * side, n_features), dtype=np.float32)
    for f in range(n_features):
        noise = np.fft.rfft2(rng.standard_normal((side, side)))
        field_ = np.fft.irfft2(noise * low_pass, (side, side))
        fields[:, f] = ((field_ - field_.mean()) / field_.std()).ravel()
    return np.ascontiguousarray(fields[:n_rows])
