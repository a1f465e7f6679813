"""The variable plan: every cube variable as lazy data on the grid, with its attributes.

Each catalog layer is reprojected lazily onto the grid (odc-geo ``xr_reproject``) with its
value check attached, and slope, northness and eastness are derived from the projected DEM.
Planning opens every source before anything is written, so a bad catalog fails a build that
has not yet touched the disk.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import dask.array as da
import numpy as np
import numpy.typing as npt
from odc.geo.xr import xr_reproject

from tpgrid.cube.plan import open_sources, terrain_fingerprint
from tpgrid.cube.values import checked_cast, value_check
from tpgrid.grid import TargetGrid
from tpgrid.sources import (
    Catalog,
    Layer,
    choose_resampling,
    cube_dtype,
    cube_fill_value,
    fingerprint,
)
from tpgrid.terrain import terrain_layers


@dataclass(frozen=True)
class Variable:
    """One cube variable to (re)build: its lazy data on the grid and its attributes."""

    name: str
    data: da.Array
    attrs: dict[str, Any]
    fill_value: float
    fingerprint: str
    check: Callable[[npt.NDArray[Any]], None] = field(default=lambda block: None)


def plan_variables(catalog: Catalog, grid: TargetGrid) -> list[Variable]:
    """Open every layer lazily and describe every cube variable, failing before any write."""
    variables: list[Variable] = []
    for name, source in open_sources(catalog, grid).items():
        layer = catalog.layers[name]
        resampling = choose_resampling(layer, source, grid)
        check = value_check(name, catalog.location(name), layer)
        # Class codes stored as floats are reprojected as they are and cast once checked to be
        # whole numbers: a cast during the reprojection fails on 1.5 with a bare TypeError.
        cast_later = layer.kind == "categorical" and source.dtype.kind == "f"
        on_grid = xr_reproject(
            source,
            grid.geobox,
            resampling=resampling,
            dtype=source.dtype if cast_later else cube_dtype(layer),
            dst_nodata=cube_fill_value(layer),
        )
        data = on_grid.data.rechunk(grid.chunks)
        if cast_later:
            data = data.map_blocks(checked_cast, check, cube_dtype(layer), dtype=cube_dtype(layer))
        attrs = _layer_attrs(name, layer, resampling)
        variables.append(
            Variable(
                name,
                data,
                attrs,
                cube_fill_value(layer),
                fingerprint(catalog, name),
                check,
            )
        )
    if catalog.terrain is not None:
        dem = next(var for var in variables if var.name == catalog.terrain.dem)
        widths, height = grid.pixel_size_m()
        for name, data in terrain_layers(dem.data, widths, height).items():
            variables.append(
                Variable(
                    name,
                    data,
                    _terrain_attrs(name, dem.name),
                    np.nan,
                    terrain_fingerprint(dem.fingerprint),
                )
            )
    return variables


def _layer_attrs(name: str, layer: Layer, resampling: str) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        "long_name": layer.description or name,
        "units": layer.units,
        "tpgrid:kind": layer.kind,
        "tpgrid:group": layer.group,
        "tpgrid:resampling": resampling,
        "grid_mapping": "spatial_ref",
    }
    if layer.valid_range is not None:
        attrs["valid_range"] = list(layer.valid_range)
    if layer.classes is not None:
        codes = sorted(layer.classes)
        attrs["flag_values"] = codes
        attrs["flag_meanings"] = " ".join(layer.classes[c].replace(" ", "_") for c in codes)
        attrs["tpgrid:classes"] = {str(c): layer.classes[c] for c in codes}
    return attrs


def _terrain_attrs(name: str, dem: str) -> dict[str, Any]:
    described = {
        "slope": ("slope (Horn 1981) of the projected DEM", "degree"),
        "northness": ("cosine of aspect (downslope direction, clockwise from north)", "1"),
        "eastness": ("sine of aspect (downslope direction, clockwise from north)", "1"),
    }
    long_name, units = described[name]
    return {
        "long_name": long_name,
        "units": units,
        "tpgrid:kind": "continuous",
        "tpgrid:group": "topography",
        "tpgrid:derived_from": dem,
        "grid_mapping": "spatial_ref",
    }
