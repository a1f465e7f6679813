"""What a report computes (:class:`ReportSettings`) and the names of the files it writes."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from tpgrid.core.explain import DEFAULT_EFFECTS
from tpgrid.core.uncertainty import LEVEL

REPORT_FILE = "report.html"
SUMMARY_FILE = "report.json"
FIGURES_DIR = "figures"
APPLICABILITY_DIR = "applicability.zarr"


class ReportSettings(BaseModel):
    """What the report computes. The pipeline config's ``report:`` section is these settings
    plus ``enabled`` (:class:`tpgrid.config.ReportSection`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    effects: tuple[str, ...] = Field(
        DEFAULT_EFFECTS, description="predictors for PDP and ALE (cube variable names)"
    )
    level: float = Field(LEVEL, gt=0, lt=1, description="nominal coverage of the intervals")
    cv_trees: int | None = Field(
        None, ge=1, description="trees per refitted CV forest; null: as many as the final forest"
    )
    importance_repeats: int = Field(3, ge=1, description="shuffles per predictor for %IncMSE")
    seed: int = Field(0, ge=0, description="seed of the shuffles and of the PDP's sample")
    applicability: bool = Field(True, description="compute the AOA layers over the cube")
