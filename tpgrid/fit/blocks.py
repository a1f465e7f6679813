"""The spatial CV's blocks: sites in projected metres, a square lattice of blocks, and the block
edge chosen from the data when the settings leave it open.

A spatial CV says how well a map predicts where it has no sites only if its held-out sites lie
as far from the training sites as the map's pixels lie from the sites. Following kNNDM
(Linnenbrink et al. 2024, k-fold nearest-neighbour distance matching), :func:`choose_blocks`
tries block edges from the sites' spacing up to their extent and keeps the one whose *CV
distances* (each held-out site to the nearest training site) are distributed most like the
*prediction distances* (a random sample of the cube's valid pixels to the nearest site), by
the Wasserstein distance between the two distributions, among the edges that leave at least
one block per fold. A survey of a few fields and a plateau-wide survey thus both get blocks
that mean something; an explicit ``fit.spatial_block_km`` is used as given
(:func:`given_blocks`) and scored the same way, for the record.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import xarray as xr
from pyproj import Transformer
from scipy.spatial import cKDTree
from scipy.stats import wasserstein_distance

from tpgrid.core.arrays import F64, I64
from tpgrid.cube import VALID
from tpgrid.fit.search import group_folds
from tpgrid.fit.sites import extract_covariates
from tpgrid.grid import TargetGrid

#: Candidate edges tried between a quarter of the sites' spacing (about one site per block:
#: CV by site) and their extent, a geometric series.
N_CANDIDATES = 20
#: Valid pixels sampled as the prediction area, and the random pixels drawn to find them.
PREDICTION_SAMPLE = 4000
PIXELS_DRAWN = 16000
METHOD_DERIVED = (
    "kNNDM: the edge whose CV distances (held-out site to nearest training site) best match "
    "the prediction distances (valid pixel to nearest site), by Wasserstein distance, among "
    "the edges leaving at least one block per fold"
)
METHOD_GIVEN = "given (fit.spatial_block_km)"


def spatial_blocks(x_m: npt.ArrayLike, y_m: npt.ArrayLike, block_km: float) -> I64:
    """Block id of each point on a square ``block_km`` lattice of projected metres."""
    size = block_km * 1000.0
    bx = np.floor(np.asarray(x_m, dtype=np.float64) / size).astype(np.int64)
    by = np.floor(np.asarray(y_m, dtype=np.float64) / size).astype(np.int64)
    _, block = np.unique(np.column_stack([bx, by]), axis=0, return_inverse=True)
    return block.ravel().astype(np.int64)


def projected_xy(grid: TargetGrid, lon: npt.ArrayLike, lat: npt.ArrayLike) -> tuple[F64, F64]:
    """Lon/lat in metres: the grid's own CRS when projected, else a Lambert azimuthal
    equal-area projection centred on the grid (blocks must be equal areas, not degrees)."""
    if grid.is_geographic:
        lon_min, lat_min, lon_max, lat_max = grid.lonlat_bounds()
        crs = (
            f"+proj=laea +lon_0={(lon_min + lon_max) / 2} +lat_0={(lat_min + lat_max) / 2} +units=m"
        )
    else:
        crs = grid.crs_wkt
    x, y = Transformer.from_crs("EPSG:4326", crs, always_xy=True).transform(
        np.asarray(lon, dtype=np.float64), np.asarray(lat, dtype=np.float64)
    )
    return np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)


def prediction_points(cube: xr.Dataset, grid: TargetGrid, seed: int) -> tuple[F64, F64]:
    """Up to :data:`PREDICTION_SAMPLE` valid pixels of the cube, drawn uniformly at random, in
    the metres of :func:`projected_xy`.

    Only the ``valid`` layer is read, at :data:`PIXELS_DRAWN` random pixels: a fixed cost
    whatever the grid's size.
    """
    rows, cols = grid.shape
    rng = np.random.default_rng(seed)
    drawn = rng.choice(rows * cols, size=min(PIXELS_DRAWN, rows * cols), replace=False)
    row, col = np.divmod(drawn, cols)
    valid = extract_covariates(cube, row, col, [VALID])[VALID] == 1
    row, col = row[valid][:PREDICTION_SAMPLE], col[valid][:PREDICTION_SAMPLE]
    return projected_xy(grid, *grid.pixel_lonlat(row, col))


def cv_distances(x_m: F64, y_m: F64, folds: I64) -> F64:
    """Each point's distance to the nearest point of another fold (metres)."""
    points = np.column_stack([x_m, y_m])
    distance = np.empty(folds.size)
    for fold in np.unique(folds):
        held = folds == fold
        distance[held], _ = cKDTree(points[~held]).query(points[held])
    return distance


@dataclass(frozen=True)
class BlockCandidate:
    """One block edge tried: its blocks, and how far its CV distances are from the
    prediction distances (None: fewer blocks than folds, not eligible)."""

    block_km: float
    n_blocks: int
    wasserstein_km: float | None


@dataclass(frozen=True, eq=False)
class BlockChoice:
    """The spatial CV's block edge, how it was chosen, and each site's block.

    ``blocks`` holds the block of every site passed in; the medians are of the chosen edge's
    CV distances and of the prediction distances, in km (NaN without prediction points).
    """

    block_km: float
    method: str
    blocks: I64
    candidates: tuple[BlockCandidate, ...]
    cv_distance_median_km: float
    prediction_distance_median_km: float
    n_prediction_points: int

    def to_json(self) -> dict[str, Any]:
        return {
            "block_km": self.block_km,
            "method": self.method,
            "candidates": [
                {"block_km": c.block_km, "n_blocks": c.n_blocks, "wasserstein_km": c.wasserstein_km}
                for c in self.candidates
            ],
            "cv_distance_median_km": self.cv_distance_median_km,
            "prediction_distance_median_km": self.prediction_distance_median_km,
            "n_prediction_points": self.n_prediction_points,
            "sites": "every located site of the table (one choice for all elements)",
        }


def candidate_edges(x_m: F64, y_m: F64) -> tuple[float, ...]:
    """:data:`N_CANDIDATES` edges in km, geometric from a quarter of the sites' median
    nearest-neighbour distance up to the longer side of their bounding box (rounded to 3
    significant digits)."""
    points = np.column_stack([x_m, y_m])
    extent = float(np.max(points.max(axis=0) - points.min(axis=0))) if points.size else 0.0
    spacing = 0.0
    if len(points) > 1:
        nearest, _ = cKDTree(points).query(points, k=2)
        positive = nearest[:, 1][nearest[:, 1] > 0]
        spacing = float(np.median(positive)) if positive.size else 0.0
    if spacing <= 0 or extent <= spacing:
        # One site, or all on one spot: any edge gives one block; the extent (or 1 m) says so.
        return (_round_km(max(extent, spacing, 1.0) / 1000.0),)
    edges = np.geomspace(spacing / 4, extent, N_CANDIDATES) / 1000.0
    return tuple(dict.fromkeys(_round_km(e) for e in edges))


def choose_blocks(
    x_m: F64, y_m: F64, prediction: tuple[F64, F64], n_folds: int, seed: int
) -> BlockChoice:
    """The block edge whose spatial CV best matches the prediction distances (kNNDM)."""
    return _scored(x_m, y_m, prediction, candidate_edges(x_m, y_m), n_folds, seed, METHOD_DERIVED)


def given_blocks(
    x_m: F64, y_m: F64, prediction: tuple[F64, F64], block_km: float, n_folds: int, seed: int
) -> BlockChoice:
    """The given block edge, scored like a candidate of :func:`choose_blocks`."""
    return _scored(x_m, y_m, prediction, (block_km,), n_folds, seed, METHOD_GIVEN)


def _scored(
    x_m: F64,
    y_m: F64,
    prediction: tuple[F64, F64],
    edges: Sequence[float],
    n_folds: int,
    seed: int,
    method: str,
) -> BlockChoice:
    """Score every edge; keep the eligible one with the least Wasserstein distance (the one
    with the most blocks when none is eligible, or no valid pixel was drawn)."""
    points = np.column_stack([x_m, y_m])
    pred_points = np.column_stack(prediction)
    to_sites = (
        cKDTree(points).query(pred_points)[0] if len(pred_points) and len(points) else np.empty(0)
    )
    candidates, blocks_of, cv_of = [], [], []
    for edge in edges:
        blocks = spatial_blocks(x_m, y_m, edge)
        n_blocks = int(blocks.max()) + 1 if blocks.size else 0
        distance: float | None = None
        cv = np.full(blocks.size, np.nan)
        if n_blocks >= n_folds:
            cv = cv_distances(x_m, y_m, group_folds(blocks, n_folds, seed))
            if to_sites.size:
                distance = round(float(wasserstein_distance(cv, to_sites)) / 1000.0, 6)
        candidates.append(BlockCandidate(edge, n_blocks, distance))
        blocks_of.append(blocks)
        cv_of.append(cv)
    scores = [np.inf if c.wasserstein_km is None else c.wasserstein_km for c in candidates]
    best = (
        int(np.argmin(scores))
        if np.isfinite(min(scores))
        else int(np.argmax([c.n_blocks for c in candidates]))
    )
    return BlockChoice(
        block_km=candidates[best].block_km,
        method=method,
        blocks=blocks_of[best],
        candidates=tuple(candidates),
        cv_distance_median_km=_median_km(cv_of[best]),
        prediction_distance_median_km=_median_km(to_sites),
        n_prediction_points=int(to_sites.size),
    )


def _median_km(metres: F64) -> float:
    finite = metres[np.isfinite(metres)]
    return round(float(np.median(finite)) / 1000.0, 6) if finite.size else float("nan")


def _round_km(km: float) -> float:
    return float(f"{km:.3g}")
