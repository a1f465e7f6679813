"""PackedForest: packing a scikit-learn forest, predicting like it, saving and hashing."""

from __future__ import annotations

import pickle
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.ensemble import ExtraTreesRegressor, RandomForestClassifier, RandomForestRegressor

from tests.walk_tables import WALKS, per_tree_through_walk
from tpgrid.core.forest import PackedForest, Walk, float32_at_or_below, pack_forest

N_FEATURES = 5


def training_data(seed: int, n_rows: int = 300) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n_rows, N_FEATURES)).astype(np.float32)
    y = np.sin(2 * X[:, 0]) + X[:, 1] * X[:, 2] + 0.1 * rng.standard_normal(n_rows)
    return X, y


def rows_on_thresholds(packed: PackedForest, n_rows: int, seed: int) -> np.ndarray:
    """Rows whose every value is a stored threshold of its feature or one float32 step off it."""
    rng = np.random.default_rng(seed)
    internal = packed.left != np.arange(packed.n_nodes)
    X = rng.standard_normal((n_rows, packed.n_features)).astype(np.float32)
    for f in range(packed.n_features):
        t = packed.threshold[internal & (packed.feature == f)]
        if t.size == 0:
            continue
        picked = rng.choice(t, n_rows)
        step = rng.integers(-1, 2, n_rows)
        X[:, f] = np.where(
            step < 0,
            np.nextafter(picked, np.float32(-np.inf)),
            np.where(step > 0, np.nextafter(picked, np.float32(np.inf)), picked),
        )
    return X


def per_tree_sklearn(estimator: Any, X: np.ndarray) -> np.ndarray:
    return np.stack([tree.predict(X) for tree in estimator.estimators_], axis=1)


forest_configs = st.fixed_dictionaries(
    {
        "kind": st.sampled_from([RandomForestRegressor, ExtraTreesRegressor]),
        "n_estimators": st.integers(3, 30),
        "max_depth": st.sampled_from([1, 2, 5, 12, None]),
        "max_features": st.sampled_from([1, 1 / 3, 0.7, None]),
        "min_samples_leaf": st.sampled_from([1, 3, 20]),
        "seed": st.integers(0, 2**16),
    }
)


def fit(config: dict[str, Any]) -> Any:
    X, y = training_data(config["seed"])
    kind = config["kind"]
    return kind(
        n_estimators=config["n_estimators"],
        max_depth=config["max_depth"],
        max_features=config["max_features"],
        min_samples_leaf=config["min_samples_leaf"],
        random_state=config["seed"],
    ).fit(X, y)


@pytest.fixture(scope="module")
def forest() -> Any:
    X, y = training_data(0)
    return RandomForestRegressor(n_estimators=12, max_features=1 / 3, random_state=0).fit(X, y)


@pytest.fixture(scope="module")
def packed(forest: Any) -> PackedForest:
    return pack_forest(forest)


@settings(max_examples=25, deadline=None)
@given(config=forest_configs)
def test_per_tree_predictions_equal_sklearn_exactly_on_every_walk_even_on_thresholds(
    config: dict[str, Any],
) -> None:
    estimator = fit(config)
    packed = pack_forest(estimator)
    X = np.concatenate([rows_on_thresholds(packed, 400, config["seed"]), training_data(1)[0]])
    expected = per_tree_sklearn(estimator, X)
    assert np.array_equal(packed.predict_trees(X), expected)
    for walk in WALKS:  # in the loop: fitting, not walking, is what takes time here
        assert np.array_equal(per_tree_through_walk(packed, X, walk), expected), walk


@settings(max_examples=15, deadline=None)
@given(config=forest_configs)
def test_mean_equals_sklearn_predict(config: dict[str, Any]) -> None:
    estimator = fit(config)
    X = rows_on_thresholds(pack_forest(estimator), 300, config["seed"])
    for walk in WALKS:
        mean, _ = pack_forest(estimator).predict_mean_variance(X, walk=walk)
        np.testing.assert_allclose(mean, estimator.predict(X), rtol=1e-12, atol=1e-12, err_msg=walk)


@settings(max_examples=15, deadline=None)
@given(config=forest_configs)
def test_variance_equals_numpy_var_over_tree_predictions(config: dict[str, Any]) -> None:
    estimator = fit(config)
    X = rows_on_thresholds(pack_forest(estimator), 300, config["seed"])
    for walk in WALKS:
        _, variance = pack_forest(estimator).predict_mean_variance(X, walk=walk)
        np.testing.assert_allclose(
            variance,
            per_tree_sklearn(estimator, X).var(axis=1),
            rtol=1e-9,
            atol=1e-12,
            err_msg=walk,
        )


def exact_variance(per_tree: np.ndarray) -> np.ndarray:
    """Population variance of each row computed in exact rational arithmetic, rounded once.

    np.var is not exact enough to judge 1e-12: on values near 1e6 that differ by 1e-6, its
    rounded mean alone puts it ~1e-5 off."""
    out = np.empty(len(per_tree))
    for i, row in enumerate(per_tree):
        values = [Fraction(float(v)) for v in row]
        mean = sum(values, Fraction(0)) / len(values)
        out[i] = float(sum(((v - mean) ** 2 for v in values), Fraction(0)) / len(values))
    return out


def repeated(packed: PackedForest, copies: int) -> PackedForest:
    """A forest of ``copies`` copies of ``packed``'s trees, each copy stored on its own."""
    offsets = np.arange(copies, dtype=np.int32) * np.int32(packed.n_nodes)
    return PackedForest(
        feature=np.tile(packed.feature, copies),
        threshold=np.tile(packed.threshold, copies),
        left=np.concatenate([packed.left + o for o in offsets]),
        value=np.tile(packed.value, copies),
        roots=np.concatenate([packed.roots + o for o in offsets]),
        n_features=packed.n_features,
    )


@settings(max_examples=40, deadline=None)
@given(
    n_estimators=st.integers(1, 30),
    target=st.sampled_from(["varied", "constant", "constant where x0 > 0", "offset 1e6"]),
    copies=st.sampled_from([1, 1, 7]),  # 7: every tree stored 7 times, so rows agree in groups
    max_depth=st.sampled_from([1, 3, None]),
    min_samples_leaf=st.sampled_from([1, 5, 40]),
    seed=st.integers(0, 2**16),
)
def test_variance_is_exactly_zero_where_trees_agree_and_within_1e_12_elsewhere(
    n_estimators: int,
    target: str,
    copies: int,
    max_depth: int | None,
    min_samples_leaf: int,
    seed: int,
) -> None:
    X, y = training_data(seed, n_rows=200)
    y = {
        "varied": y,
        "constant": np.full(len(y), 288.0),
        "constant where x0 > 0": np.where(X[:, 0] > 0, 288.0, y),
        "offset 1e6": 1e6 + 1e-6 * y,
    }[target]
    estimator = RandomForestRegressor(
        n_estimators=n_estimators,
        max_depth=max_depth,
        min_samples_leaf=min_samples_leaf,
        max_features=0.7,
        random_state=seed,
    ).fit(X, y)
    packed = repeated(pack_forest(estimator), copies)
    X_new = np.concatenate([X, training_data(seed + 1, n_rows=100)[0]])
    per_tree = np.tile(per_tree_sklearn(estimator, X_new), copies)
    expected = exact_variance(per_tree)
    agree = (per_tree == per_tree[:, :1]).all(axis=1)
    assert np.array_equal(expected == 0, agree)
    for walk in WALKS:
        mean, variance = packed.predict_mean_variance(X_new, walk=walk)
        assert np.array_equal(variance[agree], np.zeros(agree.sum())), walk
        assert np.all(np.abs(variance - expected) <= 1e-12 * expected), walk
        # the mean is unchanged: ref + sum(value - ref) / n, within an ulp of ref of the mean
        np.testing.assert_allclose(
            mean, per_tree.mean(axis=1), rtol=1e-12, atol=1e-12, err_msg=walk
        )


@pytest.mark.parametrize("walk", WALKS)
def test_variance_stays_accurate_when_values_sit_on_a_large_offset(walk: Walk) -> None:
    X, y = training_data(3)
    estimator = RandomForestRegressor(n_estimators=20, random_state=3).fit(X, 1e7 + y)
    _, variance = pack_forest(estimator).predict_mean_variance(X, walk=walk)
    np.testing.assert_allclose(variance, per_tree_sklearn(estimator, X).var(axis=1), rtol=1e-6)


@pytest.mark.parametrize("walk", WALKS)
def test_rows_with_nan_give_nan_and_leave_other_rows_unchanged(
    packed: PackedForest, walk: Walk
) -> None:
    X = training_data(5, n_rows=50)[0]
    mean, variance = packed.predict_mean_variance(X, walk=walk)
    X_nan = X.copy()
    X_nan[[0, 7, 49], [0, 3, 4]] = np.nan
    mean_nan, variance_nan = packed.predict_mean_variance(X_nan, walk=walk)
    nan_rows = np.isin(np.arange(50), [0, 7, 49])
    assert np.isnan(mean_nan[nan_rows]).all()
    assert np.isnan(variance_nan[nan_rows]).all()
    assert np.array_equal(mean_nan[~nan_rows], mean[~nan_rows])
    assert np.array_equal(variance_nan[~nan_rows], variance[~nan_rows])
    assert np.isnan(packed.predict_trees(X_nan)[nan_rows]).all()


@pytest.mark.parametrize("walk", ["packets", "lockstep"])
def test_the_walk_chosen_changes_nothing_in_the_result(
    forest: Any, packed: PackedForest, walk: Walk
) -> None:
    X = np.sort(training_data(6, n_rows=500)[0], axis=0)  # neighbouring rows alike, as in chunks
    chosen = packed.predict_mean_variance(X, walk=walk)
    auto = packed.predict_mean_variance(X)
    assert np.array_equal(chosen[0], auto[0])
    assert np.array_equal(chosen[1], auto[1])
    np.testing.assert_allclose(chosen[0], forest.predict(X), rtol=1e-12)


def test_wrong_number_of_features_raises_value_error(packed: PackedForest) -> None:
    with pytest.raises(ValueError, match="4 feature columns but the forest was fitted on 5"):
        packed.predict_mean_variance(np.zeros((3, 4), dtype=np.float32))
    with pytest.raises(ValueError, match="feature columns"):
        packed.predict_trees(np.zeros((3, 6), dtype=np.float32))


def test_one_dimensional_input_raises_value_error(packed: PackedForest) -> None:
    with pytest.raises(ValueError, match="2-D"):
        packed.predict_mean_variance(np.zeros(5, dtype=np.float32))


@pytest.mark.parametrize("walk", WALKS)
def test_float64_and_non_contiguous_input_is_cast_to_float32_like_sklearn(
    forest: Any, packed: PackedForest, walk: Walk
) -> None:
    X = np.asfortranarray(training_data(6)[0].astype(np.float64) + 1e-9)
    assert np.array_equal(packed.predict_trees(X), per_tree_sklearn(forest, X))
    assert np.array_equal(per_tree_through_walk(packed, X, walk), per_tree_sklearn(forest, X))


def test_npz_round_trip_predicts_identically_and_keeps_the_hash(
    packed: PackedForest, tmp_path: Path
) -> None:
    path = tmp_path / "forest.npz"
    packed.save_npz(path)
    loaded = PackedForest.load_npz(path)
    X = training_data(7)[0]
    assert np.array_equal(loaded.predict_trees(X), packed.predict_trees(X))
    assert loaded.content_hash() == packed.content_hash()
    assert loaded.n_features == packed.n_features
    assert loaded.n_trees == packed.n_trees


def test_pickled_copy_is_checked_read_only_and_predicts_identically(
    packed: PackedForest,
) -> None:
    copy = pickle.loads(pickle.dumps(packed, protocol=5))
    X = training_data(10)[0]
    assert np.array_equal(copy.predict_trees(X), packed.predict_trees(X))
    assert copy.content_hash() == packed.content_hash()
    assert not any(copy.to_arrays()[name].flags.writeable for name in ("feature", "left"))
    assert np.array_equal(copy.lockstep_levels, packed.lockstep_levels)


def test_hash_changes_when_one_threshold_changes(packed: PackedForest) -> None:
    arrays = packed.to_arrays()
    arrays["threshold"] = arrays["threshold"].copy()
    k = int(np.flatnonzero(packed.left != np.arange(packed.n_nodes))[-1])
    arrays["threshold"][k] = np.nextafter(arrays["threshold"][k], np.float32(np.inf))
    assert PackedForest.from_arrays(arrays).content_hash() != packed.content_hash()


def test_hash_is_a_sha256_hex_digest(packed: PackedForest) -> None:
    digest = packed.content_hash()
    assert len(digest) == 64
    assert int(digest, 16) >= 0


def test_layout_children_adjacent_and_leaves_point_to_themselves(
    forest: Any, packed: PackedForest
) -> None:
    nodes = np.arange(packed.n_nodes)
    leaf = packed.left == nodes
    assert np.all(packed.threshold[leaf] == np.inf)
    assert np.all(packed.feature[leaf] == 0)
    assert np.all(packed.left[~leaf] > nodes[~leaf])
    children = np.concatenate([packed.left[~leaf], packed.left[~leaf] + 1])
    assert np.array_equal(np.sort(children), np.setdiff1d(nodes, packed.roots))
    assert packed.n_nodes == sum(t.tree_.node_count for t in forest.estimators_)
    assert leaf.sum() == sum(t.tree_.n_leaves for t in forest.estimators_)


def test_sizes_and_dtypes(packed: PackedForest) -> None:
    n = packed.n_nodes
    assert packed.nbytes == n * (2 + 4 + 4 + 8) + 4 * packed.n_trees
    assert packed.feature.dtype == np.int16
    assert packed.threshold.dtype == np.float32
    assert packed.left.dtype == np.int32
    assert packed.value.dtype == np.float64


@pytest.mark.parametrize("walk", WALKS)
def test_forest_of_single_leaf_trees_predicts_the_constant_with_zero_variance(walk: Walk) -> None:
    X = training_data(8)[0]
    estimator = RandomForestRegressor(n_estimators=4, random_state=0).fit(X, np.full(300, 2.5))
    mean, variance = pack_forest(estimator).predict_mean_variance(X[:10], walk=walk)
    assert np.array_equal(mean, np.full(10, 2.5))
    assert np.array_equal(variance, np.zeros(10))


@settings(max_examples=300, deadline=None)
@given(
    t64=st.floats(-1e30, 1e30, allow_nan=False),
    steps=st.integers(-2, 2),
)
def test_float32_threshold_gives_the_same_decision_as_float64(t64: float, steps: int) -> None:
    t32 = float32_at_or_below(np.array([t64]))[0]
    x = np.float32(t64)
    for _ in range(abs(steps)):
        x = np.nextafter(x, np.float32(np.sign(steps) * np.inf))
    assert (x <= t32) == (np.float64(x) <= t64)


def test_packing_rejects_classifiers_and_multi_output_forests() -> None:
    X, y = training_data(9)
    with pytest.raises(TypeError, match="RandomForestRegressor"):
        pack_forest(RandomForestClassifier(n_estimators=2).fit(X, y > 0))
    two_outputs = RandomForestRegressor(n_estimators=2).fit(X, np.column_stack([y, y]))
    with pytest.raises(ValueError, match="single-output"):
        pack_forest(two_outputs)


def test_packing_rejects_an_unfitted_forest() -> None:
    with pytest.raises(ValueError, match="not fitted"):
        pack_forest(RandomForestRegressor())


def test_corrupt_child_index_is_refused_before_any_kernel_runs(packed: PackedForest) -> None:
    arrays = packed.to_arrays()
    arrays["left"] = arrays["left"].copy()
    arrays["left"][packed.roots[0]] = packed.n_nodes + 10
    with pytest.raises(ValueError, match="child index"):
        PackedForest.from_arrays(arrays)


def test_leaf_with_a_finite_threshold_is_refused(packed: PackedForest) -> None:
    arrays = packed.to_arrays()
    arrays["threshold"] = arrays["threshold"].copy()
    arrays["threshold"][np.flatnonzero(packed.left == np.arange(packed.n_nodes))[0]] = 0.0
    with pytest.raises(ValueError, match="inf at leaves"):
        PackedForest.from_arrays(arrays)


def test_arrays_without_the_forest_fields_are_refused() -> None:
    with pytest.raises(ValueError, match="missing arrays"):
        PackedForest.from_arrays({"feature": np.zeros(1, dtype=np.int16)})
