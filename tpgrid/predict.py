"""Predict each element's forest over the cube, chunk by chunk, on the current Dask cluster.

One task per grid chunk reads that chunk of the variables its models need straight from the
cube, once, builds ``X`` for the chunk's valid pixels with
:meth:`tpgrid.features.FeatureSpec.matrix` once per distinct feature spec, walks every tree of
each element's forest with the numba kernel and writes mean, variance, sd and the unseen-class
flag into the run's staging group (layout: :mod:`tpgrid.outputs`). One task per chunk rather
than per element and chunk, because reading and decoding the covariates cost as much as the
kernel once it got fast (docs/benchmarks.md). A task holds one chunk: memory per worker thread
is the chunk's covariates plus ``X`` per feature spec (~60 MB each for 512 × 512 px and 28
columns), plus the forests.

Each forest reaches each worker once: the run's forests are scattered (broadcast) under a key
made of their model hashes, and tasks name that key, so the task graph does not grow with the
forests. Workers compile
the kernel, or load it from numba's disk cache, once when they join (:class:`KernelWarmUp`).

A run is identified by its inputs: per element and chunk, the model hash, the unseen-class
policy and the content hashes of the cube chunks read. The group records them
(``tpgrid:run``), so re-running with the same inputs does nothing, and an output path holding
another run is only replaced when asked.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import shutil
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import numpy.typing as npt
import zarr
from distributed import Client, Future, Worker, as_completed, get_client
from distributed.diagnostics.plugin import WorkerPlugin

from tpgrid.artifact import MODEL_FILE, ModelArtifact, load_model
from tpgrid.cube import VALID, chunk_hashes, cube_grid, open_cube
from tpgrid.errors import (
    ArtifactError,
    ChunkingError,
    ClusterError,
    ConfigError,
    FeatureMismatchError,
    OutputExistsError,
)
from tpgrid.features import FeatureSpec
from tpgrid.forest import PackedForest, warm_up_kernels
from tpgrid.grid import ChunkWindow, TargetGrid
from tpgrid.outputs import (
    ATTR_RUN,
    LAYERS,
    UNSEEN_NODATA,
    global_attrs,
    layer_layouts,
    variable_name,
)
from tpgrid.store import ATTR_COMPLETE, create_layout, finish, link_chunk, read_attrs, swap_in
from tpgrid.store import write_window as store_window

log = logging.getLogger(__name__)

FORMAT = "tpgrid-prediction/1"
#: Folder of per-chunk completion markers inside a staging group (removed before swap-in).
DONE_DIR = "_tpgrid_done"
UnseenPolicy = Literal["nan", "predict"]


# --- the per-chunk computation: numpy in, numpy out ------------------------------------------


@dataclass(frozen=True)
class PredictedBlock:
    """One chunk of one element: float32 mean, variance, sd (NaN = no prediction) and the uint8
    unseen flag (1 = class never seen in training, 255 = no prediction), all (rows, cols)."""

    mean: npt.NDArray[np.float32]
    variance: npt.NDArray[np.float32]
    sd: npt.NDArray[np.float32]
    unseen: npt.NDArray[np.uint8]


def predict_block(
    forest: PackedForest,
    features: FeatureSpec,
    values: Mapping[str, npt.NDArray[Any]],
    valid: npt.NDArray[np.bool_],
    unseen: UnseenPolicy = "nan",
) -> PredictedBlock:
    """Predict one chunk. ``values`` holds a (rows, cols) array per variable of ``features``;
    only ``valid`` pixels are predicted. Pixels whose class was never seen in training get NaN
    when ``unseen`` is ``"nan"``, else the forest's prediction with all indicators off."""
    X, is_unseen = model_input(
        features, {name: values[name][valid] for name in features.variables}, unseen
    )
    return _block(forest, X, is_unseen, valid)


def model_input(
    features: FeatureSpec, values: Mapping[str, npt.NDArray[Any]], unseen: UnseenPolicy
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]]:
    """``X`` and the unseen-class flag for the pixels in ``values``; rows of unseen classes are
    NaN under the ``"nan"`` policy (the kernel skips NaN rows: no time spent on them)."""
    X, is_unseen = features.matrix(values)
    if unseen == "nan":
        X[is_unseen] = np.nan
    return X, is_unseen


def _block(
    forest: PackedForest,
    X: npt.NDArray[np.float32],
    is_unseen: npt.NDArray[np.bool_],
    valid: npt.NDArray[np.bool_],
) -> PredictedBlock:
    """The forest over ``X`` (the ``valid`` pixels of a chunk, in C order), as (rows, cols)."""
    mean, variance = forest.predict_mean_variance(X)
    out = PredictedBlock(
        mean=np.full(valid.shape, np.nan, dtype=np.float32),
        variance=np.full(valid.shape, np.nan, dtype=np.float32),
        sd=np.full(valid.shape, np.nan, dtype=np.float32),
        unseen=np.full(valid.shape, UNSEEN_NODATA, dtype=np.uint8),
    )
    out.mean[valid] = mean
    out.variance[valid] = variance
    out.sd[valid] = np.sqrt(variance)
    out.unseen[valid] = is_unseen
    return out


# --- tasks ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChunkJob:
    """What one task needs besides the forests: one grid chunk and the elements to predict in
    it (each with its model's features), small, so the task graph stays small."""

    cube: Path
    out: Path
    window: ChunkWindow
    elements: tuple[tuple[str, FeatureSpec], ...]
    unseen: UnseenPolicy

    @property
    def key(self) -> str:
        return f"{self.window.index[0]}.{self.window.index[1]}"


#: element, chunk key ("i.j"), pixels predicted, pixels with a class unseen in training
ChunkCounts = tuple[str, str, int, int]


def predict_chunk(job: ChunkJob, forests: Mapping[str, PackedForest]) -> list[ChunkCounts]:
    """Predict every element of ``job`` in one chunk with its forest in ``forests``.

    The chunk's covariates are read and decoded once for all elements, and ``X`` is built once
    per distinct feature spec (models fitted on the same columns share it). Each element's
    layers are written, then it is marked done; an element already marked done (the task is
    a retry after its worker died) is not predicted again.
    """
    valid = read_window(job.cube, VALID, job.window) == 1
    wanted = sorted({name for _, features in job.elements for name in features.variables})
    values = {name: read_window(job.cube, name, job.window)[valid] for name in wanted}
    inputs: dict[FeatureSpec, tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]]] = {}
    results = []
    for element, features in job.elements:
        done = _read_done(job.out, element, job.window)
        if done is None:
            if features not in inputs:
                inputs[features] = model_input(features, values, job.unseen)
            block = _block(forests[element], *inputs[features], valid)
            for layer in LAYERS:
                store_window(
                    job.out, variable_name(element, layer), job.window, getattr(block, layer)
                )
            done = int(np.isfinite(block.mean).sum()), int((block.unseen == 1).sum())
            _mark_done(job.out, element, job.window, done)
        results.append((element, job.key, *done))
    return results


def _done_path(staging: Path, element: str, window: ChunkWindow) -> Path:
    return staging / DONE_DIR / element / f"{window.index[0]}.{window.index[1]}"


def _mark_done(staging: Path, element: str, window: ChunkWindow, counts: tuple[int, int]) -> None:
    """Record a chunk as complete, after its data: a killed run resumes from these markers.
    Written to a temporary name and renamed, so a marker is never half there."""
    marker = _done_path(staging, element, window)
    marker.parent.mkdir(parents=True, exist_ok=True)
    partial = marker.with_name(f".{marker.name}-{uuid.uuid4().hex[:8]}")
    partial.write_text(json.dumps(list(counts)))
    partial.rename(marker)


def _read_done(staging: Path, element: str, window: ChunkWindow) -> tuple[int, int] | None:
    try:
        predicted, unseen = json.loads(_done_path(staging, element, window).read_text())
    except (OSError, ValueError):
        return None
    return int(predicted), int(unseen)


def read_window(cube: Path, name: str, window: ChunkWindow) -> npt.NDArray[Any]:
    """One grid chunk of cube variable ``name``, read straight from its Zarr array."""
    return np.asarray(
        zarr.open_array(cube / name, mode="r", zarr_format=3)[window.rows, window.cols]
    )


class KernelWarmUp(WorkerPlugin):
    """Compile the forest kernel, or load it from numba's disk cache, as each worker joins."""

    name = "tpgrid-kernel-warm-up"
    idempotent = True  # registering again (every run) does not redo it

    async def setup(self, worker: Worker) -> None:
        # Off the event loop: a cold compile takes seconds.
        await asyncio.get_running_loop().run_in_executor(None, warm_up_kernels)


# --- a run ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ElementSummary:
    """One element of a run: its model, and how many pixels got a prediction or were flagged
    as having a class unseen in training."""

    element: str
    model_hash: str
    n_trees: int
    pixels_predicted: int
    pixels_unseen: int


@dataclass(frozen=True)
class PredictionReport:
    """What :func:`predict_cube` did; ``up_to_date`` when the output already held this run.

    ``chunks_computed`` counts the element chunks predicted by this call; the others were
    carried over unchanged from the previous run, or done before a resumed run was killed.
    """

    path: Path
    run_id: str
    elements: tuple[ElementSummary, ...]
    up_to_date: bool
    seconds: float
    chunks_computed: int = 0
    chunks_total: int = 0


def load_models(directory: str | Path) -> list[ModelArtifact]:
    """The artifact in ``directory``, or those in its subdirectories (one per element)."""
    directory = Path(directory)
    if (directory / MODEL_FILE).is_file():
        return [load_model(directory)]
    found = sorted(path.parent for path in directory.glob(f"*/{MODEL_FILE}"))
    if not found:
        raise ArtifactError(
            f"{directory} holds no model artifact ({MODEL_FILE} in it or in a subdirectory): "
            "fit the models with `tpgrid fit`"
        )
    return [load_model(path) for path in found]


def predict_cube(
    cube: str | Path,
    models: Sequence[ModelArtifact],
    out: str | Path,
    *,
    unseen: UnseenPolicy = "nan",
    overwrite: bool = False,
    dry_run: bool = False,
    progress: Callable[[str, int, int], None] | None = None,
) -> PredictionReport:
    """Predict every model over the cube at ``cube`` into the Zarr group at ``out``.

    Runs on the current Dask client, and computes only what changed:

    - ``out`` already holding this run (same models, cube chunks and policy): nothing to do;
    - ``out`` holding an earlier run of the same product (same grid, elements and policy):
      chunks whose inputs are unchanged are carried over by hard link, the others predicted;
    - a run killed part-way resumes from its staging group: chunks marked done are kept.

    The new group is assembled beside ``out`` and swapped in when complete. ``out`` holding
    anything else is only replaced when ``overwrite``. ``dry_run`` changes nothing and reports
    in ``chunks_computed`` how many element chunks a run would predict. ``progress(element,
    chunks_done, chunks_total)`` is called as chunks finish.
    """
    started = time.perf_counter()
    cube, out = Path(cube), Path(out)
    if unseen not in get_args(UnseenPolicy):
        raise ConfigError(f"unseen-class policy {unseen!r} is not one of {get_args(UnseenPolicy)}")
    grid = cube_grid(cube)
    check_models(cube, grid, models)
    run = _run_record(cube, grid, models, unseen)
    previous = _previous_run(out)
    if previous is not None and previous["run_id"] == run["run_id"]:
        log.info("%s already holds run %s: nothing to do", out, run["run_id"][:12])
        total = len(models) * len(list(grid.windows()))
        return _report(out, previous, True, time.perf_counter() - started, 0, total)
    same_product = previous is not None and _product(previous) == _product(run)
    if out.exists() and not (same_product or overwrite):
        what = "another prediction run" if previous is not None else "something else"
        raise OutputExistsError(
            f"{out} holds {what}: choose another output path or pass --overwrite to replace it"
        )

    if dry_run:
        old = previous["chunk_inputs"] if same_product and previous else {}
        stale = sum(
            old.get(element, {}).get(key) != digest
            for element, inputs in run["chunk_inputs"].items()
            for key, digest in inputs.items()
        )
        total = len(models) * len(list(grid.windows()))
        return PredictionReport(out, run["run_id"], (), False, 0.0, stale, total)
    client = _client()
    client.register_plugin(KernelWarmUp())
    staging = _staging(out, run, grid, models, unseen)
    futures: list[Future[list[ChunkCounts]]] = []
    counts: dict[str, dict[str, list[int]]] = {model.element: {} for model in models}
    try:
        to_predict: dict[str, list[ChunkWindow]] = {}
        for model in models:
            old = previous if same_product else None
            counts[model.element], to_predict[model.element] = _reuse_chunks(
                staging, out, model.element, grid, run, old
            )
        futures = _submit(client, models, to_predict, cube, staging, unseen)
        for element, key, predicted, flagged in _collect(futures, counts, grid, progress):
            counts[element][key] = [predicted, flagged]
        for model in models:
            entry = run["models"][model.element]
            entry["chunk_counts"] = dict(sorted(counts[model.element].items()))
            entry["pixels_predicted"] = sum(c[0] for c in counts[model.element].values())
            entry["pixels_unseen"] = sum(c[1] for c in counts[model.element].values())
        shutil.rmtree(staging / DONE_DIR, ignore_errors=True)
        attrs = global_attrs(grid, [m.element for m in models], run["run_id"])
        finish(staging, attrs | {ATTR_RUN: run})
        swap_in(staging, out)
    except BaseException as exc:
        # A failed run leaves nothing. An interrupted one (Ctrl-C) stops its tasks but, like a
        # killed one (no chance to get here), leaves its staging group and done markers for
        # the next run with the same inputs to resume from.
        client.cancel(futures)
        if isinstance(exc, Exception):
            shutil.rmtree(staging, ignore_errors=True)
        raise
    computed = sum(len(windows) for windows in to_predict.values())
    total = len(models) * len(list(grid.windows()))
    log.info("%s: %d of %d element chunks predicted, the rest carried over", out, computed, total)
    return _report(out, run, False, time.perf_counter() - started, computed, total)


def _previous_run(out: Path) -> dict[str, Any] | None:
    """The run record of the complete prediction group at ``out``, if there is one."""
    attrs = read_attrs(out) if out.exists() else None
    if attrs is None or not attrs.get(ATTR_COMPLETE) or ATTR_RUN not in attrs:
        return None
    run: dict[str, Any] = attrs[ATTR_RUN]
    return run


def _product(run: Mapping[str, Any]) -> tuple[Any, ...]:
    """What makes two runs versions of one product: format, grid, elements, unseen policy."""
    return (run["format"], run["grid"], sorted(run["models"]), run["unseen"])


def _staging(
    out: Path,
    run: Mapping[str, Any],
    grid: TargetGrid,
    models: Sequence[ModelArtifact],
    unseen: UnseenPolicy,
) -> Path:
    """The staging group of this run: named by the run id, so a killed run's group is found
    again and resumed; laid out afresh when there is none."""
    staging = out.parent / f".{out.name}.staging-{run['run_id'][:16]}"
    if (staging / DONE_DIR).is_dir():
        log.info("resuming the interrupted run %s from %s", run["run_id"][:12], staging)
        return staging
    shutil.rmtree(staging, ignore_errors=True)
    layouts = {
        name: layout
        for model in models
        for name, layout in layer_layouts(model.element, model.forest.n_trees, unseen).items()
    }
    create_layout(staging, grid, layouts)
    (staging / DONE_DIR).mkdir()
    return staging


def _reuse_chunks(
    staging: Path,
    out: Path,
    element: str,
    grid: TargetGrid,
    run: Mapping[str, Any],
    previous: Mapping[str, Any] | None,
) -> tuple[dict[str, list[int]], list[ChunkWindow]]:
    """Chunks of ``element`` already done (by a killed run) or unchanged since ``previous``
    (hard-linked from ``out``), with their pixel counts; and the windows left to predict."""
    inputs = run["chunk_inputs"][element]
    old_inputs = previous["chunk_inputs"].get(element, {}) if previous else {}
    old_counts = previous["models"][element].get("chunk_counts", {}) if previous else {}
    counts: dict[str, list[int]] = {}
    to_predict = []
    for window in grid.windows():
        key = f"{window.index[0]}.{window.index[1]}"
        done = _read_done(staging, element, window)
        if done is not None:
            counts[key] = list(done)
        elif old_inputs.get(key) == inputs[key] and key in old_counts:
            for layer in LAYERS:
                link_chunk(out, staging, variable_name(element, layer), window)
            counts[key] = list(old_counts[key])
            _mark_done(staging, element, window, (counts[key][0], counts[key][1]))
        else:
            to_predict.append(window)
    return counts, to_predict


def _client() -> Client:
    try:
        return get_client()
    except ValueError as exc:
        raise ClusterError(
            "prediction needs a Dask client: open one first (tpgrid.client.dask_client(), or "
            "distributed.Client())"
        ) from exc


def _submit(
    client: Client,
    models: Sequence[ModelArtifact],
    to_predict: Mapping[str, Sequence[ChunkWindow]],
    cube: Path,
    staging: Path,
    unseen: UnseenPolicy,
) -> list[Future[list[ChunkCounts]]]:
    """Scatter the forests to every worker once, then one task per chunk predicting the
    elements left to do there, naming the forests by key."""
    needed = {model.element: model for model in models if to_predict[model.element]}
    if not needed:
        return []
    # All forests under one key: tasks then have a single dependency, which Dask treats as
    # "root-ish" and hands out from the scheduler as workers free up, in priority order. With
    # one key per forest (seven dependencies) it assigns every task to a worker up front and
    # balances by stealing, which left a worker idle for ~1 s at the end of each run.
    digest = hashlib.sha256("|".join(m.model_hash for m in needed.values()).encode())
    key = f"tpgrid-forests-{digest.hexdigest()[:32]}"
    forests = {element: model.forest for element, model in needed.items()}
    scattered = client.scatter({key: forests}, broadcast=True, hash=False)[key]
    by_chunk: dict[tuple[int, int], list[ModelArtifact]] = {}
    windows = {}
    for model in models:
        for window in to_predict[model.element]:
            by_chunk.setdefault(window.index, []).append(model)
            windows[window.index] = window
    # Largest chunks first (by priority: futures submitted together have no order): the run
    # then ends on small tasks rather than one worker finishing a large chunk alone.
    pixels = {
        index: int(np.count_nonzero(read_window(cube, VALID, windows[index]))) for index in by_chunk
    }
    order = sorted(by_chunk, key=lambda index: (-pixels[index] * len(by_chunk[index]), index))
    token = uuid.uuid4().hex[:8]
    futures = []
    for rank, index in enumerate(order):
        chunk_models = by_chunk[index]
        job = ChunkJob(
            cube,
            staging,
            windows[index],
            tuple((model.element, model.features) for model in chunk_models),
            unseen,
        )
        futures.append(
            client.submit(
                predict_chunk,
                job,
                scattered,
                key=f"tpgrid-predict-{job.key}-{token}",
                priority=len(order) - rank,
            )
        )
    return futures


def _collect(
    futures: list[Future[list[ChunkCounts]]],
    counts: Mapping[str, Mapping[str, Any]],
    grid: TargetGrid,
    progress: Callable[[str, int, int], None] | None,
) -> Iterator[ChunkCounts]:
    """Wait for every chunk (raising the first failure), yielding (element, chunk key, pixels
    predicted, pixels unseen); progress counts the chunks already in ``counts`` as done."""
    total = len(list(grid.windows()))
    done = {element: len(known) for element, known in counts.items()}
    for element in done:
        if progress:
            progress(element, done[element], total)
    for future in as_completed(futures):
        for element, key, predicted, unseen in future.result():
            done[element] += 1
            if progress:
                progress(element, done[element], total)
            yield element, key, predicted, unseen


def _report(
    path: Path,
    run: Mapping[str, Any],
    up_to_date: bool,
    seconds: float,
    computed: int = 0,
    total: int = 0,
) -> PredictionReport:
    return PredictionReport(
        path=path,
        run_id=run["run_id"],
        elements=tuple(
            ElementSummary(
                element,
                entry["model_hash"],
                entry["n_trees"],
                entry["pixels_predicted"],
                entry["pixels_unseen"],
            )
            for element, entry in run["models"].items()
        ),
        up_to_date=up_to_date,
        seconds=seconds,
        chunks_computed=computed,
        chunks_total=total,
    )


# --- checks and identity -------------------------------------------------------------------


def check_models(cube: Path, grid: TargetGrid, models: Sequence[ModelArtifact]) -> None:
    """Refuse, before anything is written, models the cube cannot feed and misaligned chunks."""
    if not models:
        raise ArtifactError("no models to predict with: fit them with `tpgrid fit`")
    elements = [model.element for model in models]
    repeated = sorted({e for e in elements if elements.count(e) > 1})
    if repeated:
        raise ArtifactError(f"more than one model for {repeated}: pass one model per element")
    ds = open_cube(cube)
    for model in models:
        for name in model.features.variables:
            if name not in ds.data_vars:
                raise FeatureMismatchError(
                    f"model {model.element} needs variable {name!r}, which cube {cube} does not "
                    f"have: build the cube from a catalog with a layer {name!r}, or refit the "
                    "model on this cube"
                )
        _check_kinds(cube, model, ds.data_vars)
    needed = sorted({VALID, *(name for model in models for name in model.features.variables)})
    chunk = (grid.spec.chunk, grid.spec.chunk)
    for name in needed:
        array = zarr.open_array(cube / name, mode="r", zarr_format=3)
        if tuple(array.shape) != grid.shape or tuple(array.chunks) != chunk:
            raise ChunkingError(
                f"cube {cube}: variable {name!r} is {tuple(array.shape)} in chunks of "
                f"{tuple(array.chunks)}, but the cube's grid is {grid.shape} in chunks of "
                f"{chunk}: rebuild the cube with `tpgrid cube` rather than rechunking it"
            )


def _check_kinds(cube: Path, model: ModelArtifact, variables: Mapping[Any, Any]) -> None:
    """Continuous features must be continuous in the cube; categorical codes must name the same
    classes as in the cube's class table."""
    for name in model.features.continuous:
        if variables[name].attrs.get("tpgrid:kind") == "categorical":
            raise FeatureMismatchError(
                f"model {model.element} uses {name!r} as continuous but it is categorical in "
                f"cube {cube}: refit the model on this cube"
            )
    for feature in model.features.categorical:
        classes = variables[feature.variable].attrs.get("tpgrid:classes")
        if classes is None:
            raise FeatureMismatchError(
                f"model {model.element} uses {feature.variable!r} as categorical but cube "
                f"{cube} has no class table for it: refit the model on this cube"
            )
        for code, class_name in zip(feature.codes, feature.names, strict=True):
            if classes.get(str(code)) != class_name:
                raise FeatureMismatchError(
                    f"model {model.element}: code {code} of {feature.variable!r} is "
                    f"{class_name!r} in the model but {classes.get(str(code))!r} in cube {cube}: "
                    "the class tables differ; refit the model on this cube"
                )


def _run_record(
    cube: Path, grid: TargetGrid, models: Sequence[ModelArtifact], unseen: UnseenPolicy
) -> dict[str, Any]:
    """The run's identity and inputs, as stored in the output group's ``tpgrid:run``.

    ``chunk_inputs[element]["i.j"]`` hashes everything that decides that chunk's output: the
    model hash, the unseen policy and the cube chunk hashes of every variable read. The run id
    hashes all of them with the grid.
    """
    hashes = chunk_hashes(cube)
    chunk_inputs: dict[str, dict[str, str]] = {}
    for model in models:
        variables = sorted({VALID, *model.features.variables})
        chunk_inputs[model.element] = {}
        for window in grid.windows():
            key = f"{window.index[0]}.{window.index[1]}"
            parts = [FORMAT, model.model_hash, unseen] + [
                f"{v}:{hashes[v][key]}" for v in variables
            ]
            chunk_inputs[model.element][key] = hashlib.sha256("|".join(parts).encode()).hexdigest()
    identity = {"format": FORMAT, "grid": grid.spec.model_dump(mode="json"), "chunks": chunk_inputs}
    run_id = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    return {
        "format": FORMAT,
        "run_id": run_id,
        "cube": str(cube.resolve()),
        "grid": grid.spec.model_dump(mode="json"),
        "unseen": unseen,
        "models": {
            model.element: {
                "model_hash": model.model_hash,
                "n_trees": model.forest.n_trees,
                "columns": list(model.features.columns),
            }
            for model in models
        },
        "chunk_inputs": chunk_inputs,
    }
