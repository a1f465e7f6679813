"""The sites and their samples: where field teams went, where each sample lies, what the lab read.

Sites are drawn by a sampling effort that follows roads and the humid east; each has three
samples along a short transect. Values are truth × site effect × sample noise, read by ICP-MS
and XRF, with missingness, a calibration subset and gross outliers.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pandas as pd
from pyproj import Transformer

from tpgrid.core.arrays import F32, F64
from tpgrid.grid import TargetGrid
from tpgrid.synthetic.fields import random_stream
from tpgrid.synthetic.geometry import KM_PER_DEG_LAT, KM_PER_DEG_LON, affine_xy
from tpgrid.synthetic.layers import LITHOLOGY_CLASSES, VEGETATION_CLASSES
from tpgrid.synthetic.paper import (
    ELEMENTS,
    ICPMS_NOISE_SD,
    PAPER_OUTLIERS,
    PAPER_SITES,
    PAPER_SITES_PER_ELEMENT,
    SAMPLE_NOISE_SD,
    SITE_EFFECT_SD,
    XRF_BIAS,
)


@dataclass(frozen=True)
class SiteDesign:
    """How many sites and samples a plateau size gets, and per element on how many sites."""

    n_sites: int
    n_calibration: int  # samples re-measured by ICP-MS
    sites_per_element: dict[str, int]
    outliers_per_element: dict[str, int]


# The field protocol: three samples along a 15 m transect, at sites soil teams can reach.
SAMPLES_PER_SITE = 3
SITE_MAX_ELEVATION_M = 5600.0
TRANSECT_M = (0.0, 7.5, 15.0)


# Fewest sites an element is measured on (all of them if there are fewer): below ~60 sites a
# forest's grouped CV learns little of even a simple truth (Ni and Mo scaled to the small
# plateau's 120 sites would have 14 and 9; the full survey's Mo has 41).
MIN_SITES_PER_ELEMENT = 60


def site_design(n_sites: int) -> SiteDesign:
    """The paper's design (526 sites, 218 ICP-MS samples) scaled to ``n_sites``.

    Every element keeps at least :data:`MIN_SITES_PER_ELEMENT` sites and one outlier, so even
    the small plateau can be modelled and screened; only Ni (60) and Mo (41 → 60) reach the
    floor on the full plateau.
    """
    ratio = n_sites / PAPER_SITES
    per_element = {
        e: min(n_sites, max(MIN_SITES_PER_ELEMENT, round(n * ratio)))
        for e, n in PAPER_SITES_PER_ELEMENT.items()
    }
    outliers = {e: max(1, round(n * ratio)) for e, n in PAPER_OUTLIERS.items()}
    return SiteDesign(n_sites, max(30, round(218 * ratio)), per_element, outliers)


# Sites of each plateau size; the whole plateau has the paper's.
SITES_PER_SIZE = {"small": 120, "full": PAPER_SITES}

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
