"""The interval a calibration builds per pixel, from its own arithmetic."""

from __future__ import annotations

import numpy as np
import pytest

from tpgrid.core.intervals import IntervalCalibration

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
