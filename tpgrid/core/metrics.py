"""How well predictions match observations: the fit metrics of the paper, as pure functions.

The metrics of the cross-validations (R², RMSE, MAE, bias, Lin's CCC) and the Piñeiro line of
the observed-vs-predicted plots live together here, so the fit that records them and the report
that draws them compute them one way. Observed and predicted values are in mg/kg.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from tpgrid.errors import AnalysisError


def r2_score(observed: npt.ArrayLike, predicted: npt.ArrayLike) -> float:
    """Coefficient of determination ``1 − SS_res / SS_tot`` (can be negative)."""
    obs, pred = _pair(observed, predicted)
    return 1.0 - float(np.sum((obs - pred) ** 2)) / float(np.sum((obs - obs.mean()) ** 2))


def rmse(observed: npt.ArrayLike, predicted: npt.ArrayLike) -> float:
    """Root mean squared error, in the units of the data."""
    obs, pred = _pair(observed, predicted)
    return float(np.sqrt(np.mean((pred - obs) ** 2)))


def mae(observed: npt.ArrayLike, predicted: npt.ArrayLike) -> float:
    """Mean absolute error, in the units of the data."""
    obs, pred = _pair(observed, predicted)
    return float(np.mean(np.abs(pred - obs)))


def bias(observed: npt.ArrayLike, predicted: npt.ArrayLike) -> float:
    """Mean of ``predicted − observed``: positive when the model over-predicts."""
    obs, pred = _pair(observed, predicted)
    return float(np.mean(pred - obs))


def lins_ccc(observed: npt.ArrayLike, predicted: npt.ArrayLike) -> float:
    """Lin's concordance correlation coefficient (agreement with the 1:1 line):
    ``2·cov / (var_obs + var_pred + (mean_obs − mean_pred)²)``, population moments."""
    obs, pred = _pair(observed, predicted)
    covariance = float(np.mean((obs - obs.mean()) * (pred - pred.mean())))
    spread = float(obs.var() + pred.var() + (obs.mean() - pred.mean()) ** 2)
    return 2.0 * covariance / spread


def cv_metrics(observed: npt.ArrayLike, predicted: npt.ArrayLike) -> dict[str, float]:
    """R², RMSE, MAE, bias and Lin's CCC of pooled out-of-fold predictions."""
    return {
        "r2": r2_score(observed, predicted),
        "rmse": rmse(observed, predicted),
        "mae": mae(observed, predicted),
        "bias": bias(observed, predicted),
        "ccc": lins_ccc(observed, predicted),
        "n": int(np.size(observed)),
    }


def _pair(
    observed: npt.ArrayLike, predicted: npt.ArrayLike
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    obs = np.asarray(observed, dtype=np.float64)
    pred = np.asarray(predicted, dtype=np.float64)
    if obs.shape != pred.shape or obs.ndim != 1 or obs.size < 2:
        raise ValueError(f"need two 1-D arrays of equal length ≥ 2, got {obs.shape}, {pred.shape}")
    return obs, pred


def pineiro_line(observed: npt.ArrayLike, predicted: npt.ArrayLike) -> tuple[float, float]:
    """Slope and intercept of *observed regressed on predicted* (Piñeiro et al. 2008): the
    line of an observed-vs-predicted plot with predicted on x; (1, 0) for unbiased predictions.
    Rows with a NaN are ignored."""
    obs = np.asarray(observed, dtype=np.float64)
    pred = np.asarray(predicted, dtype=np.float64)
    keep = np.isfinite(obs) & np.isfinite(pred)
    if keep.sum() < 3:
        raise AnalysisError(f"{int(keep.sum())} paired values: a line needs at least 3")
    slope, intercept = np.polyfit(pred[keep], obs[keep], 1)
    return float(slope), float(intercept)
