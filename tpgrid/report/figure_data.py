"""What each figure of a report is drawn from, as plain data: numbers, strings and numpy arrays
taken from the analyses (:func:`figure_plans`, in this process: small), or read from the
applicability layers and the prediction by the task that draws the figure
(:func:`load_figure_data`: the maps are the large part, and only their strided pixels are
drawn). No estimator, model or frame reaches a figure's task."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import zarr

from tpgrid.aoa import layer_name
from tpgrid.core.blocks import AOA_NODATA
from tpgrid.core.stats import site_means
from tpgrid.outputs import variable_name
from tpgrid.outputs.quicklook import MEAN_COLOURS, UNCERTAINTY_COLOURS
from tpgrid.report.analysis import (
    ElementAnalysis,
    ReportContents,
    compared_factors,
    site_values,
)
from tpgrid.report.figures import MAP_PX, Data

#: Sections of the report's figures, in the page's order.
SECTIONS = ("descriptive", "groups", "drivers", "checks", "applicability", "uncertainty", "maps")
#: Kinds of figure whose plan says where to read their arrays rather than holding them.
_READ = ("applicability", "map")


@dataclass(frozen=True)
class FigurePlan:
    """One figure of the report: its page section, its PNG's file name, its kind (a key of
    :data:`tpgrid.report.figures.DRAW`) and what it is drawn from (for the kinds read from
    stores: where to read it, see :func:`load_figure_data`)."""

    section: str
    name: str
    kind: str
    data: dict[str, Any]


def figure_plans(contents: ReportContents, applicability: Path | None) -> list[FigurePlan]:
    """Every figure of the report, in the report's order; a figure with nothing to show (a
    factor no element was compared by, an element without effects) is left out.
    ``applicability`` is the group holding each element's DI and AOA layers (None: none)."""
    analyses = contents.analyses
    plans = [
        FigurePlan("descriptive", "histograms.png", "histograms", _histograms(contents)),
        FigurePlan(
            "checks", "observed_predicted.png", "observed_predicted", _observed_predicted(analyses)
        ),
        FigurePlan("uncertainty", "coverage.png", "coverage", _coverage(contents)),
        FigurePlan("uncertainty", "interval_bins.png", "interval_bins", _interval_bins(contents)),
    ]
    files: set[str] = set()
    for factor in compared_factors(analyses):
        name = factor.name
        panels = [_groups_panel(a, name) for a in analyses if name in a.comparisons]
        file = f"groups_{_file_safe(name)}.png"
        if file in files:  # "land use" and "land_use"
            file = f"groups_{_file_safe(name)}_{len(files)}.png"
        files.add(file)
        plans.append(FigurePlan("groups", file, "groups", {"factor": name, "panels": panels}))
    prediction = contents.sources.get("prediction")
    for analysis in analyses:
        element = analysis.element
        plans.append(
            FigurePlan("drivers", f"importance_{element}.png", "importance", _importance(analysis))
        )
        if analysis.effects:
            plans.append(
                FigurePlan("drivers", f"effects_{element}.png", "effects", _effects(analysis))
            )
        if element in contents.shares:
            where = {
                "applicability": str(applicability),
                "element": element,
                "threshold": analysis.space.threshold,
                "share": contents.shares[element],
            }
            plans.append(
                FigurePlan("applicability", f"applicability_{element}.png", "applicability", where)
            )
        maps = contents.prediction
        if prediction is not None and maps is not None and variable_name(element, "mean") in maps:
            interval = variable_name(element, "lower") in maps
            record = analysis.model.artifact.record.get("intervals") or {}
            where = {
                "prediction": prediction,
                "applicability": str(applicability) if element in contents.shares else None,
                "element": element,
                "k": None if interval else analysis.k,
                "level": record.get("level", contents.settings.level)
                if interval
                else contents.settings.level,
            }
            plans.append(FigurePlan("maps", f"map_{element}.png", "map", where))
    return plans


def load_figure_data(plan: FigurePlan) -> Data:
    """The data a figure is drawn from: its plan's, or for a map or an applicability figure
    the strided layers read from the stores its plan names (no path stays in the result: the
    same pixels give the same data wherever they are stored)."""
    if plan.kind not in _READ:
        return plan.data
    where = plan.data
    element = where["element"]
    if plan.kind == "applicability":
        di_array = _layer(where["applicability"], layer_name(element, "di"))
        step = _step(di_array.shape)
        aoa = np.asarray(_layer(where["applicability"], layer_name(element, "aoa"))[::step, ::step])
        return {
            "element": element,
            "threshold": where["threshold"],
            "share": where["share"],
            "di": np.asarray(di_array[::step, ::step]),
            "aoa": np.where(aoa == AOA_NODATA, np.nan, aoa.astype(np.float64)),
        }
    # The group's own arrays (the report checked it is a complete run of these models):
    # opening it with xarray costs more than reading the strided pixels; NaN is its fill value.
    mean_layer = _layer(where["prediction"], variable_name(element, "mean"))
    step = _step(mean_layer.shape)
    mean = np.asarray(mean_layer[::step, ::step], dtype=np.float64)

    def strided(layer: str) -> npt.NDArray[np.float64]:
        values = _layer(where["prediction"], variable_name(element, layer))[::step, ::step]
        return np.asarray(values, dtype=np.float64)

    k, level = where["k"], where["level"]
    if k is None:  # the published interval's own bounds
        spread = strided("upper") - strided("lower")
        spread_title = f"width of the published {level:.0%} interval, mg/kg"
    else:  # a run without interval layers: mean ± k·sd with the report's k
        spread = k * strided("sd")
        spread_title = f"half-width of the {level:.0%} interval (k = {k:.2f}), mg/kg"
    outside = np.zeros(mean.shape, dtype=bool)
    if where["applicability"] is not None:
        aoa = _layer(where["applicability"], layer_name(element, "aoa"))
        outside = np.asarray(aoa[::step, ::step]) == 0
    return {
        "element": element,
        "mean": mean,
        "spread": spread,
        "spread_title": spread_title,
        "outside": outside,
        # The quicklooks' colours: a map reads the same in the report and the publication.
        "mean_colours": MEAN_COLOURS,
        "uncertainty_colours": UNCERTAINTY_COLOURS,
    }


def _layer(group: str, name: str) -> Any:
    return zarr.open_array(Path(group) / name, mode="r")


def _step(shape: tuple[int, ...]) -> int:
    return max(1, math.ceil(max(shape) / MAP_PX))


def _histograms(contents: ReportContents) -> dict[str, Any]:
    return {
        "panels": [
            {
                "element": element,
                "values": frame["value"].to_numpy(dtype=np.float64),
                "site_mean": float(site_means(frame).mean()),
            }
            for element, frame in contents.kept.items()
        ]
    }


def _observed_predicted(analyses: tuple[ElementAnalysis, ...]) -> dict[str, Any]:
    panels = []
    for analysis in analyses:
        metrics = analysis.model.artifact.record.get("cv", {}).get("grouped", {})
        slope, intercept = analysis.lines["grouped"]
        panels.append(
            {
                "element": analysis.element,
                "predicted": analysis.model.cv["predicted_grouped"].to_numpy(dtype=np.float64),
                "observed": analysis.model.y,
                "slope": float(slope),
                "intercept": float(intercept),
                "r2": float(metrics.get("r2", math.nan)),
                "rmse": float(metrics.get("rmse", math.nan)),
            }
        )
    return {"panels": panels}


def _coverage(contents: ReportContents) -> dict[str, Any]:
    analyses = contents.analyses
    methods = [str(method) for method in analyses[0].coverage.index]
    achieved = np.array(
        [a.coverage["achieved"].to_numpy(dtype=np.float64) for a in analyses], dtype=np.float64
    ).T  # methods × elements
    return {
        "elements": [a.element for a in analyses],
        "methods": methods,
        "achieved": achieved,
        "level": contents.settings.level,
    }


def _interval_bins(contents: ReportContents) -> dict[str, Any]:
    """Per element, the calibrated interval's coverage per DI bin (labels) of each scheme."""
    panels = []
    for analysis in contents.analyses:
        table = analysis.intervals.drop(index="all", level="DI")
        # Bins in DI order; a scheme without rows in a bin has no point there (NaN).
        wide = table.unstack("scheme")
        bins = sorted(wide.index, key=lambda b: list(table.index.get_level_values("DI")).index(b))
        wide = wide.reindex(bins)
        schemes = list(dict.fromkeys(str(s) for s in table.index.get_level_values("scheme")))
        panels.append(
            {
                "element": analysis.element,
                "bins": [str(b) for b in bins],
                "coverage": {s: wide[("coverage", s)].to_numpy(dtype=np.float64) for s in schemes},
                "sites": {
                    s: wide[("sites", s)].fillna(0).to_numpy(dtype=np.int64) for s in schemes
                },
            }
        )
    return {"panels": panels, "level": contents.settings.level}


def _file_safe(name: str) -> str:
    """A factor's name as part of a file name (a site-table column may hold any text)."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


def _groups_panel(analysis: ElementAnalysis, factor: str) -> dict[str, Any]:
    result = analysis.comparisons[factor]
    classes = analysis.factors[factor].classes
    values = site_values(analysis.model)
    order = [name for name in analysis.factors[factor].order if name in result.table.index]
    return {
        "element": analysis.element,
        "p_value": float(result.p_value),
        "classes": order,
        "values": [
            values[classes[classes == name].index].to_numpy(dtype=np.float64) for name in order
        ],
        "letters": [str(result.table.loc[name, "letters"]) for name in order],
    }


def _importance(analysis: ElementAnalysis) -> dict[str, Any]:
    # Bottom-up: the first predictor, group and column of each table drawn at the top.
    importance = analysis.importance.iloc[::-1]
    groups = analysis.by_group.iloc[::-1]
    shares = analysis.betasq["percent"].iloc[::-1]
    return {
        "element": analysis.element,
        "predictors": [str(name) for name in importance.index],
        "incmse": importance["incmse"].to_numpy(dtype=np.float64),
        "sd": importance["sd"].to_numpy(dtype=np.float64),
        "groups": [str(name) for name in groups.index],
        "group_incmse": groups.to_numpy(dtype=np.float64),
        "betasq_columns": [str(name) for name in shares.index],
        "betasq_percent": shares.to_numpy(dtype=np.float64),
    }


def _effects(analysis: ElementAnalysis) -> dict[str, Any]:
    columns = analysis.model.artifact.features.columns
    curves = []
    for pdp, ale in analysis.effects:
        x = analysis.model.X[:, columns.index(pdp.variable)]
        curves.append(
            {
                "variable": pdp.variable,
                "deciles": np.quantile(x, np.linspace(0.1, 0.9, 9)),
                "pdp_grid": np.asarray(pdp.grid, dtype=np.float64),
                "pdp_values": np.asarray(pdp.values, dtype=np.float64),
                "ale_grid": np.asarray(ale.grid, dtype=np.float64),
                "ale_values": np.asarray(ale.values, dtype=np.float64),
            }
        )
    return {"element": analysis.element, "curves": curves}
