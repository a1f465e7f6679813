"""The search's site-bootstrap out-of-bag error: each tree draws whole sites, and a row is
predicted only by trees that did not draw its site."""

from __future__ import annotations

import numpy as np
import pytest

from tpgrid.fit.oob import (
    TREES_PER_TASK,
    grow_tree,
    oob_block,
    oob_forest_size,
    site_draws,
    site_oob_search,
)
from tpgrid.tasks import task_runner

N_SITES, PER_SITE = 8, 3


def tiny() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Triplicates of 8 sites with pure-noise values: a tree that drew a site predicts its
    rows from them, one that did not can only borrow other sites' values."""
    rng = np.random.default_rng(3)
    X = np.repeat(rng.uniform(0, 1, (N_SITES, 2)), PER_SITE, axis=0).astype(np.float32)
    y = rng.normal(0, 1, N_SITES * PER_SITE)
    site_index = np.repeat(np.arange(N_SITES), PER_SITE).astype(np.int64)
    return X, y, site_index


PARAMS = {"max_features": 1.0, "min_samples_leaf": 1, "max_depth": None}


def test_a_tree_draws_whole_sites_with_their_multiplicity_as_weight() -> None:
    X, y, site_index = tiny()
    counts, _ = site_draws(N_SITES, 0, 4)
    assert counts.sum() == N_SITES
    assert (counts == 0).any()
    tree, weight = grow_tree(X, y, site_index, PARAMS, 0, 4)
    np.testing.assert_array_equal(weight, counts[site_index])
    # The root holds every row of every drawn site, weighted by its draws.
    assert tree.tree_.n_node_samples[0] == PER_SITE * np.count_nonzero(counts)
    assert tree.tree_.weighted_n_node_samples[0] == PER_SITE * N_SITES


def test_rows_are_predicted_only_by_trees_that_did_not_draw_their_site() -> None:
    X, y, site_index = tiny()
    for tree in range(6):
        counts, _ = site_draws(N_SITES, 0, tree)
        sums, n = oob_block(X, y, site_index, PARAMS, 0, [tree])
        drawn = counts[site_index] > 0
        np.testing.assert_array_equal(n, (~drawn).astype(np.int64))
        assert np.all(sums[drawn] == 0)
        # Grown to one site per leaf, a tree predicts a row with the mean of a site it drew:
        # out of bag, always another site's.
        means = np.bincount(site_index, weights=y) / PER_SITE
        for row in np.flatnonzero(~drawn):
            site = int(np.argmin(np.abs(means - sums[row])))
            assert sums[row] == pytest.approx(means[site])
            assert counts[site] > 0
            assert site != site_index[row]


def test_the_oob_search_of_one_candidate_is_the_hand_computed_oob_mean() -> None:
    X, y, site_index = tiny()
    n_trees = TREES_PER_TASK + 5  # two tasks
    with task_runner(local_threads=2) as runner:
        search = site_oob_search(runner, X, y, site_index, [PARAMS], n_trees, 7)
    sums, counts = np.zeros(y.size), np.zeros(y.size, dtype=np.int64)
    for t in range(n_trees):
        tree, weight = grow_tree(X, y, site_index, PARAMS, 7, t)
        out = weight == 0
        sums[out] += tree.predict(X[out])
        counts[out] += 1
    np.testing.assert_array_equal(search.oob_trees, counts)
    assert (counts > 0).all()
    np.testing.assert_allclose(search.predictions[0], sums / counts, rtol=1e-12)


def test_the_oob_search_does_not_depend_on_how_trees_are_shared_among_tasks() -> None:
    X, y, site_index = tiny()
    with task_runner(local_threads=1) as runner:
        one = site_oob_search(runner, X, y, site_index, [PARAMS], 10, 1)
    sums, counts = oob_block(X, y, site_index, PARAMS, 1, range(10))
    np.testing.assert_array_equal(one.oob_trees, counts)
    np.testing.assert_allclose(one.predictions[0], sums / counts, rtol=1e-12)


def test_candidates_are_scored_on_the_same_site_draws() -> None:
    X, y, site_index = tiny()
    other = PARAMS | {"min_samples_leaf": 3}
    with task_runner(local_threads=2) as runner:
        search = site_oob_search(runner, X, y, site_index, [PARAMS, other], 12, 0)
    expected = sum(
        (site_draws(N_SITES, 0, t)[0][site_index] == 0).astype(np.int64) for t in range(12)
    )
    np.testing.assert_array_equal(search.oob_trees, expected)
    assert search.predictions.shape == (2, y.size)
    assert not np.allclose(search.predictions[0], search.predictions[1], equal_nan=True)
    assert np.isnan(search.predictions[:, expected == 0]).all()
    assert np.isfinite(search.predictions[:, expected > 0]).all()


@pytest.mark.parametrize("seed", [0, 1])
def test_site_draws_are_reproducible_per_seed_and_tree(seed: int) -> None:
    a, state_a = site_draws(50, seed, 3)
    b, state_b = site_draws(50, seed, 3)
    c, _ = site_draws(50, seed, 4)
    np.testing.assert_array_equal(a, b)
    assert state_a == state_b
    assert not np.array_equal(a, c)


def test_the_oob_forest_gives_each_row_as_many_trees_as_asked_on_average() -> None:
    n_sites, wanted = 200, 100
    trees = oob_forest_size(wanted, n_sites)
    left_out = sum((site_draws(n_sites, 0, t)[0] == 0) for t in range(trees))
    assert 270 <= trees <= 275
    assert np.mean(left_out) == pytest.approx(wanted, rel=0.05)
