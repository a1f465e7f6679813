"""The report's figures: its data (:mod:`tpgrid.report.analysis`) drawn with matplotlib as PNG
files, one task per figure on the current Dask client."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr
import zarr
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from tpgrid.aoa import layer_name
from tpgrid.core.blocks import AOA_NODATA
from tpgrid.core.stats import site_means
from tpgrid.outputs import variable_name
from tpgrid.report.analysis import (
    FACTORS,
    ElementAnalysis,
    ReportContents,
    site_classes,
    site_values,
)
from tpgrid.tasks import task_runner

#: Longest side of a map figure, in pixels of the grid (larger grids are strided).
MAP_PX = 900
DPI = 110


def number(value: float, digits: int = 3) -> str:
    """``digits`` significant digits, but whole numbers rather than exponents for thousands
    (Fe is tens of thousands of mg/kg); the page's tables write numbers the same way."""
    return f"{value:.0f}" if abs(value) >= 10**digits else f"{value:.{digits}g}"


def _new_figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, path: Path) -> Path:
    figure.savefig(path, dpi=DPI)
    return path


def _panels(figure: Figure, n: int, columns: int) -> list[Any]:
    rows = math.ceil(n / columns)
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return list(axes[:n])


def histogram_figure(kept: Mapping[str, pd.DataFrame], path: Path) -> Path:
    """One histogram per element of the screened sample values, with the site-level mean."""
    columns = min(4, len(kept))
    figure = _new_figure(3.2 * columns, 2.6 * math.ceil(len(kept) / columns))
    for ax, (element, frame) in zip(_panels(figure, len(kept), columns), kept.items(), strict=True):
        ax.hist(frame["value"], bins=25, color="#4c72b0", edgecolor="white")
        ax.axvline(site_means(frame).mean(), color="black", linestyle="--", linewidth=1)
        ax.set_title(f"{element} (n = {len(frame)})")
        ax.set_xlabel("mg/kg")
    return _save(figure, path)


def groups_figure(analyses: Sequence[ElementAnalysis], factor: str, path: Path) -> Path | None:
    """Violins, boxes, means and Tukey letters of site means by the classes of ``factor``, one
    panel per element that has the comparison; None if none has."""
    shown = [a for a in analyses if factor in a.comparisons]
    if not shown:
        return None
    columns = min(4, len(shown))
    figure = _new_figure(3.6 * columns, 3.0 * math.ceil(len(shown) / columns))
    for ax, analysis in zip(_panels(figure, len(shown), columns), shown, strict=True):
        result = analysis.comparisons[factor]
        feature = next(
            f for f in analysis.model.artifact.features.categorical if f.variable == factor
        )
        classes = site_classes(analysis.model, feature)
        values = site_values(analysis.model)
        order = [name for name in feature.names if name in result.table.index]
        data = [values[classes[classes == name].index].to_numpy() for name in order]
        positions = np.arange(len(order))
        ax.violinplot(data, positions, showextrema=False)
        ax.boxplot(data, positions=positions, widths=0.15, showfliers=False)
        ax.plot(positions, [d.mean() for d in data], "o", color="black", markersize=4)
        top = max(float(d.max()) for d in data)
        for x, name in zip(positions, order, strict=True):
            ax.text(x, top * 1.04, result.table.loc[name, "letters"], ha="center", fontsize=9)
        ax.set_ylim(top=top * 1.12)
        ax.set_xticks(positions, order, rotation=30, fontsize=8)
        ax.set_title(f"{analysis.element}: ANOVA p = {result.p_value:.2g}", fontsize=10)
        ax.set_ylabel("site mean, mg/kg (as modelled)")
    return _save(figure, path)


def importance_figure(analysis: ElementAnalysis, path: Path) -> Path:
    """%IncMSE per predictor (± SD between shuffles), summed per group, and betasq shares."""
    figure = _new_figure(12, 0.22 * len(analysis.importance) + 1.6)
    left, middle, right = figure.subplots(1, 3, width_ratios=(1.3, 1, 1.3))
    importance = analysis.importance.iloc[::-1]
    left.barh(importance.index, importance["incmse"], xerr=importance["sd"], color="#4c72b0")
    left.set_xlabel("%IncMSE (held-out)")
    groups = analysis.by_group.iloc[::-1]
    middle.barh(groups.index, groups.to_numpy(), color="#55a868")
    middle.set_xlabel("%IncMSE summed per group")
    shares = analysis.betasq["percent"].iloc[::-1]
    right.barh(shares.index, shares.to_numpy(), color="#c44e52")
    right.set_xlabel("betasq, % of total")
    for ax in (left, middle, right):
        ax.tick_params(labelsize=8)
    figure.suptitle(f"{analysis.element}: drivers")
    return _save(figure, path)


def effects_figure(analysis: ElementAnalysis, path: Path) -> Path | None:
    """PDP (top) and ALE (bottom) of the chosen predictors, with the training deciles."""
    if not analysis.effects:
        return None
    n = len(analysis.effects)
    figure = _new_figure(2.8 * n, 5.0)
    axes = figure.subplots(2, n, squeeze=False)
    columns = analysis.model.artifact.features.columns
    for j, (pdp, ale) in enumerate(analysis.effects):
        x = analysis.model.X[:, columns.index(pdp.variable)]
        deciles = np.quantile(x, np.linspace(0.1, 0.9, 9))
        for ax, effect, label in ((axes[0, j], pdp, "PDP, mg/kg"), (axes[1, j], ale, "ALE, mg/kg")):
            ax.plot(effect.grid, effect.values, color="#4c72b0")
            ax.plot(deciles, np.full(9, effect.values.min()), "|", color="grey", markersize=8)
            ax.set_xlabel(pdp.variable)
            if j == 0:
                ax.set_ylabel(label)
    figure.suptitle(f"{analysis.element}: partial dependence (top), accumulated local effects")
    return _save(figure, path)


def observed_predicted_figure(analyses: Sequence[ElementAnalysis], path: Path) -> Path:
    """Observed (y) against grouped-CV predicted (x) per element, OLS and 1:1 lines."""
    columns = min(4, len(analyses))
    figure = _new_figure(3.2 * columns, 3.1 * math.ceil(len(analyses) / columns))
    for ax, analysis in zip(_panels(figure, len(analyses), columns), analyses, strict=True):
        predicted = analysis.model.cv["predicted_grouped"].to_numpy(dtype=np.float64)
        observed = analysis.model.y
        ax.scatter(predicted, observed, s=6, alpha=0.5, color="#4c72b0")
        low = float(min(predicted.min(), observed.min()))
        high = float(max(predicted.max(), observed.max()))
        ax.plot([low, high], [low, high], "--", color="grey", label="1:1")
        slope, intercept = analysis.lines["grouped"]
        ax.plot(
            [low, high],
            [intercept + slope * low, intercept + slope * high],
            color="#1f3b73",
            label="OLS",
        )
        metrics = analysis.model.artifact.record.get("cv", {}).get("grouped", {})
        r2, rmse = metrics.get("r2", math.nan), metrics.get("rmse", math.nan)
        ax.set_title(f"{analysis.element}: R² {r2:.2f}, RMSE {number(rmse)}", fontsize=10)
        ax.set_xlabel("predicted (grouped CV), mg/kg")
        ax.set_ylabel("observed, mg/kg")
        ax.legend(fontsize=7, loc="upper left")
    return _save(figure, path)


def coverage_figure(analyses: Sequence[ElementAnalysis], level: float, path: Path) -> Path:
    """Achieved coverage of each interval method per element against the nominal level."""
    figure = _new_figure(max(6.0, 1.3 * len(analyses) + 2), 3.6)
    ax = figure.subplots()
    methods = list(analyses[0].coverage.index)
    width = 0.8 / len(methods)
    x = np.arange(len(analyses))
    for i, method in enumerate(methods):
        achieved = [a.coverage.loc[method, "achieved"] for a in analyses]
        ax.bar(x + (i - (len(methods) - 1) / 2) * width, achieved, width, label=method)
    ax.axhline(level, color="black", linestyle="--", linewidth=1, label=f"nominal {level:.0%}")
    ax.set_xticks(x, [a.element for a in analyses])
    ax.set_ylim(0, 1)
    ax.set_ylabel("share of held-out samples inside")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(figure, path)


def applicability_figure(
    applicability: Path, analysis: ElementAnalysis, share: float, path: Path
) -> Path:
    """The element's DI map (coloured up to twice the threshold) and its AOA."""
    di_array = zarr.open_array(applicability / layer_name(analysis.element, "di"), mode="r")
    step = max(1, math.ceil(max(di_array.shape) / MAP_PX))
    di = np.asarray(di_array[::step, ::step])
    aoa = np.asarray(
        zarr.open_array(applicability / layer_name(analysis.element, "aoa"), mode="r")[
            ::step, ::step
        ]
    )
    figure = _new_figure(11, 4.8)
    left, right = figure.subplots(1, 2)
    shown = left.imshow(di, cmap="magma_r", vmin=0, vmax=2 * analysis.space.threshold)
    figure.colorbar(
        shown, ax=left, shrink=0.8, label=f"DI (threshold {analysis.space.threshold:.3g})"
    )
    left.set_title(f"{analysis.element}: dissimilarity index")
    classes = np.where(aoa == AOA_NODATA, np.nan, aoa.astype(np.float64))
    right.imshow(classes, cmap="RdYlGn", vmin=0, vmax=1, interpolation="nearest")
    right.set_title(f"area of applicability: {share:.0%} of valid pixels inside (green)")
    for ax in (left, right):
        ax.set_axis_off()
    return _save(figure, path)


def map_figure(
    prediction: xr.Dataset,
    analysis: ElementAnalysis,
    applicability: Path | None,
    level: float,
    path: Path,
) -> Path:
    """The element's predicted mean and the half-width ``k·sd`` of its calibrated interval,
    grey outside the area of applicability when it was computed."""
    element = analysis.element
    mean_layer = prediction[variable_name(element, "mean")]
    step = max(1, math.ceil(max(mean_layer.shape) / MAP_PX))
    every = {"y": slice(None, None, step), "x": slice(None, None, step)}
    mean = np.asarray(mean_layer.isel(every).values, dtype=np.float64)
    half = analysis.k * np.asarray(
        prediction[variable_name(element, "sd")].isel(every).values, dtype=np.float64
    )
    outside = np.zeros(mean.shape, dtype=bool)
    if applicability is not None:
        aoa = zarr.open_array(applicability / layer_name(element, "aoa"), mode="r")
        outside = np.asarray(aoa[::step, ::step]) == 0
    figure = _new_figure(11, 4.8)
    for ax, values, title, cmap in zip(
        figure.subplots(1, 2),
        (mean, half),
        (
            f"{element}: mean, mg/kg",
            f"half-width of the {level:.0%} interval (k = {analysis.k:.2f}), mg/kg",
        ),
        ("viridis", "magma_r"),
        strict=True,
    ):
        ax.set_facecolor("#bbbbbb")
        shown = ax.imshow(np.where(outside, np.nan, values), cmap=cmap, interpolation="nearest")
        figure.colorbar(shown, ax=ax, shrink=0.8)
        ax.set_title(title, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    return _save(figure, path)


#: Sections of the report's figures, in the page's order.
SECTIONS = ("descriptive", "groups", "drivers", "checks", "applicability", "uncertainty", "maps")
#: One figure to draw: its report section, the function drawing it and that function's
#: arguments (the last is the PNG path; the function returns it, or None if nothing to draw).
Drawing = tuple[str, Callable[..., Path | None], tuple[Any, ...]]


def draw_figures(
    contents: ReportContents, directory: Path, applicability: Path
) -> dict[str, list[Path]]:
    """Every figure of the report, by section."""
    drawings = _drawings(contents, directory, applicability)
    sections: dict[str, list[Path]] = {section: [] for section in SECTIONS}
    for (section, _, _), path in zip(drawings, _draw(drawings, contents.analyses), strict=True):
        if path is not None:
            sections[section].append(path)
    return sections


def _drawings(contents: ReportContents, directory: Path, applicability: Path) -> list[Drawing]:
    """What :func:`draw_figures` draws, in the report's order."""
    analyses = contents.analyses
    drawings: list[Drawing] = [
        ("descriptive", histogram_figure, (contents.kept, directory / "histograms.png")),
        ("checks", observed_predicted_figure, (analyses, directory / "observed_predicted.png")),
        (
            "uncertainty",
            coverage_figure,
            (analyses, contents.settings.level, directory / "coverage.png"),
        ),
    ]
    for factor in FACTORS:
        drawings.append(
            ("groups", groups_figure, (analyses, factor, directory / f"groups_{factor}.png"))
        )
    for analysis in analyses:
        element = analysis.element
        drawings += [
            ("drivers", importance_figure, (analysis, directory / f"importance_{element}.png")),
            ("drivers", effects_figure, (analysis, directory / f"effects_{element}.png")),
        ]
        if element in contents.shares:
            share = contents.shares[element]
            path = directory / f"applicability_{element}.png"
            drawings.append(
                ("applicability", applicability_figure, (applicability, analysis, share, path))
            )
        if (
            contents.prediction is not None
            and variable_name(element, "mean") in contents.prediction
        ):
            aoa = applicability if element in contents.shares else None
            level = contents.settings.level
            path = directory / f"map_{element}.png"
            drawings.append(("maps", map_figure, (contents.prediction, analysis, aoa, level, path)))
    return drawings


def _draw(drawings: Sequence[Drawing], analyses: Sequence[ElementAnalysis]) -> list[Path | None]:
    """Draw every figure: one task per figure on the current Dask client (rendering and PNG
    encoding are most of a report's time, and its workers are otherwise idle), or one after
    another in this process when there is no client. The analyses reach each worker once."""
    with task_runner(local_threads=1) as runner:
        shared = dict(zip(map(id, analyses), runner.share(*analyses), strict=True))

        def sent(value: Any) -> Any:
            """An argument as the task gets it: analyses (alone or a tuple of them) shared."""
            if isinstance(value, ElementAnalysis):
                return shared[id(value)]
            if (
                isinstance(value, tuple)
                and value
                and all(isinstance(v, ElementAnalysis) for v in value)
            ):
                return tuple(shared[id(v)] for v in value)
            return value

        futures = [runner.submit(function, *map(sent, args)) for _, function, args in drawings]
        return runner.gather(futures)
