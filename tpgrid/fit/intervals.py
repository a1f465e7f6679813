"""A model's training space and its calibrated prediction interval, from the CVs' held-out
results (:mod:`tpgrid.fit.heldout`), made once at fit time and stored with the model.

The training space (DI, AOA) weights the predictors by their held-out %IncMSE; the DI of every
held-out row, against the training sites of the fold forest that predicted it, is computed in
that same space for the grouped and the spatial CV. The interval is calibrated by DI bin
(:func:`tpgrid.core.intervals.calibrate`) on the held-out rows of :data:`CALIBRATED_ON`, by
:data:`METHOD`; the record states its cross-conformal coverage per scheme and bin, and that of
every other method for comparison. Why this method and these schemes: docs/uncertainty.md.
"""

from __future__ import annotations

import logging
from typing import Any, get_args

import numpy as np
import numpy.typing as npt

from tpgrid.core.applicability import TrainingSpace, column_weights, training_space
from tpgrid.core.arrays import F64, I64
from tpgrid.core.explain import importance_table
from tpgrid.core.features import FeatureSpec
from tpgrid.core.intervals import (
    HeldOut,
    IntervalCalibration,
    IntervalMethod,
    calibrate,
    coverage_summary,
    cross_conformal,
)
from tpgrid.errors import AnalysisError
from tpgrid.fit.heldout import HeldOutResults

log = logging.getLogger(__name__)

#: The published interval's method and the CV schemes whose held-out rows calibrate it,
#: chosen by cross-conformal coverage on the full synthetic plateau (docs/uncertainty.md).
METHOD: IntervalMethod = "quantile_scaled"
CALIBRATED_ON: tuple[str, ...] = ("grouped", "spatial")


def held_out_incmse(held: HeldOutResults, column_variables: tuple[str, ...]) -> dict[str, float]:
    """%IncMSE of every predictor on the grouped CV's held-out rows, pooled over the folds."""
    table = importance_table(
        float(held.importance_base_sse.sum()), held.importance_sse.sum(axis=0), column_variables
    )
    return {str(name): float(value) for name, value in table["incmse"].items()}


def applicability(
    held: HeldOutResults, X: npt.NDArray[np.float32], sites: npt.ArrayLike, features: FeatureSpec
) -> tuple[TrainingSpace, HeldOutResults]:
    """The model's training space (DI and AOA of its maps; its ``train_di`` the grouped CV's)
    and ``held`` with every row's grouped and spatial DI in that space's weighting."""
    try:
        incmse = held_out_incmse(held, features.column_variables)
        weights = column_weights(incmse, features.column_variables)
    except AnalysisError as exc:
        # No predictor helped on held-out sites: every one counts alike in the DI.
        log.warning("DI weights: %s; all predictors weighted alike", exc)
        weights = np.ones(len(features.columns))
    labels = np.asarray(sites)
    _, site_index = np.unique(labels, return_inverse=True)
    space = training_space(X, labels, held.folds, weights, features)
    spatial = None
    if held.has_spatial:
        spatial_space = training_space(X, labels, held.spatial_folds, weights, features)
        spatial = spatial_space.train_di[site_index.ravel()]
    return space, held.with_di(space.train_di[site_index.ravel()], spatial)


def interval_calibration(
    held: HeldOutResults,
    observed: F64,
    sites: npt.ArrayLike,
    level: float,
    method: IntervalMethod = METHOD,
    calibrated_on: tuple[str, ...] = CALIBRATED_ON,
) -> tuple[IntervalCalibration, dict[str, Any]]:
    """The ``level`` interval's calibration on all held-out rows of ``calibrated_on`` (those
    the fit ran), and its record (``model.record["intervals"]``): cross-conformal coverage and
    mean width per scheme, overall and per DI bin of the calibration, and per method."""
    schemes = scheme_held_out(held, observed, sites)
    used = [schemes[s] for s in calibrated_on if s in schemes]
    quantiles = (float(held.quantile_levels[0]), float(held.quantile_levels[-1]))
    calibration = calibrate(method, level, quantiles, used)
    coverage: dict[str, Any] = {}
    compared: dict[str, dict[str, Any]] = {}
    for other in get_args(IntervalMethod):
        compared[other] = {}
        for scheme, rows in schemes.items():
            lower, upper = cross_conformal(other, level, quantiles, used, rows)
            summary = coverage_summary(rows, lower, upper, calibration.di_edges)
            compared[other][scheme] = {
                key: summary["overall"][key] for key in ("coverage", "mean_width")
            }
            if other == method:
                coverage[scheme] = summary
    record = {
        "level": level,
        "method": method,
        "quantiles": list(quantiles),
        "di_edges": list(calibration.di_edges),
        "widening": list(calibration.widening),
        "calibrated_on": [s.scheme for s in used],
        "evaluation": (
            "cross-conformal: the rows of a fold are covered by a calibration without that "
            "fold's sites in every scheme calibrated on"
        ),
        "coverage": coverage,
        "compared": compared,
    }
    return calibration, record


def scheme_held_out(
    held: HeldOutResults, observed: F64, sites: npt.ArrayLike
) -> dict[str, HeldOut]:
    """Every scheme's held-out rows the fit has (grouped; spatial when it ran)."""
    _, index = np.unique(np.asarray(sites), return_inverse=True)
    site_index: I64 = index.ravel().astype(np.int64)
    return {
        scheme: held.held_out(scheme, observed, site_index)
        for scheme in ("grouped", "spatial")
        if scheme == "grouped" or held.has_spatial
    }
