"""Quicklook PNGs: an element's mean, its calibrated interval's bounds (when the run has them)
and its between-tree sd side by side, each with a colour bar, and a line saying what the white
pixels are.

A quicklook shows a published run at a glance, without a GIS. It is drawn from the COGs'
overviews, so it needs the COGs written first and never reads the whole map. The mean and the
uncertainty have the colour maps of the report's maps (:data:`MEAN_COLOURS`,
:data:`UNCERTAINTY_COLOURS`: sequential, the uncertainty light where it is low), so the two
read alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
import rasterio
from rasterio.enums import Resampling

from tpgrid.outputs.layers import UNITS, layer_title
from tpgrid.outputs.names import cog_name, quicklook_name

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: Longest side of a quicklook panel, in pixels of the map (read from the COG's overviews).
QUICKLOOK_PX = 800
#: Colour maps of a mean and of an uncertainty (sd, variance, interval half-width) here and
#: in the report's maps: sequential, the uncertainty light where low (small is good) but never
#: white, which is no data.
MEAN_COLOURS = "viridis"
UNCERTAINTY_COLOURS = "plasma_r"
#: What the pixels left white are.
NO_DATA_NOTE = (
    "White: no data (outside the mask, a covariate missing there, or, with unseen: nan, "
    "a class the model never saw)"
)
#: One panel of the figure, in inches at `DPI`, and the room of each panel's parts, in inches:
#: the no-data note at the bottom, the map's ticks and labels left and below it, its title
#: above, its colour bar's ticks and label right.
PANEL_IN = (5.5, 4.85)
DPI = 100
_NOTE, _LEFT, _BOTTOM, _TOP, _RIGHT = 0.25, 0.8, 0.55, 0.35, 0.95
_BAR_PAD, _BAR_WIDTH, _BAR_SHRINK = 0.12, 0.15, 0.85
#: zlib level of the PNG: the default (6) makes a quicklook ~20 % slower for a file ~10 %
#: smaller (see docs/performance.md).
PNG_COMPRESS_LEVEL = 3
_Rect = tuple[float, float, float, float]


def quicklook_layers(layers: Sequence[str]) -> tuple[str, ...]:
    """The layers a quicklook draws, of an element with ``layers``: the mean, the interval's
    bounds if there, the sd."""
    interval = ("lower", "upper") if {"lower", "upper"} <= set(layers) else ()
    return ("mean", *interval, "sd")


def write_quicklook(
    directory: Path, element: str, layers: Sequence[str], level: float | None = None
) -> Path:
    """Draw the quicklook of ``element`` (whose run has ``layers``; ``level``: its interval's)
    from its COGs in ``directory`` into the same directory (run as a Dask task, beside the COG
    tasks)."""
    path = directory / quicklook_name(element)
    quicklook_figure(directory, element, layers, level).savefig(
        path, dpi=DPI, pil_kwargs={"compress_level": PNG_COMPRESS_LEVEL}
    )
    return path


def quicklook_figure(
    directory: Path, element: str, layers: Sequence[str], level: float | None = None
) -> Figure:
    """The :func:`quicklook_layers` of ``element`` side by side, each with a colour bar in
    mg/kg, read from the COGs in ``directory``, above a line saying what white (NaN) pixels
    are. The interval's bounds share the mean's colour scale, so the three read alike."""
    # Imported here: prediction workers import this module and never draw.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = quicklook_layers(layers)
    values = {layer: _overview(directory / cog_name(element, layer)) for layer in panels}
    content = [layer for layer in panels if layer != "sd"]
    scales = {
        "sd": _colour_range(values["sd"][0]),
        **dict.fromkeys(content, _colour_range(*(values[layer][0] for layer in content))),
    }
    figure = Figure(figsize=(PANEL_IN[0] * len(panels), PANEL_IN[1]))
    FigureCanvasAgg(figure)  # attaches a non-interactive canvas: no pyplot, no display
    for k, layer in enumerate(panels):
        pixels, extent_km = values[layer]
        map_rect, bar_rect = _panel_rects(k, len(panels), extent_km)
        axes = figure.add_axes(map_rect)
        low, high = scales[layer]
        colours = UNCERTAINTY_COLOURS if layer == "sd" else MEAN_COLOURS
        image = axes.imshow(
            np.ma.masked_invalid(pixels), cmap=colours, vmin=low, vmax=high, extent=extent_km
        )
        axes.set_title(f"{element} {layer_title(layer, level)}")
        axes.set_xlabel("easting (km)")
        axes.set_ylabel("northing (km)")
        bar = figure.add_axes(bar_rect, label="<colorbar>")
        figure.colorbar(image, cax=bar, label=f"{element} ({UNITS})")
    figure.text(0.5, 0.4 * _NOTE / PANEL_IN[1], NO_DATA_NOTE, ha="center", fontsize=9)
    return figure


def _colour_range(*arrays: npt.NDArray[np.float32]) -> tuple[float, float]:
    """The 2nd to 98th percentile of the finite values of ``arrays``, (0, 1) without any."""
    finite = np.concatenate([a[np.isfinite(a)] for a in arrays])
    if not finite.size:
        return 0.0, 1.0
    low, high = np.percentile(finite, [2, 98])
    return float(low), float(high)


def _panel_rects(
    k: int, panels: int, extent_km: tuple[float, float, float, float]
) -> tuple[_Rect, _Rect]:
    """Figure-fraction rectangles of panel ``k``'s map and colour bar: the map as large as its
    aspect allows in the panel's room, the bar beside it. Fixed arithmetic, not matplotlib's
    constrained layout, which measured every tick label twice and took ~40 % of a quicklook."""
    width, height = PANEL_IN[0] * panels, PANEL_IN[1]
    room_w = width / panels - _LEFT - _RIGHT - _BAR_PAD - _BAR_WIDTH
    room_h = height - _NOTE - _BOTTOM - _TOP
    left, right, bottom, top = extent_km
    aspect = abs(right - left) / max(abs(top - bottom), 1e-12)
    map_w, map_h = (
        (room_w, room_w / aspect) if room_w / aspect <= room_h else (room_h * aspect, room_h)
    )
    x = k * width / panels + _LEFT + (room_w - map_w) / 2
    y = _NOTE + _BOTTOM + (room_h - map_h) / 2
    # As tall as the panel's room (shrunk), as matplotlib's colorbar(ax=...) places it.
    bar_h = _BAR_SHRINK * room_h
    bar = (x + map_w + _BAR_PAD, _NOTE + _BOTTOM + (room_h - bar_h) / 2, _BAR_WIDTH, bar_h)
    return _fraction((x, y, map_w, map_h), width), _fraction(bar, width)


def _fraction(inches: _Rect, width: float) -> _Rect:
    """A rectangle (left, bottom, width, height) in inches as fractions of a figure ``width``
    inches wide."""
    height = PANEL_IN[1]
    return (inches[0] / width, inches[1] / height, inches[2] / width, inches[3] / height)


def _overview(cog: Path) -> tuple[npt.NDArray[np.float32], tuple[float, float, float, float]]:
    """The COG at most `QUICKLOOK_PX` pixels across (GDAL reads a fitting overview) and its
    extent in km (left, right, bottom, top)."""
    with rasterio.open(cog) as src:
        scale = max(1.0, max(src.width, src.height) / QUICKLOOK_PX)
        shape = (max(1, round(src.height / scale)), max(1, round(src.width / scale)))
        values = src.read(1, out_shape=shape, resampling=Resampling.average, masked=True)
        b = src.bounds
    filled = values.astype(np.float32).filled(np.nan)
    return filled, (b.left / 1e3, b.right / 1e3, b.bottom / 1e3, b.top / 1e3)
