"""The variable plan: every cube variable as lazy data on the grid, with its attributes.

Each catalog layer is reprojected lazily onto the grid (odc-geo ``xr_reproject``) with its
value check attached, and slope, northness and eastness are derived from the projected DEM.
Planning opens every source before anything is written, so a bad catalog fails a build that
has not yet touched the disk.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache, cached_property, partial
from typing import Any

import dask.array as da
import numpy as np
import numpy.typing as npt
import xarray as xr
from odc.geo.xr import xr_reproject

from tpgrid.cube.plan import open_sources
from tpgrid.cube.values import checked_cast, value_check
from tpgrid.grid import TargetGrid
from tpgrid.sources import (
    Catalog,
    Layer,
    choose_resampling,
    cube_dtype,
    cube_fill_value,
)
from tpgrid.terrain import TERRAIN_LAYERS, terrain_layers


@dataclass(frozen=True)
class Variable:
    """One cube variable to (re)build: its lazy data on the grid and its attributes.

    The data's task graph is made on first use (``lazy()``): a variable carried over from the
    previous cube never needs one, and making a reprojection's graph costs ~0.1 s a layer."""

    name: str
    lazy: Callable[[], da.Array] = field(repr=False)
    dtype: np.dtype[Any]
    attrs: dict[str, Any]
    fill_value: float
    fingerprint: str
    check: Callable[[npt.NDArray[Any]], None] = field(default=lambda block: None)

    @cached_property
    def data(self) -> da.Array:
        return self.lazy()


def plan_variables(
    catalog: Catalog, grid: TargetGrid, fingerprints: Mapping[str, str]
) -> list[Variable]:
    """Open every layer lazily and describe every cube variable, failing before any write.
    ``fingerprints``: every variable's, as :func:`tpgrid.cube.plan.expected_fingerprints` gives
    them (the build has them already; hashing every source again would double its reading)."""
    variables: list[Variable] = []
    for name, source in open_sources(catalog, grid).items():
        layer = catalog.layers[name]
        resampling = choose_resampling(layer, source, grid)
        check = value_check(name, catalog.location(name), layer)
        variables.append(
            Variable(
                name,
                partial(_on_grid, source, layer, resampling, check, grid),
                cube_dtype(layer),
                _layer_attrs(name, layer, resampling),
                cube_fill_value(layer),
                fingerprints[name],
                check,
            )
        )
    if catalog.terrain is not None:
        dem = next(var for var in variables if var.name == catalog.terrain.dem)
        derived = cache(partial(_terrain, dem, grid))
        for name in TERRAIN_LAYERS:
            variables.append(
                Variable(
                    name,
                    partial(_pick, derived, name),
                    np.dtype("float32"),
                    _terrain_attrs(name, dem.name),
                    np.nan,
                    fingerprints[name],
                )
            )
    return variables


def _on_grid(
    source: xr.DataArray,
    layer: Layer,
    resampling: str,
    check: Callable[[npt.NDArray[Any]], None],
    grid: TargetGrid,
) -> da.Array:
    """A layer reprojected lazily onto the grid, in the grid's chunks."""
    # Class codes stored as floats are reprojected as they are and cast once checked to be
    # whole numbers: a cast during the reprojection fails on 1.5 with a bare TypeError.
    cast_later = layer.kind == "categorical" and source.dtype.kind == "f"
    # Warped straight into the grid's chunks: by default odc-geo tiles the output like the
    # source (a 40 x 55 px climate raster made ~70 warps, each with its own GDAL set-up, for
    # one 370 x 364 px layer, then a rechunk), so one warp per grid chunk instead: the small
    # demo's cube took 3x less time. GDAL approximates the transformation within 1/8 source
    # pixel (gdalwarp's default, which rasterio's reproject does not expose) per warped tile,
    # so the values depend on the tiling to that extent: larger tiles, a little less exact.
    on_grid = xr_reproject(
        source,
        grid.geobox,
        resampling=resampling,
        dtype=source.dtype if cast_later else cube_dtype(layer),
        dst_nodata=cube_fill_value(layer),
        chunks=(grid.spec.chunk, grid.spec.chunk),
    )
    data = on_grid.data
    assert data.chunks == grid.chunks
    if cast_later:
        data = data.map_blocks(checked_cast, check, cube_dtype(layer), dtype=cube_dtype(layer))
    result: da.Array = data
    return result


def _terrain(dem: Variable, grid: TargetGrid) -> dict[str, da.Array]:
    """The terrain layers, from the DEM's own data on the grid: a build computing the DEM and
    them in one graph reprojects the DEM once."""
    widths, height = grid.pixel_size_m()
    return terrain_layers(dem.data, widths, height)


def _pick(layers: Callable[[], dict[str, da.Array]], name: str) -> da.Array:
    return layers()[name]


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
