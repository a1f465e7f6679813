"""Calibrated prediction intervals, conditional on applicability: numpy in, numpy out.

An interval at a nominal ``level`` (e.g. 90 %) is built per pixel from what the forest
predicts there and widened (or narrowed) by a calibration learned on held-out sites
(conformal calibration), one widening per bin of the dissimilarity index (DI,
:mod:`tpgrid.core.applicability`), so intervals widen where the model extrapolates:

- ``"quantile"``: the quantile regression forest's ``[q_low − c, q_high + c]`` (conformalized
  quantile regression, Romano et al. 2019), ``c`` in mg/kg per DI bin;
- ``"sd"``: ``mean ± k·sd``, ``k`` per DI bin.

Bin ``i`` holds DI in ``(di_edges[i − 1], di_edges[i]]``; DI above the last edge, or unknown
(NaN), falls in the last bin, the one calibrated on the most dissimilar sites. Lower bounds
are clipped at 0: concentrations are not negative, so clipping never changes coverage.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np
import numpy.typing as npt

from tpgrid.core.arrays import F64

IntervalMethod = Literal["quantile", "sd"]


@dataclass(frozen=True)
class IntervalCalibration:
    """How a model's ``level`` prediction interval is built per pixel (module docstring).

    ``quantiles`` are the (low, high) forest quantiles the ``"quantile"`` method starts from;
    ``di_edges`` the ascending upper DI edges of every bin but the last; ``widening`` per bin
    (``c`` in mg/kg or ``k``); ``n_sites`` the held-out sites each bin was calibrated on.
    """

    level: float
    method: IntervalMethod
    quantiles: tuple[float, float]
    di_edges: tuple[float, ...]
    widening: tuple[float, ...]
    n_sites: tuple[int, ...]

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

    @property
    def n_bins(self) -> int:
        return len(self.widening)

    def bin_of(self, di: npt.ArrayLike) -> npt.NDArray[np.intp]:
        """The DI bin of each value of ``di``; NaN goes to the last bin."""
        values = np.asarray(di, dtype=np.float64)
        bins = np.searchsorted(np.asarray(self.di_edges), values, side="left")
        return np.where(np.isnan(values), self.n_bins - 1, bins)

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
        if self.method == "quantile":
            low, high = self.quantiles
            lower = np.asarray(quantiles[low], dtype=np.float64) - widening
            upper = np.asarray(quantiles[high], dtype=np.float64) + widening
        else:
            centre = np.asarray(mean, dtype=np.float64)
            half = widening * np.asarray(sd, dtype=np.float64)
            lower, upper = centre - half, centre + half
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
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not an interval calibration: {exc!r}") from exc
