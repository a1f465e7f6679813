"""The prediction group of a run: its layers, their CF attributes and the group's ACDD ones.

A run is one Zarr v3 group on the cube's grid (written by :mod:`tpgrid.predict`) holding, per
element, the variables ``{element}_{layer}``:

========  =======  ===========  ===================================================
layer     dtype    nodata       meaning
========  =======  ===========  ===================================================
mean      float32  NaN          mean over the forest's trees, mg/kg
variance  float32  NaN          variance between the trees' predictions, (mg/kg)²
sd        float32  NaN          its square root, mg/kg
unseen    uint8    255          1 where a categorical class was never seen in training
========  =======  ===========  ===================================================

with CF attributes, a ``spatial_ref`` grid mapping and ACDD discovery attributes.

The prediction writes the group laid out here, and everything that reads it (publishing, the
report, carrying chunks over between runs) finds its variables by these names; it is the
bottom of the package, so a prediction worker needs nothing else of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from tpgrid import __version__
from tpgrid.core.blocks import UNSEEN_NODATA
from tpgrid.errors import PredictionError
from tpgrid.grid import TargetGrid
from tpgrid.store import ATTR_COMPLETE, VariableLayout, read_attrs

LAYERS = ("mean", "variance", "sd", "unseen")
UNITS = "mg/kg"
VARIANCE_UNITS = "mg2 kg-2"  # (mg/kg)², in UDUNITS syntax as CF asks
#: Group attribute with the run's identity and inputs (see `tpgrid.predict`).
ATTR_RUN = "tpgrid:run"


def variable_name(element: str, layer: str) -> str:
    """The Zarr variable (and COG stem) of one layer of one element, e.g. ``Fe_mean``."""
    return f"{element}_{layer}"


def layer_layouts(element: str, n_trees: int, unseen: str) -> dict[str, VariableLayout]:
    """The four variables of ``element`` with their CF attributes (``unseen``: the policy)."""
    common = {"coverage_content_type": "modelResult", "tpgrid:element": element}
    return {
        variable_name(element, "mean"): VariableLayout(
            "float32",
            np.nan,
            common
            | {
                "long_name": f"{element} content, mean of {n_trees} random-forest trees",
                "units": UNITS,
            },
        ),
        variable_name(element, "variance"): VariableLayout(
            "float32",
            np.nan,
            common
            | {
                "long_name": f"{element} content, variance between {n_trees} trees",
                "units": VARIANCE_UNITS,
            },
        ),
        variable_name(element, "sd"): VariableLayout(
            "float32",
            np.nan,
            common
            | {
                "long_name": f"{element} content, standard deviation between {n_trees} trees",
                "units": UNITS,
            },
        ),
        variable_name(element, "unseen"): VariableLayout(
            "uint8",
            UNSEEN_NODATA,
            common
            | {
                "long_name": f"categorical class never seen when fitting the {element} model",
                "flag_values": [0, 1],
                "flag_meanings": "class_seen_in_training class_not_seen_in_training",
                "tpgrid:unseen_policy": unseen,
            },
        ),
    }


def global_attrs(grid: TargetGrid, elements: Sequence[str], run_id: str) -> dict[str, Any]:
    """CF and ACDD-1.3 attributes of a run's group."""
    footprint = grid.geobox.footprint("EPSG:4326", npoints=20)
    box = footprint.boundingbox
    resolution = f"{grid.spec.resolution:g} {grid.crs.units[0]}"
    return {
        "Conventions": "CF-1.10, ACDD-1.3",
        "title": f"Soil micronutrients ({', '.join(elements)}) of the Tibetan Plateau at "
        f"{resolution}, random forest",
        "summary": "Topsoil content of each element predicted by a random forest from "
        "environmental covariates, with the variance between the forest's trees as a "
        "per-pixel uncertainty.",
        "keywords": "soil, micronutrients, trace elements, Tibetan Plateau, random forest, "
        + ", ".join(elements),
        "id": run_id,
        "naming_authority": "tpgrid",
        "product_version": __version__,
        "processing_level": "model output",
        "source": f"tpgrid {__version__}: packed random forests walked per chunk with numba",
        # No wall-clock time here: a group is identified by its inputs, and a resumed run must
        # end byte-identical to an uninterrupted one. Times go to the run records and the STAC
        # item written when the run is published.
        "history": f"tpgrid {__version__} predict",
        "geospatial_bounds": footprint.wkt,
        "geospatial_bounds_crs": "EPSG:4326",
        "geospatial_lon_min": box.left,
        "geospatial_lon_max": box.right,
        "geospatial_lat_min": box.bottom,
        "geospatial_lat_max": box.top,
        "geospatial_lon_units": "degrees_east",
        "geospatial_lat_units": "degrees_north",
        "spatial_resolution": resolution,
    }


def open_prediction(path: str | Path) -> tuple[xr.Dataset, dict[str, Any]]:
    """A complete run's group (lazy) and its run record; :class:`PredictionError` otherwise."""
    path = Path(path)
    attrs = read_attrs(path)
    if attrs is None or not attrs.get(ATTR_COMPLETE) or ATTR_RUN not in attrs:
        raise PredictionError(
            f"{path} is not a complete tpgrid prediction: run `tpgrid predict` to make it"
        )
    ds: xr.Dataset = xr.open_zarr(path, consolidated=True, zarr_format=3, decode_coords="all")
    run: dict[str, Any] = attrs[ATTR_RUN]
    return ds, run
