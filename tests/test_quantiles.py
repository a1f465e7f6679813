"""Quantile regression forest: leaf membership and quantiles, equal to quantile-forest's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from quantile_forest import ExtraTreesQuantileRegressor, RandomForestQuantileRegressor
from sklearn.ensemble import RandomForestRegressor

from tpgrid.core.bootstrap import inbag_counts
from tpgrid.core.forest import PackedForest, Walk, pack_forest
from tpgrid.core.quantiles import LeafMembership, forest_quantiles, leaf_membership

WALKS: tuple[Walk, ...] = ("auto", "packets", "lockstep")


def two_stumps() -> tuple[PackedForest, LeafMembership]:
    """Two stumps on x0 <= 0 over the targets 1, 2, 3, 4 (hand-made in-bag counts)."""
    forest = PackedForest(
        feature=np.zeros(6, dtype=np.int16),
        threshold=np.array([0, np.inf, np.inf, 0, np.inf, np.inf], dtype=np.float32),
        left=np.array([1, 1, 2, 4, 4, 5], dtype=np.int32),
        value=np.zeros(6),
        roots=np.array([0, 3], dtype=np.int32),
        n_features=1,
    )
    membership = LeafMembership(
        # node 1: y 1 (drawn twice), 2; node 2: 3, 4; node 4: 1, 2, 3; node 5: 4 (twice).
        leaf_offsets=np.array([0, 0, 2, 4, 4, 7, 8], dtype=np.int64),
        samples=np.array([0, 1, 2, 3, 0, 1, 2, 3], dtype=np.int32),
        counts=np.array([2, 1, 1, 1, 1, 1, 1, 2], dtype=np.int32),
        y_train=np.array([1.0, 2.0, 3.0, 4.0]),
        train_index=np.arange(4, dtype=np.int64),
    )
    return forest, membership


def test_hand_computed_quantiles() -> None:
    forest, membership = two_stumps()
    q = [0.0, 0.2, 0.5, 0.8, 0.9, 1.0]
    got = forest_quantiles(forest, membership, [[-1.0], [1.0], [np.nan]], q)
    # x = -1: leaves of 3 draws each, so every draw weighs 1/3 * S/T = 1: the weights 3, 2, 1
    # on y = 1, 2, 3 are the sample 1 1 1 2 2 3, whose linear quantiles these are.
    # (1/3 * 6 / 2 rounds to just below 1, as in quantile-forest: equal up to rounding.)
    np.testing.assert_allclose(got[0], [1.0, 1.0, 1.5, 2.0, 2.5, 3.0], rtol=1e-15)
    # x = 1: leaves of 2 draws each, weights 1 and 3 on y = 3, 4: the sample 3 4 4 4.
    np.testing.assert_allclose(got[1], [3.0, 3.6, 4.0, 4.0, 4.0, 4.0], rtol=1e-15)
    assert np.isnan(got[2]).all()
    # Unweighted leaves count draws: the same here, as every leaf of a row has the same size.
    np.testing.assert_array_equal(forest_quantiles(forest, membership, [[-1.0]], q, False), got[:1])


def test_meinshausen_weights_on_unequal_leaves() -> None:
    forest, membership = two_stumps()
    # A third stump whose left leaf holds only y = 4: x = -1 now reaches 3 + 3 + 1 draws.
    three = PackedForest.from_arrays(
        {
            **forest.to_arrays(),
            "feature": np.zeros(9, dtype=np.int16),
            "threshold": np.array([0, np.inf, np.inf] * 3, dtype=np.float32),
            "left": np.array([1, 1, 2, 4, 4, 5, 7, 7, 8], dtype=np.int32),
            "value": np.zeros(9),
            "roots": np.array([0, 3, 6], dtype=np.int32),
        }
    )
    arrays = membership.to_arrays()
    arrays["leaf_offsets"] = np.array([0, 0, 2, 4, 4, 7, 8, 8, 9, 10], dtype=np.int64)
    arrays["samples"] = np.append(arrays["samples"], [3, 0]).astype(np.int32)
    arrays["counts"] = np.append(arrays["counts"], [1, 1]).astype(np.int32)
    # Meinshausen: y = 1, 2, 3, 4 get (2/3 + 1/3 + 0) / 3 = 1/3, (1/3 + 1/3) / 3 = 2/9, 1/9 and
    # 1/3, times S = 7 draws: 7/3, 14/9, 7/9, 7/3, cumulated 21/9, 35/9, 42/9, 63/9. The median
    # (p = 0.5 * 6 + 1 = 4) lies between y = 2 and 3: from p_floor = (35/9 - 1) / 6 = 13/27 the
    # step to 3 ends at 13/27 + ((42/9 - 1) / 6 - 13/27) / (7/9) = 35/54, so 0.5 lies 1/9 along.
    membership3 = LeafMembership.from_arrays(arrays)
    got = forest_quantiles(three, membership3, [[-1.0]], [0.5])
    np.testing.assert_allclose(got[0, 0], 2 + 1 / 9, rtol=1e-14)
    # Counting draws instead: 1 1 1 2 2 3 4, whose median is 2; the single-sample leaf of y = 4
    # weighs less there.
    assert forest_quantiles(three, membership3, [[-1.0]], [0.5], weighted_leaves=False)[0, 0] == 2


def fitted(kind: Any, n: int, seed: int, **options: Any) -> tuple[Any, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 3)).astype(np.float32)
    # Few distinct targets: many ties, inside leaves and across the training set.
    y = np.round(X[:, 0] + 0.5 * rng.standard_normal(n), options.pop("decimals", 1))
    forest = kind(max_samples_leaf=None, random_state=seed, **options).fit(X, y)
    return forest, X, y


@pytest.mark.filterwarnings("ignore:Using the fractional value max_samples")
@settings(max_examples=60, deadline=None)
@given(
    kind=st.sampled_from([RandomForestQuantileRegressor, ExtraTreesQuantileRegressor]),
    n=st.integers(2, 80),
    seed=st.integers(0, 2**16),
    n_estimators=st.integers(1, 8),
    min_samples_leaf=st.integers(1, 6),
    bootstrap=st.booleans(),
    max_samples=st.sampled_from([None, 0.5]),
    decimals=st.integers(0, 2),
    weighted_leaves=st.booleans(),
    quantiles=st.lists(st.floats(0, 1), max_size=6).map(lambda q: [0.0, 0.5, 1.0, *q]),
)
def test_equal_to_quantile_forest(
    kind: Any,
    n: int,
    seed: int,
    n_estimators: int,
    min_samples_leaf: int,
    bootstrap: bool,
    max_samples: float | None,
    decimals: int,
    weighted_leaves: bool,
    quantiles: list[float],
) -> None:
    estimator, X, y = fitted(
        kind,
        n,
        seed,
        n_estimators=n_estimators,
        min_samples_leaf=min_samples_leaf,
        bootstrap=bootstrap,
        max_samples=max_samples if bootstrap else None,
        decimals=decimals,
    )
    packed = pack_forest(estimator)
    membership = leaf_membership(estimator, X, y, packed)
    rows = np.random.default_rng(seed + 1).standard_normal((50, 3)).astype(np.float32)
    rows = np.vstack([rows, X[:10]])  # training rows too: they sit on their own samples
    got = forest_quantiles(packed, membership, rows, quantiles, weighted_leaves)
    expected = estimator.predict(rows, quantiles=quantiles, weighted_leaves=weighted_leaves)
    np.testing.assert_array_equal(got, expected.reshape(got.shape))


def test_membership_reproduces_the_tree_values() -> None:
    # Independent of quantile-forest: a regression tree's leaf value is the in-bag mean of its
    # targets, so the recorded samples and counts must give it back in every leaf.
    rng = np.random.default_rng(3)
    X = rng.standard_normal((200, 4)).astype(np.float32)
    y = X[:, 0] - X[:, 1] ** 2 + rng.standard_normal(200)
    estimator = RandomForestRegressor(n_estimators=6, min_samples_leaf=3, random_state=0)
    estimator.fit(X, y)
    packed = pack_forest(estimator)
    membership = leaf_membership(estimator, X, y)
    offsets = membership.leaf_offsets
    held = np.diff(offsets) > 0
    np.testing.assert_array_equal(held, packed.left == np.arange(packed.n_nodes))
    leaf_of = np.repeat(np.arange(packed.n_nodes), np.diff(offsets))
    weight = membership.counts.astype(np.float64)
    sums = np.bincount(leaf_of, weight * membership.y_train[membership.samples], packed.n_nodes)
    draws = np.bincount(leaf_of, weight, packed.n_nodes)
    np.testing.assert_allclose(sums[held] / draws[held], packed.value[held], rtol=1e-12)
    # Every tree holds its whole bootstrap sample, and y_train is y sorted.
    assert draws[held].sum() == inbag_counts(estimator, 200).sum() == 6 * 200
    np.testing.assert_array_equal(membership.y_train, y[membership.train_index])


def test_save_load_and_checks(tmp_path: Path) -> None:
    estimator, X, y = fitted(RandomForestQuantileRegressor, 60, 1, n_estimators=3)
    packed = pack_forest(estimator)
    membership = leaf_membership(estimator, X, y, packed)
    membership.save_npz(tmp_path / "membership.npz")
    loaded = LeafMembership.load_npz(tmp_path / "membership.npz")
    for name, array in membership.to_arrays().items():
        np.testing.assert_array_equal(loaded.to_arrays()[name], array)
    np.testing.assert_array_equal(
        forest_quantiles(packed, loaded, X, [0.1, 0.9]),
        forest_quantiles(packed, membership, X, [0.1, 0.9]),
    )
    assert not membership.samples.flags.writeable

    other = pack_forest(fitted(RandomForestQuantileRegressor, 60, 2, n_estimators=3)[0])
    if other.n_nodes != packed.n_nodes:
        with pytest.raises(ValueError, match="nodes"):
            forest_quantiles(other, membership, X, [0.5])
    with pytest.raises(ValueError, match="quantiles"):
        forest_quantiles(packed, membership, X, [1.5])
    with pytest.raises(ValueError, match="X must be"):
        forest_quantiles(packed, membership, X[:, :2], [0.5])
    arrays = membership.to_arrays()
    arrays["samples"] = arrays["samples"] + 1000
    with pytest.raises(ValueError, match="samples"):
        LeafMembership.from_arrays(arrays)
    arrays = membership.to_arrays()
    arrays["counts"] = np.zeros_like(arrays["counts"])
    with pytest.raises(ValueError, match="counts"):
        LeafMembership.from_arrays(arrays)
    weighted = RandomForestQuantileRegressor(n_estimators=2, max_samples_leaf=None)
    weighted.fit(X, y, sample_weight=np.ones(60))
    with pytest.raises(ValueError, match="sample_weight"):
        inbag_counts(weighted, 60)


def test_walks_tiles_and_nan_rows() -> None:
    # 1,100 trees make tiles of 448 rows, so 1,000 rows span three; the walk never matters.
    estimator, X, y = fitted(RandomForestQuantileRegressor, 60, 4, n_estimators=1100)
    packed = pack_forest(estimator)
    membership = leaf_membership(estimator, X, y, packed)
    rows = np.random.default_rng(5).standard_normal((1000, 3)).astype(np.float32)
    rows[::7, 1] = np.nan
    q = [0.05, 0.5, 0.95]
    got = {walk: forest_quantiles(packed, membership, rows, q, walk=walk) for walk in WALKS}
    finite = ~np.isnan(rows).any(axis=1)
    assert np.isnan(got["auto"][~finite]).all()
    expected = estimator.predict(rows[finite], q, weighted_leaves=True)
    np.testing.assert_array_equal(got["auto"][finite], expected)
    for walk in WALKS:
        np.testing.assert_array_equal(got[walk], got["auto"])


@pytest.mark.filterwarnings("ignore:Using the fractional value max_samples")
@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(5, 80),
    seed=st.integers(0, 2**16),
    trees=st.integers(1, 12),
    min_samples_leaf=st.integers(1, 6),
    weighted=st.booleans(),
)
def test_the_first_trees_are_quantile_forests_own_forest_of_that_many_trees(
    n: int, seed: int, trees: int, min_samples_leaf: int, weighted: bool
) -> None:
    # A forest of `trees` trees with the same random_state has exactly the first `trees`
    # trees of the larger one (scikit-learn draws the trees' seeds in order).
    large, X, y = fitted(
        RandomForestQuantileRegressor, n, seed, n_estimators=12, min_samples_leaf=min_samples_leaf
    )
    small, _, _ = fitted(
        RandomForestQuantileRegressor,
        n,
        seed,
        n_estimators=trees,
        min_samples_leaf=min_samples_leaf,
    )
    packed = pack_forest(large)
    membership = leaf_membership(large, X, y, packed)
    rows = np.random.default_rng(seed).standard_normal((40, 3)).astype(np.float32)
    q = [0.05, 0.5, 0.95]
    got = forest_quantiles(packed, membership, rows, q, weighted_leaves=weighted, trees=trees)
    expected = small.predict(rows, q, weighted_leaves=weighted)
    np.testing.assert_array_equal(got, expected)


def test_trees_outside_the_forest_are_refused() -> None:
    estimator, X, y = fitted(RandomForestQuantileRegressor, 30, 1, n_estimators=3)
    packed = pack_forest(estimator)
    membership = leaf_membership(estimator, X, y, packed)
    for trees in (0, 4):
        with pytest.raises(ValueError, match=r"trees must be in \[1, 3\]"):
            forest_quantiles(packed, membership, X, [0.5], trees=trees)
