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
from tpgrid.core.intervals import IntervalCalibration
from tpgrid.core.jackknife import ij_variance
from tpgrid.core.quantiles import LeafMembership, forest_quantiles

#: The unseen-class flag of a pixel without prediction (1: a class unseen in training, 0: not).
UNSEEN_NODATA = 255
#: The AOA of a pixel without data (1: inside the area of applicability, 0: outside).
AOA_NODATA = 255
#: The flag layers, by their no-data value; every other layer is float32 with NaN.
_FLAGS = {"unseen": UNSEEN_NODATA, "aoa": AOA_NODATA}
#: What a pixel whose class the model never saw in training gets: NaN, or the forest's
#: prediction with every indicator of that categorical off.
UnseenPolicy = Literal["nan", "predict"]


# --- prediction ------------------------------------------------------------------------------

#: The layers every prediction has: mean, variance and sd over the trees, the unseen flag.
BASE_LAYERS = ("mean", "variance", "sd", "unseen")
#: Training rows × trees of per-tree predictions the standard error holds at once (float64):
#: 32 MB, so a chunk's memory stays bounded whatever its size.
_SE_BLOCK_VALUES = 4 * 2**20


def quantile_layer(q: float) -> str:
    """The layer of quantile ``q``: ``q05`` for 0.05, ``q50``, ``q2_5`` for 0.025."""
    return "q" + f"{q * 100:02g}".replace(".", "_")


@dataclass(frozen=True)
class PredictOptions:
    """What a prediction computes per pixel besides :data:`BASE_LAYERS`.

    ``quantiles``: quantile regression forest quantiles (needs the model's leaf membership);
    ``interval``: the calibrated prediction interval's ``lower`` and ``upper`` bounds (needs
    its interval calibration and training space); ``relative_width``: (Q95 − Q05) / Q50, as
    SoilGrids publishes it (needs those three quantiles); ``standard_error``: ``se``, the
    infinitesimal-jackknife standard error of the mean (needs the in-bag counts; costs more
    than the rest together); ``applicability``: ``di`` and ``aoa`` (needs the training space).
    """

    unseen: UnseenPolicy = "nan"
    quantiles: tuple[float, ...] = (0.05, 0.5, 0.95)
    interval: bool = True
    relative_width: bool = False
    standard_error: bool = False
    applicability: bool = True

    def __post_init__(self) -> None:
        q = self.quantiles
        if any(not 0 < v < 1 for v in q) or list(q) != sorted(set(q)):
            raise ValueError(f"quantiles must ascend, without repeats, inside (0, 1): got {q}")
        if len({quantile_layer(v) for v in q}) != len(q):
            raise ValueError(f"quantiles {q} closer than 0.001 apart share a layer name")
        if self.relative_width and not {0.05, 0.5, 0.95} <= set(q):
            raise ValueError("the relative width needs the quantiles 0.05, 0.5 and 0.95")

    def layers(self) -> tuple[str, ...]:
        """Every layer of an element, in the order they are stored and published."""
        return (
            *BASE_LAYERS,
            *(quantile_layer(q) for q in self.quantiles),
            *(("lower", "upper") if self.interval else ()),
            *(("relative_width",) if self.relative_width else ()),
            *(("se",) if self.standard_error else ()),
            *(("di", "aoa") if self.applicability else ()),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "unseen": self.unseen,
            "quantiles": list(self.quantiles),
            "interval": self.interval,
            "relative_width": self.relative_width,
            "standard_error": self.standard_error,
            "applicability": self.applicability,
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> PredictOptions:
        return cls(**{**doc, "quantiles": tuple(float(q) for q in doc["quantiles"])})


#: Mean, variance, sd and the unseen flag only: what the forest kernel alone gives.
MEAN_VARIANCE = PredictOptions(quantiles=(), interval=False, applicability=False)


@dataclass(frozen=True, eq=False)
class PixelModel:
    """What predicting one element's pixels needs: its forest, and the parts of its artifact
    the options ask for (:class:`PredictOptions`)."""

    forest: PackedForest
    membership: LeafMembership | None = None
    inbag: npt.NDArray[np.int32] | None = None
    space: TrainingSpace | None = None
    calibration: IntervalCalibration | None = None

    def missing(self, options: PredictOptions) -> list[str]:
        """The parts ``options`` need that this model lacks, by what they are for."""
        needs = {
            "leaf membership (quantiles)": self.membership is None
            and bool(self.quantiles(options)),
            "interval calibration (interval)": options.interval and self.calibration is None,
            "training space (DI, AOA, interval)": self.space is None
            and (options.applicability or options.interval),
            "in-bag counts (standard error)": options.standard_error and self.inbag is None,
        }
        return [part for part, missing in needs.items() if missing]

    def needed_for(self, options: PredictOptions) -> PixelModel:
        """This model without the parts ``options`` do not use: what a run sends its workers
        (the leaf membership and in-bag counts are most of a model's bytes)."""
        space_used = options.applicability or options.interval
        return PixelModel(
            self.forest,
            self.membership if self.quantiles(options) else None,
            self.inbag if options.standard_error else None,
            self.space if space_used else None,
            self.calibration if options.interval else None,
        )

    def quantiles(self, options: PredictOptions) -> tuple[float, ...]:
        """The quantiles to compute: those asked for, and those the interval starts from."""
        wanted = set(options.quantiles)
        calibration = self.calibration if options.interval else None
        if calibration is not None and calibration.method != "sd":
            wanted |= set(calibration.quantiles)
        return tuple(sorted(wanted))


@dataclass(frozen=True)
class PredictedBlock:
    """One chunk of one element: every layer of :meth:`PredictOptions.layers`, (rows, cols),
    float32 with NaN for no prediction, or uint8 flags (``unseen``: 1 = class never seen in
    training, ``aoa``: 1 = inside the area of applicability; 255 = no prediction); and the
    pixels predicted and flagged unseen."""

    layers: dict[str, npt.NDArray[Any]]
    predicted: int
    unseen: int


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
    model: PixelModel,
    X: npt.NDArray[np.float32],
    is_unseen: npt.NDArray[np.bool_],
    valid: npt.NDArray[np.bool_],
    options: PredictOptions,
) -> PredictedBlock:
    """Predict one chunk: every layer ``options`` asks for, from ``X`` and ``is_unseen`` (from
    :func:`model_input` with the ``"predict"`` policy, for the ``valid`` pixels of the chunk in
    C order), as (rows, cols) layers; pixels not ``valid`` get no prediction. Under the
    ``"nan"`` policy a pixel of an unseen class gets no prediction either, but its DI is
    computed and it is outside the AOA (no training site shares its class)."""
    missing = model.missing(options)
    if missing:
        raise ValueError(f"the model lacks what the options ask for: {', '.join(missing)}")
    X_model = X
    if options.unseen == "nan" and is_unseen.any():
        X_model = X.copy()
        X_model[is_unseen] = np.nan
    mean, variance = model.forest.predict_mean_variance(X_model)
    sd = np.sqrt(variance)
    pixels: dict[str, npt.NDArray[Any]] = {
        "mean": mean,
        "variance": variance,
        "sd": sd,
        "unseen": is_unseen.astype(np.uint8),
    }
    computed = model.quantiles(options)
    by_level: dict[float, npt.NDArray[np.float64]] = {}
    if computed:
        assert model.membership is not None  # checked by missing()
        trees = None if model.calibration is None else model.calibration.trees
        table = forest_quantiles(model.forest, model.membership, X_model, computed, trees=trees)
        by_level = {q: table[:, k] for k, q in enumerate(computed)}
    for q in options.quantiles:
        pixels[quantile_layer(q)] = by_level[q]
    di = None
    if options.applicability or options.interval:
        assert model.space is not None  # checked by missing()
        di = dissimilarity(model.space, X)
    if options.interval:
        assert model.calibration is not None
        assert di is not None
        pixels["lower"], pixels["upper"] = model.calibration.bounds(mean, sd, by_level, di)
    if options.relative_width:
        median = by_level[0.5]
        with np.errstate(divide="ignore", invalid="ignore"):
            width = (by_level[0.95] - by_level[0.05]) / median
        pixels["relative_width"] = np.where(median > 0, width, np.nan)
    if options.standard_error:
        assert model.inbag is not None  # checked by missing()
        pixels["se"] = _standard_error(model.forest, model.inbag, X_model)
    if options.applicability:
        assert model.space is not None
        assert di is not None
        pixels["di"], pixels["aoa"] = di, area_of_applicability(model.space, di, is_unseen)
    layers: dict[str, npt.NDArray[Any]] = {}
    for name in options.layers():
        flag = name in _FLAGS
        layer = np.full(
            valid.shape, _FLAGS[name] if flag else np.nan, np.uint8 if flag else np.float32
        )
        layer[valid] = pixels[name]
        layers[name] = layer
    return PredictedBlock(layers, int(np.isfinite(mean).sum()), int(is_unseen.sum()))


def _standard_error(
    forest: PackedForest, inbag: npt.NDArray[np.int32], X: npt.NDArray[np.float32]
) -> npt.NDArray[np.float64]:
    """The infinitesimal-jackknife standard error of the forest mean per row, from every
    tree's prediction in blocks of rows (per-tree predictions of a whole chunk would hold
    rows × trees doubles); a negative bias-corrected variance (the correction overshoots where
    trees agree) is a standard error of 0."""
    rows = max(1, _SE_BLOCK_VALUES // forest.n_trees)
    counts = inbag.astype(np.float64)
    se = np.empty(X.shape[0])
    for start in range(0, X.shape[0], rows):
        trees = forest.predict_trees(X[start : start + rows])
        se[start : start + rows] = np.sqrt(np.maximum(ij_variance(trees, counts), 0.0))
    return se


# --- applicability ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ApplicabilityBlock:
    """One chunk of one element: float32 DI (NaN = no data) and uint8 AOA (1 inside, 0
    outside, 255 no data), both (rows, cols)."""

    di: npt.NDArray[np.float32]
    aoa: npt.NDArray[np.uint8]


def area_of_applicability(
    space: TrainingSpace, di: npt.NDArray[np.float64], unseen: npt.NDArray[np.bool_]
) -> npt.NDArray[np.uint8]:
    """The AOA flag of pixels of DI ``di``: 1 inside, 0 outside, :data:`AOA_NODATA` where DI is
    unknown. A pixel whose class was never seen in training (``unseen``) is outside whatever
    its DI: no training site shares its class."""
    inside = (di <= space.threshold) & ~unseen
    return np.where(np.isfinite(di), inside, AOA_NODATA).astype(np.uint8)


def applicability_block(
    space: TrainingSpace,
    features: FeatureSpec,
    values: Mapping[str, npt.NDArray[Any]],
    valid: npt.NDArray[np.bool_],
) -> ApplicabilityBlock:
    """DI and AOA of one chunk. ``values`` holds a (rows, cols) array per variable of
    ``features``; only ``valid`` pixels are computed. A pixel whose class was never seen in
    training is outside the AOA whatever its DI (:func:`area_of_applicability`)."""
    X, unseen = features.matrix({name: values[name][valid] for name in features.variables})
    di = dissimilarity(space, X)
    block = ApplicabilityBlock(
        di=np.full(valid.shape, np.nan, dtype=np.float32),
        aoa=np.full(valid.shape, AOA_NODATA, dtype=np.uint8),
    )
    block.di[valid] = di
    block.aoa[valid] = area_of_applicability(space, di, unseen)
    return block
