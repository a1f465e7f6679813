"""The covariate products: each on its native grid as delivered, then all on the 1 km grid.

:func:`native_products` is what the covariate files hold (coarse climate as block means of the
master grid, projected products sampled at their pixel centres); :func:`on_target_grid`
resamples them as the cube does, the view the truth and the sites are computed from.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from affine import Affine
from odc.geo.geobox import GeoBox
from pyproj import Transformer
from rasterio.enums import Resampling
from rasterio.warp import reproject
from scipy.ndimage import zoom

from tpgrid.core.arrays import F32, F64
from tpgrid.grid import TargetGrid
from tpgrid.synthetic.covariates import (
    climate,
    elevation_m,
    grazing_intensity,
    lake_mask,
    lithology_classes,
    productivity,
    soil,
    vegetation_classes,
)
from tpgrid.synthetic.fields import block_mean
from tpgrid.synthetic.geometry import (
    COVER_MARGIN_M,
    MASTER_RES_DEG,
    affine_xy,
    master_grid,
    plateau_distance_km,
)
from tpgrid.synthetic.layers import DEM_NODATA, FLOAT_NODATA, LAYER_NAMES, LAYERS
from tpgrid.terrain import horn_gradient, slope_degrees


@dataclass(frozen=True)
class NativeRaster:
    """One product as written: array (nodata filled in), CRS and affine."""

    data: npt.NDArray[np.generic]
    crs: str
    transform: Affine


def _projected_box(grid: TargetGrid, crs: str, resolution: float) -> GeoBox:
    """A ``crs`` grid at ``resolution`` covering the target grid plus the margin."""
    extent = grid.geobox.extent.buffer(COVER_MARGIN_M).to_crs(crs, resolution=5000)
    return GeoBox.from_bbox(extent.boundingbox, crs, resolution=resolution)


def _pixel_lonlat(box: GeoBox, crs: str) -> tuple[F64, F64]:
    """Lon/lat of every pixel centre of ``box`` (whose CRS is ``crs``)."""
    cols, rows = np.meshgrid(np.arange(box.width) + 0.5, np.arange(box.height) + 0.5)
    x, y = affine_xy(box.affine, cols, rows)
    to_lonlat = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    lon, lat = to_lonlat.transform(np.asarray(x), np.asarray(y))
    return np.asarray(lon), np.asarray(lat)


def _filled(values: F32, nodata: float) -> F32:
    return np.where(np.isfinite(values), values, np.float32(nodata)).astype("float32")


def native_products(grid: TargetGrid, seed: int) -> dict[str, NativeRaster]:
    """Every covariate product on its native grid (see ``LAYERS``), keyed by layer name."""
    master = master_grid(grid)
    dist = plateau_distance_km(master)
    elevation = elevation_m(master, dist, seed)
    bbox = grid.spec.bbox
    assert bbox is not None  # the plateau's grids are lon/lat boxes (geometry.SIZES)
    lakes = lake_mask(master, dist, bbox, seed, n_lakes=3 if grid.shape[0] < 1000 else 12)
    clim = climate(master, elevation, seed)
    ndvi, npp = productivity(master, clim, lakes, seed)

    dem = np.where(lakes, DEM_NODATA, np.round(elevation)).astype("int16")
    products = {"dem": NativeRaster(dem, LAYERS["dem"].crs, master.transform)}
    # Coarse climate is the block mean of the 30″ fields, as a reanalysis cell averages them.
    factor = _master_pixels_per("mat")
    climate_grid = master.coarsened(factor)
    mat, map_mm, pet = (block_mean(a, factor) for a in (clim.mat, clim.map, clim.pet))
    for name, values in (("mat", mat), ("map", map_mm), ("ai", map_mm / pet)):
        products[name] = NativeRaster(values, LAYERS[name].crs, climate_grid.transform)

    fine = master.refined(round(MASTER_RES_DEG / LAYERS["vegetation"].resolution))
    codes = vegetation_classes(
        fine,
        *(_upsampled(a, fine.width // master.width) for a in (clim.mat, clim.map, elevation)),
        seed=seed,
    )
    products["vegetation"] = NativeRaster(codes, LAYERS["vegetation"].crs, fine.transform)
    factor = round(LAYERS["grazing"].resolution / fine.res)
    products["grazing"] = NativeRaster(
        grazing_intensity(fine, codes, factor, seed),
        LAYERS["grazing"].crs,
        fine.coarsened(factor).transform,
    )

    sampled = {"ndvi": ndvi, "npp": npp, **soil(master, clim, seed)}
    for (crs, resolution), names in _projected_families().items():
        box = _projected_box(grid, crs, resolution)
        lon, lat = _pixel_lonlat(box, crs)
        for name in names:
            data: npt.NDArray[np.generic] = (
                lithology_classes(lon, lat, master, clim.map, elevation, seed)
                if name == "lithology"
                else _filled(master.sample(sampled[name], lon, lat), FLOAT_NODATA)
            )
            products[name] = NativeRaster(data, crs, box.affine)
    return {name: products[name] for name in LAYER_NAMES}


def _master_pixels_per(layer: str) -> int:
    """How many 30″ master pixels one pixel of an EPSG:4326 ``layer`` spans along each axis."""
    return round(LAYERS[layer].resolution / MASTER_RES_DEG)


def _upsampled(field: F32, factor: int) -> F32:
    """Bilinear refinement of a master field by an integer factor, pixel edges aligned."""
    return np.asarray(zoom(field, factor, order=1, mode="nearest", grid_mode=True), dtype="float32")


def _projected_families() -> dict[tuple[str, float], list[str]]:
    """Layers in a projected CRS grouped by native grid, so each grid's lon/lat is made once."""
    families: dict[tuple[str, float], list[str]] = {}
    for name, spec in LAYERS.items():
        if spec.crs != "EPSG:4326":
            families.setdefault((spec.crs, spec.resolution), []).append(name)
    return families


def on_target_grid(products: Mapping[str, NativeRaster], grid: TargetGrid) -> dict[str, F32]:
    """Every product reprojected onto the 1 km grid (float32, NaN = nodata), plus ``slope`` (°).

    Resampling as the cube does it: average when the source is finer than 1 km, bilinear when
    coarser, mode for categorical layers (codes kept as float, NaN for nodata).
    """
    out: dict[str, F32] = {}
    for name, product in products.items():
        spec = LAYERS[name]
        destination = np.full(grid.shape, spec.nodata, dtype=product.data.dtype)
        reproject(
            product.data,
            destination,
            src_transform=product.transform,
            src_crs=product.crs,
            src_nodata=spec.nodata,
            dst_transform=grid.geobox.affine,
            dst_crs=grid.crs_wkt,
            dst_nodata=spec.nodata,
            resampling=Resampling[spec.resampling],
            num_threads=2,
        )
        values = destination.astype("float32")
        values[destination == spec.nodata] = np.nan
        out[name] = values
    widths, height = grid.pixel_size_m()
    padded = np.pad(out["dem"], 1, constant_values=np.nan)
    out["slope"] = slope_degrees(*horn_gradient(padded, widths, height))
    return out
