"""Predict each element's forest over the cube, chunk by chunk, on the current Dask cluster.

One task per grid chunk reads that chunk of the variables its models need straight from the
cube, once, builds ``X`` for the chunk's valid pixels with
:meth:`tpgrid.core.features.FeatureSpec.matrix` once per distinct feature spec, walks every tree of
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

Nothing is carried over on trust: each chunk file's size and SHA-256 are recorded by the task
that wrote it (``tpgrid:chunk_files``, and in the done markers a resumed run reads), and
checked before the chunk is linked into the next run or the group is called up to date. An
element chunk with a damaged file is predicted again; the rest stays carried over.
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
from distributed import Client, Future, Worker, as_completed, get_client
from distributed.diagnostics.plugin import WorkerPlugin

from tpgrid.artifact import MODEL_FILE, ModelArtifact, load_model
from tpgrid.compatibility import check_models
from tpgrid.core.features import FeatureSpec
from tpgrid.core.forest import PackedForest, warm_up_kernels
from tpgrid.cube import VALID, chunk_hashes, cube_grid, read_window
from tpgrid.errors import (
    ArtifactError,
    ClusterError,
    ConfigError,
    OutputExistsError,
)
from tpgrid.grid import ChunkWindow, TargetGrid
from tpgrid.integrity import Damage, FileRecord, check_file
from tpgrid.outputs import (
    ATTR_RUN,
    LAYERS,
    UNSEEN_NODATA,
    global_attrs,
    layer_layouts,
    variable_name,
)
from tpgrid.store import (
    ATTR_CHUNK_FILES,
    ATTR_COMPLETE,
    ChunkFiles,
    chunk_locator,
    create_layout,
    finish,
    link_file,
    read_attrs,
    records_from_json,
    records_to_json,
    remove_leftovers,
    swap_in,
    verify_group,
)
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
        return self.window.key


#: Per layer of one element chunk: the record of its stored file (None: no file stored).
LayerFiles = dict[str, FileRecord | None]
#: element, chunk key ("i.j"), pixels predicted, pixels with a class unseen in training, and
#: the records of the chunk's files
ChunkCounts = tuple[str, str, int, int, LayerFiles]


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
    results: list[ChunkCounts] = []
    for element, features in job.elements:
        done = _read_done(job.out, element, job.window)
        if done is None:
            if features not in inputs:
                inputs[features] = model_input(features, values, job.unseen)
            block = _block(forests[element], *inputs[features], valid)
            # Each file is hashed here, as it is written: it is still in the page cache.
            files = {
                layer: store_window(
                    job.out, variable_name(element, layer), job.window, getattr(block, layer)
                )
                for layer in LAYERS
            }
            counts = int(np.isfinite(block.mean).sum()), int((block.unseen == 1).sum())
            _mark_done(job.out, element, job.window, counts, files)
            done = counts, files
        (predicted, unseen), files = done
        results.append((element, job.key, predicted, unseen, files))
    return results


def _done_path(staging: Path, element: str, window: ChunkWindow) -> Path:
    return staging / DONE_DIR / element / window.key


def _mark_done(
    staging: Path,
    element: str,
    window: ChunkWindow,
    counts: tuple[int, int],
    files: LayerFiles,
) -> None:
    """Record a chunk as complete, after its data, with its pixel counts and file records: a
    killed run resumes from these markers. Written to a temporary name and renamed, so a
    marker is never half there."""
    marker = _done_path(staging, element, window)
    marker.parent.mkdir(parents=True, exist_ok=True)
    partial = marker.with_name(f".{marker.name}-{uuid.uuid4().hex[:8]}")
    doc = {
        "counts": list(counts),
        "files": {layer: None if rec is None else rec.to_json() for layer, rec in files.items()},
    }
    partial.write_text(json.dumps(doc))
    partial.rename(marker)


def _read_done(
    staging: Path, element: str, window: ChunkWindow
) -> tuple[tuple[int, int], LayerFiles] | None:
    """Pixel counts and file records of a chunk marked done; None when it is not (a marker
    without records, from an older tpgrid, cannot be verified: the chunk is predicted again)."""
    try:
        doc = json.loads(_done_path(staging, element, window).read_text())
        predicted, unseen = doc["counts"]
        files = {
            layer: None
            if doc["files"][layer] is None
            else FileRecord.from_json(doc["files"][layer])
            for layer in LAYERS
        }
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return (int(predicted), int(unseen)), files


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
    unseen: UnseenPolicy = "nan",
    overwrite: bool = False,
    dry_run: bool = False,
    progress: Callable[[str, int, int], None] | None = None,
) -> PredictionReport:
    """Predict every model over the cube at ``cube`` into the Zarr group at ``out``.

    Runs on the current Dask client, and computes only what changed:

    - ``out`` already holding this run (same models, cube chunks and policy): nothing to do;
    - ``out`` holding an earlier run of the same product (same grid and policy; elements may
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
    if unseen not in get_args(UnseenPolicy):
        raise ConfigError(f"unseen-class policy {unseen!r} is not one of {get_args(UnseenPolicy)}")
    grid = cube_grid(cube)
    check_models(cube, grid, models)
    run = _run_record(cube, grid, models, unseen)
    previous = _previous_run(out)
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
            len(_stale_chunks(out, model.element, grid, run, old, records)) for model in models
        )
        return PredictionReport(out, run["run_id"], (), False, 0.0, stale, total)
    client = _client()
    client.register_plugin(KernelWarmUp())
    staging = _staging(out, run, grid, models, unseen)
    futures: list[Future[list[ChunkCounts]]] = []
    counts: dict[str, dict[str, list[int]]] = {model.element: {} for model in models}
    files: dict[str, dict[str, LayerFiles]] = {model.element: {} for model in models}
    try:
        to_predict: dict[str, list[ChunkWindow]] = {}
        for model in models:
            reused = _reuse_chunks(staging, out, model.element, grid, run, old, records)
            counts[model.element], files[model.element], to_predict[model.element], damaged = reused
            repaired += [_said(_repredicted(found)) for found in damaged]
        # What the check of the whole group found besides chunk files (stray files): left out.
        named = {found.path for found in repaired}
        repaired += [
            _said(Damage(found.path, f"{found.problem}; not carried over"))
            for found in damage
            if found.path not in named
        ]
        futures = _submit(client, models, to_predict, cube, staging, unseen)
        for element, key, predicted, flagged, written in _collect(futures, counts, grid, progress):
            counts[element][key] = [predicted, flagged]
            files[element][key] = written
        for model in models:
            entry = run["models"][model.element]
            entry["chunk_counts"] = dict(sorted(counts[model.element].items()))
            entry["pixels_predicted"] = sum(c[0] for c in counts[model.element].values())
            entry["pixels_unseen"] = sum(c[1] for c in counts[model.element].values())
        shutil.rmtree(staging / DONE_DIR, ignore_errors=True)
        attrs = global_attrs(grid, [m.element for m in models], run["run_id"])
        finish(staging, attrs | {ATTR_RUN: run, ATTR_CHUNK_FILES: _records(files)})
        swap_in(staging, out)
    except BaseException as exc:
        # A failed run leaves nothing. An interrupted one (Ctrl-C) stops its tasks but, like a
        # killed one (no chance to get here), leaves its staging group and done markers for
        # the next run with the same inputs to resume from.
        client.cancel(futures)
        if isinstance(exc, Exception):
            _wait_until_stopped(client, futures)
            shutil.rmtree(staging, ignore_errors=True)
        raise
    computed = sum(len(windows) for windows in to_predict.values())
    log.info("%s: %d of %d element chunks predicted, the rest carried over", out, computed, total)
    seconds = time.perf_counter() - started
    return _report(out, run, False, seconds, computed, total, repaired)


def verify_prediction(path: str | Path) -> list[Damage]:
    """Every chunk file of every layer of the prediction group at ``path`` checked against its
    record (missing, changed, or a file where none was written), and a group not marked
    complete. Reads the records and the files only: nothing is decoded, no Dask."""
    return verify_group(Path(path), "prediction")


def _previous_run(out: Path) -> dict[str, Any] | None:
    """The run record of the complete prediction group at ``out``, if there is one."""
    attrs = read_attrs(out) if out.exists() else None
    if attrs is None or not attrs.get(ATTR_COMPLETE) or ATTR_RUN not in attrs:
        return None
    run: dict[str, Any] = attrs[ATTR_RUN]
    return run


def _product(run: Mapping[str, Any]) -> tuple[Any, ...]:
    """What makes two runs versions of one product: format, grid, unseen policy.

    Not the elements: chunk inputs are per element, so when the set changes (an element
    dropped for too few sites) the others' unchanged chunks are still carried over."""
    return (run["format"], run["grid"], run["unseen"])


def _staging(
    out: Path,
    run: Mapping[str, Any],
    grid: TargetGrid,
    models: Sequence[ModelArtifact],
    unseen: UnseenPolicy,
) -> Path:
    """The staging group of this run: named by the run id, so a killed run's group is found
    again and resumed; laid out afresh when there is none."""
    staging = _staging_path(out, run)
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


def _staging_path(out: Path, run: Mapping[str, Any]) -> Path:
    return out.parent / f".{out.name}.staging-{run['run_id'][:16]}"


def _reuse_chunks(
    staging: Path,
    out: Path,
    element: str,
    grid: TargetGrid,
    run: Mapping[str, Any],
    previous: Mapping[str, Any] | None,
    records: Mapping[str, ChunkFiles] | None,
) -> tuple[dict[str, list[int]], dict[str, LayerFiles], list[ChunkWindow], list[Damage]]:
    """Chunks of ``element`` already done (by a killed run) or unchanged since ``previous``
    (hard-linked from ``out``), each with its files checked against their ``records``: their
    pixel counts and file records; the windows left to predict; the damaged files found."""
    inputs = run["chunk_inputs"][element]
    old_inputs = previous["chunk_inputs"].get(element, {}) if previous else {}
    # An element new to this product (or back after being dropped) has no record there.
    old_model = previous["models"].get(element, {}) if previous else {}
    old_counts = old_model.get("chunk_counts", {})
    # Every layer of a group is laid out alike: one chunk key encoding for all.
    locate = chunk_locator(staging, variable_name(element, LAYERS[0]))
    counts: dict[str, list[int]] = {}
    files: dict[str, LayerFiles] = {}
    to_predict: list[ChunkWindow] = []
    damaged: list[Damage] = []
    for window in grid.windows():
        key = window.key
        done = _read_done(staging, element, window)
        if done is not None:
            found = _check_chunk(staging, element, locate(key), done[1])
            if not found:
                counts[key], files[key] = list(done[0]), done[1]
                continue
            damaged += found
            _done_path(staging, element, window).unlink()
        elif records is not None and old_inputs.get(key) == inputs[key] and key in old_counts:
            recorded = _recorded(records, element, key)
            found = _check_chunk(out, element, locate(key), recorded)
            if recorded is not None and not found:
                for layer, record in recorded.items():
                    if record is not None:  # else a fill-value chunk: no file to link
                        name = variable_name(element, layer)
                        link_file(out / name / locate(key), staging / name / locate(key))
                counts[key], files[key] = list(old_counts[key]), recorded
                _mark_done(staging, element, window, (counts[key][0], counts[key][1]), recorded)
                continue
            damaged += found
        to_predict.append(window)
    return counts, files, to_predict, damaged


def _stale_chunks(
    out: Path,
    element: str,
    grid: TargetGrid,
    run: Mapping[str, Any],
    previous: Mapping[str, Any] | None,
    records: Mapping[str, ChunkFiles] | None,
) -> list[str]:
    """Keys of the chunks of ``element`` a run would predict: inputs changed, or files damaged."""
    inputs = run["chunk_inputs"][element]
    old_inputs = previous["chunk_inputs"].get(element, {}) if previous else {}
    if records is None or not old_inputs:
        return list(inputs)
    locate = chunk_locator(out, variable_name(element, LAYERS[0]))
    return [
        key
        for key in inputs
        if old_inputs.get(key) != inputs[key]
        or _check_chunk(out, element, locate(key), _recorded(records, element, key))
    ]


def _recorded(records: Mapping[str, ChunkFiles], element: str, key: str) -> LayerFiles | None:
    """The file records of one element chunk; None when a layer has no record of it."""
    names = {layer: variable_name(element, layer) for layer in LAYERS}
    if any(key not in records.get(name, {}) for name in names.values()):
        return None
    return {layer: records[name][key] for layer, name in names.items()}


def _check_chunk(
    group: Path, element: str, relative: str, recorded: LayerFiles | None
) -> list[Damage]:
    """The files of one element chunk (``relative`` to each layer) that do not match their
    records; every one of them when there are no records."""
    paths = {layer: group / variable_name(element, layer) / relative for layer in LAYERS}
    if recorded is None:
        return [Damage(paths[LAYERS[0]], "no record of this chunk's files")]
    found = (check_file(paths[layer], recorded[layer]) for layer in LAYERS)
    return [damage for damage in found if damage is not None]


def _records(files: Mapping[str, Mapping[str, LayerFiles]]) -> dict[str, Any]:
    """Per element and chunk file records as the group attribute, per variable."""
    return records_to_json(
        {
            variable_name(element, layer): {key: chunk[layer] for key, chunk in chunks.items()}
            for element, chunks in files.items()
            for layer in LAYERS
        }
    )


def _repredicted(damage: Damage) -> Damage:
    return Damage(damage.path, f"{damage.problem}; its element chunk predicted again")


def _said(damage: Damage) -> Damage:
    log.warning("%s", damage)
    return damage


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
        for element, key, predicted, unseen, files in future.result():
            done[element] += 1
            if progress:
                progress(element, done[element], total)
            yield element, key, predicted, unseen, files


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


# --- identity -------------------------------------------------------------------


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
            key = window.key
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
