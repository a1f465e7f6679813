"""Where a model may be trusted: the dissimilarity index and the area of applicability (Meyer &
Pebesma 2021), numpy in, numpy out.

The dissimilarity index (DI) of a pixel is the distance, in the space of the model's
predictors, from the pixel to the nearest training site, divided by the mean distance between
training sites. Predictors are standardized with the training mean and SD and weighted by their
importance (so a predictor the model ignores cannot make a pixel look foreign). The threshold
is the upper whisker of the training sites' own DI, each computed against the sites of the
*other* cross-validation folds (grouped folds: a site's triplicates never count as its
neighbours); the area of applicability (AOA) is DI ≤ threshold.

Training points are one per site: a site's triplicates share one pixel, hence one predictor
vector, and adding it three times would only add zero distances to the mean.

A map's nearest site is found by :func:`_nearest_distance`, exact, not by a k-d tree: in ~30
weighted dimensions a k-d tree prunes little and visits most of the ~300 sites per pixel.
Neighbouring pixels have nearly the same predictors, so the previous pixel's nearest site is a
close first guess ``g``; the sites are then visited in order of their distance from ``g`` and
the search stops at the first site farther from ``g`` than ``d(x, g) + best`` (no later site
can be nearer, by the triangle inequality), each distance summed with the heaviest weights
first and abandoned once it exceeds the best so far. On the full plateau this is 5-10x faster
than the k-d tree for the same distances.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numba
import numpy as np
import numpy.typing as npt
from scipy.spatial import cKDTree
from scipy.spatial.distance import cdist, pdist

from tpgrid.core.arrays import F64
from tpgrid.core.features import FeatureSpec
from tpgrid.errors import AnalysisError

#: Whisker length of the DI threshold, in interquartile ranges above the upper quartile.
WHISKER_IQR = 1.5
#: The array fields of :class:`TrainingSpace`, and the format of its ``to_arrays``.
_ARRAYS = ("centre", "scale", "weights", "points", "train_di")
_FORMAT_VERSION = 1


@dataclass(frozen=True, eq=False)
class TrainingSpace:
    """The training sites in weighted, standardized predictor space.

    ``centre``/``scale`` (per column of ``X``, the predictors' units) standardize a row;
    ``weights`` (0–1, the largest 1) multiply it; ``points`` (n_sites, n_columns) are the sites
    so transformed; ``mean_distance`` is the mean distance between two sites there; ``train_di``
    the cross-validated DI of every site and ``threshold`` the AOA's upper bound on DI.
    """

    columns: tuple[str, ...]
    centre: F64
    scale: F64
    weights: F64
    points: F64
    mean_distance: float
    train_di: F64
    threshold: float

    def transform(self, X: npt.ArrayLike) -> F64:
        """Rows of ``X`` (predictor units) in the weighted, standardized space."""
        result: F64 = (np.asarray(X, dtype=np.float64) - self.centre) / self.scale * self.weights
        return result

    @cached_property
    def search(self) -> tuple[npt.NDArray[np.intp], F64, npt.NDArray[np.intp], F64]:
        """What :func:`_nearest_distance` searches: the weighted columns, heaviest first (a
        column of weight 0 adds exactly 0 to every distance), the points in those columns, and
        per point every point in order of distance from it, with those distances."""
        order = np.argsort(-self.weights, kind="stable")
        order = order[self.weights[order] > 0]
        points = np.ascontiguousarray(self.points[:, order])
        between = cdist(points, points)
        neighbours = np.argsort(between, axis=1, kind="stable")
        return order, points, neighbours, np.take_along_axis(between, neighbours, axis=1)

    def to_arrays(self) -> dict[str, npt.NDArray[Any]]:
        """The space as plain arrays, for ``np.savez`` (column names as unicode: no pickle)."""
        return {
            "format_version": np.array(_FORMAT_VERSION, dtype=np.int64),
            "columns": np.array(self.columns, dtype=np.str_),
            **{name: np.asarray(getattr(self, name), dtype=np.float64) for name in _ARRAYS},
            "mean_distance": np.array(self.mean_distance, dtype=np.float64),
            "threshold": np.array(self.threshold, dtype=np.float64),
        }

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, npt.NDArray[Any]]) -> TrainingSpace:
        """Rebuild from :meth:`to_arrays` output; ``ValueError`` when it is not that."""
        missing = {"format_version", "columns", "mean_distance", "threshold", *_ARRAYS} - set(
            arrays
        )
        if missing:
            raise ValueError(f"not a training space: missing arrays {sorted(missing)}")
        if int(arrays["format_version"]) != _FORMAT_VERSION:
            raise ValueError(f"training space format {int(arrays['format_version'])}")
        return cls(
            columns=tuple(str(c) for c in arrays["columns"]),
            **{name: np.asarray(arrays[name], dtype=np.float64) for name in _ARRAYS},
            mean_distance=float(arrays["mean_distance"]),
            threshold=float(arrays["threshold"]),
        )

    def content_hash(self) -> str:
        """SHA-256 over every array and number, to name the scattered copy on the cluster."""
        digest = hashlib.sha256(repr((self.columns, self.mean_distance, self.threshold)).encode())
        for array in (self.centre, self.scale, self.weights, self.points, self.train_di):
            digest.update(np.ascontiguousarray(array).tobytes())
        return digest.hexdigest()


def column_weights(importance: Mapping[str, float], column_variables: Sequence[str]) -> F64:
    """Per column of ``X``, its predictor's importance scaled so the largest is 1; negative
    importances (shuffling helped) count as 0. Every indicator of a categorical gets the
    categorical's weight."""
    raw = np.array([max(float(importance.get(v, 0.0)), 0.0) for v in column_variables])
    if raw.max(initial=0.0) <= 0:
        raise AnalysisError("no predictor has a positive importance: nothing to weight by")
    result: F64 = raw / raw.max()
    return result


def training_space(
    X: npt.ArrayLike,
    sites: npt.ArrayLike,
    folds: npt.ArrayLike,
    weights: npt.ArrayLike,
    features: FeatureSpec,
) -> TrainingSpace:
    """Reduce the training rows (columns of ``features``) to one point per site, standardize
    and weight them, then derive the mean inter-site distance, the cross-validated DI of every
    site and the AOA threshold.

    ``sites`` and ``folds`` label every row of ``X``; a site's rows must share one fold.
    Continuous columns are standardized with the sites' mean and SD. Indicator columns stay
    0/1: standardized by its SD, the indicator of a rare class (one forest site: SD 0.09) would
    put that site ten units from all others and the DI would measure little else; unscaled, a
    change of class counts √2 · weight, like a 1.4-SD change of a continuous predictor. The
    threshold is the largest training DI not above ``Q3 + 1.5·IQR`` (the upper whisker of a
    box plot, as CAST uses), so it is a DI some training site actually has.
    """
    A = np.asarray(X, dtype=np.float64)
    site_labels, first = np.unique(np.asarray(sites), return_index=True)
    fold_ids = np.asarray(folds)
    per_site_folds = {s: set(fold_ids[np.asarray(sites) == s]) for s in site_labels}
    mixed = [str(s) for s, f in per_site_folds.items() if len(f) > 1]
    if mixed:
        raise AnalysisError(
            f"sites {mixed[:5]} have rows in more than one CV fold: use grouped folds"
        )
    if site_labels.size < 3:
        raise AnalysisError(f"{site_labels.size} training sites: the AOA needs at least 3")
    per_site = A[first]
    continuous = np.arange(A.shape[1]) < len(features.continuous)
    sd = per_site.std(axis=0, ddof=1)
    centre = np.where(continuous, per_site.mean(axis=0), 0.0)
    # A constant continuous column is 0 everywhere after centring, whatever its scale.
    scale = np.where(continuous & (sd > 0), sd, 1.0)
    space_weights = np.asarray(weights, dtype=np.float64)
    points = (per_site - centre) / scale * space_weights
    site_folds = fold_ids[first]
    mean_distance = float(np.mean(pdist(points)))
    if mean_distance <= 0:
        raise AnalysisError("all training sites coincide in predictor space: no DI possible")
    train_di = np.empty(site_labels.size)
    for fold in np.unique(site_folds):
        held = site_folds == fold
        if held.all():
            raise AnalysisError("the AOA's cross-validated DI needs at least two folds")
        distance, _ = cKDTree(points[~held]).query(points[held])
        train_di[held] = distance / mean_distance
    q1, q3 = np.quantile(train_di, [0.25, 0.75])
    threshold = float(train_di[train_di <= q3 + WHISKER_IQR * (q3 - q1)].max())
    return TrainingSpace(
        columns=features.columns,
        centre=centre,
        scale=scale,
        weights=space_weights,
        points=points,
        mean_distance=mean_distance,
        train_di=train_di,
        threshold=threshold,
    )


def dissimilarity(space: TrainingSpace, X: npt.ArrayLike) -> F64:
    """DI of each row of ``X``: distance to the nearest training site / mean inter-site
    distance, in the weighted standardized space; NaN for rows with a NaN predictor."""
    A = np.asarray(X)
    if A.dtype not in (np.float32, np.float64):
        A = A.astype(np.float64)
    order, points, neighbours, spacing = space.search
    margin = _SLACK * (1.0 + float(np.sqrt((points**2).sum(axis=1)).max(initial=0.0)))
    distance = _nearest_distance(
        np.ascontiguousarray(A),
        space.centre,
        space.scale,
        space.weights,
        order,
        points,
        neighbours,
        spacing,
        margin,
    )
    di: F64 = distance / space.mean_distance
    return di


#: Slack on the triangle-inequality bound, relative to the distances and to the size of the
#: points, far above the rounding of the distances it compares: no site that could be the
#: nearest is skipped.
_SLACK = 1e-9


@numba.njit(nogil=True, cache=True)
def _nearest_distance(  # type: ignore[no-untyped-def]
    X, centre, scale, weights, order, points, neighbours, spacing, margin
):
    """Distance from each row of ``X`` (predictor units) to the nearest of ``points`` in the
    weighted standardized space; NaN for a row with a non-finite value. See the module doc."""
    n, n_columns = X.shape
    m = points.shape[0]
    d = order.shape[0]
    out = np.empty(n)
    q = np.empty(d)
    guess = 0
    for i in range(n):
        complete = True
        for k in range(n_columns):
            if not np.isfinite(X[i, k]):
                complete = False
                break
        if not complete:
            out[i] = np.nan
            continue
        # As TrainingSpace.transform, operation by operation.
        for a in range(d):
            k = order[a]
            q[a] = (np.float64(X[i, k]) - centre[k]) / scale[k] * weights[k]
        best = 0.0
        for a in range(d):
            u = q[a] - points[guess, a]
            best += u * u
        nearest = guess
        anchor = np.sqrt(best)
        reach = 2.0 * anchor * (1.0 + _SLACK) + margin
        for t in range(m):
            if spacing[guess, t] > reach:
                break  # this site, and every later one, is farther than the best so far
            j = neighbours[guess, t]
            s = 0.0
            for a in range(d):
                u = q[a] - points[j, a]
                s += u * u
                if s >= best:
                    break
            if s < best:
                best = s
                nearest = j
                reach = (anchor + np.sqrt(best)) * (1.0 + _SLACK) + margin
        out[i] = np.sqrt(best)
        guess = nearest
    return out
