"""Predict each element's forest over the cube, chunk by chunk, on the current Dask cluster.

One task per grid chunk (:func:`predict_chunk`, run by :mod:`tpgrid.engine`) reads that chunk
of the variables its models need straight from the cube, once, builds ``X`` for the chunk's
valid pixels once per distinct feature spec, walks every tree of each element's forest with
the numba kernels (:mod:`tpgrid.core.blocks`) and writes mean, variance, sd, the unseen-class
flag and the uncertainty layers the options ask for (quantiles, the calibrated interval, the
standard error, DI and AOA: :class:`~tpgrid.core.blocks.PredictOptions`) into the run's
staging group (layout: :mod:`tpgrid.outputs`). One task per chunk rather
than per element and chunk, because reading and decoding the covariates cost as much as the
kernel once it got fast (docs/benchmarks.md). A task holds one chunk: memory per worker thread
is the chunk's covariates plus ``X`` per feature spec (~60 MB each for 512 × 512 px and 28
columns), plus the forests.

The run's models (forests, and what the uncertainty layers need of them) reach each worker
once, under a key made of their model hashes, so the task graph does not grow with the
forests. Workers compile the kernels, or load them from numba's disk cache, once when they
join (:class:`KernelWarmUp`, :class:`QuantileKernelWarmUp`).

Only what changed is computed (:mod:`tpgrid.carryover`): the group records the run's identity
(its record, the child group :data:`~tpgrid.outputs.layers.RUN_GROUP` named by ``tpgrid:run``,
with each model's grouped-CV R², by which publishing flags poor maps), so re-running with the
same inputs does nothing; chunks whose inputs did not change are carried over, each file
checked against its record first; a killed run resumes from its done markers. An output path
holding another run is only replaced when asked.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import numpy as np
import numpy.typing as npt
from distributed import Worker
from distributed.diagnostics.plugin import WorkerPlugin

from tpgrid.artifact import MODEL_FILE, ModelArtifact, load_model
from tpgrid.carryover import (
    ChunkCounts,
    LayerFiles,
    mark_chunk_done,
    read_chunk_done,
    records_attr,
    reuse_chunks,
    run_record,
    stale_chunks,
)
from tpgrid.compatibility import check_models
from tpgrid.core.blocks import (
    PixelModel,
    PredictOptions,
    UnseenPolicy,
    model_input,
    predict_block,
)
from tpgrid.core.features import FeatureSpec
from tpgrid.core.forest import warm_up_kernels
from tpgrid.core.quantiles import warm_up_quantile_kernels
from tpgrid.cube import VALID, cube_grid, read_window
from tpgrid.engine import ChunkJob, ChunkRun
from tpgrid.errors import ArtifactError, ConfigError, OutputExistsError
from tpgrid.grid import ChunkWindow
from tpgrid.integrity import Damage
from tpgrid.outputs import (
    ATTR_RUN,
    RUN_GROUP,
    global_attrs,
    layer_layouts,
    read_run_record,
    variable_name,
    write_run_record,
)
from tpgrid.store import (
    ATTR_CHUNK_FILES,
    ATTR_COMPLETE,
    VariableLayout,
    read_attrs,
    records_from_json,
    remove_leftovers,
    verify_group,
)
from tpgrid.store import write_window as store_window
from tpgrid.tasks import Progress

log = logging.getLogger(__name__)

#: The product's layers unless asked otherwise: quantiles, the interval, DI and AOA.
DEFAULT_OPTIONS = PredictOptions()

# --- tasks ---------------------------------------------------------------------------------


#: One prediction task: a chunk, its elements each with its model's features, the options.
PredictionJob = ChunkJob[FeatureSpec, PredictOptions]


def predict_chunk(job: PredictionJob, models: Mapping[str, PixelModel]) -> list[ChunkCounts]:
    """Predict every element of ``job`` in one chunk with its model in ``models``.

    The chunk's covariates are read and decoded once for all elements, and ``X`` is built once
    per distinct feature spec (models fitted on the same columns share it). Each element's
    layers are written, then it is marked done; an element already marked done (the task is
    a retry after its worker died) is not predicted again.
    """
    valid = read_window(job.cube, VALID, job.window) == 1
    wanted = sorted({name for _, features in job.elements for name in features.variables})
    values = {name: read_window(job.cube, name, job.window)[valid] for name in wanted}
    inputs: dict[FeatureSpec, tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]]] = {}
    layers = job.options.layers()
    results: list[ChunkCounts] = []
    for element, features in job.elements:
        done = read_chunk_done(job.out, element, job.window, layers)
        if done is None:
            if features not in inputs:
                # Unseen classes are kept in X: the DI needs them; predict_block applies the
                # policy to the forest's input.
                inputs[features] = model_input(features, values, "predict")
            block = predict_block(models[element], *inputs[features], valid, job.options)
            # Each file is hashed here, as it is written: it is still in the page cache.
            files = {
                layer: store_window(
                    job.out, variable_name(element, layer), job.window, block.layers[layer]
                )
                for layer in layers
            }
            counts = block.predicted, block.unseen
            mark_chunk_done(job.out, element, job.window, counts, files)
            done = counts, files
        (predicted, unseen), files = done
        results.append((element, job.key, predicted, unseen, files))
    return results


class KernelWarmUp(WorkerPlugin):
    """Compile the forest kernel, or load it from numba's disk cache, as each worker joins."""

    name = "tpgrid-kernel-warm-up"
    idempotent = True  # registering again (every run) does not redo it

    async def setup(self, worker: Worker) -> None:
        # Off the event loop: a cold compile takes seconds.
        await asyncio.get_running_loop().run_in_executor(None, warm_up_kernels)


class QuantileKernelWarmUp(WorkerPlugin):
    """Compile the quantile kernels too, or load them, as each worker joins a run with
    quantile layers."""

    name = "tpgrid-quantile-kernel-warm-up"
    idempotent = True

    async def setup(self, worker: Worker) -> None:
        await asyncio.get_running_loop().run_in_executor(None, warm_up_quantile_kernels)


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
    ``repaired``: chunk files found damaged (their element chunks were predicted again), the
    leftovers of killed runs removed, a previous group that could not be verified.
    """

    path: Path
    run_id: str
    elements: tuple[ElementSummary, ...]
    up_to_date: bool
    seconds: float
    chunks_computed: int = 0
    chunks_total: int = 0
    repaired: tuple[Damage, ...] = ()


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
    options: PredictOptions = DEFAULT_OPTIONS,
    overwrite: bool = False,
    dry_run: bool = False,
    progress: Progress | None = None,
) -> PredictionReport:
    """Predict every model over the cube at ``cube`` into the Zarr group at ``out``, with the
    layers ``options`` ask for (every model must have what they need: an
    :class:`ArtifactError` names what is missing, before anything starts).

    Runs on the current Dask client, and computes only what changed:

    - ``out`` already holding this run (same models, cube chunks and options): nothing to do;
    - ``out`` holding an earlier run of the same product (same grid and options; elements may
      come and go): chunks whose inputs are unchanged are carried over by hard link, the
      others predicted;
    - a run killed part-way resumes from its staging group: chunks marked done are kept.

    The new group is assembled beside ``out`` and swapped in when complete. ``out`` holding
    anything else is only replaced when ``overwrite``. ``dry_run`` changes nothing and reports
    in ``chunks_computed`` how many element chunks a run would predict. ``progress(element,
    chunks_done, chunks_total)`` is called as chunks finish.
    """
    started = time.perf_counter()
    cube, out = Path(cube), Path(out)
    if options.unseen not in get_args(UnseenPolicy):
        raise ConfigError(
            f"unseen-class policy {options.unseen!r} is not one of {get_args(UnseenPolicy)}"
        )
    grid = cube_grid(cube)
    check_models(cube, grid, models)
    check_uncertainty_parts(models, options)
    run = run_record(cube, grid, models, options)
    for model in models:
        # Not part of the run's identity (the model hash is): what publishing flags maps by.
        run["models"][model.element]["cv_r2"] = grouped_r2(model)
    previous = read_run_record(out)
    records = records_from_json(read_attrs(out) or {}) if previous is not None else None
    total = len(models) * len(list(grid.windows()))
    repaired: list[Damage] = []
    if not dry_run:
        repaired += [
            _said(Damage(leftover, "left by an interrupted run; removed"))
            for leftover in remove_leftovers(out, keep=_staging_path(out, run))
        ]
    damage: list[Damage] = []
    if previous is not None and previous["run_id"] == run["run_id"]:
        # Up to date only if every chunk file is as written; else the damaged chunks are
        # predicted again below, the rest carried over.
        damage = verify_group(out, "prediction")
        if not damage:
            log.info("%s already holds run %s: nothing to do", out, run["run_id"][:12])
            seconds = time.perf_counter() - started
            return _report(out, previous, True, seconds, 0, total, repaired)
        log.warning("%s holds run %s, but damaged: repairing it", out, run["run_id"][:12])
    same_product = previous is not None and _product(previous) == _product(run)
    # Maps of elements this run lacks would be dropped with the old group: that is replacing.
    dropped = sorted(set(previous["models"]) - set(run["models"])) if previous else []
    if out.exists() and not ((same_product and not dropped) or overwrite):
        what = "another prediction run" if previous is not None else "something else"
        if same_product:
            what += f", with maps of {dropped} that this one has no model for"
        raise OutputExistsError(
            f"{out} holds {what}: choose another output path or pass --overwrite to replace it"
        )
    old = previous if same_product else None
    if old is not None and records is None:
        repaired.append(
            _said(
                Damage(
                    out,
                    "no chunk file records (written by an older tpgrid), so nothing in it can be "
                    "verified: every chunk predicted again",
                )
            )
        )

    if dry_run:
        stale = sum(
            len(stale_chunks(out, model.element, grid, run, old, records)) for model in models
        )
        return PredictionReport(out, run["run_id"], (), False, 0.0, stale, total)
    counts: dict[str, dict[str, list[int]]] = {model.element: {} for model in models}
    files: dict[str, dict[str, LayerFiles]] = {model.element: {} for model in models}
    to_predict: dict[str, list[ChunkWindow]] = {}
    staging = _staging_path(out, run)
    with ChunkRun("predict", "prediction", staging, out, resumable=True) as engine:
        engine.client.register_plugin(KernelWarmUp())
        if any(model.pixel_model.quantiles(options) for model in models):
            engine.client.register_plugin(QuantileKernelWarmUp())
        if engine.stage(grid, _layouts(models, options)):
            log.info("resuming the interrupted run %s from %s", run["run_id"][:12], staging)
        for model in models:
            reused = reuse_chunks(staging, out, model.element, grid, run, old, records)
            counts[model.element], files[model.element], to_predict[model.element], damaged = reused
            repaired += [_said(_repredicted(found)) for found in damaged]
        # What the check of the whole group found besides chunk files (stray files): left out.
        named = {found.path for found in repaired}
        repaired += [
            _said(Damage(found.path, f"{found.problem}; not carried over"))
            for found in damage
            if found.path not in named
        ]
        needed = {model.element: model for model in models if to_predict[model.element]}
        # The models under a key made of their hashes: each reaches each worker once.
        # The options too: they decide which parts of a model are sent.
        content = "|".join(
            [json.dumps(options.to_json()), *(m.model_hash for m in needed.values())]
        )
        pixel_models = {
            element: model.pixel_model.needed_for(options) for element, model in needed.items()
        }
        done = {element: len(known) for element, known in counts.items()}
        jobs = _jobs(cube, staging, models, to_predict, options)
        chunks = len(list(grid.windows()))
        for _, results in engine.map(
            predict_chunk, jobs, pixel_models, content, chunks=chunks, progress=progress, done=done
        ):
            for element, key, predicted, flagged, written in results:
                counts[element][key] = [predicted, flagged]
                files[element][key] = written
        for model in models:
            entry = run["models"][model.element]
            entry["chunk_counts"] = dict(sorted(counts[model.element].items()))
            entry["pixels_predicted"] = sum(c[0] for c in counts[model.element].values())
            entry["pixels_unseen"] = sum(c[1] for c in counts[model.element].values())
        attrs = global_attrs(grid, [m.element for m in models], run["run_id"])
        pointer = write_run_record(staging, run)  # before finish: consolidated with the rest
        chunk_files = records_attr(files, options.layers())
        engine.finish(attrs | {ATTR_RUN: pointer, ATTR_CHUNK_FILES: chunk_files})
    computed = sum(len(windows) for windows in to_predict.values())
    log.info("%s: %d of %d element chunks predicted, the rest carried over", out, computed, total)
    seconds = time.perf_counter() - started
    return _report(out, run, False, seconds, computed, total, repaired)


def grouped_r2(model: ModelArtifact) -> float | None:
    """The model's grouped-CV R² as its fit recorded it, None where it recorded none."""
    r2 = model.record.get("cv", {}).get("grouped", {}).get("r2")
    return None if r2 is None else float(r2)


def verify_prediction(path: str | Path) -> list[Damage]:
    """Every chunk file of every layer of the prediction group at ``path`` checked against its
    record (missing, changed, or a file where none was written), a group not marked complete,
    and its run record (missing, or not the SHA-256 its attribute names). Reads the records
    and the files only: nothing is decoded, no Dask."""
    path = Path(path)
    damage = verify_group(path, "prediction")
    complete = (read_attrs(path) or {}).get(ATTR_COMPLETE)
    if complete and read_run_record(path) is None:
        damage.append(
            Damage(path / RUN_GROUP, f"missing, or not the run the group's {ATTR_RUN} names")
        )
    return damage


def check_uncertainty_parts(models: Sequence[ModelArtifact], options: PredictOptions) -> None:
    """Raise :class:`ArtifactError` naming every model that lacks what ``options`` need."""
    lacking = {
        model.element: missing
        for model in models
        if (missing := model.pixel_model.missing(options))
    }
    if lacking:
        listed = "; ".join(f"{e}: {', '.join(parts)}" for e, parts in lacking.items())
        raise ArtifactError(
            f"models without what the asked-for layers need ({listed}): fit them again with "
            "this tpgrid (`tpgrid fit`, or `tpgrid run` refits them), or turn those layers "
            "off (the pipeline's predict: section; `tpgrid predict --quantile 0 "
            "--no-interval --no-applicability`)"
        )


def _product(run: Mapping[str, Any]) -> tuple[Any, ...]:
    """What makes two runs versions of one product: format, grid, options.

    Not the elements: chunk inputs are per element, so when the set changes (an element
    dropped for too few sites) the others' unchanged chunks are still carried over."""
    return (run["format"], run["grid"], run["options"])


def _layouts(models: Sequence[ModelArtifact], options: PredictOptions) -> dict[str, VariableLayout]:
    """The layers of every element's prediction."""
    return {
        name: layout
        for model in models
        for name, layout in layer_layouts(
            model.element,
            model.forest.n_trees,
            options,
            None if model.calibration is None else model.calibration.level,
        ).items()
    }


def _staging_path(out: Path, run: Mapping[str, Any]) -> Path:
    """Named by the run id, so a killed run's group is found again and resumed."""
    return out.parent / f".{out.name}.staging-{run['run_id'][:16]}"


def _repredicted(damage: Damage) -> Damage:
    return Damage(damage.path, f"{damage.problem}; its element chunk predicted again")


def _said(damage: Damage) -> Damage:
    log.warning("%s", damage)
    return damage


def _jobs(
    cube: Path,
    staging: Path,
    models: Sequence[ModelArtifact],
    to_predict: Mapping[str, Sequence[ChunkWindow]],
    options: PredictOptions,
) -> list[PredictionJob]:
    """One task per chunk, predicting the elements left to do there."""
    by_chunk: dict[tuple[int, int], list[ModelArtifact]] = {}
    windows = {}
    for model in models:
        for window in to_predict[model.element]:
            by_chunk.setdefault(window.index, []).append(model)
            windows[window.index] = window
    return [
        ChunkJob(
            cube,
            staging,
            windows[index],
            tuple((model.element, model.features) for model in chunk_models),
            options,
        )
        for index, chunk_models in by_chunk.items()
    ]


def _report(
    path: Path,
    run: Mapping[str, Any],
    up_to_date: bool,
    seconds: float,
    computed: int = 0,
    total: int = 0,
    repaired: Sequence[Damage] = (),
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
        repaired=tuple(repaired),
    )
