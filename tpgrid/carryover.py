"""What a prediction run can skip: its identity, and the element chunks it carries over.

A run is identified by its inputs: per element and chunk, the model hash, the prediction
options (unseen-class policy, which layers) and the content hashes of the cube chunks read
(:func:`run_record`). A chunk whose
inputs are unchanged since the previous run of the same product is carried over by hard link;
one marked done by a killed run is kept. Nothing is carried over on trust: each chunk file's
size and SHA-256 were recorded by the task that wrote it (in the group's ``tpgrid:chunk_files``
and in the done markers), and are checked first; an element chunk with a damaged file is
predicted again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tpgrid.artifact import ModelArtifact
from tpgrid.core.blocks import PredictOptions
from tpgrid.cube import VALID, chunk_hashes
from tpgrid.engine import done_path, mark_done, read_done
from tpgrid.grid import ChunkWindow, TargetGrid
from tpgrid.integrity import Damage, FileRecord, check_file
from tpgrid.outputs import run_layers, variable_name
from tpgrid.store import ChunkFiles, chunk_locator, link_file, records_to_json

FORMAT = "tpgrid-prediction/2"


#: Per layer of one element chunk: the record of its stored file (None: no file stored).
LayerFiles = dict[str, FileRecord | None]
#: element, chunk key ("i.j"), pixels predicted, pixels with a class unseen in training, and
#: the records of the chunk's files
ChunkCounts = tuple[str, str, int, int, LayerFiles]


def mark_chunk_done(
    staging: Path,
    element: str,
    window: ChunkWindow,
    counts: tuple[int, int],
    files: LayerFiles,
) -> None:
    """Record a chunk as complete, after its data, with its pixel counts and file records: a
    killed run resumes from these markers."""
    doc = {
        "counts": list(counts),
        "files": {layer: None if rec is None else rec.to_json() for layer, rec in files.items()},
    }
    mark_done(staging, element, window, doc)


def read_chunk_done(
    staging: Path, element: str, window: ChunkWindow, layers: Sequence[str]
) -> tuple[tuple[int, int], LayerFiles] | None:
    """Pixel counts and file records of a chunk marked done; None when it is not (a marker
    without records of every one of ``layers``, from an older tpgrid or other options, cannot
    be verified: the chunk is predicted again)."""
    doc = read_done(staging, element, window)
    if doc is None:
        return None
    try:
        predicted, unseen = doc["counts"]
        files = {
            layer: None
            if doc["files"][layer] is None
            else FileRecord.from_json(doc["files"][layer])
            for layer in layers
        }
    except (ValueError, KeyError, TypeError):
        return None
    return (int(predicted), int(unseen)), files


def reuse_chunks(
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
    layers = run_layers(run)
    old_inputs = previous["chunk_inputs"].get(element, {}) if previous else {}
    # An element new to this product (or back after being dropped) has no record there.
    old_model = previous["models"].get(element, {}) if previous else {}
    old_counts = old_model.get("chunk_counts", {})
    # Every layer of a group is laid out alike: one chunk key encoding for all.
    locate = chunk_locator(staging, variable_name(element, layers[0]))
    counts: dict[str, list[int]] = {}
    files: dict[str, LayerFiles] = {}
    to_predict: list[ChunkWindow] = []
    damaged: list[Damage] = []
    for window in grid.windows():
        key = window.key
        done = read_chunk_done(staging, element, window, layers)
        if done is not None:
            found = _check_chunk(staging, element, locate(key), layers, done[1])
            if not found:
                counts[key], files[key] = list(done[0]), done[1]
                continue
            damaged += found
            done_path(staging, element, window).unlink()
        elif records is not None and old_inputs.get(key) == inputs[key] and key in old_counts:
            recorded = _recorded(records, element, key, layers)
            found = _check_chunk(out, element, locate(key), layers, recorded)
            if recorded is not None and not found:
                for layer, record in recorded.items():
                    if record is not None:  # else a fill-value chunk: no file to link
                        name = variable_name(element, layer)
                        link_file(out / name / locate(key), staging / name / locate(key))
                counts[key], files[key] = list(old_counts[key]), recorded
                mark_chunk_done(
                    staging, element, window, (counts[key][0], counts[key][1]), recorded
                )
                continue
            damaged += found
        to_predict.append(window)
    return counts, files, to_predict, damaged


def stale_chunks(
    out: Path,
    element: str,
    grid: TargetGrid,
    run: Mapping[str, Any],
    previous: Mapping[str, Any] | None,
    records: Mapping[str, ChunkFiles] | None,
) -> list[str]:
    """Keys of the chunks of ``element`` a run would predict: inputs changed, or files damaged."""
    inputs = run["chunk_inputs"][element]
    layers = run_layers(run)
    old_inputs = previous["chunk_inputs"].get(element, {}) if previous else {}
    if records is None or not old_inputs:
        return list(inputs)
    locate = chunk_locator(out, variable_name(element, layers[0]))
    return [
        key
        for key in inputs
        if old_inputs.get(key) != inputs[key]
        or _check_chunk(out, element, locate(key), layers, _recorded(records, element, key, layers))
    ]


def _recorded(
    records: Mapping[str, ChunkFiles], element: str, key: str, layers: Sequence[str]
) -> LayerFiles | None:
    """The file records of one element chunk; None when a layer has no record of it."""
    names = {layer: variable_name(element, layer) for layer in layers}
    if any(key not in records.get(name, {}) for name in names.values()):
        return None
    return {layer: records[name][key] for layer, name in names.items()}


def _check_chunk(
    group: Path,
    element: str,
    relative: str,
    layers: Sequence[str],
    recorded: LayerFiles | None,
) -> list[Damage]:
    """The files of one element chunk (``relative`` to each of its ``layers``) that do not
    match their records; every one of them when there are no records."""
    paths = {layer: group / variable_name(element, layer) / relative for layer in layers}
    if recorded is None:
        return [Damage(paths[layers[0]], "no record of this chunk's files")]
    found = (check_file(paths[layer], recorded[layer]) for layer in layers)
    return [damage for damage in found if damage is not None]


def records_attr(
    files: Mapping[str, Mapping[str, LayerFiles]], layers: Sequence[str]
) -> dict[str, Any]:
    """Per element and chunk file records as the group attribute, per variable."""
    return records_to_json(
        {
            variable_name(element, layer): {key: chunk[layer] for key, chunk in chunks.items()}
            for element, chunks in files.items()
            for layer in layers
        }
    )


def run_record(
    cube: Path, grid: TargetGrid, models: Sequence[ModelArtifact], options: PredictOptions
) -> dict[str, Any]:
    """The run's identity and inputs, as stored in the output group's ``tpgrid:run``.

    ``chunk_inputs[element]["i.j"]`` hashes everything that decides that chunk's output: the
    model hash, the options and the cube chunk hashes of every variable read. The run id
    hashes all of them with the grid. Each model's entry also holds its interval's
    calibration when the options ask for intervals.
    """
    hashes = chunk_hashes(cube)
    chosen = json.dumps(options.to_json(), sort_keys=True)
    chunk_inputs: dict[str, dict[str, str]] = {}
    for model in models:
        variables = sorted({VALID, *model.features.variables})
        chunk_inputs[model.element] = {}
        for window in grid.windows():
            key = window.key
            parts = [FORMAT, model.model_hash, chosen] + [
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
        "options": options.to_json(),
        "models": {
            model.element: {
                "model_hash": model.model_hash,
                "n_trees": model.forest.n_trees,
                "columns": list(model.features.columns),
                "interval": model.calibration.to_json()
                if options.interval and model.calibration is not None
                else None,
            }
            for model in models
        },
        "chunk_inputs": chunk_inputs,
    }
