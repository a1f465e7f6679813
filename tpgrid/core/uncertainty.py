"""Prediction intervals from the spread of a forest's trees, and how often they hold.

The map's uncertainty layer is the variance between the trees' predictions. That spread says
how much the bootstrap forests disagree about the *mean* at a pixel, not how far a new
measurement may fall from it, so an interval built from it (tree quantiles, or mean ± z·sd)
need not cover its nominal share of new sites. This module measures that: every site is
predicted by forests of a grouped cross-validation that did not see it (:class:`HeldOutTrees`),
and the intervals' achieved coverage is set against their nominal level. It also calibrates
the interval ``mean ± k·sd`` so that it holds: ``k`` is the ``level`` quantile of the held-out
scores ``|y − mean| / sd`` (split-conformal with the tree sd as scale), checked fold by fold
with ``k`` taken from the other folds only (cross-conformal), so the reported coverage is not
the one ``k`` was tuned on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pandas as pd

from tpgrid.core.arrays import F64
from tpgrid.core.intervals import conformal_quantile, conformal_rank, floored_scale
from tpgrid.errors import AnalysisError

#: Nominal level of the intervals the report shows.
LEVEL = 0.9
#: Interval methods of :func:`coverage_table`.
TREE_QUANTILES = "tree quantiles"
NORMAL_SD = "mean ± z·sd"
CALIBRATED_SD = "mean ± k·sd, calibrated"


@dataclass(frozen=True, eq=False)
class HeldOutTrees:
    """Every tree's prediction of each row by a forest of a grouped cross-validation that did
    not see the row: ``trees`` (n_rows, n_trees), mg/kg; ``folds`` numbers the rows 0 … k − 1,
    the rows of fold ``f`` predicted by the forest fitted without them (the fit computes these
    with its grouped CV: ``tpgrid.fit.heldout``)."""

    folds: npt.NDArray[np.intp]
    trees: F64

    def __post_init__(self) -> None:
        n_folds = int(self.folds.max()) + 1 if self.folds.size else 0
        if n_folds < 2 or set(np.unique(self.folds).tolist()) != set(range(n_folds)):
            raise AnalysisError(f"folds must number the rows 0 … k − 1 with k ≥ 2, got {n_folds}")
        if self.trees.ndim != 2 or self.trees.shape[0] != self.folds.size:
            raise AnalysisError(
                f"held-out tree predictions of shape {self.trees.shape} do not match "
                f"{self.folds.size} rows"
            )

    @property
    def mean(self) -> F64:
        """Out-of-fold prediction (mean over the trees), mg/kg."""
        result: F64 = self.trees.mean(axis=1)
        return result

    @property
    def sd(self) -> F64:
        """Out-of-fold spread between the trees (population SD), mg/kg."""
        result: F64 = self.trees.std(axis=1)
        return result


# --- intervals -------------------------------------------------------------------------------


def quantile_interval(trees: F64, level: float = LEVEL) -> tuple[F64, F64]:
    """The central ``level`` interval of the trees' predictions per row (e.g. 5–95 %)."""
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(trees, [tail, 1.0 - tail], axis=1)
    return low, high


def normal_quantile(level: float = LEVEL) -> float:
    """``z`` of the central ``level`` interval of a normal distribution (1.645 for 90 %)."""
    from scipy import stats  # here: scipy.stats costs a quarter second to import

    return float(stats.norm.ppf(0.5 + level / 2.0))


def sd_interval(mean: F64, sd: F64, k: float) -> tuple[F64, F64]:
    """``mean ± k·sd``."""
    return mean - k * sd, mean + k * sd


def coverage(observed: npt.ArrayLike, low: F64, high: F64) -> float:
    """Share of ``observed`` inside ``[low, high]``."""
    y = np.asarray(observed, dtype=np.float64)
    return float(np.mean((y >= low) & (y <= high)))


def calibration_scores(observed: npt.ArrayLike, mean: F64, sd: F64) -> F64:
    """``|y − mean| / sd`` per row: how many tree SDs the observation lies from the mean."""
    result: F64 = np.abs(np.asarray(observed, dtype=np.float64) - mean) / floored_scale(sd, mean)
    return result


def calibrated_k(scores: F64, level: float = LEVEL) -> float:
    """The conformal ``k``: the ⌈(n + 1)·level⌉-th smallest score (finite-sample guarantee of
    at least ``level`` coverage for an exchangeable new site); ``inf`` when n is too small."""
    if conformal_rank(scores.size, level) > scores.size:
        return math.inf
    return conformal_quantile(scores, level)


@dataclass(frozen=True)
class CoverageRow:
    """One interval method's nominal and achieved coverage on held-out sites."""

    method: str
    nominal: float
    achieved: float
    mean_width: float  # mg/kg
    k: float  # multiplier of the tree SD (NaN for tree quantiles)


def coverage_table(
    observed: npt.ArrayLike, cv: HeldOutTrees, level: float = LEVEL
) -> tuple[pd.DataFrame, float]:
    """Achieved coverage of three ``level`` intervals on the held-out rows of ``cv``.

    - ``tree quantiles``: the central ``level`` range of the trees' predictions;
    - ``mean ± z·sd``: ``z`` of a normal distribution (1.645 for 90 %);
    - ``mean ± k·sd, calibrated``: ``k`` from :func:`calibrated_k` on the other folds' rows.

    Returns the table (one row per method) and ``k`` calibrated on all rows, the multiplier
    to use for the map's interval ``mean ± k·sd``.
    """
    y = np.asarray(observed, dtype=np.float64)
    mean, sd = cv.mean, cv.sd
    scores = calibration_scores(y, mean, sd)
    rows: list[CoverageRow] = []
    low, high = quantile_interval(cv.trees, level)
    rows.append(
        CoverageRow(TREE_QUANTILES, level, coverage(y, low, high), _width(low, high), math.nan)
    )
    z = normal_quantile(level)
    low, high = sd_interval(mean, sd, z)
    rows.append(CoverageRow(NORMAL_SD, level, coverage(y, low, high), _width(low, high), z))
    low, high = np.empty_like(y), np.empty_like(y)
    for fold in np.unique(cv.folds):
        held = cv.folds == fold
        k_fold = calibrated_k(scores[~held], level)
        low[held], high[held] = sd_interval(mean[held], sd[held], k_fold)
    k_all = calibrated_k(scores, level)
    rows.append(
        CoverageRow(
            CALIBRATED_SD,
            level,
            coverage(y, low, high),
            _width(low, high),
            k_all,
        )
    )
    return pd.DataFrame([row.__dict__ for row in rows]).set_index("method"), k_all


def _width(low: F64, high: F64) -> float:
    return float(np.mean(high - low))
