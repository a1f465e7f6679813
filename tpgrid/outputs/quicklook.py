"""Quicklook PNGs: an element's mean and sd side by side, each with a colour bar.

A quicklook shows a published run at a glance, without a GIS. It is drawn from the COGs'
overviews, so it needs the COGs written first and never reads the whole map.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
import rasterio
from rasterio.enums import Resampling

from tpgrid.outputs.layers import UNITS
from tpgrid.outputs.names import cog_name

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: Longest side of a quicklook panel, in pixels of the map (read from the COG's overviews).
QUICKLOOK_PX = 800


def quicklook_figure(directory: Path, element: str) -> Figure:
    """Mean and sd of ``element`` side by side, each with a colour bar in mg/kg, read from the
    COGs in ``directory``."""
    # Imported here: prediction workers import this module and never draw.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = [("mean", "viridis"), ("sd", "magma")]
    figure = Figure(figsize=(11, 4.6), layout="constrained")
    FigureCanvasAgg(figure)  # attaches a non-interactive canvas: no pyplot, no display
    for k, (layer, colours) in enumerate(panels):
        values, extent_km = _overview(directory / cog_name(element, layer))
        axes = figure.add_subplot(1, len(panels), k + 1)
        finite = values[np.isfinite(values)]
        low, high = np.percentile(finite, [2, 98]) if finite.size else (0.0, 1.0)
        image = axes.imshow(
            np.ma.masked_invalid(values), cmap=colours, vmin=low, vmax=high, extent=extent_km
        )
        axes.set_title(f"{element} {'mean' if layer == 'mean' else 'between-tree SD'}")
        axes.set_xlabel("easting (km)")
        axes.set_ylabel("northing (km)")
        figure.colorbar(image, ax=axes, shrink=0.85, label=f"{element} ({UNITS})")
    return figure


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
