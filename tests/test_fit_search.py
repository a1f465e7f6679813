"""Folds: grouped folds never split a group, spatial blocks, metres on a geographic grid, and
the block edge chosen from the data (kNNDM)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tpgrid.fit.blocks import (
    METHOD_DERIVED,
    METHOD_GIVEN,
    choose_blocks,
    cv_distances,
    given_blocks,
    projected_xy,
    spatial_blocks,
)
from tpgrid.fit.search import group_folds, spatial_cv_warning
from tpgrid.grid import GridSpec, TargetGrid

# --- folds ----------------------------------------------------------------------------------


def test_group_folds_keep_each_group_in_one_fold_and_balance_the_folds() -> None:
    groups = np.repeat([f"S{i:03d}" for i in range(23)], 3)
    folds = group_folds(groups, 5, seed=0)
    per_group = pd.Series(folds).groupby(groups).nunique()
    assert (per_group == 1).all()
    groups_per_fold = pd.Series(groups).groupby(folds).nunique()
    assert sorted(groups_per_fold) == [4, 4, 5, 5, 5]


def test_group_folds_need_a_group_per_fold() -> None:
    with pytest.raises(ValueError, match="3 groups cannot fill 5 folds"):
        group_folds(["a", "b", "c"], 5, seed=0)


def test_spatial_blocks_follow_the_block_edges() -> None:
    x = np.array([0.0, 99_999.0, 100_000.0, -1.0, 50_000.0])
    y = np.array([0.0, 0.0, 0.0, 0.0, 150_000.0])
    blocks = spatial_blocks(x, y, block_km=100.0)
    assert blocks[0] == blocks[1]
    assert len({blocks[0], blocks[2], blocks[3], blocks[4]}) == 4


def test_projected_coordinates_are_metres_on_a_geographic_grid() -> None:
    grid = TargetGrid.from_spec(GridSpec(crs="EPSG:4326", resolution=0.01, bbox=(90, 30, 94, 33)))
    x, y = projected_xy(grid, [91.0, 92.0, 91.0], [31.0, 31.0, 32.0])
    assert x[1] - x[0] == pytest.approx(95_400, rel=0.01)  # 1° of longitude at 31 °N
    assert y[2] - y[0] == pytest.approx(111_000, rel=0.01)


# --- the block edge chosen from the data ------------------------------------------------------

AREA_M = 100_000.0  # a 100 km square survey area


def uniform_area(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.uniform(0, AREA_M, n), rng.uniform(0, AREA_M, n)


def clustered_sites(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Twelve fields of 15 sites each, within 500 m of the field's centre."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(5_000, AREA_M - 5_000, (12, 2))
    points = np.repeat(centres, 15, axis=0) + rng.uniform(-500, 500, (180, 2))
    return points[:, 0], points[:, 1]


def test_clustered_sites_get_larger_blocks_than_sites_spread_over_the_area() -> None:
    prediction = uniform_area(3000, seed=1)
    spread = choose_blocks(*uniform_area(180, seed=2), prediction, n_folds=5, seed=0)
    fields = choose_blocks(*clustered_sites(seed=3), prediction, n_folds=5, seed=0)
    # Pixels lie kilometres from the nearest field: a CV holding out whole fields matches them,
    # one holding out single sites (their neighbours 100 m away in training) does not.
    assert fields.block_km > 2 * spread.block_km
    assert fields.block_km > 1.0  # wider than a field (1 km across)
    assert fields.cv_distance_median_km > 2 * spread.cv_distance_median_km
    # Either way the held-out sites lie about as far from training as pixels from sites.
    for choice in (spread, fields):
        assert choice.cv_distance_median_km == pytest.approx(
            choice.prediction_distance_median_km, rel=0.25
        )
    for choice in (spread, fields):
        eligible = [c.wasserstein_km for c in choice.candidates if c.wasserstein_km is not None]
        chosen = next(c for c in choice.candidates if c.block_km == choice.block_km)
        assert chosen.wasserstein_km == min(eligible)
        assert chosen.n_blocks >= 5


def test_the_choice_is_the_same_for_the_same_seed() -> None:
    sites, prediction = clustered_sites(seed=3), uniform_area(3000, seed=1)
    first = choose_blocks(*sites, prediction, n_folds=5, seed=0)
    again = choose_blocks(*sites, prediction, n_folds=5, seed=0)
    assert first.to_json() == again.to_json()
    np.testing.assert_array_equal(first.blocks, again.blocks)


def test_the_choice_records_the_edge_method_candidates_and_both_medians() -> None:
    sites, prediction = uniform_area(180, seed=2), uniform_area(3000, seed=1)
    doc = choose_blocks(*sites, prediction, n_folds=5, seed=0).to_json()
    assert doc["method"] == METHOD_DERIVED
    assert doc["block_km"] in [c["block_km"] for c in doc["candidates"]]
    assert len(doc["candidates"]) > 10
    edges = [c["block_km"] for c in doc["candidates"]]
    assert edges == sorted(edges)
    assert edges[-1] == pytest.approx(100.0, rel=0.05)  # up to the sites' extent
    # Too few blocks for the folds: not eligible, no distance.
    assert all(c["wasserstein_km"] is None for c in doc["candidates"] if c["n_blocks"] < 5)
    assert doc["n_prediction_points"] == 3000
    x, y = sites
    to_sites = np.min(
        np.hypot(prediction[0][:, None] - x[None, :], prediction[1][:, None] - y[None, :]), axis=1
    )
    assert doc["prediction_distance_median_km"] == pytest.approx(np.median(to_sites) / 1000)


def test_a_given_edge_is_used_as_given_even_with_fewer_blocks_than_folds() -> None:
    sites, prediction = uniform_area(180, seed=2), uniform_area(3000, seed=1)
    choice = given_blocks(*sites, prediction, block_km=60.0, n_folds=5, seed=0)
    assert (choice.block_km, choice.method) == (60.0, METHOD_GIVEN)
    assert int(choice.blocks.max()) + 1 == 4  # a 100 km area on a 60 km lattice
    (candidate,) = choice.candidates
    assert (candidate.n_blocks, candidate.wasserstein_km) == (4, None)


def test_cv_distances_are_to_the_nearest_site_of_another_fold() -> None:
    x, y = np.array([0.0, 1.0, 3.0, 10.0]), np.zeros(4)
    distances = cv_distances(x, y, np.array([0, 1, 0, 0]))
    np.testing.assert_array_equal(distances, [1.0, 1.0, 2.0, 9.0])


def test_a_spatial_cv_with_too_few_blocks_is_a_warning_naming_the_key() -> None:
    assert spatial_cv_warning(10, 10, 25.0) is None
    few = spatial_cv_warning(3, 10, 100.0)
    assert few is not None
    assert "only 3 spatial blocks of 100 km, so spatial CV has 3 folds, not 10" in few
    assert "fit.spatial_block_km" in few
    assert "--block-km" in few
    one = spatial_cv_warning(1, 10, 100.0)
    assert one is not None
    assert "every site in one 100 km block, so no spatial CV" in one
