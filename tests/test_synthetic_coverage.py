"""The published interval against the synthetic truth, pixel by pixel over a map."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import rasterio
from scipy import stats

from tests.conftest import SMALL_SPEC
from tpgrid.core.blocks import PredictOptions
from tpgrid.core.intervals import IntervalCalibration
from tpgrid.grid import TargetGrid
from tpgrid.outputs import ATTR_RUN, global_attrs, layer_layouts, variable_name, write_run_record
from tpgrid.store import create_layout, finish, write_window
from tpgrid.synthetic import plateau_files
from tpgrid.synthetic.coverage import map_coverage, measured_on_model_scale, truth_on_model_scale
from tpgrid.synthetic.paper import ICPMS_NOISE_SD, SAMPLE_NOISE_SD, SITE_EFFECT_SD, XRF_BIAS

OPTIONS = PredictOptions(quantiles=(), interval=True, applicability=True)
CALIBRATION = IntervalCalibration(0.9, "sd", (0.05, 0.95), (0.5,), (1.5, 2.0), (40, 35))
#: The XRF calibration Zn's model was trained with (the fit's record of it).
ZN_CALIBRATION = {"intercept": 8.5, "slope": 0.74}


def log_noise_sd(element: str) -> float:
    """SD of log(sample / truth) when XRF has no intercept: every lognormal factor's."""
    parts = (SITE_EFFECT_SD, SAMPLE_NOISE_SD, ICPMS_NOISE_SD, XRF_BIAS[element].noise_sd)
    return math.sqrt(sum(p * p for p in parts))


def test_a_simulated_sample_is_measured_as_the_site_table_is() -> None:
    rng = np.random.default_rng(0)
    truth = np.full(200_000, 30_000.0)
    sample = measured_on_model_scale(truth, "Fe", None, rng)
    assert np.std(np.log(sample / truth)) == pytest.approx(log_noise_sd("Fe"), rel=0.01)
    zn = measured_on_model_scale(np.full(200_000, 80.0), "Zn", ZN_CALIBRATION, rng)
    expected = truth_on_model_scale(np.array([80.0]), "Zn", ZN_CALIBRATION)[0]
    assert expected == pytest.approx((8.0 + 0.75 * 80.0 - 8.5) / 0.74)
    assert np.median(zn) == pytest.approx(expected, rel=0.01)


def test_map_coverage_is_the_share_of_pixels_inside_per_di_bin(tmp_path: Path) -> None:
    grid = TargetGrid.from_spec(SMALL_SPEC)
    plateau = plateau_files(tmp_path / "plateau")
    plateau.truth_dir.mkdir(parents=True)
    rows, cols = np.indices(grid.shape)
    truth = (20_000 + 20 * rows + 10 * cols).astype(np.float32)
    profile = {"driver": "GTiff", "dtype": "float32", "count": 1, "crs": grid.crs.to_wkt()}
    with rasterio.open(
        plateau.truth("Fe"), "w", **profile, width=grid.shape[1], height=grid.shape[0],
        transform=grid.geobox.affine,
    ) as out:  # fmt: skip
        out.write(truth, 1)
    # An interval of ±z log-SDs around the truth: a sample falls inside with probability
    # 2Φ(z) − 1 (the XRF of Fe has no intercept, so the noise is lognormal), the truth always.
    # Left half in DI bin 0 with z = 1, right half in bin 1 with z = 2; a NaN block has none.
    z = np.where(cols < grid.shape[1] // 2, 1.0, 2.0)
    s = log_noise_sd("Fe")
    layers = {
        "lower": truth * np.exp(-z * s),
        "upper": truth * np.exp(z * s),
        "di": np.where(z == 1.0, 0.2, 0.9),
    }
    layers["lower"][:40, :40] = np.nan
    path = tmp_path / "maps.zarr"
    layouts = layer_layouts("Fe", 20, OPTIONS, 0.9)
    create_layout(path, grid, layouts)
    for layer, values in layers.items():
        for window in grid.windows():
            part = values[window.rows, window.cols].astype(np.float32)
            write_window(path, variable_name("Fe", layer), window, part)
    record = {
        "run_id": "cd" * 32,
        "grid": grid.spec.model_dump(mode="json"),
        "options": OPTIONS.to_json(),
        "models": {"Fe": {"model_hash": "f" * 64, "interval": CALIBRATION.to_json()}},
    }
    finish(path, global_attrs(grid, ["Fe"], "cd" * 32) | {ATTR_RUN: write_run_record(path, record)})

    overall, left, right = map_coverage(path, plateau, {"Fe": None}, seed=3)
    n = grid.shape[0] * grid.shape[1] - 40 * 40
    assert (overall.bin, left.bin, right.bin) == (None, 0, 1)
    assert overall.pixels == n == left.pixels + right.pixels
    assert (left.di_low, left.di_high, right.di_low) == (0.0, 0.5, 0.5)
    assert math.isinf(right.di_high)
    for row, zed in ((left, 1.0), (right, 2.0)):
        expected = 2 * stats.norm.cdf(zed) - 1
        tolerance = 4 * math.sqrt(expected * (1 - expected) / row.pixels)
        assert row.sample_coverage == pytest.approx(expected, abs=tolerance)
        assert row.truth_coverage == 1.0
        assert row.nominal == 0.9
    width = (layers["upper"] - layers["lower"])[np.isfinite(layers["lower"])]
    assert overall.mean_width == pytest.approx(float(width.mean()), rel=1e-5)
