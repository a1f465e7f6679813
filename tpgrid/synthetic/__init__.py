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
from odc.geo.geobox import GeoBox
from pyproj import Transformer
from rasterio.enums import Resampling
from rasterio.warp import reproject
from scipy.ndimage import gaussian_filter, zoom
from scipy.spatial import cKDTree

from tpgrid.errors import OutputExistsError
from tpgrid.grid import TargetGrid
from tpgrid.synthetic.fields import FourierField, block_mean, random_stream, sigmoid
from tpgrid.synthetic.geometry import (
    COVER_MARGIN_M,
    KM_PER_DEG_LAT,
    KM_PER_DEG_LON,
    MASTER_RES_DEG,
    SIZES,
    LonLatGrid,
    affine_xy,
    grid_spec,
    master_grid,
    plateau_distance_km,
)
from tpgrid.synthetic.layers import (
    DEM_NODATA,
    FLOAT_NODATA,
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
from tpgrid.terrain import horn_gradient, slope_degrees

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


def elevation_m(master: LonLatGrid, dist: F32, seed: int) -> F32:
    """Elevation (m, no voids) given the signed distance to the outline ``dist`` (km).

    A 4,300–5,200 m plateau surface with ranges and rims above it, 500–1,500 m lowlands.
    """
    lon2, lat2 = np.meshgrid(master.lons(), master.lats())
    lons, lats = master.lons(), master.lats()
    inside = sigmoid(dist / 10.0)  # the rim drops ~3 km over ~40 km
    broad = FourierField.random(seed, "relief-broad", 48, (400, 2500)).on_grid(lons, lats)
    ranges = FourierField.random(seed, "relief-ranges", 160, (40, 400)).on_grid(lons, lats)
    fine = FourierField.random(seed, "relief-fine", 384, (3, 25)).on_grid(lons, lats)
    south_east = sigmoid((lon2 - 98.0) / 1.0) * sigmoid((32.0 - lat2) / 1.0)
    qaidam = np.exp(-(((lon2 - 94.5) / 3.0) ** 2 + ((lat2 - 37.3) / 1.0) ** 2))
    ridges = np.exp(-(ranges**2) / 0.15)  # zero-crossings of a smooth field form range lines
    rim = np.exp(-(((dist - 45.0) / 30.0) ** 2))
    plateau = 4600 + 200 * broad + 550 * ridges + 800 * rim - 900 * south_east - 1900 * qaidam
    lowland = 1150 + 250 * broad - 550 * sigmoid((lon2 - 101.5) / 1.0)
    # Relief is rugged on the rims, ranges and the dissected south-east, gentle in the Changtang.
    ruggedness = 150 + 500 * np.maximum.reduce([ridges, rim, south_east, 1 - inside])
    elevation = lowland + (plateau - lowland) * inside + ruggedness * fine
    return np.asarray(np.clip(elevation, 50, 8800), dtype="float32")


def lake_mask(
    master: LonLatGrid,
    dist: F32,
    bbox: tuple[float, float, float, float],
    seed: int,
    n_lakes: int,
) -> npt.NDArray[np.bool_]:
    """Up to ``n_lakes`` elliptic lakes (3–9 km semi-axes) inside ``bbox`` (lon/lat) and at
    least 60 km inside the plateau outline (``dist``: signed distance, km)."""
    rng = random_stream(seed, "lakes")
    lon_min, lat_min, lon_max, lat_max = bbox
    lon2, lat2 = np.meshgrid(master.lons(), master.lats())
    lakes = np.zeros(dist.shape, dtype=bool)
    placed = 0
    for _ in range(100 * n_lakes):  # bounded: a bbox on the rim may have no room for lakes
        if placed == n_lakes:
            break
        lon0 = rng.uniform(lon_min + 0.3, lon_max - 0.3)
        lat0 = rng.uniform(lat_min + 0.3, lat_max - 0.3)
        row = int((master.north - lat0) / master.res)
        col = int((lon0 - master.west) / master.res)
        if dist[row, col] < 60:
            continue
        a, b, angle = rng.uniform(4, 9), rng.uniform(3, 5), rng.uniform(0, np.pi)
        dx = (lon2 - lon0) * KM_PER_DEG_LON
        dy = (lat2 - lat0) * KM_PER_DEG_LAT
        u = dx * np.cos(angle) + dy * np.sin(angle)
        v = -dx * np.sin(angle) + dy * np.cos(angle)
        lakes |= (u / a) ** 2 + (v / b) ** 2 <= 1
        placed += 1
    return lakes


@dataclass(frozen=True)
class Climate:
    """Climate on the master grid: MAT (°C), MAP (mm/yr), PET (mm/yr)."""

    mat: F32
    map: F32
    pet: F32


def climate(master: LonLatGrid, elevation: F32, seed: int) -> Climate:
    """MAT from a 6 °C/km lapse rate; MAP from the monsoon gradient; PET from temperature."""
    lon2, lat2 = np.meshgrid(master.lons(), master.lats())
    lons, lats = master.lons(), master.lats()
    smooth_elevation = gaussian_filter(elevation, sigma=6.0)  # climate ignores 1-km relief
    warm = FourierField.random(seed, "climate-temperature", 24, (200, 1500)).on_grid(lons, lats)
    south_east = sigmoid((lon2 - 98.0) / 1.5) * sigmoid((31.0 - lat2) / 1.5)
    mat = 31.5 - 0.55 * (lat2 - 27.0) + 1.5 * south_east + 0.8 * warm - 6.0e-3 * smooth_elevation
    # Monsoon moisture enters from the south-east; the north-west and the Qaidam are dry.
    wet = 0.22 * (lon2 - 92.0) - 0.10 * (lat2 - 32.0)
    qaidam = np.exp(-(((lon2 - 94.5) / 3.0) ** 2 + ((lat2 - 37.3) / 1.2) ** 2))
    rain = FourierField.random(seed, "climate-rain", 24, (150, 1200)).on_grid(lons, lats)
    monsoon = np.where(wet > 0, 0.62 * np.tanh(wet / 2), 0.45 * wet - 0.12 * wet**2)
    log_map = (
        np.log(420.0) + monsoon - 0.3 * np.maximum(lat2 - 34.0, 0) - 2.2 * qaidam + 0.12 * rain
    )
    pet = np.clip(800.0 + 30.0 * mat, 300.0, 1800.0)
    return Climate(
        mat=np.asarray(np.clip(mat, -25, 32), dtype="float32"),
        map=np.asarray(np.clip(np.exp(log_map), 10, 2500), dtype="float32"),
        pet=np.asarray(pet, dtype="float32"),
    )


def productivity(
    master: LonLatGrid, clim: Climate, lakes: npt.NDArray[np.bool_], seed: int
) -> tuple[F32, F32]:
    """NDVI (unitless, −0.1 on lakes) and NPP (gC/m²/yr), limited by water and warmth."""
    noise = FourierField.random(seed, "ndvi", 96, (5, 200)).on_grid(master.lons(), master.lats())
    water = 1 - np.exp(-clim.map / 500.0)
    warmth = sigmoid((clim.mat + 6.0) / 3.0)
    ndvi = np.clip(0.02 + 0.85 * water * warmth + 0.04 * noise, -0.2, 1.0)
    ndvi = np.where(lakes, -0.1, ndvi)
    npp = 1100.0 * np.maximum(ndvi - 0.03, 0) * sigmoid(clim.mat / 5.0)
    return np.asarray(ndvi, dtype="float32"), np.asarray(npp, dtype="float32")


def soil(master: LonLatGrid, clim: Climate, seed: int) -> dict[str, F32]:
    """Texture (%; clay + silt + sand = 100), SOC (g/kg), pH and CIA (fraction) of topsoil.

    All follow a weathering index that grows with warmth and wetness: the south-east is more
    weathered (higher CIA and clay, lower pH) than the arid north-west.
    """
    lons, lats = master.lons(), master.lats()

    def noise(name: str) -> F32:
        return FourierField.random(seed, f"soil-{name}", 48, (20, 600)).on_grid(lons, lats)

    weathering = np.tanh(0.5 * clim.mat / 6.0 + 0.5 * (np.log(clim.map) - np.log(300.0)) / 0.8)
    cia = np.clip(0.56 + 0.16 * weathering + 0.04 * noise("cia"), 0.3, 0.95)
    clay = np.clip(18.0 + 6.0 * weathering + 3.0 * noise("clay"), 3.0, 60.0)
    silt = np.clip(35.0 - 3.0 * weathering + 7.0 * noise("silt"), 10.0, 95.0 - clay)
    wet = np.tanh((np.log(clim.map) - np.log(300.0)) / 0.6)
    soc = np.clip(np.exp(np.log(20.0) + 1.0 * wet - 0.04 * clim.mat + 0.25 * noise("soc")), 1, 250)
    ph = np.clip(7.2 - 1.0 * weathering + 0.3 * noise("ph"), 4.0, 9.5)
    return {
        name: np.asarray(a, dtype="float32")
        for name, a in {
            "clay": clay,
            "silt": silt,
            "sand": 100.0 - clay - silt,
            "soc": soc,
            "ph": ph,
            "cia": cia,
        }.items()
    }


def vegetation_classes(
    fine: LonLatGrid, mat: F32, map_mm: F32, elevation: F32, *, seed: int
) -> npt.NDArray[np.uint8]:
    """Vegetation codes (:data:`VEGETATION_CLASSES`) from climate thresholds and elevation.

    Inputs are on ``fine``; a noise field wiggles the MAP thresholds so borders are irregular.
    """
    lons, lats = fine.lons(), fine.lats()
    wiggle = FourierField.random(seed, "vegetation", 64, (8, 150)).on_grid(lons, lats)
    moist = map_mm * np.exp(0.2 * wiggle)
    codes = np.full(mat.shape, 4, dtype="uint8")  # steppe
    codes[moist >= 400] = 3  # meadow
    codes[moist < 75] = 5  # desert
    codes[(moist >= 520) & (mat >= 1.0)] = 2  # shrub
    codes[(moist >= 540) & (mat >= 2.0) & (elevation < 4300)] = 1  # forest
    crops = FourierField.random(seed, "cropland", 48, (10, 80)).on_grid(lons, lats)
    codes[(mat >= 5.0) & (moist >= 250) & (elevation < 3900) & (crops > 0.5)] = 6
    return codes


def grazing_intensity(
    fine: LonLatGrid, codes: npt.NDArray[np.uint8], factor: int, seed: int
) -> F32:
    """Sheep units/km² as a yearbook-like block mean over ``factor``² vegetation pixels."""
    per_class = np.array([0, 10, 25, 60, 40, 4, 20], dtype="float32")  # by vegetation code
    blocks = block_mean(per_class[codes], factor)
    coarse = fine.coarsened(factor)
    counties = FourierField.random(seed, "grazing", 32, (60, 600)).on_grid(
        coarse.lons(), coarse.lats()
    )
    return np.asarray(blocks * np.exp(0.3 * counties), dtype="float32")


def lithology_classes(
    lon: F64, lat: F64, master: LonLatGrid, map_mm: F32, elevation: F32, seed: int
) -> npt.NDArray[np.uint8]:
    """Lithology codes (:data:`LITHOLOGY_CLASSES`) in irregular Voronoi patches.

    400 seeds over the whole plateau; each seed's class is drawn with odds that favour aeolian
    deposits (UE) where dry and fluvial ones (UF) at low elevation.
    """
    rng = random_stream(seed, "lithology")
    n = 400
    seed_lon, seed_lat = rng.uniform(74, 109, n), rng.uniform(24, 43, n)
    dry = master.sample(map_mm, seed_lon, seed_lat) < 150
    low = master.sample(elevation, seed_lon, seed_lat) < 3500
    odds = np.tile([0.15, 0.20, 0.35, 0.15, 0.05, 0.10], (n, 1))
    odds[dry, 4] *= 5
    odds[low, 5] *= 3
    cumulative = np.cumsum(odds / odds.sum(axis=1, keepdims=True), axis=1)
    seed_class = 1 + (rng.uniform(size=(n, 1)) > cumulative).sum(axis=1)
    wiggle = master.sample(
        FourierField.random(seed, "lithology-edges", 48, (15, 120)).on_grid(
            master.lons(), master.lats()
        ),
        lon,
        lat,
    )
    x = (lon + 0.12 * wiggle) * KM_PER_DEG_LON
    y = (lat - 0.12 * wiggle) * KM_PER_DEG_LAT
    tree = cKDTree(np.column_stack([seed_lon * KM_PER_DEG_LON, seed_lat * KM_PER_DEG_LAT]))
    ok = np.isfinite(x)
    codes = np.zeros(lon.shape, dtype="uint8")
    _, nearest = tree.query(np.column_stack([x[ok], y[ok]]), workers=2)
    codes[ok] = seed_class[nearest]
    return codes


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
    lakes = lake_mask(master, dist, grid.spec.bbox, seed, n_lakes=3 if grid.shape[0] < 1000 else 12)
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
