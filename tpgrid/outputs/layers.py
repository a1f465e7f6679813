"""The prediction group of a run: its layers, their CF attributes and the group's ACDD ones.

A run is one Zarr v3 group on the cube's grid (written by :mod:`tpgrid.predict`) holding, per
element, the variables ``{element}_{layer}``:

==============  =======  ======  ==============================================================
layer           dtype    nodata  meaning
==============  =======  ======  ==============================================================
mean            float32  NaN     mean over the forest's trees, mg/kg
variance        float32  NaN     variance between the trees' predictions, (mg/kg)²
sd              float32  NaN     its square root, mg/kg
unseen          uint8    255     1 where a categorical class was never seen in training
q05, q50, …     float32  NaN     quantiles of the quantile regression forest, mg/kg
lower, upper    float32  NaN     the calibrated prediction interval's bounds, mg/kg
relative_width  float32  NaN     (Q95 − Q05) / Q50, dimensionless
se              float32  NaN     standard error of the mean (infinitesimal jackknife), mg/kg
di              float32  NaN     dissimilarity index to the training sites, dimensionless
aoa             uint8    255     1 inside the area of applicability, 0 outside
==============  =======  ======  ==============================================================

The first four are always there; which of the others a run has is its options'
(:class:`~tpgrid.core.blocks.PredictOptions`, recorded in its run record: :func:`run_layers`).
with CF attributes, a ``spatial_ref`` grid mapping and ACDD discovery attributes. Each variable
names ``spatial_ref`` in its ``coordinates`` as well as its ``grid_mapping``, so plain
``xr.open_zarr(path)`` decodes it as a coordinate and ``ds.rio.crs`` is the grid's CRS (with
``grid_mapping`` alone, xarray keeps it a data variable unless asked for
``decode_coords="all"``).

The run's record (its identity and inputs, see :mod:`tpgrid.predict`; hundreds of KB for a
large grid) is the attributes of the child group :data:`RUN_GROUP`, which xarray does not
open with the layers, not an attribute that every ``print(ds)`` would show; the group's
:data:`ATTR_RUN` attribute holds only the run id and that group's name
(:func:`write_run_record`, :func:`read_run_record`).

The prediction writes the group laid out here, and everything that reads it (publishing, the
report, carrying chunks over between runs) finds its variables by these names; it is the
bottom of the package, so a prediction worker needs nothing else of it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
import zarr

from tpgrid import __version__
from tpgrid.core.blocks import AOA_NODATA, UNSEEN_NODATA, PredictOptions, quantile_layer
from tpgrid.errors import PredictionError
from tpgrid.grid import TargetGrid
from tpgrid.store import ATTR_COMPLETE, VariableLayout, read_attrs

UNITS = "mg/kg"
VARIANCE_UNITS = "mg2 kg-2"  # (mg/kg)², in UDUNITS syntax as CF asks
#: Child group whose attributes are the run's record (identity and inputs, `tpgrid.predict`).
RUN_GROUP = "tpgrid_run"
#: Group attribute naming the run: ``{"run_id", "record": RUN_GROUP}``.
ATTR_RUN = "tpgrid:run"
#: Grid mapping variable of the group, also named in every variable's ``coordinates``.
GRID_MAPPING = "spatial_ref"
#: A model whose grouped-CV R² is below this predicts held-out sites worse than their mean.
POOR_R2 = 0.0


def variable_name(element: str, layer: str) -> str:
    """The Zarr variable (and COG stem) of one layer of one element, e.g. ``Fe_mean``."""
    return f"{element}_{layer}"


def run_options(run: Mapping[str, Any]) -> PredictOptions:
    """The options a run predicted with (which layers it holds), from its record."""
    return PredictOptions.from_json(run["options"])


def run_layers(run: Mapping[str, Any]) -> tuple[str, ...]:
    """The layers every element of a run has, from its record."""
    return run_options(run).layers()


def layer_layouts(
    element: str, n_trees: int, options: PredictOptions, level: float | None = None
) -> dict[str, VariableLayout]:
    """The variables of ``element`` with their CF attributes; ``level`` is the nominal
    coverage of its calibrated interval (when ``options`` ask for one)."""
    common = {
        "coverage_content_type": "modelResult",
        "tpgrid:element": element,
        # Default decoding then makes spatial_ref a coordinate: the CRS without decode_coords.
        "coordinates": GRID_MAPPING,
    }
    described = _descriptions(element, n_trees, options, level)
    layouts = {}
    for layer in options.layers():
        long_name, extra = described[layer]
        if layer in ("unseen", "aoa"):
            nodata = UNSEEN_NODATA if layer == "unseen" else AOA_NODATA
            layouts[variable_name(element, layer)] = VariableLayout(
                "uint8", nodata, common | {"long_name": long_name} | extra
            )
        else:
            layouts[variable_name(element, layer)] = VariableLayout(
                "float32", np.nan, common | {"long_name": long_name, "units": layer_units(layer)}
            )
    return layouts


def layer_title(layer: str, level: float | None = None) -> str:
    """A short title of a layer for catalogues and figures, e.g. "90 % interval, lower"."""
    percent = "" if level is None else f"{level * 100:g} % "
    titles = {
        "mean": "mean",
        "variance": "between-tree variance",
        "sd": "between-tree SD",
        "unseen": "class unseen in training",
        "lower": f"{percent}prediction interval, lower bound",
        "upper": f"{percent}prediction interval, upper bound",
        "relative_width": "relative interval width (Q95 - Q05) / Q50",
        "se": "standard error of the mean (jackknife)",
        "di": "dissimilarity index",
        "aoa": "area of applicability",
    }
    if layer in titles:
        return titles[layer]
    return f"quantile {float(layer[1:].replace('_', '.')) / 100:g}"


def layer_units(layer: str) -> str:
    """The UDUNITS units of a float layer: mg/kg, (mg/kg)² for the variance, 1 for the
    dimensionless relative width and DI."""
    if layer == "variance":
        return VARIANCE_UNITS
    if layer in ("relative_width", "di"):
        return "1"
    return UNITS


def _descriptions(
    element: str, n_trees: int, options: PredictOptions, level: float | None
) -> dict[str, tuple[str, dict[str, Any]]]:
    """Each layer's long name and its attributes besides the common ones."""
    percent = "?" if level is None else f"{level * 100:g} %"
    described: dict[str, tuple[str, dict[str, Any]]] = {
        "mean": (f"{element} content, mean of {n_trees} random-forest trees", {}),
        "variance": (f"{element} content, variance between {n_trees} trees", {}),
        "sd": (f"{element} content, standard deviation between {n_trees} trees", {}),
        "unseen": (
            f"categorical class never seen when fitting the {element} model",
            {
                "flag_values": [0, 1],
                "flag_meanings": "class_seen_in_training class_not_seen_in_training",
                "tpgrid:unseen_policy": options.unseen,
            },
        ),
        "lower": (
            f"{element} content, lower bound of the {percent} prediction interval calibrated "
            "on held-out sites per dissimilarity-index bin",
            {},
        ),
        "upper": (
            f"{element} content, upper bound of the {percent} prediction interval calibrated "
            "on held-out sites per dissimilarity-index bin",
            {},
        ),
        "relative_width": (
            f"{element} relative prediction interval width, (Q95 - Q05) / Q50 of the quantile "
            "regression forest",
            {},
        ),
        "se": (
            f"{element} content, standard error of the forest mean (bias-corrected "
            "infinitesimal jackknife)",
            {},
        ),
        "di": (
            f"dissimilarity index of the {element} model's predictors to its training sites",
            {},
        ),
        "aoa": (
            f"inside the area of applicability of the {element} model",
            {"flag_values": [0, 1], "flag_meanings": "outside_aoa inside_aoa"},
        ),
    }
    for q in options.quantiles:
        described[quantile_layer(q)] = (
            f"{element} content, quantile {q:g} of the quantile regression forest",
            {},
        )
    return described


def quality_warning(r2: float | None) -> str | None:
    """The warning a map carries when its model's grouped-CV R² (``r2``) is below
    :data:`POOR_R2`; None for a better model, or when no R² is known."""
    if r2 is None or not r2 < POOR_R2:
        return None
    return (
        f"grouped-CV R² {r2:.2f}: this model predicts held-out sites worse than their mean "
        "does; its map is not a usable prediction"
    )


def global_attrs(grid: TargetGrid, elements: Sequence[str], run_id: str) -> dict[str, Any]:
    """CF and ACDD-1.3 attributes of a run's group; nothing in them names a region (the grid
    may be anywhere), the bounds say where it is."""
    footprint = grid.geobox.footprint("EPSG:4326", npoints=20)
    box = footprint.boundingbox
    resolution = f"{grid.spec.resolution:g} {grid.crs.units[0]}"
    return {
        "Conventions": "CF-1.10, ACDD-1.3",
        "title": f"Soil element content ({', '.join(elements)}) at {resolution}, random forest",
        "summary": "Topsoil content of each element predicted by a random forest from "
        "environmental covariates, with the variance between the forest's trees as a "
        "per-pixel uncertainty.",
        "keywords": "soil, trace elements, random forest, " + ", ".join(elements),
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


def write_run_record(group: Path, run: Mapping[str, Any]) -> dict[str, str]:
    """Write ``run`` as the attributes of the child group :data:`RUN_GROUP` of the group at
    ``group`` (replacing any); the value of the group's :data:`ATTR_RUN` attribute."""
    root = zarr.open_group(group, mode="r+", zarr_format=3)
    root.create_group(RUN_GROUP, overwrite=True, attributes=dict(run))
    return {"run_id": str(run["run_id"]), "record": RUN_GROUP}


def read_run_record(path: Path) -> dict[str, Any] | None:
    """The run record of the complete prediction group at ``path``; None when there is no
    complete group there, or its record is missing or of another run (damaged, or a group
    written by a tpgrid that kept the record in the attribute)."""
    attrs = read_attrs(path) if path.exists() else None
    if attrs is None or not attrs.get(ATTR_COMPLETE):
        return None
    pointer = attrs.get(ATTR_RUN)
    if not isinstance(pointer, dict) or pointer.get("record") != RUN_GROUP:
        return None
    run = read_attrs(path / RUN_GROUP)
    if run is None or run.get("run_id") != pointer.get("run_id"):
        return None
    return run


def open_prediction(path: str | Path) -> tuple[xr.Dataset, dict[str, Any]]:
    """A complete run's group (lazy) and its run record; :class:`PredictionError` otherwise."""
    path = Path(path)
    run = read_run_record(path)
    if run is None:
        raise PredictionError(
            f"{path} is not a complete tpgrid prediction with its run record ({RUN_GROUP}): run "
            "`tpgrid predict` to make it (with --overwrite to replace what is there)"
        )
    ds: xr.Dataset = xr.open_zarr(path, consolidated=True, zarr_format=3, decode_coords="all")
    return ds, run
