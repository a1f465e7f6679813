"""Fit metrics and the Piñeiro line, checked against hand-worked cases."""

from __future__ import annotations

import numpy as np
import pytest

from tpgrid.core.metrics import bias, lins_ccc, mae, pineiro_line, r2_score, rmse

# --- metrics by hand ------------------------------------------------------------------------

OBSERVED = [1.0, 2.0, 3.0, 4.0]
PREDICTED = [2.0, 2.0, 3.0, 5.0]  # errors +1, 0, 0, +1


def test_r2_rmse_mae_and_bias_by_hand() -> None:
    assert r2_score(OBSERVED, PREDICTED) == pytest.approx(1 - 2 / 5)  # SS_res 2, SS_tot 5
    assert rmse(OBSERVED, PREDICTED) == pytest.approx(np.sqrt(0.5))
    assert mae(OBSERVED, PREDICTED) == pytest.approx(0.5)
    assert bias(OBSERVED, PREDICTED) == pytest.approx(0.5)  # over-prediction is positive


def test_lins_ccc_by_hand() -> None:
    # means 2.5 and 3; population variances 1.25 and 1.5; covariance 1.25
    assert lins_ccc(OBSERVED, PREDICTED) == pytest.approx(2 * 1.25 / (1.25 + 1.5 + 0.25))


def test_ccc_penalises_departures_from_the_one_to_one_line_that_correlation_ignores() -> None:
    x = np.arange(10.0)
    assert lins_ccc(x, x) == pytest.approx(1.0)
    assert np.corrcoef(x, 2 * x + 3)[0, 1] == pytest.approx(1.0)
    assert lins_ccc(x, 2 * x + 3) < 0.5


def test_metrics_refuse_unpaired_arrays() -> None:
    with pytest.raises(ValueError, match="equal length"):
        rmse([1.0, 2.0, 3.0], [1.0, 2.0])


# --- Piñeiro line ---------------------------------------------------------------------------------


def test_pineiro_line_regresses_observed_on_predicted() -> None:
    predicted = np.array([1.0, 2.0, 3.0, 4.0, np.nan])
    observed = 2.0 * predicted + 1.0
    slope, intercept = pineiro_line(observed, predicted)
    assert (slope, intercept) == (pytest.approx(2.0), pytest.approx(1.0))
