"""The report's figures drawn with matplotlib as PNG files, each from plain data only (numbers,
strings and numpy arrays: what :mod:`tpgrid.report.figure_data` extracts), so a figure is a
function of exactly the data it is given and can be drawn by any worker."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: Longest side of a map figure, in pixels of the grid (larger grids are strided).
MAP_PX = 900
DPI = 110
#: PNG text chunks: none. Matplotlib writes its version as "Software" by default; the figure's
#: key records the version instead, so equal data gives equal bytes.
_METADATA: dict[str, str | None] = {"Software": None}

#: What a figure is drawn from: names to plain values (see :func:`tpgrid.report.figure_data`).
Data = Mapping[str, Any]


def number(value: float, digits: int = 3) -> str:
    """``digits`` significant digits, but whole numbers rather than exponents for thousands
    (Fe is tens of thousands of mg/kg); the page's tables write numbers the same way."""
    return f"{value:.0f}" if abs(value) >= 10**digits else f"{value:.{digits}g}"


def _new_figure(width: float, height: float) -> Figure:
    # Imported here, as xarray and pandas do: a run that draws nothing (a no-op re-run)
    # should not spend half a second importing matplotlib.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, path: Path) -> None:
    figure.savefig(path, dpi=DPI, metadata=_METADATA)


def _panels(figure: Figure, n: int, columns: int) -> list[Any]:
    rows = math.ceil(n / columns)
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return list(axes[:n])


def histogram_figure(data: Data, path: Path) -> None:
    """One histogram per element of the screened sample values, with the site-level mean."""
    panels = data["panels"]
    columns = min(4, len(panels))
    figure = _new_figure(3.2 * columns, 2.6 * math.ceil(len(panels) / columns))
    for ax, panel in zip(_panels(figure, len(panels), columns), panels, strict=True):
        ax.hist(panel["values"], bins=25, color="#4c72b0", edgecolor="white")
        ax.axvline(panel["site_mean"], color="black", linestyle="--", linewidth=1)
        ax.set_title(f"{panel['element']} (n = {len(panel['values'])})")
        ax.set_xlabel("mg/kg")
    _save(figure, path)


def groups_figure(data: Data, path: Path) -> None:
    """Violins, boxes, means and Tukey letters of site means by the classes of a factor, one
    panel per element that has the comparison."""
    panels = data["panels"]
    columns = min(4, len(panels))
    figure = _new_figure(3.6 * columns, 3.0 * math.ceil(len(panels) / columns) + 0.4)
    figure.suptitle(f"site means by {data['factor']}")
    for ax, panel in zip(_panels(figure, len(panels), columns), panels, strict=True):
        order, values = panel["classes"], panel["values"]
        positions = np.arange(len(order))
        ax.violinplot(values, positions, showextrema=False)
        ax.boxplot(values, positions=positions, widths=0.15, showfliers=False)
        ax.plot(positions, [v.mean() for v in values], "o", color="black", markersize=4)
        top = max(float(v.max()) for v in values)
        for x, letters in zip(positions, panel["letters"], strict=True):
            ax.text(x, top * 1.04, letters, ha="center", fontsize=9)
        ax.set_ylim(top=top * 1.12)
        ax.set_xticks(positions, order, rotation=30, fontsize=8)
        ax.set_title(f"{panel['element']}: ANOVA p = {panel['p_value']:.2g}", fontsize=10)
        ax.set_ylabel("site mean, mg/kg (as modelled)")
    _save(figure, path)


def importance_figure(data: Data, path: Path) -> None:
    """%IncMSE per predictor (± SD between shuffles), summed per group, and betasq shares;
    bars bottom-up in the order given."""
    figure = _new_figure(12, 0.22 * len(data["predictors"]) + 1.6)
    left, middle, right = figure.subplots(1, 3, width_ratios=(1.3, 1, 1.3))
    left.barh(data["predictors"], data["incmse"], xerr=data["sd"], color="#4c72b0")
    left.set_xlabel("%IncMSE (held-out)")
    middle.barh(data["groups"], data["group_incmse"], color="#55a868")
    middle.set_xlabel("%IncMSE summed per group")
    right.barh(data["betasq_columns"], data["betasq_percent"], color="#c44e52")
    right.set_xlabel("betasq, % of total")
    for ax in (left, middle, right):
        ax.tick_params(labelsize=8)
    figure.suptitle(f"{data['element']}: drivers")
    _save(figure, path)


def effects_figure(data: Data, path: Path) -> None:
    """PDP (top) and ALE (bottom) of the chosen predictors, with the training deciles."""
    curves = data["curves"]
    figure = _new_figure(2.8 * len(curves), 5.0)
    axes = figure.subplots(2, len(curves), squeeze=False)
    for j, curve in enumerate(curves):
        deciles = curve["deciles"]
        for ax, kind, label in (
            (axes[0, j], "pdp", "PDP, mg/kg"),
            (axes[1, j], "ale", "ALE, mg/kg"),
        ):
            values = curve[f"{kind}_values"]
            ax.plot(curve[f"{kind}_grid"], values, color="#4c72b0")
            ax.plot(deciles, np.full(len(deciles), values.min()), "|", color="grey", markersize=8)
            ax.set_xlabel(curve["variable"])
            if j == 0:
                ax.set_ylabel(label)
    figure.suptitle(f"{data['element']}: partial dependence (top), accumulated local effects")
    _save(figure, path)


def observed_predicted_figure(data: Data, path: Path) -> None:
    """Observed (y) against grouped-CV predicted (x) per element, OLS and 1:1 lines."""
    panels = data["panels"]
    columns = min(4, len(panels))
    figure = _new_figure(3.2 * columns, 3.1 * math.ceil(len(panels) / columns))
    for ax, panel in zip(_panels(figure, len(panels), columns), panels, strict=True):
        predicted, observed = panel["predicted"], panel["observed"]
        ax.scatter(predicted, observed, s=6, alpha=0.5, color="#4c72b0")
        low = float(min(predicted.min(), observed.min()))
        high = float(max(predicted.max(), observed.max()))
        ax.plot([low, high], [low, high], "--", color="grey", label="1:1")
        slope, intercept = panel["slope"], panel["intercept"]
        ax.plot(
            [low, high],
            [intercept + slope * low, intercept + slope * high],
            color="#1f3b73",
            label="OLS",
        )
        title = f"{panel['element']}: R² {panel['r2']:.2f}, RMSE {number(panel['rmse'])}"
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("predicted (grouped CV), mg/kg")
        ax.set_ylabel("observed, mg/kg")
        ax.legend(fontsize=7, loc="upper left")
    _save(figure, path)


def coverage_figure(data: Data, path: Path) -> None:
    """Achieved coverage of each interval method (rows of ``achieved``) per element (columns)
    against the nominal level."""
    elements, methods, level = data["elements"], data["methods"], data["level"]
    figure = _new_figure(max(6.0, 1.3 * len(elements) + 2), 3.6)
    ax = figure.subplots()
    width = 0.8 / len(methods)
    x = np.arange(len(elements))
    for i, (method, achieved) in enumerate(zip(methods, data["achieved"], strict=True)):
        ax.bar(x + (i - (len(methods) - 1) / 2) * width, achieved, width, label=method)
    ax.axhline(level, color="black", linestyle="--", linewidth=1, label=f"nominal {level:.0%}")
    ax.set_xticks(x, elements)
    ax.set_ylim(0, 1)
    ax.set_ylabel("share of held-out samples inside")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    _save(figure, path)


def interval_bins_figure(data: Data, path: Path) -> None:
    """Per element, the calibrated interval's held-out coverage per DI bin (x, low to high DI)
    of each CV scheme, against the nominal level; each point labelled with its sites."""
    panels, level = data["panels"], data["level"]
    figure = _new_figure(11, 2.6 * math.ceil(len(panels) / 4) + 0.6)
    for ax, panel in zip(_panels(figure, len(panels), 4), panels, strict=True):
        x = np.arange(len(panel["bins"]))
        for scheme, coverage in panel["coverage"].items():
            ax.plot(x, coverage, marker="o", label=scheme)
            for xi, c, n in zip(x, coverage, panel["sites"][scheme], strict=True):
                if n:
                    ax.annotate(
                        str(n), (xi, c), fontsize=6, xytext=(3, 3), textcoords="offset points"
                    )
        ax.axhline(level, color="black", linestyle="--", linewidth=1)
        ax.set_xticks(x, panel["bins"], fontsize=6)
        shown = np.concatenate([*panel["coverage"].values(), [1.0]])
        # From 0.7, or lower so that a poorly covered bin stays in view.
        ax.set_ylim(min(0.7, float(np.nanmin(shown)) - 0.02), 1.0)
        ax.set_title(panel["element"], fontsize=10)
        ax.set_xlabel("DI bin", fontsize=8)
        ax.set_ylabel("coverage", fontsize=8)
        ax.legend(fontsize=6, loc="lower left")
    _save(figure, path)


def applicability_figure(data: Data, path: Path) -> None:
    """The element's DI map (coloured up to twice the threshold) and its AOA (1 inside, 0
    outside, NaN where there is no data)."""
    element, threshold = data["element"], data["threshold"]
    figure = _new_figure(11, 4.8)
    left, right = figure.subplots(1, 2)
    shown = left.imshow(data["di"], cmap="magma_r", vmin=0, vmax=2 * threshold)
    figure.colorbar(shown, ax=left, shrink=0.8, label=f"DI (threshold {threshold:.3g})")
    left.set_title(f"{element}: dissimilarity index")
    right.imshow(data["aoa"], cmap="RdYlGn", vmin=0, vmax=1, interpolation="nearest")
    right.set_title(f"area of applicability: {data['share']:.0%} of valid pixels inside (green)")
    for ax in (left, right):
        ax.set_axis_off()
    _save(figure, path)


def map_figure(data: Data, path: Path) -> None:
    """The element's predicted mean and the spread of its interval (``spread``, titled
    ``spread_title``), in the colour maps the data names (the quicklooks'); grey outside the
    area of applicability (``outside``), white where there is no data (NaN)."""
    element = data["element"]
    outside = np.asarray(data["outside"], dtype=bool)
    grey = np.zeros((*outside.shape, 4))
    grey[outside] = (0.73, 0.73, 0.73, 1.0)
    figure = _new_figure(11, 4.8)
    for ax, values, title, cmap in zip(
        figure.subplots(1, 2),
        (data["mean"], data["spread"]),
        (f"{element}: mean, mg/kg", data["spread_title"]),
        (data["mean_colours"], data["uncertainty_colours"]),
        strict=True,
    ):
        shown = ax.imshow(np.where(outside, np.nan, values), cmap=cmap, interpolation="nearest")
        ax.imshow(grey, interpolation="nearest")
        figure.colorbar(shown, ax=ax, shrink=0.8)
        ax.set_title(title, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    _save(figure, path)


#: Every kind of figure and the function drawing it.
DRAW: dict[str, Callable[[Data, Path], None]] = {
    "histograms": histogram_figure,
    "groups": groups_figure,
    "importance": importance_figure,
    "effects": effects_figure,
    "observed_predicted": observed_predicted_figure,
    "coverage": coverage_figure,
    "interval_bins": interval_bins_figure,
    "applicability": applicability_figure,
    "map": map_figure,
}
