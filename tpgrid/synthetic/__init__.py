"""The built-in synthetic Tibetan Plateau: covariate files, a site table and the hidden truth.

Real covariates cannot be downloaded everywhere tpgrid runs, so the demo and the test suite run
on this stand-in. :func:`write_plateau` writes covariate GeoTIFFs in their native CRSs and
resolutions, a catalog, a grid, a site table and ``truth/`` (what a model should recover); the
same size and seed give byte-identical files.

Its parts, each importing only those listed after it:

- :mod:`~tpgrid.synthetic.writer`: the files on disk.
- :mod:`~tpgrid.synthetic.products`: every covariate product on its native grid, and all of
  them on the 1 km target grid; :mod:`~tpgrid.synthetic.truth`: the element truth model;
  :mod:`~tpgrid.synthetic.sampling`: the sites, their samples and what the lab measures.
- :mod:`~tpgrid.synthetic.covariates`: the synthetic world (relief, climate, vegetation, soil,
  lithology, grazing) on the 30″ master grid.
- :mod:`~tpgrid.synthetic.fields`: seeded random streams and smooth random fields.
- :mod:`~tpgrid.synthetic.geometry`: the plateau's sizes, the master grid and the outline;
  :mod:`~tpgrid.synthetic.layers`: how each product is delivered, and the catalog;
  :mod:`~tpgrid.synthetic.paper`: the paper's numbers the plateau reproduces.
"""

from __future__ import annotations

from tpgrid.synthetic.geometry import SIZES
from tpgrid.synthetic.paper import (
    ELEMENTS,
    LITHOLOGY_FACTORS,
    PAPER_MEAN_SD,
    VEGETATION_FACTORS,
    XRF_BIAS,
)
from tpgrid.synthetic.truth import log_truth_without_intercept
from tpgrid.synthetic.writer import (
    PlateauFiles,
    plateau_files,
    reuse_or_write_plateau,
    write_plateau,
)

__all__ = [
    "ELEMENTS",
    "LITHOLOGY_FACTORS",
    "PAPER_MEAN_SD",
    "SIZES",
    "VEGETATION_FACTORS",
    "XRF_BIAS",
    "PlateauFiles",
    "log_truth_without_intercept",
    "plateau_files",
    "reuse_or_write_plateau",
    "write_plateau",
]
