"""Writing a cube being built: its layout, each variable chunk by chunk, ``valid``, its records.

Each chunk is computed on the current Dask scheduler, checked, hashed and written on its own,
so memory is bounded by the chunk size, not the map; a chunk whose content hash and file are
those of the previous cube is hard-linked from it instead. ``valid`` is derived from the staged
layers once they are written, and the group attributes (hashes, file records, fingerprints,
grid) are recorded last.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import numpy.typing as npt
import zarr
from dask.base import compute
from dask.delayed import delayed

from tpgrid import __version__
from tpgrid.cube.read import (
    ATTR_FEATURES,
    ATTR_FINGERPRINTS,
    ATTR_GRID,
    ATTR_HASHES,
    VALID,
    ChunkKey,
)
from tpgrid.cube.variables import Variable
from tpgrid.grid import TargetGrid, chunk_key
from tpgrid.integrity import Damage, FileRecord, check_file
from tpgrid.sources import CATEGORICAL_NODATA
from tpgrid.store import (
    ATTR_CHUNK_FILES,
    ChunkFiles,
    VariableLayout,
    create_layout,
    finish,
    link_file,
    records_to_json,
    stored_record,
)
from tpgrid.tasks import Progress, as_finished, current_client


def chunk_hash(block: npt.NDArray[Any]) -> str:
    """Content hash of one decoded chunk: dtype, shape and bytes."""
    digest = hashlib.sha256(f"{block.dtype.str}{block.shape}".encode())
    digest.update(np.ascontiguousarray(block).tobytes())
    return digest.hexdigest()[:32]


def create_cube_layout(staging: Path, grid: TargetGrid, variables: Iterable[Variable]) -> None:
    """Write coordinates, grid mapping and empty variable metadata (no data chunks)."""
    layouts = {
        var.name: VariableLayout(str(var.dtype), var.fill_value, var.attrs) for var in variables
    }
    layouts[VALID] = VariableLayout(
        "uint8",
        0,
        {
            "long_name": "pixel inside the area of interest with every covariate present",
            "flag_values": [0, 1],
            "flag_meanings": "invalid valid",
        },
    )
    create_layout(staging, grid, layouts)


@dataclass(frozen=True)
class Pending:
    """A variable to compute: its chunks in ``only`` (all when None), and what the previous
    cube recorded of it (hashes and file records, to link a chunk that came out the same)."""

    var: Variable
    old_hashes: dict[ChunkKey, str]
    old_files: ChunkFiles
    only: set[ChunkKey] | None = None


@dataclass(frozen=True)
class Written:
    """What computing one variable's chunks did: their hashes and file records, how many were
    written (not linked), and the damaged files of the previous cube written afresh."""

    hashes: dict[ChunkKey, str]
    files: ChunkFiles
    written: int
    damaged: list[Damage]


def write_variables(
    staging: Path, previous: Path, pending: Sequence[Pending], progress: Progress | None
) -> dict[str, Written]:
    """Compute, check, hash and store the chunks of every pending variable, in one graph.

    One graph, not one per variable: the scheduler keeps both workers busy across variables,
    and a graph node shared by variables (the DEM under slope, northness and eastness) is
    computed once. A chunk whose content hash is that of ``previous``, and whose file there
    matches its record, is hard-linked from it; every other chunk is written.
    """
    tasks, names = [], []
    for job in pending:
        blocks = job.var.data.to_delayed()
        for i in range(blocks.shape[0]):
            for j in range(blocks.shape[1]):
                key = chunk_key((i, j))
                if job.only is not None and key not in job.only:
                    continue
                tasks.append(
                    delayed(_store_chunk)(
                        blocks[i, j],
                        staging,
                        previous,
                        job.var.name,
                        (i, j),
                        job.var.check,
                        _old(key, job.old_hashes, job.old_files),
                    )
                )
                names.append(job.var.name)
    results = _compute_with_progress(tasks, names, progress)
    done: dict[str, Written] = {}
    for job in pending:
        mine = [result for result, name in zip(results, names, strict=True) if name == job.var.name]
        done[job.var.name] = Written(
            dict(sorted((key, digest) for key, digest, _, _, _ in mine)),
            dict(sorted((key, record) for key, _, _, record, _ in mine)),
            sum(written for _, _, written, _, _ in mine),
            [damage for *_, damage in mine if damage is not None],
        )
    return done


def _old(
    key: ChunkKey, old_hashes: dict[ChunkKey, str], old_files: ChunkFiles
) -> tuple[str, FileRecord | None] | None:
    """A chunk's hash and file record in the previous cube; None when either is unknown (then
    it cannot be verified, so it is written, not linked)."""
    if key not in old_hashes or key not in old_files:
        return None
    return old_hashes[key], old_files[key]


def _store_chunk(
    block: npt.NDArray[Any],
    staging: Path,
    previous: Path,
    name: str,
    index: tuple[int, int],
    check: Callable[[npt.NDArray[Any]], None],
    old: tuple[str, FileRecord | None] | None,
) -> tuple[ChunkKey, str, bool, FileRecord | None, Damage | None]:
    """Store one chunk: (key, content hash, written?, file record, damage found in previous)."""
    check(block)
    digest = chunk_hash(block)
    array = zarr.open_array(staging / name, mode="r+", zarr_format=3)
    relative = array.metadata.encode_chunk_key(index)
    i, j = index
    damage = None
    if old is not None and digest == old[0]:
        source = previous / name / relative
        damage = check_file(source, old[1])
        if damage is None:
            if old[1] is not None:  # else a fill-value chunk: no file to link
                link_file(source, staging / name / relative)
            return chunk_key(index), digest, False, old[1], None
    rows, cols = array.chunks
    array[i * rows : i * rows + block.shape[0], j * cols : j * cols + block.shape[1]] = block
    return chunk_key(index), digest, True, stored_record(staging / name / relative), damage


def _compute_with_progress(
    tasks: list[Any], names: list[str], progress: Progress | None
) -> list[Any]:
    """Compute delayed tasks on the current scheduler; report each variable's chunks done
    (``names``: the variable of every task) as they finish."""
    totals = Counter(names)
    client = current_client()
    if client is None:
        # No cluster (tests, the memory benchmark): one variable after another, each reported
        # when done, so a failing layer fails after the layers before it are reported.
        results: list[Any] = []
        for name, total in totals.items():
            results += compute(*[task for task, of in zip(tasks, names, strict=True) if of == name])
            if progress:
                progress(name, total, total)
        return results
    futures = client.compute(tasks)
    of = {future.key: name for future, name in zip(futures, names, strict=True)}
    finished: Counter[str] = Counter()
    for future in as_finished(futures):
        name = of[future.key]
        finished[name] += 1
        if progress:
            progress(name, finished[name], totals[name])
    return [future.result() for future in futures]


def valid_variable(
    staging: Path,
    grid: TargetGrid,
    variables: list[Variable],
    hashes: dict[str, dict[ChunkKey, str]],
) -> Variable:
    """``valid`` = inside the area of interest and no layer missing, from the staged layers."""
    valid = grid.mask()
    for var in variables:
        valid = valid & staged_present(staging, grid, var.name)
    inputs = json.dumps({name: hashes[name] for name in sorted(hashes)} | {"mask": grid.spec.mask})
    data = valid.astype("uint8")
    return Variable(
        VALID, lambda: data, data.dtype, {}, 0, hashlib.sha256(inputs.encode()).hexdigest()
    )


def staged_present(staging: Path, grid: TargetGrid, name: str) -> da.Array:
    """Lazy boolean array, True where the staged layer ``name`` has a value (not nodata)."""
    stored = da.from_zarr(zarr.open_array(staging / name, mode="r", zarr_format=3))
    stored = stored.rechunk(grid.chunks)
    present: da.Array = (
        stored != CATEGORICAL_NODATA if stored.dtype == np.uint8 else ~da.isnan(stored)
    )
    return present


def finish_cube(
    staging: Path,
    grid: TargetGrid,
    variables: list[Variable],
    hashes: dict[str, dict[ChunkKey, str]],
    files: dict[str, ChunkFiles],
) -> None:
    """Record hashes, file records, fingerprints and grid, mark complete, consolidate."""
    finish(
        staging,
        {
            ATTR_GRID: grid.spec.model_dump(mode="json"),
            ATTR_HASHES: hashes,
            ATTR_CHUNK_FILES: records_to_json(files),
            ATTR_FINGERPRINTS: {var.name: var.fingerprint for var in variables},
            ATTR_FEATURES: [var.name for var in variables],
            "tpgrid:version": __version__,
            "Conventions": "CF-1.10",
        },
    )
