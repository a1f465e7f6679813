"""The interval a calibration builds per pixel, from its own arithmetic."""

from __future__ import annotations

import numpy as np
import pytest

from tpgrid.core.intervals import (
    HeldOut,
    IntervalCalibration,
    IntervalMethod,
    calibrate,
    conformal_quantile,
    coverage_summary,
    cross_conformal,
    di_bin_edges,
    interval_of,
    interval_scores,
)

SD = IntervalCalibration(0.9, "sd", (0.05, 0.95), (0.5, 1.0), (1.2, 1.8, 3.0), (40, 40, 30))
QUANTILE = IntervalCalibration(0.9, "quantile", (0.05, 0.95), (0.5,), (-1.0, 4.0), (60, 50))


def test_bins_are_closed_above_and_unknown_di_is_the_last_bin() -> None:
    di = np.array([0.0, 0.5, 0.50001, 1.0, 7.0, np.nan])
    np.testing.assert_array_equal(SD.bin_of(di), [0, 0, 1, 1, 2, 2])


def test_sd_interval_is_mean_plus_minus_k_sd_of_its_bin() -> None:
    mean, sd = np.array([10.0, 10.0, 10.0, np.nan]), np.array([2.0, 2.0, 2.0, 1.0])
    lower, upper = SD.bounds(mean, sd, {}, np.array([0.1, 0.9, 3.0, 0.1]))
    np.testing.assert_allclose(lower, [7.6, 6.4, 4.0, np.nan])
    np.testing.assert_allclose(upper, [12.4, 13.6, 16.0, np.nan])


def test_quantile_interval_widens_the_forest_quantiles_and_never_goes_below_zero() -> None:
    q = {0.05: np.array([5.0, 5.0, 1.0]), 0.95: np.array([9.0, 9.0, 2.0])}
    lower, upper = QUANTILE.bounds(np.zeros(3), np.zeros(3), q, np.array([0.2, np.nan, 0.8]))
    np.testing.assert_array_equal(lower, [6.0, 1.0, 0.0])
    np.testing.assert_array_equal(upper, [8.0, 13.0, 6.0])


def test_json_round_trip_and_refusals() -> None:
    assert IntervalCalibration.from_json(QUANTILE.to_json()) == QUANTILE
    with pytest.raises(ValueError, match="not an interval calibration"):
        IntervalCalibration.from_json({"level": 0.9})
    with pytest.raises(ValueError, match="must ascend"):
        IntervalCalibration(0.9, "sd", (0.05, 0.95), (1.0, 0.5), (1, 2, 3), (1, 1, 1))
    with pytest.raises(ValueError, match="3 DI bins"):
        IntervalCalibration(0.9, "sd", (0.05, 0.95), (0.5, 1.0), (1, 2), (1, 1))
    with pytest.raises(ValueError, match="finite"):
        IntervalCalibration(0.9, "sd", (0.05, 0.95), (), (np.inf,), (3,))


# --- the calibration -------------------------------------------------------------------------


def held_out(
    rng: np.random.Generator, n_sites: int, scale_of_di: float = 2.0, n_folds: int = 10
) -> HeldOut:
    """Three rows per site, exchangeable across sites: y ~ N(mean, (1 + scale_of_di·di)²)
    with the tree sd 1 everywhere and the forest's 5–95 % quantiles mean ∓ 1, so the
    uncalibrated intervals are too narrow, the more so the higher the DI."""
    sites = np.repeat(np.arange(n_sites), 3)
    di = np.repeat(rng.uniform(0, 1, n_sites), 3)
    mean = rng.uniform(50, 100, sites.size)
    y = mean + (1 + scale_of_di * di) * rng.standard_normal(sites.size)
    folds = np.repeat(rng.permutation(n_sites) % n_folds, 3)
    return HeldOut("grouped", folds, sites, y, mean, np.ones(sites.size), mean - 1, mean + 1, di)


def test_conformal_rank_is_the_ceiling_of_n_plus_one_times_level() -> None:
    scores = np.arange(10, 0, -1) / 10.0  # 1.0 … 0.1, unsorted
    assert conformal_quantile(scores, 0.9) == 1.0  # ⌈11·0.9⌉ = 10th of 10
    assert conformal_quantile(scores, 0.8) == 0.9  # ⌈8.8⌉ = 9th
    assert conformal_quantile(scores, 0.5) == 0.6  # ⌈5.5⌉ = 6th
    # (29 + 1)·0.9 is 27.000000000000004 in floating point: still the 27th.
    assert conformal_quantile(np.arange(1.0, 30.0), 0.9) == 27.0
    # Too few scores for any guarantee: the largest.
    assert conformal_quantile(np.array([3.0, 1.0]), 0.9) == 3.0


def test_di_bins_hold_at_least_30_sites_each_and_at_most_four() -> None:
    rng = np.random.default_rng(1)
    assert di_bin_edges(rng.uniform(size=59), np.arange(59)) == ()
    for n_sites, n_bins in ((60, 2), (119, 3), (120, 4), (600, 4)):
        di = rng.uniform(size=n_sites)
        edges = di_bin_edges(np.repeat(di, 3), np.repeat(np.arange(n_sites), 3))
        assert len(edges) + 1 == n_bins
        counts = np.bincount(np.searchsorted(edges, di, side="left"), minlength=n_bins)
        assert counts.min() >= 30


def test_di_bins_count_sites_not_rows_or_schemes() -> None:
    # 40 sites seen by two schemes (80 DI values): still fewer than 2 × 30 sites, one bin.
    di = np.random.default_rng(2).uniform(size=80)
    assert di_bin_edges(di, np.tile(np.arange(40), 2)) == ()


def test_calibration_covers_new_exchangeable_rows_at_the_nominal_rate_in_every_bin() -> None:
    rng = np.random.default_rng(3)
    calibration = calibrate("sd", 0.9, (0.05, 0.95), [held_out(rng, 1200)])
    assert calibration.n_bins == 4
    assert min(calibration.n_sites) >= 300
    # The spread grows with DI, so must the widening.
    assert np.all(np.diff(calibration.widening) > 0)
    new = held_out(rng, 20000)
    lower, upper = interval_of(calibration, new)
    inside = (new.observed >= lower) & (new.observed <= upper)
    bins = calibration.bin_of(new.di)
    for b in range(calibration.n_bins):
        # ≥ 900 calibration rows per bin: its coverage is 0.9 within ~3 binomial SDs.
        assert abs(inside[bins == b].mean() - 0.9) < 3 * np.sqrt(0.09 / 900), b


def test_one_bin_would_undercover_the_most_dissimilar_sites() -> None:
    rng = np.random.default_rng(4)
    rows = held_out(rng, 1200)
    binned = calibrate("sd", 0.9, (0.05, 0.95), [rows])
    # The calibration over all DI at once: the widening of an average site.
    whole = conformal_quantile(interval_scores("sd", rows), 0.9)
    flat = IntervalCalibration(0.9, "sd", (0.05, 0.95), (), (whole,), (1200,))
    assert binned.widening[-1] > whole
    new = held_out(rng, 20000)
    high = new.di > binned.di_edges[-1]
    for calibration, covered in ((binned, lambda c: c > 0.87), (flat, lambda c: c < 0.85)):
        lower, upper = interval_of(calibration, new)
        assert covered(((new.observed >= lower) & (new.observed <= upper))[high].mean())


@pytest.mark.parametrize("method", ["quantile", "quantile_scaled", "sd"])
def test_cross_conformal_coverage_is_nominal_and_each_fold_is_calibrated_without_its_sites(
    method: IntervalMethod,
) -> None:
    rng = np.random.default_rng(5)
    rows = held_out(rng, 600)
    lower, upper = cross_conformal(method, 0.9, (0.05, 0.95), [rows], rows)
    summary = coverage_summary(
        rows, lower, upper, calibrate(method, 0.9, (0.05, 0.95), [rows]).di_edges
    )
    assert abs(summary["overall"]["coverage"] - 0.9) < 3 * np.sqrt(0.09 / 1800)
    assert summary["overall"]["n_sites"] == 600
    assert sum(b["n_sites"] for b in summary["bins"]) == 600
    # Fold 0's interval is the calibration of the other folds' rows only.
    fold = rows.folds == 0
    others = calibrate(method, 0.9, (0.05, 0.95), [rows.rows(~fold)])
    expected = interval_of(others, rows.rows(fold))
    np.testing.assert_array_equal(lower[fold], expected[0])
    np.testing.assert_array_equal(upper[fold], expected[1])


def test_scaled_quantile_interval_widens_by_c_times_the_forest_width() -> None:
    scaled = IntervalCalibration(0.9, "quantile_scaled", (0.05, 0.95), (), (0.5,), (60,))
    q = {0.05: np.array([4.0, 10.0]), 0.95: np.array([8.0, 10.0])}
    lower, upper = scaled.bounds(np.array([6.0, 10.0]), np.zeros(2), q, np.zeros(2))
    # Width 4 → ± 2; width 0 → the floor 1e-6 of the mean, ± 5e-6.
    np.testing.assert_allclose(lower, [2.0, 10.0 - 5e-6])
    np.testing.assert_allclose(upper, [10.0, 10.0 + 5e-6])
    rows = HeldOut(
        "grouped",
        np.zeros(2, dtype=np.int64),
        np.arange(2),
        np.array([11.0, 10.0]),
        np.array([6.0, 10.0]),
        np.ones(2),
        np.array([4.0, 10.0]),
        np.array([8.0, 10.0]),
        np.zeros(2),
    )
    np.testing.assert_allclose(interval_scores("quantile_scaled", rows), [0.75, 0.0])
    np.testing.assert_allclose(interval_scores("quantile", rows), [3.0, 0.0])
    np.testing.assert_allclose(interval_scores("sd", rows), [5.0, 0.0])
