"""Predict each element's forest over the cube, chunk by chunk, on the current Dask cluster.

One task per element and grid chunk reads that chunk of the variables the model needs straight
from the cube, builds ``X`` for the chunk's valid pixels with
:meth:`tpgrid.features.FeatureSpec.matrix`, walks every tree with the numba kernel and writes
mean, variance, sd and the unseen-class flag into the run's staging group (layout:
:mod:`tpgrid.outputs`). A task holds one chunk: memory per worker thread is a few times the
chunk's covariates (~60 MB for 512 × 512 px and 28 columns), plus the forests.

Each forest reaches each worker once: it is scattered (broadcast) under a key made of its model
hash, and tasks name that key, so the task graph does not grow with the forest. Workers compile
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
from collections.abc import Callable, Mapping, Sequence
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
    UNSEEN_NODATA,
    global_attrs,
    layer_layouts,
    variable_name,
)
from tpgrid.store import ATTR_COMPLETE, create_layout, finish, read_attrs, staging_path, swap_in
from tpgrid.store import write_window as store_window

log = logging.getLogger(__name__)

FORMAT = "tpgrid-prediction/1"
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
    X, is_unseen = features.matrix({name: values[name][valid] for name in features.variables})
    if unseen == "nan":
        X[is_unseen] = np.nan  # the kernel skips NaN rows: no time spent on them
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
    """What one task needs besides the forest: small, so the task graph stays small."""

    cube: Path
    out: Path
    element: str
    features: FeatureSpec
    window: ChunkWindow
    unseen: UnseenPolicy


ChunkCounts = tuple[str, int, int]  # element, pixels predicted, pixels with an unseen class


def predict_chunk(job: ChunkJob, forest: PackedForest) -> ChunkCounts:
    """Read one chunk from the cube, predict it, write it; returns (element, pixels predicted,
    pixels with an unseen class)."""
    valid = _read(job.cube, VALID, job.window) == 1
    values = {name: _read(job.cube, name, job.window) for name in job.features.variables}
    block = predict_block(forest, job.features, values, valid, job.unseen)
    for layer in ("mean", "variance", "sd", "unseen"):
        store_window(job.out, variable_name(job.element, layer), job.window, getattr(block, layer))
    return job.element, int(np.isfinite(block.mean).sum()), int((block.unseen == 1).sum())


def _read(cube: Path, name: str, window: ChunkWindow) -> npt.NDArray[Any]:
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
    """What :func:`predict_cube` did; ``up_to_date`` when the output already held this run."""

    path: Path
    run_id: str
    elements: tuple[ElementSummary, ...]
    up_to_date: bool
    seconds: float


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
    progress: Callable[[str, int, int], None] | None = None,
) -> PredictionReport:
    """Predict every model over the cube at ``cube`` into a new Zarr group at ``out``.

    Runs on the current Dask client. ``out`` already holding this run (same models, cube
    chunks and policy) is left as it is; holding anything else, it is only replaced when
    ``overwrite``. ``progress(element, chunks_done, chunks_total)`` is called as chunks finish.
    """
    started = time.perf_counter()
    cube, out = Path(cube), Path(out)
    if unseen not in get_args(UnseenPolicy):
        raise ConfigError(f"unseen-class policy {unseen!r} is not one of {get_args(UnseenPolicy)}")
    grid = cube_grid(cube)
    _check_models(cube, grid, models)
    run = _run_record(cube, grid, models, unseen)
    previous = read_attrs(out) if out.exists() else None
    previous_id = (previous or {}).get(ATTR_RUN, {}).get("run_id")
    if previous is not None and previous.get(ATTR_COMPLETE) and previous_id == run["run_id"]:
        log.info("%s already holds run %s: nothing to do", out, run["run_id"][:12])
        return _report(out, previous[ATTR_RUN], True, time.perf_counter() - started)
    if out.exists() and not overwrite:
        what = "another prediction run" if ATTR_RUN in (previous or {}) else "something else"
        raise OutputExistsError(
            f"{out} holds {what}: choose another output path or pass --overwrite to replace it"
        )

    client = _client()
    client.register_plugin(KernelWarmUp())
    staging = staging_path(out)
    futures: list[Future[ChunkCounts]] = []
    try:
        create_layout(
            staging,
            grid,
            {
                name: layout
                for model in models
                for name, layout in layer_layouts(
                    model.element, model.forest.n_trees, unseen
                ).items()
            },
        )
        for model in models:
            futures += _submit(client, model, cube, staging, grid, unseen)
        counts = _collect(futures, grid, progress)
        for model in models:
            entry = run["models"][model.element]
            entry["pixels_predicted"], entry["pixels_unseen"] = counts[model.element]
        attrs = global_attrs(grid, [m.element for m in models], run["run_id"])
        finish(staging, attrs | {ATTR_RUN: run})
        swap_in(staging, out)
    except BaseException:
        client.cancel(futures)
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return _report(out, run, False, time.perf_counter() - started)


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
    model: ModelArtifact,
    cube: Path,
    staging: Path,
    grid: TargetGrid,
    unseen: UnseenPolicy,
) -> list[Future[ChunkCounts]]:
    """Scatter the forest to every worker once, then one task per chunk naming it by key."""
    key = f"tpgrid-forest-{model.model_hash}"
    forest = client.scatter({key: model.forest}, broadcast=True, hash=False)[key]
    token = uuid.uuid4().hex[:8]
    return [
        client.submit(
            predict_chunk,
            ChunkJob(cube, staging, model.element, model.features, window, unseen),
            forest,
            key=f"tpgrid-predict-{model.element}-{window.index[0]}.{window.index[1]}-{token}",
        )
        for window in grid.windows()
    ]


def _collect(
    futures: list[Future[ChunkCounts]],
    grid: TargetGrid,
    progress: Callable[[str, int, int], None] | None,
) -> dict[str, tuple[int, int]]:
    """Wait for every chunk (raising the first failure); pixels predicted and unseen per element."""
    per_element = len(list(grid.windows()))
    done: dict[str, int] = {}
    counts: dict[str, tuple[int, int]] = {}
    for future in as_completed(futures):
        element, predicted, unseen = future.result()
        done[element] = done.get(element, 0) + 1
        old = counts.get(element, (0, 0))
        counts[element] = (old[0] + predicted, old[1] + unseen)
        if progress:
            progress(element, done[element], per_element)
    return counts


def _report(
    path: Path, run: Mapping[str, Any], up_to_date: bool, seconds: float
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
    )


# --- checks and identity -------------------------------------------------------------------


def _check_models(cube: Path, grid: TargetGrid, models: Sequence[ModelArtifact]) -> None:
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
