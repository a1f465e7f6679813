"""The science report of a set of models: the paper's analyses, applicability and calibrated
uncertainty, as one self-contained HTML file with its figures beside it as PNG.

Input is what ``tpgrid fit`` wrote (one directory per element: artifact, packed forest,
``training.parquet``, ``cv_predictions.parquet``, ``held_out.npz``), the site table and the
cube the models were fitted on. Per element the report

0. warns of every model that predicts held-out sites worse than their mean (grouped-CV
   R² below 0);
1. describes the measured values before and after screening (the paper's table, histograms);
2. compares site means by every categorical predictor (classes named by the layer's class
   table) and every categorical column of the site table, or those ``report.factors`` names
   (ANOVA, Tukey HSD letters);
3. ranks the predictors (held-out %IncMSE per predictor and per group, betasq) and draws PDP
   and ALE curves of the most important continuous ones, or of those ``report.effects``
   names;
4. plots observed against out-of-fold predicted values (Piñeiro: observed on y) with the
   grouped, random and spatial CV metrics of the fit;
5. computes the dissimilarity index and area of applicability over the cube on the current
   Dask client (:mod:`tpgrid.aoa`) into ``applicability.zarr``;
6. measures the coverage of 90 % intervals from the tree distribution on held-out sites, and
   calibrates ``k`` of ``mean ± k·sd`` (:mod:`tpgrid.core.uncertainty`).

The modules, each using only those after it: :mod:`~tpgrid.report.build` writes a report;
:mod:`~tpgrid.report.page` makes its HTML page and JSON summary; :mod:`~tpgrid.report.render`
draws its PNGs as tasks, or links those of the previous report drawn from the same data;
:mod:`~tpgrid.report.figure_data` extracts what each figure is drawn from;
:mod:`~tpgrid.report.figures` draws one from that data; :mod:`~tpgrid.report.analysis`
computes what they show;
:mod:`~tpgrid.report.inputs` reads the models and the prediction;
:mod:`~tpgrid.report.settings` says what to compute and names the files.
"""

from tpgrid.report.build import ReportResult, write_report
from tpgrid.report.inputs import find_elements
from tpgrid.report.settings import (
    APPLICABILITY_DIR,
    FIGURES_DIR,
    REPORT_FILE,
    SUMMARY_FILE,
    ReportSettings,
)

__all__ = [
    "APPLICABILITY_DIR",
    "FIGURES_DIR",
    "REPORT_FILE",
    "SUMMARY_FILE",
    "ReportResult",
    "ReportSettings",
    "find_elements",
    "write_report",
]
