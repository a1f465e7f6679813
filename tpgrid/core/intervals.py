"""Calibrated prediction intervals, conditional on applicability: numpy in, numpy out.

An interval at a nominal ``level`` (e.g. 90 %) is built per pixel from what the forest
predicts there and widened (or narrowed) by a calibration learned on held-out sites
(conformal calibration), one widening per bin of the dissimilarity index (DI,
:mod:`tpgrid.core.applicability`), so intervals widen where the model extrapolates:

- ``"quantile"``: the quantile regression forest's ``[q_low − c, q_high + c]`` (conformalized
  quantile regression, Romano et al. 2019), ``c`` in mg/kg per DI bin;
- ``"quantile_scaled"``: ``[q_low − c·w, q_high + c·w]`` with ``w = q_high − q_low``, the
  forest's own interval widened in proportion to its width (CQR with the QRF width as scale);
- ``"sd"``: ``mean ± k·sd``, ``k`` per DI bin.

The calibration (:func:`calibrate`) takes held-out predictions of one or more cross-validation
schemes (:class:`HeldOut`: every row predicted by the forest of the fold that did not see it,
with the row's DI against that fold's training sites), scores every row by how far its
observation lies outside the method's uncalibrated interval (:func:`interval_scores`), cuts the
DI into bins of at least :data:`MIN_BIN_SITES` sites each (:func:`di_bin_edges`) and takes per
bin the conformal quantile of the scores (:func:`conformal_quantile`): the ⌈(n + 1)·level⌉-th
smallest of n, which covers a new exchangeable row with probability ≥ level. Its honest
coverage is measured by :func:`cross_conformal`: a fold's rows get the calibration made without
that fold's sites.

Bin ``i`` holds DI in ``(di_edges[i − 1], di_edges[i]]``; DI above the last edge, or unknown
(NaN), falls in the last bin, the one calibrated on the most dissimilar sites. Lower bounds
are clipped at 0: concentrations are not negative, so clipping never changes coverage.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np
import numpy.typing as npt

from tpgrid.core.arrays import F64, I64

IntervalMethod = Literal["quantile", "quantile_scaled", "sd"]
#: Every DI bin holds at least this many held-out sites, and there are at most
#: :data:`MAX_BINS` bins (one when there are fewer than twice this many sites).
MIN_BIN_SITES = 30
MAX_BINS = 4
#: A spread (tree SD, QRF width) below this share of the mean is taken as this share (mg/kg):
#: a row every tree predicts alike must not get an infinite score.
MIN_RELATIVE_SCALE = 1e-6


@dataclass(frozen=True)
class IntervalCalibration:
    """How a model's ``level`` prediction interval is built per pixel (module docstring).

    ``quantiles`` are the (low, high) forest quantiles the ``"quantile"`` method starts from;
    ``di_edges`` the ascending upper DI edges of every bin but the last; ``widening`` per bin
    (``c`` in mg/kg or ``k``); ``n_sites`` the held-out sites each bin was calibrated on;
    ``trees``: the quantile forest is that of the forest's first ``trees`` trees (as many as
    the held-out forests the calibration was made on had; None: every tree).
    """

    level: float
    method: IntervalMethod
    quantiles: tuple[float, float]
    di_edges: tuple[float, ...]
    widening: tuple[float, ...]
    n_sites: tuple[int, ...]
    trees: int | None = None

    def __post_init__(self) -> None:
        if not 0 < self.level < 1:
            raise ValueError(f"interval level must be in (0, 1), got {self.level}")
        if self.method not in get_args(IntervalMethod):
            raise ValueError(f"interval method {self.method!r} is not one of {IntervalMethod}")
        low, high = self.quantiles
        if not 0 <= low < high <= 1:
            raise ValueError(f"interval quantiles must be 0 ≤ low < high ≤ 1, got {self.quantiles}")
        edges = np.asarray(self.di_edges, dtype=np.float64)
        if np.isnan(edges).any() or np.any(np.diff(edges) <= 0):
            raise ValueError(f"DI bin edges must ascend, got {self.di_edges}")
        n_bins = len(self.di_edges) + 1
        if len(self.widening) != n_bins or len(self.n_sites) != n_bins:
            raise ValueError(f"{n_bins} DI bins need {n_bins} widenings and site counts")
        if not np.isfinite(self.widening).all():
            raise ValueError(f"interval widenings must be finite, got {self.widening}")
        if self.trees is not None and self.trees < 1:
            raise ValueError(f"the quantile forest needs at least one tree, got {self.trees}")

    @property
    def n_bins(self) -> int:
        return len(self.widening)

    def bin_of(self, di: npt.ArrayLike) -> npt.NDArray[np.intp]:
        """The DI bin of each value of ``di``; NaN goes to the last bin."""
        return _bin_index(self.di_edges, di)

    def bounds(
        self,
        mean: npt.ArrayLike,
        sd: npt.ArrayLike,
        quantiles: Mapping[float, npt.ArrayLike],
        di: npt.ArrayLike,
    ) -> tuple[F64, F64]:
        """Lower and upper bound per row from the forest's ``mean``, ``sd`` and ``quantiles``
        (by level; must hold :attr:`quantiles` for the ``"quantile"`` method) and the row's
        ``di``; NaN where the inputs are NaN."""
        widening = np.asarray(self.widening, dtype=np.float64)[self.bin_of(di)]
        centre = np.asarray(mean, dtype=np.float64)
        if self.method == "sd":
            half = widening * np.asarray(sd, dtype=np.float64)
            lower, upper = centre - half, centre + half
        else:
            low, high = self.quantiles
            q_low = np.asarray(quantiles[low], dtype=np.float64)
            q_high = np.asarray(quantiles[high], dtype=np.float64)
            if self.method == "quantile_scaled":
                widening = widening * floored_scale(q_high - q_low, centre)
            lower, upper = q_low - widening, q_high + widening
        # np.maximum would turn a NaN lower bound into 0.
        lower = np.where(lower < 0, 0.0, lower)
        return lower, upper

    def to_json(self) -> dict[str, Any]:
        return {
            "level": self.level,
            "method": self.method,
            "quantiles": list(self.quantiles),
            "di_edges": list(self.di_edges),
            "widening": list(self.widening),
            "n_sites": list(self.n_sites),
            "trees": self.trees,
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> IntervalCalibration:
        """Rebuild from :meth:`to_json`; ``ValueError`` when ``doc`` is not that."""
        try:
            low, high = (float(q) for q in doc["quantiles"])
            return cls(
                level=float(doc["level"]),
                method=doc["method"],
                quantiles=(low, high),
                di_edges=tuple(float(e) for e in doc["di_edges"]),
                widening=tuple(float(w) for w in doc["widening"]),
                n_sites=tuple(int(n) for n in doc["n_sites"]),
                trees=None if doc.get("trees") is None else int(doc["trees"]),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not an interval calibration: {exc!r}") from exc


def _bin_index(di_edges: Sequence[float], di: npt.ArrayLike) -> npt.NDArray[np.intp]:
    """Bin of each DI value (bin ``i`` holds ``(edges[i − 1], edges[i]]``), NaN in the last."""
    values = np.asarray(di, dtype=np.float64)
    bins = np.searchsorted(np.asarray(di_edges, dtype=np.float64), values, side="left")
    return np.where(np.isnan(values), len(di_edges), bins)


def floored_scale(spread: npt.ArrayLike, centre: npt.ArrayLike) -> F64:
    """``spread`` floored at :data:`MIN_RELATIVE_SCALE` of ``|centre|`` (at
    :data:`MIN_RELATIVE_SCALE` mg/kg where the centre is 0)."""
    floor = MIN_RELATIVE_SCALE * np.abs(np.asarray(centre, dtype=np.float64))
    floor = np.where(floor > 0, floor, MIN_RELATIVE_SCALE)
    result: F64 = np.maximum(np.asarray(spread, dtype=np.float64), floor)
    return result


# --- calibration ---------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class HeldOut:
    """One cross-validation scheme's held-out predictions, row for row: ``folds`` the fold of
    each row, ``sites`` its site (one numbering across schemes), ``observed`` the value, and
    by the fold forest that did not see the row its ``mean``, tree ``sd``, quantile-forest
    ``q_low``/``q_high`` and the row's ``di`` against that forest's training sites. Rows the
    scheme did not predict are NaN."""

    scheme: str
    folds: I64
    sites: I64
    observed: F64
    mean: F64
    sd: F64
    q_low: F64
    q_high: F64
    di: F64

    def __post_init__(self) -> None:
        n = self.folds.shape
        for name in ("sites", "observed", "mean", "sd", "q_low", "q_high", "di"):
            if getattr(self, name).shape != n:
                raise ValueError(f"held-out {self.scheme}: {name} is not one value per row")

    def rows(self, keep: npt.NDArray[np.bool_]) -> HeldOut:
        """The rows where ``keep``."""
        return HeldOut(
            self.scheme,
            **{
                name: getattr(self, name)[keep]
                for name in ("folds", "sites", "observed", "mean", "sd", "q_low", "q_high", "di")
            },
        )

    @property
    def predicted(self) -> npt.NDArray[np.bool_]:
        """Rows this scheme predicted."""
        result: npt.NDArray[np.bool_] = np.isfinite(self.mean)
        return result


def interval_scores(method: IntervalMethod, held: HeldOut) -> F64:
    """How far each observation lies outside the method's uncalibrated interval, in the units
    its widening has: ``sd``: ``|y − mean| / sd``; ``quantile``: ``max(q_low − y, y − q_high)``
    (mg/kg, negative inside); ``quantile_scaled``: that over ``q_high − q_low``."""
    y = held.observed
    if method == "sd":
        result: F64 = np.abs(y - held.mean) / floored_scale(held.sd, held.mean)
        return result
    outside = np.maximum(held.q_low - y, y - held.q_high)
    if method == "quantile_scaled":
        outside = outside / floored_scale(held.q_high - held.q_low, held.mean)
    return outside


def conformal_quantile(scores: npt.ArrayLike, level: float) -> float:
    """The ⌈(n + 1)·level⌉-th smallest of the n ``scores``: widening a new exchangeable row's
    interval by it covers the row with probability ≥ ``level``. With fewer than
    ``level / (1 − level)`` scores no score guarantees that; the largest is returned."""
    values = np.sort(np.asarray(scores, dtype=np.float64))
    if values.size == 0:
        raise ValueError("no scores to calibrate on")
    return float(values[min(conformal_rank(values.size, level), values.size) - 1])


def conformal_rank(n: int, level: float) -> int:
    """⌈(n + 1)·level⌉, the rank of the conformal quantile among n scores (may exceed n)."""
    # Rounded first, so (29 + 1)·0.9 = 27.000000000000004 ranks 27, not 28.
    return math.ceil(round((n + 1) * level, 9))


def di_bin_edges(
    di: npt.ArrayLike,
    sites: npt.ArrayLike,
    min_sites: int = MIN_BIN_SITES,
    max_bins: int = MAX_BINS,
) -> tuple[float, ...]:
    """Upper DI edges of every bin but the last (bins as :meth:`IntervalCalibration.bin_of`):
    quantiles of the held-out DI (one value per site and scheme), as many bins as hold at
    least ``min_sites`` distinct sites each, at most ``max_bins``; none (one bin) below
    ``2·min_sites`` sites. ``di`` and ``sites`` label the same rows."""
    values, site_ids = np.asarray(di, dtype=np.float64), np.asarray(sites)
    finite = np.isfinite(values)
    units = np.unique(np.stack([site_ids[finite].astype(np.float64), values[finite]]), axis=1)
    unit_sites, unit_di = units[0], units[1]
    n_sites = np.unique(unit_sites).size
    for n_bins in range(min(max_bins, n_sites // min_sites), 1, -1):
        edges = np.unique(np.quantile(unit_di, np.arange(1, n_bins) / n_bins))
        if edges.size != n_bins - 1:
            continue  # tied quantiles: fewer bins
        bins = np.searchsorted(edges, unit_di, side="left")
        if all(np.unique(unit_sites[bins == b]).size >= min_sites for b in range(n_bins)):
            return tuple(float(e) for e in edges)
    return ()


def calibrate(
    method: IntervalMethod,
    level: float,
    quantiles: tuple[float, float],
    held: Sequence[HeldOut],
) -> IntervalCalibration:
    """The calibration of ``method`` at ``level`` on the held-out rows of every scheme in
    ``held`` pooled: DI bins by :func:`di_bin_edges`, per bin the conformal quantile of the
    bin's scores. ``quantiles`` are the forest quantiles ``q_low``/``q_high`` came from."""
    used = [h.rows(h.predicted) for h in held]
    if not used or sum(h.folds.size for h in used) == 0:
        raise ValueError("no held-out rows to calibrate on")
    scores = np.concatenate([interval_scores(method, h) for h in used])
    di = np.concatenate([h.di for h in used])
    sites = np.concatenate([h.sites for h in used])
    edges = di_bin_edges(di, sites)
    bins = _bin_index(edges, di)
    widening, n_sites = [], []
    for b in range(len(edges) + 1):
        inside = bins == b
        widening.append(conformal_quantile(scores[inside], level))
        n_sites.append(int(np.unique(sites[inside]).size))
    return IntervalCalibration(level, method, quantiles, edges, tuple(widening), tuple(n_sites))


def interval_of(calibration: IntervalCalibration, held: HeldOut) -> tuple[F64, F64]:
    """The calibrated interval of every held-out row (:meth:`IntervalCalibration.bounds`)."""
    low, high = calibration.quantiles
    return calibration.bounds(held.mean, held.sd, {low: held.q_low, high: held.q_high}, held.di)


def cross_conformal(
    method: IntervalMethod,
    level: float,
    quantiles: tuple[float, float],
    calibrate_on: Sequence[HeldOut],
    evaluate: HeldOut,
) -> tuple[F64, F64]:
    """The interval of every row of ``evaluate`` by a calibration (:func:`calibrate`) on
    ``calibrate_on`` without the sites of the row's fold (in every scheme), so no row is
    covered by a widening its own site helped choose; NaN where ``evaluate`` has no
    prediction."""
    lower, upper = np.full(evaluate.folds.size, np.nan), np.full(evaluate.folds.size, np.nan)
    predicted = evaluate.predicted
    for fold in np.unique(evaluate.folds[predicted]):
        rows = predicted & (evaluate.folds == fold)
        left_out = np.unique(evaluate.sites[rows])
        others = [h.rows(~np.isin(h.sites, left_out)) for h in calibrate_on]
        calibration = calibrate(method, level, quantiles, others)
        lower[rows], upper[rows] = interval_of(calibration, evaluate.rows(rows))
    return lower, upper


def coverage_summary(
    held: HeldOut, lower: F64, upper: F64, di_edges: Sequence[float]
) -> dict[str, Any]:
    """Coverage and mean width of the intervals ``[lower, upper]`` on the predicted rows of
    ``held``, overall and per DI bin of ``di_edges`` (bins of ≥ 1 row): JSON-ready, with the
    rows and sites counted (``di_high`` None for the open last bin)."""
    predicted = held.predicted & np.isfinite(lower) & np.isfinite(upper)

    def summary(rows: npt.NDArray[np.bool_]) -> dict[str, Any]:
        y = held.observed[rows]
        return {
            "coverage": float(np.mean((y >= lower[rows]) & (y <= upper[rows]))),
            "mean_width": float(np.mean(upper[rows] - lower[rows])),
            "n_rows": int(rows.sum()),
            "n_sites": int(np.unique(held.sites[rows]).size),
        }

    bins = _bin_index(di_edges, held.di)
    per_bin = []
    for b in range(len(di_edges) + 1):
        rows = predicted & (bins == b)
        if rows.any():
            per_bin.append(
                {
                    "di_low": float(di_edges[b - 1]) if b > 0 else 0.0,
                    "di_high": float(di_edges[b]) if b < len(di_edges) else None,
                    **summary(rows),
                }
            )
    return {"overall": summary(predicted), "bins": per_bin}
