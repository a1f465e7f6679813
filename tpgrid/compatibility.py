"""Whether models can run on a cube: checked before a prediction or applicability run writes
anything, so a mismatch is refused with a message naming the model, variable and cube rather
than failing in a chunk task on the cluster.

The cube must hold every variable a model reads, of the kind (continuous or categorical) and
with the class table the model was fitted with, and chunked like its grid (a task reads whole
chunks).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import zarr

from tpgrid.artifact import ModelArtifact
from tpgrid.cube import VALID, open_cube
from tpgrid.errors import ArtifactError, ChunkingError, FeatureMismatchError
from tpgrid.grid import TargetGrid


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
