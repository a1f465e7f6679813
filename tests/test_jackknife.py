"""The infinitesimal-jackknife variance against forestci, its reference implementation.

forestci 0.9 runs with the installed scikit-learn (it calls scikit-learn's own bootstrap
helpers), so every comparison here is with forestci's own functions, not a copy of them.
"""

from __future__ import annotations

import forestci
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from sklearn.ensemble import RandomForestRegressor

from tpgrid.core.bootstrap import inbag_counts
from tpgrid.core.forest import pack_forest
from tpgrid.core.jackknife import ij_variance
from tpgrid.errors import AnalysisError

FOREST_CASES = settings(max_examples=25, deadline=None)


def _fitted(n_train: int, n_trees: int, seed: int, max_samples: float | int | None) -> tuple:
    """A small forest on float32-representable data, its training shape and test rows."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n_train, 3)).astype(np.float32).astype(np.float64)
    y = X[:, 0] ** 2 + X[:, 1] + rng.normal(scale=0.3, size=n_train)
    forest = RandomForestRegressor(
        n_estimators=n_trees, max_samples=max_samples, min_samples_leaf=2, random_state=seed
    ).fit(X, y)
    X_test = rng.normal(size=(17, 3)).astype(np.float32).astype(np.float64)
    return forest, X.shape, X_test


def _tree_predictions(forest: RandomForestRegressor, X: np.ndarray) -> np.ndarray:
    return np.stack([tree.predict(X) for tree in forest.estimators_], axis=1)


def _assert_matches(got: np.ndarray, ref: np.ndarray) -> None:
    # V_IJ-U crosses zero, so relative error alone is meaningless there: allow rounding of
    # the largest term.
    np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-12 * max(1.0, np.abs(ref).max()))


max_samples_st = st.sampled_from([None, 0.6, 12])


@FOREST_CASES
@given(
    n_train=st.integers(20, 60),
    n_trees=st.integers(2, 30),
    seed=st.integers(0, 2**16),
    max_samples=max_samples_st,
)
def test_inbag_counts_are_forestcis(
    n_train: int, n_trees: int, seed: int, max_samples: float | int | None
) -> None:
    forest, _, _ = _fitted(n_train, n_trees, seed, max_samples)
    counts = inbag_counts(forest, n_train)
    np.testing.assert_array_equal(counts, forestci.calc_inbag(n_train, forest))
    # Every tree drew as many rows as max_samples asks.
    drawn = {None: n_train, 0.6: int(0.6 * n_train), 12: 12}[max_samples]
    np.testing.assert_array_equal(counts.sum(axis=0), drawn)


def test_inbag_counts_leave_out_the_rows_scikit_learns_oob_prediction_uses() -> None:
    """Against scikit-learn itself, on a forest built as the fit's final one (all cores, OOB)."""
    rng = np.random.default_rng(5)
    X = rng.normal(size=(50, 3))
    y = X[:, 0] + rng.normal(scale=0.3, size=50)
    forest = RandomForestRegressor(n_estimators=40, oob_score=True, random_state=5, n_jobs=-1)
    forest.fit(X, y)
    out_of_bag = inbag_counts(forest, 50) == 0
    trees = _tree_predictions(forest, X)
    oob_mean = (trees * out_of_bag).sum(axis=1) / out_of_bag.sum(axis=1)
    np.testing.assert_allclose(oob_mean, forest.oob_prediction_, rtol=1e-12)


@FOREST_CASES
@given(
    n_train=st.integers(20, 60),
    n_trees=st.integers(2, 90),
    seed=st.integers(0, 2**16),
    max_samples=max_samples_st,
)
def test_ij_variance_is_forestcis_uncalibrated(
    n_train: int, n_trees: int, seed: int, max_samples: float | int | None
) -> None:
    forest, shape, X_test = _fitted(n_train, n_trees, seed, max_samples)
    counts = inbag_counts(forest, n_train)
    trees = _tree_predictions(forest, X_test)
    ref = forestci.random_forest_error(forest, shape, X_test, calibrate=False)
    _assert_matches(ij_variance(trees, counts), ref)
    # Without the bias correction: forestci's V_IJ before it subtracts the correction.
    centred = trees - trees.mean(axis=1, keepdims=True)
    raw = forestci._core_computation(shape, X_test, counts, centred, n_trees)
    _assert_matches(ij_variance(trees, counts, bias_corrected=False), raw)


@FOREST_CASES
@given(n_train=st.integers(12, 40), n_trees=st.integers(2, 60), seed=st.integers(0, 2**16))
def test_subsampling_without_replacement_is_inflated_as_forestci_does(
    n_train: int, n_trees: int, seed: int
) -> None:
    forest, shape, X_test = _fitted(n_train, n_trees, seed, None)
    # Any in-bag matrix of 0/1 counts (half the rows per tree) takes forestci's inflation.
    rng = np.random.default_rng(seed)
    halves = np.stack(
        [rng.permutation(n_train) < n_train // 2 for _ in range(n_trees)], axis=1
    ).astype(np.float64)
    ref = forestci.random_forest_error(forest, shape, X_test, inbag=halves, calibrate=False)
    _assert_matches(ij_variance(_tree_predictions(forest, X_test), halves), ref)


def test_two_rows_two_trees_by_hand() -> None:
    # Tree 0 drew training row 0 twice and predicts 1; tree 1 drew row 1 twice and predicts 3.
    # Centred counts ±1, centred predictions ∓1: covariances −1 and 1, V_IJ = 2. Counts vary
    # by 1 and predictions by 1 around their means: bias n · 1 · 1 / B = 1, V_IJ-U = 1.
    trees = np.array([[1.0, 3.0]])
    inbag = np.array([[2.0, 0.0], [0.0, 2.0]])
    np.testing.assert_array_equal(ij_variance(trees, inbag, bias_corrected=False), [2.0])
    np.testing.assert_array_equal(ij_variance(trees, inbag), [1.0])
    # Each tree drew its row once: centred counts ±½, V_IJ = ½ and bias ¼; both are
    # inflated by 1 / (1 − ½)² = 4 for the draw without replacement.
    once = inbag / 2
    np.testing.assert_array_equal(ij_variance(trees, once, bias_corrected=False), [2.0])
    np.testing.assert_array_equal(ij_variance(trees, once), [1.0])


@FOREST_CASES
@given(
    n_train=st.integers(2, 50),
    n_trees=st.integers(2, 40),
    n_rows=st.integers(1, 60),
    rows_per_block=st.integers(1, 70),
    seed=st.integers(0, 2**16),
)
def test_block_size_does_not_change_the_result(
    n_train: int, n_trees: int, n_rows: int, rows_per_block: int, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    trees = rng.gamma(2.0, size=(n_rows, n_trees))
    inbag = rng.poisson(1.0, size=(n_train, n_trees)).astype(np.float64)
    assume(inbag.var(axis=1).mean() > 0)  # counts that never vary are refused
    whole = ij_variance(trees, inbag, block_bytes=2**40)
    blocked = ij_variance(trees, inbag, block_bytes=8 * n_train * rows_per_block)
    # The matrix product may round a row differently in a block of another width (by ulps).
    np.testing.assert_allclose(blocked, whole, rtol=1e-13, atol=1e-15 * np.abs(whole).max())


@pytest.mark.parametrize(("n_train", "n_trees"), [(80, 24), (20, 50)])
def test_packed_forest_tree_predictions_give_forestcis_variance(n_train: int, n_trees: int) -> None:
    """The map path: per-tree predictions from tpgrid's packed forest on float32 rows, with
    more training rows than trees (the Gram matrix) and fewer (the counts themselves)."""
    forest, shape, X_test = _fitted(n_train, n_trees, 3, None)
    trees = pack_forest(forest).predict_trees(X_test.astype(np.float32))
    ref = forestci.random_forest_error(forest, shape, X_test, calibrate=False)
    _assert_matches(ij_variance(trees, inbag_counts(forest, shape[0])), ref)


def test_nan_rows_stay_their_own() -> None:
    rng = np.random.default_rng(0)
    trees = rng.normal(size=(5, 8))
    inbag = rng.poisson(1.0, size=(10, 8)).astype(np.float64)
    clean = ij_variance(trees, inbag)
    trees[2] = np.nan
    out = ij_variance(trees, inbag)
    assert np.isnan(out[2])
    np.testing.assert_array_equal(np.delete(out, 2), np.delete(clean, 2))


def test_a_forest_without_bootstrap_has_no_jackknife_variance() -> None:
    forest = RandomForestRegressor(n_estimators=2, bootstrap=False).fit([[0.0], [1.0]], [0, 1])
    with pytest.raises(AnalysisError, match="bootstrap=True"):
        ij_variance(np.zeros((3, 2)), inbag_counts(forest, 2))


def test_tree_counts_must_agree() -> None:
    with pytest.raises(AnalysisError, match="same trees"):
        ij_variance(np.zeros((3, 4)), np.ones((5, 3)))
