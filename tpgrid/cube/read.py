"""Reading a built cube: its variables, grid and chunk hashes, and the names they are stored under.

Everything after the build reads the cube through this module (the fit, prediction,
applicability, the carry-over of maps between runs), so it is the one part of the package they
need, and it imports none of the rest. The attribute names and ``VALID`` live here because
the build writes what these functions read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import xarray as xr
import zarr

from tpgrid.errors import CubeError
from tpgrid.grid import ChunkWindow, TargetGrid
from tpgrid.store import ATTR_COMPLETE, read_attrs

VALID = "valid"
ATTR_GRID = "tpgrid:grid"
ATTR_HASHES = "tpgrid:chunk_hashes"
ATTR_FINGERPRINTS = "tpgrid:fingerprints"
ATTR_FEATURES = "tpgrid:features"

ChunkKey = str  # "i.j", the block index of a chunk


def open_cube(path: str | Path) -> xr.Dataset:
    """Open a complete cube lazily; raise :class:`CubeError` if it is missing or incomplete."""
    path = Path(path)
    attrs = read_attrs(path)
    if attrs is None or not attrs.get(ATTR_COMPLETE):
        raise CubeError(f"{path} is not a complete tpgrid cube: build it with `tpgrid cube`")
    # decode_coords="all" keeps the CF grid mapping (spatial_ref) a coordinate, not a variable.
    cube: xr.Dataset = xr.open_zarr(path, consolidated=True, zarr_format=3, decode_coords="all")
    return cube


def cube_grid(path: str | Path) -> TargetGrid:
    """The grid a cube was built on."""
    attrs = read_attrs(Path(path))
    if attrs is None:
        raise CubeError(f"{path} is not a tpgrid cube: build it with `tpgrid cube`")
    return TargetGrid.from_record(attrs[ATTR_GRID], f"cube {path}")


def chunk_hashes(path: str | Path) -> dict[str, dict[ChunkKey, str]]:
    """Per variable, per chunk ``"i.j"``, the content hash recorded when it was written."""
    attrs = read_attrs(Path(path))
    if attrs is None:
        raise CubeError(f"{path} is not a tpgrid cube: build it with `tpgrid cube`")
    hashes: dict[str, dict[ChunkKey, str]] = attrs[ATTR_HASHES]
    return hashes


def read_window(cube: Path, name: str, window: ChunkWindow) -> npt.NDArray[Any]:
    """One grid chunk of cube variable ``name``, read straight from its Zarr array."""
    return np.asarray(
        zarr.open_array(cube / name, mode="r", zarr_format=3)[window.rows, window.cols]
    )
