"""Folds: grouped folds never split a group, spatial blocks, metres on a geographic grid."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tpgrid.fit.search import group_folds, projected_xy, spatial_blocks
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
