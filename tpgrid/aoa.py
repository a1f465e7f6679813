"""The dissimilarity index and area of applicability of each element's model as map layers,
computed chunk by chunk over the cube on the current Dask client.

The numbers come from :mod:`tpgrid.core.applicability` (training space, DI, threshold) and
:func:`tpgrid.core.blocks.applicability_block`; this runs them through the chunk engine like the
prediction, after the same model checks: one task per chunk reads its variables straight from
the Zarr store, once for all elements, the training spaces reach each worker once (scattered
under their content hash), and the layers ``{element}_di`` and ``{element}_aoa`` are written
into a Zarr group on the cube's grid. A task holds one chunk and the training sites: memory is
bounded by the chunk size.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from tpgrid import __version__
from tpgrid.artifact import ModelArtifact
from tpgrid.compatibility import check_models
from tpgrid.core.applicability import TrainingSpace
from tpgrid.core.blocks import AOA_NODATA, applicability_block
from tpgrid.core.features import FeatureSpec
from tpgrid.cube import VALID, cube_grid, read_window
from tpgrid.engine import ChunkJob, ChunkRun
from tpgrid.errors import OutputExistsError
from tpgrid.store import VariableLayout, staging_path, write_window
from tpgrid.tasks import Progress

log = logging.getLogger(__name__)

FORMAT = "tpgrid-applicability/1"

#: One applicability task: a chunk and its elements, each with its model's features.
ApplicabilityJob = ChunkJob[FeatureSpec, None]


def layer_name(element: str, layer: str) -> str:
    """``{element}_di`` or ``{element}_aoa``."""
    return f"{element}_{layer}"


def applicability_chunk(
    job: ApplicabilityJob, spaces: Mapping[str, TrainingSpace]
) -> list[tuple[str, int, int]]:
    """Read one chunk from the cube, once for every element of ``job``, compute and write each
    element's DI and AOA with its training space in ``spaces``; returns (element, valid pixels,
    pixels inside the AOA) per element."""
    valid = read_window(job.cube, VALID, job.window) == 1
    wanted = sorted({name for _, features in job.elements for name in features.variables})
    values = {name: read_window(job.cube, name, job.window) for name in wanted}
    counts = []
    for element, features in job.elements:
        block = applicability_block(spaces[element], features, values, valid)
        write_window(job.out, layer_name(element, "di"), job.window, block.di)
        write_window(job.out, layer_name(element, "aoa"), job.window, block.aoa)
        counts.append((element, int((block.aoa != AOA_NODATA).sum()), int((block.aoa == 1).sum())))
    return counts


@dataclass(frozen=True, eq=False)
class ElementApplicability:
    """An element's model and its training space, as the cube run needs them."""

    artifact: ModelArtifact
    space: TrainingSpace

    @property
    def element(self) -> str:
        return self.artifact.element


def applicability_cube(
    cube: str | Path,
    models: Sequence[ElementApplicability],
    out: str | Path,
    *,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> dict[str, float]:
    """Write DI and AOA of every element over the cube into a new Zarr group at ``out``.

    Runs on the current Dask client; ``out`` is assembled beside its final path and swapped in
    when complete. Returns the share of valid pixels inside the AOA per element.
    ``progress(element, chunks_done, chunks_total)`` is called as chunks finish.
    """
    cube, out = Path(cube), Path(out)
    if out.exists() and not overwrite:
        raise OutputExistsError(f"{out} exists: choose another path or pass --overwrite")
    grid = cube_grid(cube)
    # The prediction's checks: every variable present, of the same kind and class table, and
    # chunked like the grid (a task reads whole chunks).
    check_models(cube, grid, [model.artifact for model in models])
    staging = staging_path(out)
    with ChunkRun("aoa", "applicability", staging, out) as engine:
        engine.stage(grid, _layouts(models))
        elements = tuple((model.element, model.artifact.features) for model in models)
        jobs = [ChunkJob(cube, staging, window, elements, None) for window in grid.windows()]
        spaces = {model.element: model.space for model in models}
        content = "|".join(model.space.content_hash() for model in models)
        totals: dict[str, list[int]] = {}
        for _, counts in engine.map(
            applicability_chunk, jobs, spaces, content, chunks=len(jobs), progress=progress
        ):
            for element, n_valid, n_inside in counts:
                total = totals.setdefault(element, [0, 0])
                total[0] += n_valid
                total[1] += n_inside
        shares = {e: (inside / n if n else float("nan")) for e, (n, inside) in totals.items()}
        if out.exists():
            log.info("replacing %s", out)
        engine.finish(_attrs(models, shares))
    return shares


def aoa_share(group: str | Path, element: str) -> float:
    """The share of valid pixels inside the AOA in the ``{element}_aoa`` layer of the Zarr
    group at ``group`` (this module's, or a prediction's), read one stored chunk at a time."""
    layer = zarr.open_array(Path(group) / layer_name(element, "aoa"), mode="r")
    valid = inside = 0
    rows, cols = layer.chunks
    for top in range(0, layer.shape[0], rows):
        for left in range(0, layer.shape[1], cols):
            flags = np.asarray(layer[top : top + rows, left : left + cols])
            valid += int((flags != AOA_NODATA).sum())
            inside += int((flags == 1).sum())
    return inside / valid if valid else float("nan")


def _layouts(models: Sequence[ElementApplicability]) -> dict[str, VariableLayout]:
    layouts: dict[str, VariableLayout] = {}
    for model in models:
        element = model.element
        common = {"tpgrid:element": element, "coverage_content_type": "qualityInformation"}
        layouts[layer_name(element, "di")] = VariableLayout(
            "float32",
            np.nan,
            common
            | {
                "long_name": f"dissimilarity index of the {element} model (Meyer & Pebesma 2021)",
                "units": "1",
                "tpgrid:threshold": model.space.threshold,
            },
        )
        layouts[layer_name(element, "aoa")] = VariableLayout(
            "uint8",
            AOA_NODATA,
            common
            | {
                "long_name": f"area of applicability of the {element} model",
                "flag_values": [0, 1],
                "flag_meanings": "outside_area_of_applicability inside_area_of_applicability",
            },
        )
    return layouts


def _attrs(models: Sequence[ElementApplicability], shares: Mapping[str, float]) -> dict[str, Any]:
    return {
        "tpgrid:format": FORMAT,
        "tpgrid:version": __version__,
        "title": "Area of applicability of the tpgrid micronutrient models",
        "tpgrid:applicability": {
            model.element: {
                "threshold": model.space.threshold,
                "mean_distance": model.space.mean_distance,
                "n_training_sites": int(model.space.points.shape[0]),
                "share_inside": shares.get(model.element),
                "weights": dict(
                    zip(model.space.columns, model.space.weights.tolist(), strict=True)
                ),
            }
            for model in models
        },
    }
