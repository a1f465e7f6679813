"""A survey unlike the Tibetan Plateau, built in code: what a user elsewhere brings to tpgrid
(``python -m tests.regions DIR`` writes it, for the walk-through in docs/your-data.md).

A 16 km × 12 km field survey in Europe's equal-area grid (EPSG:3035) at 50 m: two continuous
covariates on different grids (NDWI at 50 m, clay at 100 m on an offset grid), one categorical
land-use map with its own codes (nodata 0), no DEM. Three topsoil metals (Pb, Cd, As, mg/kg)
at sites given as x/y in EPSG:3035, some on exact cell edges, with a text column (soil type)
and a numeric non-element column (pH). A template raster on a third grid (100 m, offset, a
part of the area) is there for a grid taken ``like:`` it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd
from affine import Affine
from scipy.ndimage import gaussian_filter

from tests.conftest import write_tif

CRS = "EPSG:3035"
X0, Y0 = 4_321_000.0, 3_222_000.0  # north-west corner of the 50 m grid
RES = 50.0
ROWS, COLS = 240, 320
LAND_USE = {1: "arable", 2: "grassland", 3: "forest", 5: "urban"}
ELEMENTS = ("Pb", "Cd", "As")
SOIL_TYPES = ("loam", "sandy loam", "clay loam")


@dataclass(frozen=True)
class Region:
    """Where the survey's files are."""

    root: Path
    rasters: Path  # ndwi.tif, clay.tif, landuse.tif
    sites: Path  # sites.csv
    template: Path  # a grid to map on, outside the rasters folder


def build_region(root: Path, seed: int = 0, n_sites: int = 150) -> Region:
    """Write the survey under ``root``; the same seed gives the same files."""
    rng = np.random.default_rng(seed)
    rasters = root / "rasters"
    rasters.mkdir(parents=True)
    ndwi = np.clip(_smooth(rng, (ROWS, COLS), 12) * 0.25, -0.6, 0.8)
    clay_coarse = 25 + 8 * _smooth(rng, (ROWS // 2 + 1, COLS // 2 + 1), 5)
    land = _land_use(rng)
    write_tif(rasters / "ndwi.tif", ndwi.astype("float32"), crs=CRS, transform=_grid(RES, X0, Y0))
    # The clay product's own grid: 100 m, its corner 30 m west and north of the NDWI grid's.
    clay_transform = _grid(2 * RES, X0 - 30, Y0 + 30)
    write_tif(
        rasters / "clay.tif",
        clay_coarse.astype("float32"),
        crs=CRS,
        transform=clay_transform,
        nodata=-9999.0,
    )
    write_tif(rasters / "landuse.tif", land, crs=CRS, transform=_grid(RES, X0, Y0), nodata=0)

    # The template: 100 m, offset by 20 m, the area's central part.
    template = root / "template.tif"
    t_rows, t_cols = 80, 120
    t_transform = _grid(2 * RES, X0 + 2020, Y0 - 1980)
    write_tif(template, np.zeros((t_rows, t_cols), "uint8"), crs=CRS, transform=t_transform)

    sites = root / "sites.csv"
    _site_table(rng, n_sites, ndwi, clay_coarse, land).to_csv(sites, index=False)
    return Region(root=root, rasters=rasters, sites=sites, template=template)


def _grid(res: float, west: float, north: float) -> Affine:
    """A north-up grid's transform."""
    return Affine(res, 0, west, 0, -res, north)


def _smooth(
    rng: np.random.Generator, shape: tuple[int, int], sigma: float
) -> npt.NDArray[np.float64]:
    """A smooth field with unit standard deviation."""
    field = gaussian_filter(rng.standard_normal(shape), sigma, mode="reflect")
    return np.asarray((field - field.mean()) / field.std())


def _land_use(rng: np.random.Generator) -> npt.NDArray[np.uint8]:
    score = _smooth(rng, (ROWS, COLS), 8)
    land = np.select([score < -0.6, score < 0.3, score < 1.4], [3, 1, 2], 5).astype("uint8")
    land[:6, :10] = 0  # a corner without a land-use class (nodata)
    return land


def _site_table(
    rng: np.random.Generator,
    n_sites: int,
    ndwi: npt.NDArray[np.float64],
    clay_coarse: npt.NDArray[np.float64],
    land: npt.NDArray[np.uint8],
) -> pd.DataFrame:
    rows, cols = rng.integers(8, ROWS - 2, n_sites), rng.integers(12, COLS - 2, n_sites)
    x = X0 + (cols + rng.uniform(0.1, 0.9, n_sites)) * RES
    y = Y0 - (rows + rng.uniform(0.1, 0.9, n_sites)) * RES
    # Every tenth site lies exactly on its pixel's west and north edges.
    x[::10] = X0 + cols[::10] * RES
    y[::10] = Y0 - rows[::10] * RES
    clay = clay_coarse[np.minimum(rows // 2, clay_coarse.shape[0] - 1), cols // 2]
    urban = (land[rows, cols] == 5).astype(float)
    forest = (land[rows, cols] == 3).astype(float)
    w = ndwi[rows, cols]
    noise = rng.standard_normal((3, n_sites)) * 0.12
    log_values = {
        "Pb": 3.2 + 0.8 * urban - 0.3 * forest + 0.9 * w + noise[0],
        "Cd": -1.2 + 0.025 * (clay - 25) + 0.4 * urban + noise[1],
        "As": 2.1 + 1.2 * w + 0.02 * (clay - 25) - 0.2 * forest + noise[2],
    }
    soil = np.where(clay > 30, SOIL_TYPES[2], np.where(clay < 22, SOIL_TYPES[1], SOIL_TYPES[0]))
    frame = pd.DataFrame(
        {
            "site_id": [f"S{i:03d}" for i in range(n_sites)],
            "sample_id": [f"S{i:03d}-a" for i in range(n_sites)],
            "x": x,
            "y": y,
            "soil_type": soil,
            "ph": np.round(6.5 + 0.5 * rng.standard_normal(n_sites), 2),
            **{e: np.round(np.exp(v), 3) for e, v in log_values.items()},
        }
    )
    frame.loc[frame.index[::25], "Cd"] = np.nan  # not every sample was measured for Cd
    return frame


if __name__ == "__main__":  # python -m tests.regions DIR: the example survey of docs/your-data.md
    import sys

    made = build_region(Path(sys.argv[1]))
    print(f"rasters: {made.rasters}\nsites:   {made.sites}\ntemplate: {made.template}")
