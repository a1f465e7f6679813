"""Where the synthetic plateau lies: its sizes, the lon/lat master grid and the outline.

The world is evaluated on a 30″ EPSG:4326 *master grid* (:func:`master_grid`) and sampled from
there onto each product's own native grid; relief follows the signed distance to
:data:`tpgrid.grid.PLATEAU_OUTLINE` (:func:`plateau_distance_km`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from affine import Affine
from rasterio.features import rasterize
from scipy.ndimage import distance_transform_edt, map_coordinates

from tpgrid.core.arrays import F32, F64
from tpgrid.errors import ConfigError
from tpgrid.grid import PLATEAU_GRID, PLATEAU_OUTLINE, GridSpec, TargetGrid

# The plateaus there are: a 4° × 3° piece for tests and the demo, and the whole plateau. Both
# are the paper's 1 km equal-area grid inside the plateau outline, every setting stated (a
# GridSpec assumes no region), and grid.yaml records them as written here.
SIZES: dict[str, GridSpec] = {
    "small": PLATEAU_GRID.model_copy(update={"bbox": (90.0, 30.0, 94.0, 33.0), "chunk": 128}),
    "full": PLATEAU_GRID.model_copy(update={"chunk": 512}),
}

MASTER_RES_DEG = 1 / 120
# Fourier modes are laid out in km so they are isotropic at the plateau's mid-latitude.
KM_PER_DEG_LAT = 110.9
KM_PER_DEG_LON = 111.32 * math.cos(math.radians(33.5))
# Products cover the target grid plus this margin, so edge pixels are fully fed.
COVER_MARGIN_M = 30_000.0


@dataclass(frozen=True)
class LonLatGrid:
    """A north-up EPSG:4326 grid: west/north edges (°), pixel size (°), shape."""

    west: float
    north: float
    res: float
    width: int
    height: int

    @property
    def transform(self) -> Affine:
        return Affine(self.res, 0.0, self.west, 0.0, -self.res, self.north)

    def lons(self) -> F64:
        return self.west + (np.arange(self.width, dtype=np.float64) + 0.5) * self.res

    def lats(self) -> F64:
        return self.north - (np.arange(self.height, dtype=np.float64) + 0.5) * self.res

    def refined(self, factor: int) -> LonLatGrid:
        return LonLatGrid(
            self.west, self.north, self.res / factor, self.width * factor, self.height * factor
        )

    def coarsened(self, factor: int) -> LonLatGrid:
        return LonLatGrid(
            self.west, self.north, self.res * factor, self.width // factor, self.height // factor
        )

    def sample(self, field: F32, lon: F64, lat: F64) -> F32:
        """Bilinear values of ``field`` (on this grid) at points; NaN outside the grid."""
        col = (lon - self.west) / self.res - 0.5
        row = (self.north - lat) / self.res - 0.5
        out = map_coordinates(
            field,
            [row.ravel(), col.ravel()],
            order=1,
            mode="constant",
            cval=np.nan,
            prefilter=False,
        )
        return np.asarray(out, dtype="float32").reshape(np.shape(lon))


def master_grid(grid: TargetGrid) -> LonLatGrid:
    """The 30″ lon/lat grid covering the target grid plus a margin, edges on whole 0.5°.

    0.5° is a whole number of 0.1°, 0.25° and 1/240° pixels, so the coarse climate products are
    exact block means of the master grid and all EPSG:4326 products share its edges.
    """
    extent = grid.geobox.extent.buffer(COVER_MARGIN_M).to_crs("EPSG:4326", resolution=5000)
    west, south, east, north = extent.boundingbox
    west, south = math.floor(west * 2) / 2, math.floor(south * 2) / 2
    east, north = math.ceil(east * 2) / 2, math.ceil(north * 2) / 2
    per_degree = round(1 / MASTER_RES_DEG)
    return LonLatGrid(
        west,
        north,
        MASTER_RES_DEG,
        round((east - west) * per_degree),
        round((north - south) * per_degree),
    )


def plateau_distance_km(master: LonLatGrid) -> F32:
    """Signed distance (km) to :data:`PLATEAU_OUTLINE`, positive inside.

    Computed on a fixed 0.02° grid over the whole plateau and sampled, so the value at a place
    does not depend on which part of the world is being generated.
    """
    coarse = LonLatGrid(74.0, 43.0, 0.02, 1750, 950)
    inside = rasterize(
        [{"type": "Polygon", "coordinates": [list(PLATEAU_OUTLINE)]}],
        out_shape=(coarse.height, coarse.width),
        transform=coarse.transform,
        fill=0,
        default_value=1,
        dtype="uint8",
    ).astype(bool)
    pixel_km = (coarse.res * KM_PER_DEG_LAT, coarse.res * KM_PER_DEG_LON)
    signed = (
        distance_transform_edt(inside, sampling=pixel_km)
        - distance_transform_edt(~inside, sampling=pixel_km)
    ).astype("float32")
    lon, lat = np.meshgrid(master.lons(), master.lats())
    return coarse.sample(signed, lon, lat)


def affine_xy(affine: Affine, col: F64, row: F64) -> tuple[F64, F64]:
    """CRS coordinates of fractional pixel positions (col, row) under a north-up affine."""
    return affine.a * col + affine.b * row + affine.c, affine.d * col + affine.e * row + affine.f


def grid_spec(size: str) -> GridSpec:
    """The target grid of the plateau ``size``; an unknown size names the known ones."""
    if size not in SIZES:
        raise ConfigError(f"unknown plateau size {size!r}: choose one of {', '.join(SIZES)}")
    return SIZES[size]
