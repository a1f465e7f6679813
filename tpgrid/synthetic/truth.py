"""The element truth: the concentration of each element at each pixel, and its description.

The truth is computed from the covariates *as they appear on the target grid* through known
response functions (:data:`RESPONSES`, :data:`COEFFICIENTS`), following the shapes the paper
reports, times vegetation and lithology factors; :func:`tpgrid.synthetic.writer.write_plateau`
scales it to the paper's site means and :func:`truth_document` records it in ``truth.json``.

Each element has a few strong drivers and weak others (docs/synthetic.md): slope and lithology,
which vary from pixel to pixel anywhere, carry most of it, so a 4° × 3° piece of the plateau
still holds something to learn; the regional drivers (CIA, SOC, clay, the U-shaped MAP and AI)
add the trends across the whole plateau.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from tpgrid.core.arrays import F32, F64
from tpgrid.synthetic.layers import LITHOLOGY_CLASSES, VEGETATION_CLASSES
from tpgrid.synthetic.paper import (
    ELEMENTS,
    ICPMS_NOISE_SD,
    LITHOLOGY_FACTORS,
    PAPER_MEAN_SD,
    SAMPLE_NOISE_SD,
    SITE_EFFECT_SD,
    VEGETATION_FACTORS,
    XRF_BIAS,
)


@dataclass(frozen=True)
class Response:
    """One covariate's effect on the natural log of concentration, before its coefficient.

    With ``z = (x − centre) / scale``: ``linear`` is ``z``; ``hinge`` is ``max(z, 0)`` (no
    effect below ``centre``); ``saturating`` is ``1 − exp(−max(z, 0))`` (rises from ``centre``,
    95 % of its plateau at ``3·scale``); ``u`` is ``z²`` (trough at ``centre``).
    """

    covariate: str
    shape: Literal["linear", "hinge", "saturating", "u"]
    centre: float
    scale: float

    def __call__(self, x: npt.ArrayLike) -> F64:
        z = (np.asarray(x, dtype="float64") - self.centre) / self.scale
        if self.shape == "hinge":
            return np.maximum(z, 0.0)
        if self.shape == "saturating":
            return 1.0 - np.exp(-np.maximum(z, 0.0))
        if self.shape == "u":
            return z * z
        return z


RESPONSES: dict[str, Response] = {
    r.covariate: r
    for r in (
        Response("cia", "hinge", 0.5, 0.1),  # weathering only matters past CIA ≈ 0.5
        Response("slope", "saturating", 0.0, 3.5),  # degrees; rises below ~10°, flat above
        Response("map", "u", 400.0, 300.0),  # mm/yr; trough at 400 mm
        Response("ai", "u", 0.5, 0.3),  # trough at AI ≈ 0.5 (where MAP ≈ 400 mm)
        Response("clay", "linear", 20.0, 10.0),  # %
        Response("mat", "linear", 0.0, 8.0),  # °C
        Response("ph", "linear", 7.0, 1.0),
        Response("soc", "linear", 20.0, 20.0),  # g/kg
        Response("ndvi", "linear", 0.35, 0.2),
        Response("dem", "linear", 4000.0, 1000.0),  # m
        Response("grazing", "linear", 30.0, 30.0),  # sheep units/km²
    )
}

# Coefficients of each response on ln(mg/kg), per element (columns in RESPONSES order). Main
# drivers besides slope: Fe and Zn weathering (CIA; Zn the U in MAP and AI), Mn and Mo organic
# matter (SOC; Mo also pH), Cu and Ni clay; lithology and vegetation factors are in paper.py.
COEFFICIENTS: dict[str, dict[str, float]] = {
    element: dict(zip(RESPONSES, row, strict=True))
    for element, row in {
        #     cia   slope  map   ai    clay  mat   ph     soc   ndvi  dem    grazing
        "Fe": (0.25, 1.00, 0.04, 0.02, 0.10, 0.01, -0.01, 0.00, 0.01, -0.05, -0.01),
        "Mn": (0.06, 0.80, 0.04, 0.02, 0.03, 0.01, 0.02, 0.12, 0.02, -0.05, -0.01),
        "Cu": (0.06, 0.50, 0.03, 0.02, 0.30, 0.01, -0.01, 0.10, 0.01, -0.03, -0.02),
        "Zn": (0.15, 0.80, 0.08, 0.05, 0.05, 0.01, 0.01, 0.10, 0.02, -0.05, -0.01),
        "Ni": (0.04, 0.70, 0.02, 0.01, 0.20, 0.01, 0.01, 0.00, 0.01, -0.03, 0.00),
        "V": (0.08, 0.90, 0.03, 0.02, 0.10, 0.01, -0.01, 0.00, 0.01, -0.05, -0.01),
        "Mo": (0.03, 0.75, 0.02, 0.01, 0.03, 0.01, 0.10, 0.25, 0.01, -0.02, 0.00),
    }.items()
}


def response_functions() -> dict[str, Callable[[npt.ArrayLike], F64]]:
    """The declared response functions by covariate name (see :class:`Response`)."""
    return dict(RESPONSES)


def log_truth_without_intercept(covariates: Mapping[str, F32], element: str) -> F64:
    """``Σ β·f(x) + ln(vegetation factor) + ln(lithology factor)`` on the 1 km grid.

    ``covariates`` holds float arrays on the grid: continuous layers in their units, ``slope``
    in degrees, and ``vegetation``/``lithology`` as class codes (NaN = nodata). Pixels with any
    missing input come out NaN.
    """
    total = np.zeros(np.shape(covariates["dem"]), dtype="float64")
    for name, response in RESPONSES.items():
        total += COEFFICIENTS[element][name] * response(covariates[name])
    for layer, classes, factors in (
        ("vegetation", VEGETATION_CLASSES, VEGETATION_FACTORS[element]),
        ("lithology", LITHOLOGY_CLASSES, LITHOLOGY_FACTORS[element]),
    ):
        lookup = np.full(256, np.nan)
        for code, name in classes.items():
            lookup[code] = math.log(factors[name])
        codes = covariates[layer]
        total += lookup[np.where(np.isfinite(codes), codes, 0).astype("int64")]
    return total


def truth_document(size: str, seed: int, intercepts: Mapping[str, float]) -> dict[str, object]:
    """``truth/truth.json``: the model, and per element its intercept, coefficients, factors
    and XRF bias, so what a fit should recover can be read without this code."""
    return {
        "size": size,
        "seed": seed,
        "model": (
            "ln(c) = intercept + sum_j coefficient_j * response_j(x_j) "
            "+ ln(vegetation_factor) + ln(lithology_factor); c in mg/kg (ICP-MS scale)"
        ),
        "responses": {
            name: {
                **asdict(r),
                "formula": {
                    "linear": "z",
                    "hinge": "max(z, 0)",
                    "saturating": "1 - exp(-max(z, 0))",
                    "u": "z**2",
                }[r.shape]
                + " with z = (x - centre) / scale",
            }
            for name, r in RESPONSES.items()
        },
        "elements": {
            e: {
                "paper_mean_sd": list(PAPER_MEAN_SD[e]),
                "intercept": intercepts[e],
                "coefficients": COEFFICIENTS[e],
                "vegetation_factors": VEGETATION_FACTORS[e],
                "lithology_factors": LITHOLOGY_FACTORS[e],
                "xrf_bias": asdict(XRF_BIAS[e]),
            }
            for e in ELEMENTS
        },
        "noise_sd_ln": {
            "site_effect": SITE_EFFECT_SD,
            "sample": SAMPLE_NOISE_SD,
            "icpms": ICPMS_NOISE_SD,
        },
        "xrf_model": "xrf = (intercept + slope * icpms) * exp(N(0, noise_sd))",
    }
