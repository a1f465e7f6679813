"""Prediction groups with known values, written with the layout functions `predict_cube` uses,
so that publishing can be tested without fitting or predicting anything."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tpgrid.core.blocks import UNSEEN_NODATA, PredictOptions
from tpgrid.core.intervals import IntervalCalibration
from tpgrid.grid import TargetGrid
from tpgrid.outputs import (
    ATTR_RUN,
    global_attrs,
    layer_layouts,
    variable_name,
    write_run_record,
)
from tpgrid.store import create_layout, finish, write_window

#: The layers of these groups: the four every run has and a calibrated interval.
OPTIONS = PredictOptions(quantiles=(), interval=True, applicability=False)
LAYERS = OPTIONS.layers()
#: The calibration their intervals are recorded as made by.
CALIBRATION = IntervalCalibration(0.9, "sd", (0.05, 0.95), (0.5,), (1.5, 2.0), (40, 35))


def known_layers(grid: TargetGrid, element: str) -> dict[str, np.ndarray]:
    """A smooth mean with NaN outside a disc, its variance and sd, an unseen-class block, and
    the interval mean ± 2 sd."""
    rows, cols = np.indices(grid.shape)
    inside = (rows - 180) ** 2 + (cols - 180) ** 2 < 170**2
    scale = 30_000.0 if element == "Fe" else 1.5
    mean = np.where(inside, scale * (1 + rows / 400 + cols / 800), np.nan).astype(np.float32)
    variance = (0.1 * mean) ** 2
    unseen = np.where(inside, 0, UNSEEN_NODATA).astype(np.uint8)
    unseen[100:120, 100:140] = 1
    mean[100:120, 100:140] = np.nan
    variance[100:120, 100:140] = np.nan
    sd = np.sqrt(variance)
    return {
        "mean": mean,
        "variance": variance,
        "sd": sd,
        "unseen": unseen,
        "lower": mean - 2 * sd,
        "upper": mean + 2 * sd,
    }


def write_run_group(
    path: Path,
    grid: TargetGrid,
    elements: Sequence[str],
    run_id: str,
    cv_r2: dict[str, float] | None = None,
) -> Path:
    """A complete prediction group of ``elements`` identified as run ``run_id``, its models'
    grouped-CV R² ``cv_r2`` (0.5 for an element not given)."""
    layouts = {}
    for element in elements:
        layouts |= layer_layouts(element, 20, OPTIONS, CALIBRATION.level)
    create_layout(path, grid, layouts)
    for element in elements:
        for layer, values in known_layers(grid, element).items():
            for window in grid.windows():
                name = variable_name(element, layer)
                write_window(path, name, window, values[window.rows, window.cols])
    record = {
        "run_id": run_id,
        "grid": grid.spec.model_dump(mode="json"),
        "options": OPTIONS.to_json(),
        "models": {
            e: {
                "model_hash": e.lower() * 32,
                "n_trees": 20,
                "cv_r2": (cv_r2 or {}).get(e, 0.5),
                "interval": CALIBRATION.to_json(),
            }
            for e in elements
        },
    }
    finish(path, global_attrs(grid, elements, run_id) | {ATTR_RUN: write_run_record(path, record)})
    return path
