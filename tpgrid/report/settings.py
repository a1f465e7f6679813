"""What a report computes (:class:`ReportSettings`) and the names of the files it writes.

What it shows about held-out sites (importance, coverage, ``k``) comes from the fit's grouped
CV (``tpgrid.fit.heldout``), so its forests' size and the importance shuffles are fit settings.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from tpgrid.core.uncertainty import LEVEL

REPORT_FILE = "report.html"
SUMMARY_FILE = "report.json"
FIGURES_DIR = "figures"
APPLICABILITY_DIR = "applicability.zarr"


class ReportSettings(BaseModel):
    """What the report computes. The pipeline config's ``report:`` section is these settings
    plus ``enabled`` (:class:`tpgrid.config.ReportSection`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    effects: tuple[str, ...] | None = Field(
        None,
        description="continuous predictors (cube variable names) to draw PDP and ALE curves "
        "of, for every element; unset: each element's five continuous predictors with the "
        "highest held-out %IncMSE",
    )
    factors: tuple[str, ...] | None = Field(
        None,
        description="categorical predictors (cube layers) and site-table columns to compare "
        "site means by (ANOVA, Tukey HSD); unset: every categorical predictor and every text "
        "column of the site table with 2-30 classes",
    )
    level: float = Field(LEVEL, gt=0, lt=1, description="nominal coverage of the intervals")
    seed: int = Field(0, ge=0, description="seed of the PDP's sample")
    applicability: bool = Field(True, description="compute the AOA layers over the cube")
