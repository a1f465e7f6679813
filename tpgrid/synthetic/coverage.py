"""How often a published prediction interval covers the synthetic plateau's truth, pixel by
pixel over the whole map, not only at the sites it was calibrated on.

The interval is one for a *measurement*: what a new sample at the pixel would read, on the
scale the model predicts. So every valid pixel gets one simulated sample, measured as the
site table's samples are (:func:`tpgrid.synthetic.sampling.measure_sites`: truth × site
effect × sample noise → ICP-MS → XRF, then the model's own XRF calibration if it was
calibrated), and the share of pixels whose sample lies inside ``[lower, upper]`` is set against
the nominal level, overall and per DI bin of the interval's calibration. The coverage of the
noise-free truth on the same scale is reported beside it (it should exceed the nominal level:
the interval also holds the measurement noise). The map is read chunk by chunk: memory is
bounded by the chunk, not by the map.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import zarr
from rasterio.windows import Window

from tpgrid.core.arrays import F64
from tpgrid.core.intervals import IntervalCalibration
from tpgrid.errors import ConfigError
from tpgrid.grid import TargetGrid
from tpgrid.outputs import open_prediction, variable_name
from tpgrid.synthetic.fields import random_stream
from tpgrid.synthetic.paper import ICPMS_NOISE_SD, SAMPLE_NOISE_SD, SITE_EFFECT_SD, XRF_BIAS
from tpgrid.synthetic.writer import PlateauFiles


@dataclass(frozen=True)
class MapCoverage:
    """One element's interval over the map, in one DI bin (``bin`` None: every pixel)."""

    element: str
    bin: int | None
    di_low: float
    di_high: float
    pixels: int
    nominal: float
    sample_coverage: float  # share of simulated new samples inside the interval
    truth_coverage: float  # share of noise-free truths inside it
    mean_width: float  # mg/kg

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def measured_on_model_scale(
    truth: F64, element: str, calibration: Mapping[str, Any] | None, rng: np.random.Generator
) -> F64:
    """One new sample per truth value, measured as the synthetic site table's are and put on
    the model's scale: XRF as read, or XRF calibrated to ICP-MS by ``calibration`` (the fit's
    record of it: ``value = (xrf - intercept) / slope``)."""
    n = truth.size
    icpms = truth * rng.lognormal(0.0, SITE_EFFECT_SD, n) * rng.lognormal(0.0, SAMPLE_NOISE_SD, n)
    icpms *= rng.lognormal(0.0, ICPMS_NOISE_SD, n)
    bias = XRF_BIAS[element]
    xrf = (bias.intercept + bias.slope * icpms) * rng.lognormal(0.0, bias.noise_sd, n)
    return _on_model_scale(xrf, calibration)


def truth_on_model_scale(truth: F64, element: str, calibration: Mapping[str, Any] | None) -> F64:
    """The noise-free truth as the model's scale reads it (XRF's bias, then its calibration)."""
    bias = XRF_BIAS[element]
    return _on_model_scale(bias.intercept + bias.slope * truth, calibration)


def _on_model_scale(xrf: F64, calibration: Mapping[str, Any] | None) -> F64:
    if calibration is None:
        return xrf
    result: F64 = (xrf - float(calibration["intercept"])) / float(calibration["slope"])
    return result


def map_coverage(
    prediction: Path,
    plateau: PlateauFiles,
    xrf_calibrations: Mapping[str, Mapping[str, Any] | None],
    seed: int = 0,
) -> list[MapCoverage]:
    """The coverage of every element's published interval over the map of the run at
    ``prediction``, against the truth of ``plateau``: overall, then per DI bin of its
    calibration. ``xrf_calibrations`` is each model's XRF calibration record (None: trained on
    XRF as read). Elements of a run without intervals, or without DI, are left out."""
    _, run = open_prediction(prediction)
    grid = TargetGrid.from_record(run["grid"], f"prediction {prediction}")
    rows: list[MapCoverage] = []
    for element, model in run["models"].items():
        if (
            model.get("interval") is None
            or not (prediction / variable_name(element, "di")).exists()
        ):
            continue
        arrays = {
            layer: zarr.open_array(prediction / variable_name(element, layer), mode="r")
            for layer in ("lower", "upper", "di")
        }
        calibration = IntervalCalibration.from_json(model["interval"])
        rng = random_stream(seed, f"map coverage {element}")
        counts = np.zeros((calibration.n_bins, 4))  # pixels, sample in, truth in, width sum
        with rasterio.open(plateau.truth(element)) as source:
            if source.shape != grid.shape or source.transform != grid.geobox.affine:
                raise ConfigError(
                    f"the truth {plateau.truth(element)} is a {source.height} x {source.width} "
                    f"grid, the prediction {prediction} a {grid.shape[0]} x {grid.shape[1]} one "
                    "(another resolution?): the coverage against the truth needs the maps on "
                    "the plateau's own grid"
                )
            for window in grid.windows():
                layers = {
                    layer: np.asarray(array[window.rows, window.cols])
                    for layer, array in arrays.items()
                }
                truth = source.read(
                    1,
                    window=Window(
                        window.cols.start,
                        window.rows.start,
                        window.cols.stop - window.cols.start,
                        window.rows.stop - window.rows.start,
                    ),
                ).astype(np.float64)
                inside = np.isfinite(layers["lower"]) & np.isfinite(truth)
                lower = layers["lower"][inside].astype(np.float64)
                upper = layers["upper"][inside].astype(np.float64)
                true = truth[inside]
                sample = measured_on_model_scale(true, element, xrf_calibrations[element], rng)
                expected = truth_on_model_scale(true, element, xrf_calibrations[element])
                bins = calibration.bin_of(layers["di"][inside])
                for values, column in (
                    (np.ones_like(lower), 0),
                    ((sample >= lower) & (sample <= upper), 1),
                    ((expected >= lower) & (expected <= upper), 2),
                    (upper - lower, 3),
                ):
                    counts[:, column] += np.bincount(
                        bins, weights=values, minlength=calibration.n_bins
                    )
        edges = (0.0, *calibration.di_edges, np.inf)
        total = counts.sum(axis=0)
        rows.append(_row(element, None, 0.0, np.inf, total, calibration.level))
        rows += [
            _row(element, b, edges[b], edges[b + 1], counts[b], calibration.level)
            for b in range(calibration.n_bins)
        ]
    return rows


def _row(
    element: str, bin: int | None, low: float, high: float, counts: F64, nominal: float
) -> MapCoverage:
    pixels = int(counts[0])
    shares = counts[1:] / pixels if pixels else np.full(3, np.nan)
    return MapCoverage(element, bin, low, high, pixels, nominal, *(float(v) for v in shares))
