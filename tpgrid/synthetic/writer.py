"""Puts the synthetic plateau on disk: covariate GeoTIFFs, catalog, grid, sites and truth.

The same size and seed give byte-identical files (fixed tiling and compression, no timestamps),
so a plateau can be reused (:func:`reuse_or_write_plateau`) and compared file by file.
``truth/truth.json`` is written last, so its presence marks a complete plateau.
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

from tpgrid.core.arrays import F64
from tpgrid.errors import OutputExistsError
from tpgrid.grid import TargetGrid
from tpgrid.synthetic.geometry import grid_spec
from tpgrid.synthetic.layers import LAYER_NAMES, LAYERS, catalog_document
from tpgrid.synthetic.paper import ELEMENTS, PAPER_MEAN_SD
from tpgrid.synthetic.products import native_products, on_target_grid
from tpgrid.synthetic.sampling import (
    SITES_PER_SIZE,
    choose_site_pixels,
    measure_sites,
    site_design,
    site_frame,
)
from tpgrid.synthetic.truth import log_truth_without_intercept, truth_document


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
    """Write the plateau of ``size`` (see :data:`tpgrid.synthetic.SIZES`) into ``out_dir``.

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
    # Only the settings SIZES states, so the file reads as the grid's full description.
    (out_dir / "grid.yaml").write_text(
        yaml.safe_dump(spec.model_dump(mode="json", exclude_unset=True), sort_keys=False)
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
