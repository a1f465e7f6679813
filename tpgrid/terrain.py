"""Slope and aspect from a DEM on the target grid (Horn, 1981), in metres, never in degrees.

Aspect is circular, so models get it as ``northness = cos(aspect)`` and
``eastness = sin(aspect)``; aspect is the compass direction a slope faces (downslope),
clockwise from north. Flat pixels have northness = eastness = 0.
"""

from __future__ import annotations

import dask.array as da
import numpy as np

from tpgrid.core.arrays import F32, F64, FloatArray

TERRAIN_LAYERS = ("slope", "northness", "eastness")


def horn_gradient(z: FloatArray, dx: FloatArray | float, dy: float) -> tuple[F64, F64]:
    """East and north components of the elevation gradient (m/m) of a padded block.

    ``z`` carries a one-pixel halo on every side (rows run north → south); the result is the
    interior. ``dx`` is the pixel width in metres, a scalar or one value per interior row.
    """
    z = np.asarray(z, dtype="float64")
    a, b, c = z[:-2, :-2], z[:-2, 1:-1], z[:-2, 2:]
    d, f = z[1:-1, :-2], z[1:-1, 2:]
    g, h, i = z[2:, :-2], z[2:, 1:-1], z[2:, 2:]
    width = np.asarray(dx, dtype="float64").reshape(-1, 1) if np.ndim(dx) else float(dx)
    # Horn's kernel skips the centre pixel; a void there must still void the result.
    void = np.where(np.isnan(z[1:-1, 1:-1]), np.nan, 0.0)
    east = ((c + 2 * f + i) - (a + 2 * d + g)) / (8 * width) + void
    north = ((a + 2 * b + c) - (g + 2 * h + i)) / (8 * dy) + void
    return east, north


def slope_degrees(east: FloatArray, north: FloatArray) -> F32:
    return np.degrees(np.arctan(np.hypot(east, north))).astype("float32")


def northness_eastness(east: FloatArray, north: FloatArray) -> tuple[F32, F32]:
    """cos and sin of the downslope compass direction; 0 and 0 where the ground is flat."""
    norm = np.hypot(east, north)
    with np.errstate(invalid="ignore", divide="ignore"):
        northness = np.where(norm > 0, -north / norm, 0.0)
        eastness = np.where(norm > 0, -east / norm, 0.0)
    nan = np.isnan(norm)
    northness[nan] = np.nan
    eastness[nan] = np.nan
    return northness.astype("float32"), eastness.astype("float32")


def terrain_layers(dem: da.Array, pixel_width_m: F64, pixel_height_m: float) -> dict[str, da.Array]:
    """Lazy slope (degrees), northness and eastness of a ``(y, x)`` DEM on the grid.

    Each chunk reads a one-pixel halo from its neighbours. Horn needs all eight neighbours, so
    the grid's outermost pixels get NaN (a padded edge would halve the slope there).
    """
    widths = da.from_array(pixel_width_m, chunks=(dem.chunks[0],))

    def block(z: FloatArray, width: FloatArray, which: str) -> F32:
        east, north = horn_gradient(z, width[1:-1], pixel_height_m)
        if which == "slope":
            return slope_degrees(east, north)
        northness, eastness = northness_eastness(east, north)
        return northness if which == "northness" else eastness

    padded = da.overlap.overlap(dem, depth={0: 1, 1: 1}, boundary=np.nan)
    padded_widths = da.overlap.overlap(widths, depth={0: 1}, boundary="nearest")
    return {
        which: da.map_blocks(
            block,
            padded,
            padded_widths[:, None],
            which=which,
            chunks=dem.chunks,
            dtype="float32",
            meta=np.array((), dtype="float32"),
        )
        for which in TERRAIN_LAYERS
    }
