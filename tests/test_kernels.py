"""Numba kernels against scikit-learn's per-tree predictions, on every walk."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from sklearn.ensemble import RandomForestRegressor

from tests.walk_tables import WALKS, per_tree_through_walk, sklearn_per_tree
from tpgrid.core import _kernels
from tpgrid.core.forest import EXTRA_LOCKSTEP_LEVELS, PackedForest, pack_forest

N_FEATURES = 4
WALK_CODES = {"auto": _kernels.AUTO, "packets": _kernels.PACKETS, "lockstep": _kernels.LOCKSTEP}


def mean_variance(
    forest: PackedForest,
    X: np.ndarray,
    lockstep_levels: np.ndarray | None = None,
    walk: str = "auto",
) -> tuple[np.ndarray, np.ndarray]:
    levels = forest.lockstep_levels if lockstep_levels is None else lockstep_levels
    return _kernels.forest_mean_variance(  # type: ignore[no-any-return]
        X,
        forest.feature,
        forest.threshold,
        forest.left,
        forest.value,
        forest.roots,
        levels,
        forest.child_feature,
        WALK_CODES[walk],
    )


def tree_predictions(forest: PackedForest, X: np.ndarray, walk: str = "auto") -> np.ndarray:
    return _kernels.forest_tree_predictions(  # type: ignore[no-any-return]
        X,
        forest.feature,
        forest.threshold,
        forest.left,
        forest.value,
        forest.roots,
        forest.lockstep_levels,
        forest.child_feature,
        WALK_CODES[walk],
    )


def stump(threshold: float | np.float32, feature: int = 1) -> PackedForest:
    """One tree: ``x[feature] <= threshold`` → 10.0, else 20.0."""
    return PackedForest(
        feature=np.array([feature, 0, 0], dtype=np.int16),
        threshold=np.array([threshold, np.inf, np.inf], dtype=np.float32),
        left=np.array([1, 1, 2], dtype=np.int32),
        value=np.array([15.0, 10.0, 20.0]),
        roots=np.array([0], dtype=np.int32),
        n_features=N_FEATURES,
    )


@pytest.fixture(scope="module")
def estimators() -> list[RandomForestRegressor]:
    """Deep trees, plus shallow ones and single-leaf ones."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((400, N_FEATURES)).astype(np.float32)
    y = np.sin(3 * X[:, 0]) + X[:, 1] * X[:, 2] + 100.0
    return [
        RandomForestRegressor(n_estimators=8, random_state=0).fit(X, y),
        RandomForestRegressor(n_estimators=3, max_depth=2, random_state=1).fit(X, y),
        RandomForestRegressor(n_estimators=2, random_state=2).fit(X, np.ones(400)),
    ]


@pytest.fixture(scope="module")
def forest(estimators: list[RandomForestRegressor]) -> PackedForest:
    """The estimators' trees, in order, in one packed forest."""
    parts = [pack_forest(estimator) for estimator in estimators]
    offsets = np.cumsum([0] + [p.n_nodes for p in parts[:-1]]).astype(np.int32)
    return PackedForest(
        feature=np.concatenate([p.feature for p in parts]),
        threshold=np.concatenate([p.threshold for p in parts]),
        left=np.concatenate([p.left + o for p, o in zip(parts, offsets, strict=True)]),
        value=np.concatenate([p.value for p in parts]),
        roots=np.concatenate([p.roots + o for p, o in zip(parts, offsets, strict=True)]),
        n_features=N_FEATURES,
    )


def random_rows(n: int, seed: int, nan_fraction: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, N_FEATURES)).astype(np.float32)
    X[rng.random((n, N_FEATURES)) < nan_fraction] = np.nan
    return X


@pytest.mark.parametrize("walk", WALKS)
def test_row_exactly_on_the_threshold_goes_left_and_the_next_float_goes_right(walk: str) -> None:
    t = np.float32(0.3)
    X = np.zeros((3, N_FEATURES), dtype=np.float32)
    X[:, 1] = [t, np.nextafter(t, np.float32(np.inf)), np.nextafter(t, np.float32(-np.inf))]
    assert tree_predictions(stump(t), X, walk)[:, 0].tolist() == [10.0, 20.0, 10.0]
    assert mean_variance(stump(t), X, walk=walk)[0].tolist() == [10.0, 20.0, 10.0]


@pytest.mark.parametrize("walk", WALKS)
def test_zero_rows_give_empty_outputs(forest: PackedForest, walk: str) -> None:
    X = np.empty((0, N_FEATURES), dtype=np.float32)
    mean, variance = mean_variance(forest, X, walk=walk)
    assert mean.shape == (0,)
    assert variance.shape == (0,)
    assert tree_predictions(forest, X, walk).shape == (0, forest.n_trees)


@pytest.mark.parametrize("walk", WALKS)
def test_one_row(estimators: list[RandomForestRegressor], forest: PackedForest, walk: str) -> None:
    X = random_rows(1, seed=1)
    expected = sklearn_per_tree(estimators, X)
    assert np.array_equal(tree_predictions(forest, X, walk), expected)
    assert np.array_equal(per_tree_through_walk(forest, X, walk), expected)
    mean, variance = mean_variance(forest, X, walk=walk)
    np.testing.assert_allclose(mean, expected.mean(axis=1), rtol=1e-14)
    np.testing.assert_allclose(variance, expected.var(axis=1), rtol=1e-9, atol=1e-13)


TILE_ROWS = _kernels.tile_rows(N_FEATURES)
LANES = _kernels.LANES


@pytest.mark.parametrize("walk", WALKS)
@pytest.mark.parametrize("n", [7, LANES - 1, LANES + 1, TILE_ROWS - 1, TILE_ROWS + 3])
def test_row_counts_off_the_packet_and_tile_sizes(
    estimators: list[RandomForestRegressor], forest: PackedForest, n: int, walk: str
) -> None:
    X = random_rows(n, seed=n, nan_fraction=0.05)
    expected = sklearn_per_tree(estimators, X)
    assert np.array_equal(per_tree_through_walk(forest, X, walk), expected, equal_nan=True)
    mean, variance = mean_variance(forest, X, walk=walk)
    np.testing.assert_allclose(mean, expected.mean(axis=1), rtol=1e-14)
    np.testing.assert_allclose(variance, expected.var(axis=1), rtol=1e-9, atol=1e-13)


def smooth_rows(n: int, seed: int) -> np.ndarray:
    """Rows along a smooth random path, like pixels of a raster row: neighbours share paths."""
    rng = np.random.default_rng(seed)
    steps = rng.standard_normal((n, N_FEATURES)) * 0.05
    return np.cumsum(steps, axis=0).astype(np.float32)


@pytest.mark.parametrize(
    ("kind", "X"),
    [
        ("independent rows", random_rows(3 * LANES + 5, seed=5, nan_fraction=0.02)),
        ("neighbouring rows", smooth_rows(3 * LANES + 5, seed=6)),
        ("one row repeated", np.tile(random_rows(1, seed=7), (2 * LANES, 1))),
    ],
)
def test_packets_and_lockstep_give_identical_results(
    estimators: list[RandomForestRegressor], forest: PackedForest, kind: str, X: np.ndarray
) -> None:
    packets = mean_variance(forest, X, walk="packets")
    lockstep = mean_variance(forest, X, walk="lockstep")
    auto = mean_variance(forest, X, walk="auto")
    for result in (lockstep, auto):
        assert np.array_equal(result[0], packets[0], equal_nan=True), kind
        assert np.array_equal(result[1], packets[1], equal_nan=True), kind
    per_tree = sklearn_per_tree(estimators, X)
    np.testing.assert_allclose(packets[0], per_tree.mean(axis=1), rtol=1e-14)
    for walk in WALKS:
        assert np.array_equal(per_tree_through_walk(forest, X, walk), per_tree, equal_nan=True)


@pytest.mark.parametrize("walk", WALKS)
@settings(max_examples=40, deadline=None)
@given(
    X=st.integers(0, 90).flatmap(
        lambda n: arrays(
            np.float32,
            (n, N_FEATURES),
            elements=st.one_of(
                st.floats(-3, 3, width=32), st.just(np.float32(np.nan)), st.just(np.float32(0))
            ),
        )
    )
)
def test_mean_and_variance_are_the_statistics_of_the_tree_predictions(
    estimators: list[RandomForestRegressor], forest: PackedForest, walk: str, X: np.ndarray
) -> None:
    per_tree = sklearn_per_tree(estimators, X)
    assert np.array_equal(per_tree_through_walk(forest, X, walk), per_tree, equal_nan=True)
    mean, variance = mean_variance(forest, X, walk=walk)
    np.testing.assert_allclose(mean, per_tree.mean(axis=1), rtol=1e-14)
    np.testing.assert_allclose(variance, per_tree.var(axis=1), rtol=1e-9, atol=1e-13)
    assert np.array_equal(tree_predictions(forest, X, walk), per_tree, equal_nan=True)


def staircase(root_value: float, low: float, high: float, n_trees: int) -> PackedForest:
    """``n_trees`` stumps on feature 1, tree t's threshold (t + 0.5) / n_trees - 0.5: a row with
    x1 = k / n_trees - 0.5 gets ``high`` from k trees and ``low`` from the rest."""
    thresholds = (np.arange(n_trees) + 0.5) / n_trees - 0.5
    return PackedForest(
        feature=np.tile(np.array([1, 0, 0], dtype=np.int16), n_trees),
        threshold=np.column_stack([thresholds, np.full((n_trees, 2), np.inf)])
        .astype(np.float32)
        .ravel(),
        left=(np.array([1, 1, 2]) + 3 * np.arange(n_trees)[:, None]).astype(np.int32).ravel(),
        value=np.tile([root_value, low, high], n_trees),
        roots=(3 * np.arange(n_trees)).astype(np.int32),
        n_features=N_FEATURES,
    )


def staircase_rows(n_trees: int) -> np.ndarray:
    X = np.zeros((n_trees + 1, N_FEATURES), dtype=np.float32)
    X[:, 1] = np.arange(n_trees + 1) / n_trees - 0.5
    return X


@pytest.mark.parametrize("walk", WALKS)
@pytest.mark.parametrize("root_value", [0.1, 144.3, 287.1])
def test_forty_trees_all_predicting_288_have_exactly_zero_variance(
    walk: str, root_value: float
) -> None:
    # The first root's value is not 288.0: shifting every row by it left up to 1.5e-10 here.
    forest = staircase(root_value, 288.0, 288.0, 40)
    mean, variance = mean_variance(forest, staircase_rows(40), walk=walk)
    # the mean keeps the shared shift, so it is 288 only to within an ulp of the root value
    np.testing.assert_allclose(mean, 288.0, rtol=1e-15)
    assert variance.tolist() == [0.0] * 41


@pytest.mark.parametrize("walk", WALKS)
@settings(max_examples=60, deadline=None)
@given(
    root_value=st.floats(-1e8, 1e8),
    low=st.floats(-1e8, 1e8),
    # tiny spreads, but none whose square is subnormal (there a relative bound cannot hold)
    spread=st.one_of(
        st.floats(-1e8, 1e8).filter(lambda s: s == 0 or abs(s) > 1e-150),
        st.just(0.0),
        st.floats(1e-150, 1e-6),
        st.floats(-1e-6, -1e-150),
    ),
    n_trees=st.integers(1, 70),
)
def test_variance_is_exact_zero_at_both_ends_of_a_staircase_and_1e_12_close_between(
    walk: str, root_value: float, low: float, spread: float, n_trees: int
) -> None:
    high = low + spread
    _, variance = mean_variance(
        staircase(root_value, low, high, n_trees), staircase_rows(n_trees), walk=walk
    )
    # k of n trees give high, the rest low: variance k (n - k) / n² (high - low)², exactly
    k = np.arange(n_trees + 1)
    gap = Fraction(high) - Fraction(low)
    expected = np.array([float(Fraction(int(j * (n_trees - j)), n_trees**2) * gap**2) for j in k])
    assert variance[0] == 0.0
    assert variance[-1] == 0.0
    assert np.all(np.abs(variance - expected) <= 1e-12 * expected)


@pytest.mark.parametrize("walk", WALKS)
def test_nan_rows_cost_nothing_and_give_nan(forest: PackedForest, walk: str) -> None:
    X = np.full((5_000, N_FEATURES), np.nan, dtype=np.float32)
    mean, variance = mean_variance(forest, X, walk=walk)
    assert np.isnan(mean).all()
    assert np.isnan(variance).all()


@pytest.mark.parametrize("walk", WALKS)
def test_outputs_do_not_depend_on_how_rows_are_split(forest: PackedForest, walk: str) -> None:
    X = random_rows(2 * TILE_ROWS + 11, seed=2, nan_fraction=0.02)
    whole = mean_variance(forest, X, walk=walk)
    cut = 1000
    head = mean_variance(forest, X[:cut], walk=walk)
    tail = mean_variance(forest, X[cut:], walk=walk)
    assert np.array_equal(whole[0], np.concatenate([head[0], tail[0]]), equal_nan=True)
    assert np.array_equal(whole[1], np.concatenate([head[1], tail[1]]), equal_nan=True)
    trees = tree_predictions(forest, X, walk)
    parts = [tree_predictions(forest, X[:cut], walk), tree_predictions(forest, X[cut:], walk)]
    assert np.array_equal(trees, np.concatenate(parts), equal_nan=True)
    assert np.isnan(trees[np.isnan(X).any(axis=1)]).all()


@pytest.mark.parametrize("levels", [0, 1, 3, 40])
def test_any_number_of_lockstep_levels_gives_the_same_result(
    forest: PackedForest, levels: int
) -> None:
    X = random_rows(300, seed=3, nan_fraction=0.02)
    expected = mean_variance(forest, X, walk="lockstep")
    chosen = np.full(forest.n_trees, levels, dtype=np.int32)
    result = mean_variance(forest, X, chosen, walk="lockstep")
    assert np.array_equal(result[0], expected[0], equal_nan=True)
    assert np.array_equal(result[1], expected[1], equal_nan=True)


def test_lockstep_levels_are_the_shallowest_leaf_plus_extra_capped_at_the_tree_depth(
    forest: PackedForest,
) -> None:
    depth = np.zeros(forest.n_nodes, dtype=int)
    for k in range(forest.n_nodes):  # parents come before their children
        if forest.left[k] != k:
            depth[forest.left[k] : forest.left[k] + 2] = depth[k] + 1
    leaf = forest.left == np.arange(forest.n_nodes)
    ends = [*forest.roots[1:8], forest.roots[8]]
    shallowest = [depth[a:b][leaf[a:b]].min() for a, b in zip(forest.roots[:8], ends, strict=True)]
    expected = np.array(shallowest) + EXTRA_LOCKSTEP_LEVELS
    assert forest.lockstep_levels[:8].tolist() == expected.tolist()  # deep trees
    assert forest.lockstep_levels[8:11].tolist() == [2, 2, 2]  # max_depth=2 trees
    assert forest.lockstep_levels[11:].tolist() == [0, 0]  # single-leaf trees
    assert stump(0.0).lockstep_levels.tolist() == [1]
