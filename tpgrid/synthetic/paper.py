"""The paper's numbers the synthetic plateau reproduces (pure data).

Site-level element means and SDs, vegetation and lithology group factors shaped on its group
means, the XRF reading's bias against ICP-MS, measurement noise, and how many sites, element
values and outliers the full survey has.
"""

from __future__ import annotations

from dataclasses import dataclass

ELEMENTS = ("Fe", "Mn", "Cu", "Zn", "Ni", "V", "Mo")

# Site-level mean ± SD of the paper (mg/kg); the truth is scaled to these means at the sites.
PAPER_MEAN_SD: dict[str, tuple[float, float]] = {
    "Fe": (22864.30, 7589.01),
    "Mn": (576.74, 206.44),
    "Cu": (25.32, 9.28),
    "Zn": (27.24, 8.55),
    "Ni": (49.35, 10.98),
    "V": (56.99, 19.33),
    "Mo": (4.63, 1.14),
}

# Multiplicative vegetation factors, shaped on the paper's Fe group means / Fe site mean
# (shrub 26,264, forest 26,091, steppe 19,852, desert 19,763); element e uses factor ** gamma_e.
_VEGETATION_BASE = {
    "forest": 1.141,
    "shrub": 1.149,
    "meadow": 1.02,
    "steppe": 0.868,
    "desert": 0.864,
    "cropland": 1.05,
}
_VEGETATION_GAMMA = {"Fe": 1.0, "Mn": 0.9, "Cu": 0.8, "Zn": 0.8, "Ni": 0.6, "V": 1.0, "Mo": 0.5}
# Lithology factors shaped on the paper's Ni group means (MA 64.43, SO 41.06) / Ni site mean;
# element e uses factor ** lambda_e. Parent rock varies from one patch to the next everywhere,
# so with slope it carries most of what a model can learn inside a small region.
_LITHOLOGY_BASE = {"IA": 1.06, "MA": 1.306, "SC": 0.97, "SO": 0.832, "UE": 0.93, "UF": 1.0}
_LITHOLOGY_LAMBDA = {"Fe": 0.8, "Mn": 0.8, "Cu": 1.2, "Zn": 0.8, "Ni": 1.0, "V": 1.0, "Mo": 1.0}

VEGETATION_FACTORS = {
    e: {v: round(f ** _VEGETATION_GAMMA[e], 4) for v, f in _VEGETATION_BASE.items()}
    for e in ELEMENTS
}
LITHOLOGY_FACTORS = {
    e: {c: round(f ** _LITHOLOGY_LAMBDA[e], 4) for c, f in _LITHOLOGY_BASE.items()}
    for e in ELEMENTS
}

# What no covariate explains (ln units). With the XRF noise below, ~0.12 in all: about a fifth
# of the variance of ln(value) on the small plateau, a tenth on the full one (docs/synthetic.md).
SITE_EFFECT_SD = 0.06  # shared by a site's three samples: variation within a 1 km pixel
SAMPLE_NOISE_SD = 0.04  # between the samples of a site, metres apart
ICPMS_NOISE_SD = 0.03


@dataclass(frozen=True)
class XrfBias:
    """The XRF reading of a sample: ``(intercept + slope · ICP-MS) · exp(N(0, noise_sd))``."""

    intercept: float
    slope: float
    noise_sd: float


XRF_BIAS = {
    # Fe, Mn, Cu, V, Mo near 1:1 (the paper's R² 0.67–0.89); Zn and Ni biased.
    "Fe": XrfBias(0.0, 1.0, 0.08),
    "Mn": XrfBias(0.0, 1.0, 0.09),
    "Cu": XrfBias(0.0, 1.0, 0.10),
    "Zn": XrfBias(8.0, 0.75, 0.04),
    "Ni": XrfBias(-5.0, 1.2, 0.04),
    "V": XrfBias(0.0, 1.0, 0.08),
    "Mo": XrfBias(0.0, 1.0, 0.09),
}

# The full survey: its sites, the sites with a value of each element, gross outliers.
PAPER_SITES = 526
PAPER_SITES_PER_ELEMENT = {"Fe": 526, "Mn": 520, "Cu": 315, "Zn": 526, "Ni": 60, "V": 289, "Mo": 41}
PAPER_OUTLIERS = {"Fe": 6, "Mn": 16, "Cu": 20, "Zn": 6, "Ni": 1, "V": 10, "Mo": 3}
