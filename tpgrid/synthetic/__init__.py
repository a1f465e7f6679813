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

import itertools
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
import pandas as pd
import rasterio
import yaml
from affine import Affine
from pyproj import Transformer

from tpgrid.errors import OutputExistsError
from tpgrid.grid import TargetGrid
from tpgrid.synthetic.fields import random_stream
from tpgrid.synthetic.geometry import KM_PER_DEG_LAT, KM_PER_DEG_LON, SIZES, affine_xy, grid_spec
from tpgrid.synthetic.layers import (
    LAYER_NAMES,
    LAYERS,
    LITHOLOGY_CLASSES,
    VEGETATION_CLASSES,
    catalog_document,
)
from tpgrid.synthetic.paper import (
    ELEMENTS,
    ICPMS_NOISE_SD,
    LITHOLOGY_FACTORS,
    PAPER_MEAN_SD,
    PAPER_OUTLIERS,
    PAPER_SITES,
    PAPER_SITES_PER_ELEMENT,
    SAMPLE_NOISE_SD,
    SITE_EFFECT_SD,
    VEGETATION_FACTORS,
    XRF_BIAS,
)
from tpgrid.synthetic.products import NativeRaster, native_products, on_target_grid

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
class Response:
    """One covariate's effect on the natural log of concentration, before its coefficient.

    With ``z = (x − centre) / scale``: ``linear`` is ``z``; ``hinge`` is ``max(z, 0)`` (no
    effect below ``centre``); ``saturating`` is ``1 − exp(−max(z, 0))`` (rises from ``centre``,
    95 % of its plateau at ``3·scale``); ``u`` is ``z²`` (trough at ``centre``).
    """

    covariate: str
    shape: Literal["linear", "hinge", "saturating", "u"]
    centre: float
    scale: float

    def __call__(self, x: npt.ArrayLike) -> F64:
        z = (np.asarray(x, dtype="float64") - self.centre) / self.scale
        if self.shape == "hinge":
            return np.maximum(z, 0.0)
        if self.shape == "saturating":
            return 1.0 - np.exp(-np.maximum(z, 0.0))
        if self.shape == "u":
            return z * z
        return z


RESPONSES: dict[str, Response] = {
    r.covariate: r
    for r in (
        Response("cia", "hinge", 0.5, 0.1),  # weathering only matters past CIA ≈ 0.5
        Response("slope", "saturating", 0.0, 3.5),  # degrees; rises below ~10°, flat above
        Response("map", "u", 400.0, 300.0),  # mm/yr; trough at 400 mm
        Response("ai", "u", 0.5, 0.3),  # trough at AI ≈ 0.5 (where MAP ≈ 400 mm)
        Response("clay", "linear", 20.0, 10.0),  # %
        Response("mat", "linear", 0.0, 8.0),  # °C
        Response("ph", "linear", 7.0, 1.0),
        Response("soc", "linear", 20.0, 20.0),  # g/kg
        Response("ndvi", "linear", 0.35, 0.2),
        Response("dem", "linear", 4000.0, 1000.0),  # m
        Response("grazing", "linear", 30.0, 30.0),  # sheep units/km²
    )
}

# Coefficients of each response on ln(mg/kg), per element (columns in RESPONSES order).
COEFFICIENTS: dict[str, dict[str, float]] = {
    element: dict(zip(RESPONSES, row, strict=True))
    for element, row in {
        #     cia   slope  map   ai    clay  mat   ph     soc   ndvi  dem    grazing
        "Fe": (0.10, 0.15, 0.06, 0.03, 0.06, 0.02, -0.02, 0.00, 0.03, -0.02, -0.01),
        "Mn": (0.11, 0.19, 0.07, 0.04, 0.05, 0.03, 0.03, 0.02, 0.05, -0.03, -0.01),
        "Cu": (0.10, 0.12, 0.05, 0.03, 0.06, 0.02, -0.01, 0.03, 0.02, -0.02, -0.02),
        "Zn": (0.13, 0.19, 0.08, 0.05, 0.08, 0.03, 0.01, 0.04, 0.05, -0.03, -0.01),
        "Ni": (0.05, 0.08, 0.03, 0.02, 0.04, 0.01, 0.02, 0.00, 0.01, -0.01, 0.00),
        "V": (0.10, 0.14, 0.05, 0.03, 0.06, 0.02, -0.02, 0.00, 0.03, -0.02, -0.01),
        "Mo": (0.06, 0.08, 0.03, 0.02, 0.03, 0.01, 0.02, 0.02, 0.01, 0.00, 0.00),
    }.items()
}


@dataclass(frozen=True)
class SiteDesign:
    """How many sites and samples a plateau size gets, and per element on how many sites."""

    n_sites: int
    n_calibration: int  # samples re-measured by ICP-MS
    sites_per_element: dict[str, int]
    outliers_per_element: dict[str, int]


SAMPLES_PER_SITE = 3
SITE_MAX_ELEVATION_M = 5600.0
TRANSECT_M = (0.0, 7.5, 15.0)


def site_design(n_sites: int) -> SiteDesign:
    """The paper's design (526 sites, 218 ICP-MS samples) scaled to ``n_sites``.

    Ni and Mo keep at least 15 sites and every element at least one outlier, so even the small
    plateau can be modelled and screened.
    """
    ratio = n_sites / PAPER_SITES
    per_element = {
        e: min(n_sites, max(15, round(n * ratio))) for e, n in PAPER_SITES_PER_ELEMENT.items()
    }
    outliers = {e: max(1, round(n * ratio)) for e, n in PAPER_OUTLIERS.items()}
    return SiteDesign(n_sites, max(30, round(218 * ratio)), per_element, outliers)


SITES_PER_SIZE = {"small": 120, "full": PAPER_SITES}


def response_functions() -> dict[str, Callable[[npt.ArrayLike], F64]]:
    """The declared response functions by covariate name (see :class:`Response`)."""
    return dict(RESPONSES)


def log_truth_without_intercept(covariates: Mapping[str, F32], element: str) -> F64:
    """``Σ β·f(x) + ln(vegetation factor) + ln(lithology factor)`` on the 1 km grid.

    ``covariates`` holds float arrays on the grid: continuous layers in their units, ``slope``
    in degrees, and ``vegetation``/``lithology`` as class codes (NaN = nodata). Pixels with any
    missing input come out NaN.
    """
    total = np.zeros(np.shape(covariates["dem"]), dtype="float64")
    for name, response in RESPONSES.items():
        total += COEFFICIENTS[element][name] * response(covariates[name])
    for layer, classes, factors in (
        ("vegetation", VEGETATION_CLASSES, VEGETATION_FACTORS[element]),
        ("lithology", LITHOLOGY_CLASSES, LITHOLOGY_FACTORS[element]),
    ):
        lookup = np.full(256, np.nan)
        for code, name in classes.items():
            lookup[code] = math.log(factors[name])
        codes = covariates[layer]
        total += lookup[np.where(np.isfinite(codes), codes, 0).astype("int64")]
    return total


_ROADS: tuple[tuple[tuple[float, float], ...], ...] = (
    # Qinghai–Tibet highway: Xining, Golmud, Kunlun pass, Tanggula, Nagqu, Lhasa
    (
        (101.8, 36.6),
        (99.0, 36.8),
        (94.9, 36.4),
        (94.0, 35.0),
        (92.4, 34.2),
        (91.9, 32.9),
        (92.05, 31.48),
        (91.1, 29.65),
    ),
    # Sichuan–Tibet highway: Lhasa, Nyingchi, Markam, Litang, Kangding
    ((91.1, 29.65), (94.4, 29.65), (97.2, 29.7), (100.3, 30.0), (101.96, 30.05)),
    # Xinjiang–Tibet highway: Kunlun foreland, Rutog, Shiquanhe, Saga, Shigatse, Lhasa
    (
        (79.7, 35.3),
        (79.7, 33.4),
        (80.1, 32.5),
        (81.5, 30.8),
        (85.2, 29.3),
        (88.9, 29.3),
        (91.1, 29.65),
    ),
    # Xining, Maduo, Yushu, Qamdo, Markam
    ((101.8, 36.6), (98.2, 34.9), (97.0, 33.0), (97.2, 31.1), (97.2, 29.7)),
)


def site_density(lon: F64, lat: F64) -> F64:
    """Relative sampling effort: high in the east/south-east and along roads, low in the NW."""
    wet = np.clip(0.22 * (lon - 92.0) - 0.10 * (lat - 32.0), -3.0, 2.0)
    x, y = lon * KM_PER_DEG_LON, lat * KM_PER_DEG_LAT
    nearest_road = np.full(lon.shape, np.inf)
    for road in _ROADS:
        for (lon0, lat0), (lon1, lat1) in itertools.pairwise(road):
            x0, y0 = lon0 * KM_PER_DEG_LON, lat0 * KM_PER_DEG_LAT
            dx, dy = lon1 * KM_PER_DEG_LON - x0, lat1 * KM_PER_DEG_LAT - y0
            t = np.clip(((x - x0) * dx + (y - y0) * dy) / (dx * dx + dy * dy), 0, 1)
            nearest_road = np.minimum(nearest_road, np.hypot(x - x0 - t * dx, y - y0 - t * dy))
    return np.asarray(np.exp(0.6 * wet) + 3.0 * np.exp(-0.5 * (nearest_road / 25.0) ** 2))


def choose_site_pixels(
    grid: TargetGrid, valid: npt.NDArray[np.bool_], elevation: F32, n_sites: int, seed: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Rows and columns of ``n_sites`` distinct valid pixels, drawn by :func:`site_density`.

    Field teams reach soil below :data:`SITE_MAX_ELEVATION_M` only (the paper's highest site
    is at 5,565 m), so higher pixels are never sampled.
    """
    with np.errstate(invalid="ignore"):
        rows, cols = np.nonzero(valid & (elevation < SITE_MAX_ELEVATION_M))
    lon, lat = grid.pixel_lonlat(rows, cols)
    weight = site_density(lon, lat)
    picked = random_stream(seed, "sites").choice(
        rows.size, n_sites, replace=False, p=weight / weight.sum()
    )
    picked.sort()
    return rows[picked], cols[picked]


def sample_positions(
    grid: TargetGrid, rows: npt.NDArray[np.int64], cols: npt.NDArray[np.int64], seed: int
) -> tuple[F64, F64]:
    """Lon/lat of each site's three samples along a 15 m transect inside the site's pixel.

    Returns ``(n_sites, 3)`` arrays. The transect starts within ±0.3 pixel of the pixel centre,
    so all three samples stay in the same pixel.
    """
    rng = random_stream(seed, "transects")
    n = rows.size
    widths, height = grid.pixel_size_m()
    start = rng.uniform(-0.3, 0.3, (n, 2))
    bearing = rng.uniform(0, 2 * np.pi, n)[:, None]
    along = np.asarray(TRANSECT_M)[None, :]
    col_f = cols[:, None] + 0.5 + start[:, :1] + along * np.sin(bearing) / widths[rows][:, None]
    row_f = rows[:, None] + 0.5 + start[:, 1:] - along * np.cos(bearing) / height
    x, y = affine_xy(grid.geobox.affine, col_f, row_f)
    to_lonlat = Transformer.from_crs(grid.crs_wkt, "EPSG:4326", always_xy=True)
    lon, lat = to_lonlat.transform(np.asarray(x), np.asarray(y))
    return np.round(np.asarray(lon), 7), np.round(np.asarray(lat), 7)


@dataclass(frozen=True)
class SiteTable:
    """The measured site table and the hidden record of what was done to it."""

    table: pd.DataFrame
    outliers: pd.DataFrame


def measure_sites(
    truth_at_sites: Mapping[str, F64], design: SiteDesign, seed: int, site_frame: pd.DataFrame
) -> SiteTable:
    """Sample values: truth × site effect × sample noise → ICP-MS → XRF, with missingness,
    a calibration subset and gross outliers.

    ``site_frame`` has one row per sample (site-major, :data:`SAMPLES_PER_SITE` per site).
    """
    rng = random_stream(seed, "measurements")
    n_sites = design.n_sites
    site_of_sample = np.repeat(np.arange(n_sites), SAMPLES_PER_SITE)
    present = {
        e: np.isin(site_of_sample, rng.choice(n_sites, design.sites_per_element[e], replace=False))
        for e in ELEMENTS
    }
    calibration = _calibration_samples(present, design, rng)
    table = site_frame.copy()
    icpms: dict[str, F64] = {}
    for element in ELEMENTS:
        site_effect = rng.lognormal(0.0, SITE_EFFECT_SD, n_sites)[site_of_sample]
        noise = rng.lognormal(0.0, SAMPLE_NOISE_SD, site_of_sample.size)
        true_value = truth_at_sites[element][site_of_sample] * site_effect * noise
        icpms[element] = true_value * rng.lognormal(0.0, ICPMS_NOISE_SD, true_value.size)
        bias = XRF_BIAS[element]
        xrf = (bias.intercept + bias.slope * icpms[element]) * rng.lognormal(
            0.0, bias.noise_sd, true_value.size
        )
        table[element] = np.where(present[element], xrf, np.nan)
    outliers = _inject_outliers(table, present, calibration, design, rng)
    for element in ELEMENTS:
        keep = present[element] & calibration
        table[f"{element}_icpms"] = np.where(keep, icpms[element], np.nan)
    return SiteTable(_rounded(table), outliers)


def _calibration_samples(
    present: Mapping[str, npt.NDArray[np.bool_]], design: SiteDesign, rng: np.random.Generator
) -> npt.NDArray[np.bool_]:
    """Whole sites re-measured by ICP-MS, trimmed to ``design.n_calibration`` samples.

    Sites with Ni or Mo are four times as likely to be picked, so the Ni calibration rests on
    enough samples (the paper's Ni values are few and mostly re-measured).
    """
    n_sites = design.n_sites
    per_site = present["Ni"][::SAMPLES_PER_SITE] | present["Mo"][::SAMPLES_PER_SITE]
    weight = np.where(per_site, 4.0, 1.0)
    n_pick = math.ceil(design.n_calibration / SAMPLES_PER_SITE)
    sites = rng.choice(n_sites, n_pick, replace=False, p=weight / weight.sum())
    samples = (sites[:, None] * SAMPLES_PER_SITE + np.arange(SAMPLES_PER_SITE)).ravel()
    chosen = np.zeros(n_sites * SAMPLES_PER_SITE, dtype=bool)
    chosen[np.sort(samples)[: design.n_calibration]] = True
    return chosen


def _inject_outliers(
    table: pd.DataFrame,
    present: Mapping[str, npt.NDArray[np.bool_]],
    calibration: npt.NDArray[np.bool_],
    design: SiteDesign,
    rng: np.random.Generator,
) -> pd.DataFrame:
    """Replace a few XRF values per element by gross errors 6–9 SD above the clean mean.

    Like a mis-weighed or mislabelled sample; kept out of the calibration subset so the bias
    regression stays clean. Returns the record (sample_id, element, clean and written value).
    """
    records = []
    for element in ELEMENTS:
        column = table[element].to_numpy(dtype="float64", copy=True)
        mean, sd = np.nanmean(column), np.nanstd(column)
        candidates = np.flatnonzero(present[element] & ~calibration)
        picked = np.sort(
            rng.choice(candidates, design.outliers_per_element[element], replace=False)
        )
        gross = mean + rng.uniform(6.0, 9.0, picked.size) * sd
        for index, value in zip(picked, gross, strict=True):
            records.append(
                {
                    "sample_id": table["sample_id"].iat[index],
                    "element": element,
                    "clean_value": round(float(column[index]), 3),
                    "value": round(float(value), 3),
                }
            )
        column[picked] = gross
        table[element] = column
    return pd.DataFrame.from_records(records)


def _rounded(table: pd.DataFrame) -> pd.DataFrame:
    """Values to 3 decimals (mg/kg), like a lab sheet; keeps CSV and Parquet identical."""
    measured = [c for c in table.columns if c.split("_")[0] in ELEMENTS]
    return table.assign(**{c: table[c].round(3) for c in measured})


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


def truth_document(size: str, seed: int, intercepts: Mapping[str, float]) -> dict[str, object]:
    return {
        "size": size,
        "seed": seed,
        "model": (
            "ln(c) = intercept + sum_j coefficient_j * response_j(x_j) "
            "+ ln(vegetation_factor) + ln(lithology_factor); c in mg/kg (ICP-MS scale)"
        ),
        "responses": {
            name: {
                **asdict(r),
                "formula": {
                    "linear": "z",
                    "hinge": "max(z, 0)",
                    "saturating": "1 - exp(-max(z, 0))",
                    "u": "z**2",
                }[r.shape]
                + " with z = (x - centre) / scale",
            }
            for name, r in RESPONSES.items()
        },
        "elements": {
            e: {
                "paper_mean_sd": list(PAPER_MEAN_SD[e]),
                "intercept": intercepts[e],
                "coefficients": COEFFICIENTS[e],
                "vegetation_factors": VEGETATION_FACTORS[e],
                "lithology_factors": LITHOLOGY_FACTORS[e],
                "xrf_bias": asdict(XRF_BIAS[e]),
            }
            for e in ELEMENTS
        },
        "noise_sd_ln": {
            "site_effect": SITE_EFFECT_SD,
            "sample": SAMPLE_NOISE_SD,
            "icpms": ICPMS_NOISE_SD,
        },
        "xrf_model": "xrf = (intercept + slope * icpms) * exp(N(0, noise_sd))",
    }


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


def site_frame(
    grid: TargetGrid,
    rows: npt.NDArray[np.int64],
    cols: npt.NDArray[np.int64],
    covariates: Mapping[str, F32],
    seed: int,
) -> pd.DataFrame:
    """Identity, position, year and class names of every sample (site-major order)."""
    lon, lat = sample_positions(grid, rows, cols, seed)
    n = rows.size
    site_ids = np.array([f"S{i + 1:04d}" for i in range(n)])
    years = random_stream(seed, "years").choice([2019, 2020, 2021], n)

    def names(layer: str, classes: Mapping[int, str]) -> npt.NDArray[np.str_]:
        codes = covariates[layer][rows, cols].astype("int64")
        return np.array([classes[c] for c in codes])

    per_site = pd.DataFrame(
        {
            "site_id": site_ids,
            "vegetation": names("vegetation", VEGETATION_CLASSES),
            "lithology": names("lithology", LITHOLOGY_CLASSES),
            "year": years,
        }
    )
    frame = per_site.loc[per_site.index.repeat(SAMPLES_PER_SITE)].reset_index(drop=True)
    frame.insert(
        1, "sample_id", [f"{s}-{k + 1}" for s in site_ids for k in range(SAMPLES_PER_SITE)]
    )
    frame.insert(2, "lon", lon.ravel())
    frame.insert(3, "lat", lat.ravel())
    return frame
