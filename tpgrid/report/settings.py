"""What a report computes (:class:`ReportSettings`) and the names of the files it writes."""

from __future__ import annotations

from dataclasses import dataclass

from tpgrid.core.explain import DEFAULT_EFFECTS
from tpgrid.core.uncertainty import LEVEL

REPORT_FILE = "report.html"
SUMMARY_FILE = "report.json"
FIGURES_DIR = "figures"
APPLICABILITY_DIR = "applicability.zarr"


@dataclass(frozen=True)
class ReportSettings:
    """What the report computes: PDP/ALE predictors (cube variable names), the interval level,
    trees per refitted CV forest (None: as many as the final forest), shuffles per predictor
    for %IncMSE, the seed of the shuffles and whether to compute the AOA over the cube."""

    effects: tuple[str, ...] = DEFAULT_EFFECTS
    level: float = LEVEL
    cv_trees: int | None = None
    importance_repeats: int = 3
    seed: int = 0
    applicability: bool = True
