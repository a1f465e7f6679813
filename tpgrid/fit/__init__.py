"""Fitting the element models: site table and covariate cube in, one model per element out.

The modules follow the fit down once: :mod:`~tpgrid.fit.sites` reads the site table and places
its sites on the grid, :mod:`~tpgrid.fit.settings` says how to fit (resolving what it leaves to
the data: the elements and the calibrated ones against the site table, ``read_fit_sites``),
:mod:`~tpgrid.fit.blocks` makes the spatial CV's blocks (their edge chosen from the sites and
the prediction area unless given), :mod:`~tpgrid.fit.design`
turns one element's values and the covariates at its sites into a design matrix,
:mod:`~tpgrid.fit.search` searches (by the site-bootstrap out-of-bag error of
:mod:`~tpgrid.fit.oob`) and cross-validates its forest (the grouped CV's folds computing the
report's held-out results, :mod:`~tpgrid.fit.heldout`), and
:mod:`~tpgrid.fit.models` runs all of it per element and writes the model directories. The
entry points are re-exported here.
"""

from tpgrid.fit.heldout import HeldOutResults
from tpgrid.fit.models import (
    CV_PREDICTIONS_FILE,
    SCHEMES,
    TRAINING_FILE,
    FitReport,
    FittedElement,
    SkippedElement,
    fit_models,
)
from tpgrid.fit.settings import (
    PLATEAU_FIT,
    FitSettings,
    FitSites,
    SearchGrid,
    fit_settings,
    load_fit_settings,
    read_fit_sites,
)
from tpgrid.fit.sites import ELEMENTS, SiteSource, SiteTable, read_sites

__all__ = [
    "CV_PREDICTIONS_FILE",
    "ELEMENTS",
    "PLATEAU_FIT",
    "SCHEMES",
    "TRAINING_FILE",
    "FitReport",
    "FitSettings",
    "FitSites",
    "FittedElement",
    "HeldOutResults",
    "SearchGrid",
    "SiteSource",
    "SiteTable",
    "SkippedElement",
    "fit_models",
    "fit_settings",
    "load_fit_settings",
    "read_fit_sites",
    "read_sites",
]
