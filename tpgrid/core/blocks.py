"""One chunk of a map layer, computed from one chunk of covariates: numpy in, numpy out.

A chunk engine task reads a chunk's covariates from the cube, calls these per element and
writes what they return (layout: :mod:`tpgrid.outputs`, :mod:`tpgrid.aoa`). Only the valid
pixels (inside the area of interest, every covariate present) are computed; the others get the
layer's no-data value.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from tpgrid.core.applicability import TrainingSpace, dissimilarity
from tpgrid.core.features import FeatureSpec
from tpgrid.core.forest import PackedForest

#: The unseen-class flag of a pixel without prediction (1: a class unseen in training, 0: not).
UNSEEN_NODATA = 255
#: The AOA of a pixel without data (1: inside the area of applicability, 0: outside).
AOA_NODATA = 255
#: What a pixel whose class the model never saw in training gets: NaN, or the forest's
#: prediction with every indicator of that categorical off.
UnseenPolicy = Literal["nan", "predict"]


# --- prediction ------------------------------------------------------------------------------


@dataclass(frozen=True)
class PredictedBlock:
    """One chunk of one element: float32 mean, variance, sd (NaN = no prediction) and the uint8
    unseen flag (1 = class never seen in training, 255 = no prediction), all (rows, cols)."""

    mean: npt.NDArray[np.float32]
    variance: npt.NDArray[np.float32]
    sd: npt.NDArray[np.float32]
    unseen: npt.NDArray[np.uint8]


def model_input(
    features: FeatureSpec, values: Mapping[str, npt.NDArray[Any]], unseen: UnseenPolicy
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]]:
    """``X`` and the unseen-class flag for the pixels in ``values``; rows of unseen classes are
    NaN under the ``"nan"`` policy (the kernel skips NaN rows: no time spent on them)."""
    X, is_unseen = features.matrix(values)
    if unseen == "nan":
        X[is_unseen] = np.nan
    return X, is_unseen


def predict_block(
    forest: PackedForest,
    X: npt.NDArray[np.float32],
    is_unseen: npt.NDArray[np.bool_],
    valid: npt.NDArray[np.bool_],
) -> PredictedBlock:
    """Predict one chunk: the forest over ``X`` and ``is_unseen`` (from :func:`model_input`,
    for the ``valid`` pixels of the chunk in C order), as (rows, cols) layers; pixels not
    ``valid`` get no prediction."""
    mean, variance = forest.predict_mean_variance(X)
    out = PredictedBlock(
        mean=np.full(valid.shape, np.nan, dtype=np.float32),
        variance=np.full(valid.shape, np.nan, dtype=np.float32),
        sd=np.full(valid.shape, np.nan, dtype=np.float32),
        unseen=np.full(valid.shape, UNSEEN_NODATA, dtype=np.uint8),
    )
    out.mean[valid] = mean
    out.variance[valid] = variance
    out.sd[valid] = np.sqrt(variance)
    out.unseen[valid] = is_unseen
    return out


# --- applicability ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ApplicabilityBlock:
    """One chunk of one element: float32 DI (NaN = no data) and uint8 AOA (1 inside, 0
    outside, 255 no data), both (rows, cols)."""

    di: npt.NDArray[np.float32]
    aoa: npt.NDArray[np.uint8]


def applicability_block(
    space: TrainingSpace,
    features: FeatureSpec,
    values: Mapping[str, npt.NDArray[Any]],
    valid: npt.NDArray[np.bool_],
) -> ApplicabilityBlock:
    """DI and AOA of one chunk. ``values`` holds a (rows, cols) array per variable of
    ``features``; only ``valid`` pixels are computed. A pixel whose class was never seen in
    training is outside the AOA whatever its DI: no training site shares its class."""
    X, unseen = features.matrix({name: values[name][valid] for name in features.variables})
    di = dissimilarity(space, X)
    inside = (di <= space.threshold) & ~unseen
    block = ApplicabilityBlock(
        di=np.full(valid.shape, np.nan, dtype=np.float32),
        aoa=np.full(valid.shape, AOA_NODATA, dtype=np.uint8),
    )
    block.di[valid] = di
    block.aoa[valid] = np.where(np.isfinite(di), inside, AOA_NODATA)
    return block
