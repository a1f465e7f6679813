"""The synthetic world on the 30″ master grid (pure numpy; units in each docstring).

The world is a set of smooth-with-texture fields of lon/lat (sums of seeded random Fourier
modes, :class:`~tpgrid.synthetic.fields.FourierField`):

- **Relief**: a 4,300–5,200 m plateau inside :data:`tpgrid.grid.PLATEAU_OUTLINE` with ridged
  ranges, uplifted rims and a Qaidam-like basin, falling steeply over ~20 km to 500–1,500 m
  lowlands outside (Sichuan basin south-east, Tarim-like basins north); a few lakes are voids.
- **Climate**: MAT from a 6 °C/km lapse rate, warmer south-east; MAP from a humid south-east
  (~900 mm) to an arid north-west (~25 mm) with a dry Qaidam; AI = MAP / PET with a
  temperature-driven PET.
- **Vegetation, soil, lithology, grazing** follow climate and relief: forest in the humid
  south-east, desert in the arid north-west, meadow/steppe across the interior, cropland in warm
  valleys; CIA higher where warm and wet; lithology in Voronoi patches; grazing on grassland.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy.ndimage import gaussian_filter
from scipy.spatial import cKDTree

from tpgrid.core.arrays import F32, F64
from tpgrid.synthetic.fields import FourierField, block_mean, random_stream, sigmoid
from tpgrid.synthetic.geometry import KM_PER_DEG_LAT, KM_PER_DEG_LON, LonLatGrid


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
