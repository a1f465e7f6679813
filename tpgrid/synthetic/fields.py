"""Seeded randomness of the synthetic world: independent named streams and smooth random fields.

Each component draws from its own stream (:func:`random_stream`), so adding one never shifts
another; the world's fields are sums of random Fourier modes (:class:`FourierField`) in km, so
they are smooth with texture at every scale asked for.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import numpy as np

from tpgrid.core.arrays import F32, F64
from tpgrid.synthetic.geometry import KM_PER_DEG_LAT, KM_PER_DEG_LON


def random_stream(seed: int, name: str) -> np.random.Generator:
    """An independent random stream per named component, so adding one never shifts another."""
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


@dataclass(frozen=True)
class FourierField:
    """A stationary random field: ``Σ a·cos(kx·x + ky·y + φ)`` with x, y in km (unit variance)."""

    kx: F64
    ky: F64
    amplitude: F64
    phase: F64

    @classmethod
    def random(
        cls, seed: int, name: str, n_modes: int, wavelength_km: tuple[float, float]
    ) -> FourierField:
        """Modes with log-uniform wavelengths in ``wavelength_km``, amplitude ∝ wavelength."""
        rng = random_stream(seed, name)
        shortest, longest = wavelength_km
        wavelength = np.exp(rng.uniform(math.log(shortest), math.log(longest), n_modes))
        direction = rng.uniform(0, np.pi, n_modes)
        amplitude = wavelength / np.sqrt(np.sum(wavelength**2) / 2)
        k = 2 * np.pi / wavelength
        return cls(
            k * np.cos(direction),
            k * np.sin(direction),
            amplitude,
            rng.uniform(0, 2 * np.pi, n_modes),
        )

    def on_grid(self, lon: F64, lat: F64) -> F32:
        """The field on the regular grid ``lat × lon`` (1-D centres), as ``(len(lat), len(lon))``.

        cos(kx·x + ky·y + φ) separates into x and y factors, so the whole grid is one complex
        matrix product: seconds for millions of pixels and hundreds of modes.
        """
        along_x = np.exp(1j * np.outer(self.kx, lon * KM_PER_DEG_LON)).astype("complex64")
        along_y = (
            self.amplitude * np.exp(1j * (np.outer(lat * KM_PER_DEG_LAT, self.ky) + self.phase))
        ).astype("complex64")
        return np.ascontiguousarray((along_y @ along_x).real, dtype="float32")


def sigmoid(x: F64 | F32) -> F64:
    """The logistic function 1 / (1 + exp(−x)), through tanh so it never overflows."""
    return np.asarray(0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, dtype="float64"))))


def block_mean(field: F32, factor: int) -> F32:
    """Means of ``factor × factor`` blocks, as a coarse pixel averages the fine ones."""
    h, w = field.shape
    blocks = field.reshape(h // factor, factor, w // factor, factor)
    return np.asarray(blocks.mean(axis=(1, 3), dtype="float64"), dtype="float32")
