"""A realistic synthetic Tibetan Plateau: covariate files, a site table and the hidden truth.

Real covariates cannot be downloaded everywhere tpgrid runs, so the demo and the test suite run
on this stand-in. The synthetic world is a set of smooth-with-texture fields defined as
functions of lon/lat (sums of random Fourier modes, seeded), evaluated on a 30″ lon/lat *master
grid* and sampled from there onto each product's own native grid:

- **Relief**: a 4,300–5,200 m plateau inside :data:`tpgrid.grid.PLATEAU_OUTLINE` with ridged
  ranges, uplifted rims and a Qaidam-like basin, falling steeply over ~20 km to 500–1,500 m
  lowlands outside (Sichuan basin south-east, Tarim-like basins north); a few lakes are voids.
- **Climate**: MAT from a 6 °C/km lapse rate, warmer south-east; MAP from a humid south-east
  (~900 mm) to an arid north-west (~25 mm) with a dry Qaidam; AI = MAP / PET with a
  temperature-driven PET.
- **Vegetation, soil, lithology, grazing** follow climate and relief: forest in the humid
  south-east, desert in the arid north-west, meadow/steppe across the interior, cropland in warm
  valleys; CIA higher where warm and wet; lithology in Voronoi patches; grazing on grassland.

Products come as real ones do, in different CRSs and native resolutions:

=============================  ==========================  ========  ===============
layers                         CRS                         pixel     dtype
=============================  ==========================  ========  ===============
dem                            EPSG:4326                   30″       int16 (m)
mat, map, ai                   EPSG:4326 (ERA5-like)       0.1°      float32
ndvi, npp                      MODIS sinusoidal            926.6 m   float32
clay, silt, sand, soc, ph, cia Asia Lambert (ESRI:102012)  2.5 km    float32
vegetation                     EPSG:4326 (1:1M map)        1/240°    uint8 codes
lithology                      UTM 46N (EPSG:32646)        1 km      uint8 codes
grazing                        EPSG:4326 (yearbooks)       0.25°     float32
=============================  ==========================  ========  ===============

The element truth is computed from the covariates *as they appear on the target grid* through
known response functions (:data:`RESPONSES`, :data:`COEFFICIENTS`), following the shapes the
paper reports, and sites are sampled from it with site effects, measurement noise, XRF bias,
missingness and gross outliers. ``truth/`` holds what a model should recover.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import rasterio
import yaml
from affine import Affine

from tpgrid.errors import OutputExistsError
from tpgrid.grid import TargetGrid
from tpgrid.synthetic.geometry import SIZES, grid_spec
from tpgrid.synthetic.layers import LAYER_NAMES, LAYERS, catalog_document
from tpgrid.synthetic.paper import (
    ELEMENTS,
    LITHOLOGY_FACTORS,
    PAPER_MEAN_SD,
    VEGETATION_FACTORS,
    XRF_BIAS,
)
from tpgrid.synthetic.products import NativeRaster, native_products, on_target_grid
from tpgrid.synthetic.sampling import (
    SITES_PER_SIZE,
    choose_site_pixels,
    measure_sites,
    site_density,
    site_design,
    site_frame,
)
from tpgrid.synthetic.truth import (
    RESPONSES,
    log_truth_without_intercept,
    response_functions,
    truth_document,
)

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]


__all__ = [
    "ELEMENTS",
    "LITHOLOGY_FACTORS",
    "PAPER_MEAN_SD",
    "RESPONSES",
    "SIZES",
    "VEGETATION_FACTORS",
    "XRF_BIAS",
    "NativeRaster",
    "PlateauFiles",
    "log_truth_without_intercept",
    "on_target_grid",
    "plateau_files",
    "response_functions",
    "reuse_or_write_plateau",
    "site_density",
    "site_design",
    "write_plateau",
]


@dataclass(frozen=True)
class PlateauFiles:
    """Where :func:`write_plateau` put everything (all paths absolute)."""

    root: Path
    catalog: Path
    grid: Path
    sites: Path
    sites_parquet: Path
    truth_dir: Path
    truth_json: Path
    outliers: Path
    layers: tuple[str, ...]
    elements: tuple[str, ...]

    def truth(self, element: str) -> Path:
        """The truth raster of ``element`` (mg/kg on the target grid)."""
        return self.truth_dir / f"{element}.tif"


def _creation_options(dtype: str, width: int, height: int) -> dict[str, object]:
    # Deterministic bytes: fixed tiling/compression and no timestamp tags.
    block = 512 if min(width, height) >= 2048 else 256
    predictor = 2 if dtype in ("int16", "uint8") else 3  # horizontal differencing, int or float
    return {
        "driver": "GTiff",
        "tiled": True,
        "blockxsize": block,
        "blockysize": block,
        "compress": "deflate",
        "zlevel": 6,
        "predictor": predictor,
        "num_threads": 2,
    }


def write_geotiff(
    path: Path,
    data: npt.NDArray[np.generic],
    crs: str,
    transform: Affine,
    nodata: float,
    description: str,
    units: str,
) -> None:
    """One single-band tiled, DEFLATE-compressed GeoTIFF."""
    height, width = data.shape
    dtype = str(data.dtype)
    with rasterio.open(
        path,
        "w",
        width=width,
        height=height,
        count=1,
        dtype=dtype,
        crs=crs,
        transform=transform,
        nodata=nodata,
        **_creation_options(dtype, width, height),
    ) as dst:
        dst.write(data, 1)
        dst.set_band_description(1, description)
        dst.update_tags(1, units=units)


def _prepare_out_dir(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise OutputExistsError(
            f"{out_dir} exists and is not empty; pass overwrite=True / --overwrite to write "
            "the synthetic plateau over it, or choose another directory"
        )
    (out_dir / "covariates").mkdir(parents=True, exist_ok=True)
    (out_dir / "truth").mkdir(exist_ok=True)
    # The completeness marker goes first, so an interrupted overwrite never looks complete.
    (out_dir / "truth" / "truth.json").unlink(missing_ok=True)


def plateau_files(out_dir: Path) -> PlateauFiles:
    """Where a plateau written into ``out_dir`` keeps its files."""
    out_dir = Path(out_dir).resolve()
    return PlateauFiles(
        root=out_dir,
        catalog=out_dir / "catalog.yaml",
        grid=out_dir / "grid.yaml",
        sites=out_dir / "sites.csv",
        sites_parquet=out_dir / "sites.parquet",
        truth_dir=out_dir / "truth",
        truth_json=out_dir / "truth" / "truth.json",
        outliers=out_dir / "truth" / "outliers.csv",
        layers=LAYER_NAMES,
        elements=ELEMENTS,
    )


def reuse_or_write_plateau(
    out_dir: Path, size: str = "small", seed: int = 0, overwrite: bool = False
) -> PlateauFiles:
    """The plateau in ``out_dir`` if it is complete and of this size and seed, else write it.

    ``truth/truth.json`` is written last (and removed first when overwriting), so its presence
    marks a complete plateau.
    """
    files = plateau_files(out_dir)
    if files.truth_json.is_file():
        doc = json.loads(files.truth_json.read_text())
        if doc.get("size") == size and doc.get("seed") == seed:
            return files
    return write_plateau(out_dir, size=size, seed=seed, overwrite=overwrite)


def write_plateau(
    out_dir: Path, size: str = "small", seed: int = 0, overwrite: bool = False
) -> PlateauFiles:
    """Write the synthetic plateau of ``size`` (see :data:`SIZES`) into ``out_dir``.

    Same ``seed`` → byte-identical files. Refuses a non-empty ``out_dir`` unless ``overwrite``
    (existing files of the same names are then replaced; other files are left alone).
    """
    spec = grid_spec(size)
    out_dir = Path(out_dir).resolve()
    _prepare_out_dir(out_dir, overwrite)
    grid = TargetGrid.from_spec(spec)

    products = native_products(grid, seed)
    for name, product in products.items():
        spec_l = LAYERS[name]
        write_geotiff(
            out_dir / "covariates" / f"{name}.tif",
            product.data,
            product.crs,
            product.transform,
            spec_l.nodata,
            spec_l.description,
            spec_l.units,
        )
    catalog = yaml.safe_dump(catalog_document(), sort_keys=False, allow_unicode=True)
    (out_dir / "catalog.yaml").write_text(catalog, encoding="utf-8")
    (out_dir / "grid.yaml").write_text(
        yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)
    )

    covariates = on_target_grid(products, grid)
    inside = np.asarray(grid.mask())
    valid = inside & np.logical_and.reduce([np.isfinite(a) for a in covariates.values()])
    design = site_design(SITES_PER_SIZE[size])
    rows, cols = choose_site_pixels(grid, valid, covariates["dem"], design.n_sites, seed)

    intercepts: dict[str, float] = {}
    truth_at_sites: dict[str, F64] = {}
    for element in ELEMENTS:
        log_truth = log_truth_without_intercept(covariates, element)
        # Scale so the mean truth over the sites equals the paper's site mean.
        intercepts[element] = round(
            math.log(PAPER_MEAN_SD[element][0]) - math.log(np.exp(log_truth[rows, cols]).mean()), 6
        )
        truth = np.where(valid, np.exp(log_truth + intercepts[element]), np.nan)
        truth_at_sites[element] = truth[rows, cols]
        write_geotiff(
            out_dir / "truth" / f"{element}.tif",
            truth.astype("float32"),
            grid.crs_wkt,
            grid.geobox.affine,
            math.nan,
            f"true {element}",
            "mg/kg",
        )

    sites = measure_sites(
        truth_at_sites, design, seed, site_frame(grid, rows, cols, covariates, seed)
    )
    sites.table.to_csv(out_dir / "sites.csv", index=False)
    sites.table.to_parquet(out_dir / "sites.parquet", index=False)
    sites.outliers.to_csv(out_dir / "truth" / "outliers.csv", index=False)
    (out_dir / "truth" / "truth.json").write_text(
        json.dumps(truth_document(size, seed, intercepts), indent=2) + "\n"
    )
    return plateau_files(out_dir)
