"""Prediction intervals from the trees, held-out tree predictions of a grouped CV, and
coverage: nominal against achieved, on data whose noise is known."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tpgrid.core.uncertainty import (
    HeldOutTrees,
    calibrated_k,
    calibration_scores,
    coverage,
    coverage_table,
    normal_quantile,
    quantile_interval,
    sd_interval,
)
from tpgrid.errors import AnalysisError
from tpgrid.fit.heldout import HeldOutResults, held_out_fold
from tpgrid.fit.search import group_folds

N_SITES, PER_SITE = 200, 3


@pytest.fixture(scope="module")
def noisy_sites() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Triplicates of 200 sites: a smooth signal of 3 predictors, a site effect shared by the
    triplicates (SD 1) and sample noise (SD 0.5)."""
    rng = np.random.default_rng(0)
    site_x = rng.uniform(0, 1, (N_SITES, 3))
    signal = 10 * site_x[:, 0] + 5 * np.sin(6 * site_x[:, 1]) + rng.normal(0, 1.0, N_SITES)
    X = np.repeat(site_x, PER_SITE, axis=0).astype(np.float32)
    y = np.repeat(signal, PER_SITE) + rng.normal(0, 0.5, N_SITES * PER_SITE)
    sites = np.repeat(np.arange(N_SITES), PER_SITE)
    return X, y, sites


@pytest.fixture(scope="module")
def cv(noisy_sites: tuple[np.ndarray, np.ndarray, np.ndarray]) -> HeldOutTrees:
    """The fit's grouped CV (its fold tasks, one after another) of a 60-tree forest."""
    X, y, sites = noisy_sites
    folds = group_folds(sites, 5, seed=0)
    params = {"min_samples_leaf": 2}
    results = [held_out_fold(X, y, folds, f, params, 60, 0, ["a", "b", "c"], 1) for f in range(5)]
    held = HeldOutResults.from_folds(folds, results, ["a", "b", "c"], np.zeros(0), np.zeros(0))
    return HeldOutTrees(folds, held.trees)


def test_quantile_interval_spans_the_central_share_of_the_trees() -> None:
    trees = np.arange(101, dtype=np.float64)[None, :]
    low, high = quantile_interval(trees, 0.9)
    assert (low[0], high[0]) == (pytest.approx(5.0), pytest.approx(95.0))


def test_normal_quantile_of_ninety_percent_is_1_645() -> None:
    assert normal_quantile(0.9) == pytest.approx(1.6449, abs=1e-4)


def test_sd_interval_and_coverage_count_the_values_inside() -> None:
    low, high = sd_interval(np.zeros(4), np.ones(4), 2.0)
    assert coverage(np.array([-2.0, 1.0, 2.5, 0.0]), low, high) == 0.75


def test_calibrated_k_is_the_conformal_order_statistic() -> None:
    scores = np.arange(1.0, 100.0)  # 99 scores: the ⌈100 · 0.9⌉ = 90th smallest is 90
    assert calibrated_k(scores, 0.9) == 90.0


def test_calibrated_k_is_infinite_when_too_few_rows_support_the_level() -> None:
    assert calibrated_k(np.ones(5), 0.9) == math.inf


def test_calibration_scores_survive_a_zero_tree_spread() -> None:
    scores = calibration_scores(np.array([11.0]), np.array([10.0]), np.array([0.0]))
    assert scores[0] == pytest.approx(1.0 / (1e-6 * 10.0))  # floor: 1e-6 of the mean


def test_held_out_trees_refuse_folds_that_are_not_numbered_from_zero() -> None:
    with pytest.raises(AnalysisError, match="0 … k − 1"):
        HeldOutTrees(np.array([1, 1, 2, 2, 3, 3]), np.zeros((6, 2)))


def test_held_out_trees_refuse_predictions_of_other_rows() -> None:
    with pytest.raises(AnalysisError, match="do not match 6 rows"):
        HeldOutTrees(np.array([0, 0, 0, 1, 1, 1]), np.zeros((5, 2)))


def test_tree_quantile_intervals_cover_far_less_than_their_nominal_level(
    noisy_sites: tuple[np.ndarray, np.ndarray, np.ndarray], cv: HeldOutTrees
) -> None:
    _, y, _ = noisy_sites
    table, _ = coverage_table(y, cv, 0.9)
    # The trees disagree about the mean, not about the site and sample noise (SD ≈ 1.1).
    assert table.loc["tree quantiles", "achieved"] < 0.7


def test_calibrated_interval_achieves_its_nominal_coverage_on_held_out_sites(
    noisy_sites: tuple[np.ndarray, np.ndarray, np.ndarray], cv: HeldOutTrees
) -> None:
    _, y, _ = noisy_sites
    table, k = coverage_table(y, cv, 0.9)
    assert table.loc["mean ± k·sd, calibrated", "achieved"] == pytest.approx(0.9, abs=0.04)
    assert k > normal_quantile(0.9)  # the raw tree spread had to be widened
    assert table.loc["mean ± k·sd, calibrated", "k"] == k
