"""Slope and aspect of analytic surfaces, in metres on a projected grid."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tpgrid.terrain import terrain_layers


def _plane(angle_deg: float, facing_deg: float, shape: tuple[int, int], res: float) -> np.ndarray:
    """A plane of slope ``angle_deg`` whose downslope direction is ``facing_deg`` from north."""
    rows, cols = shape
    east = np.arange(cols) * res
    north = -np.arange(rows) * res  # rows run north → south
    gradient = np.tan(np.radians(angle_deg))
    # Elevation falls towards the facing direction.
    face_e, face_n = np.sin(np.radians(facing_deg)), np.cos(np.radians(facing_deg))
    return -gradient * (face_e * east[None, :] + face_n * north[:, None])


@settings(max_examples=25, deadline=None)
@given(
    angle=st.floats(0.5, 60.0),
    facing=st.floats(0.0, 359.0),
    chunk=st.sampled_from([7, 32, 64]),
)
def test_inclined_plane_slope_and_aspect_are_exact(angle: float, facing: float, chunk: int) -> None:
    res = 1000.0
    z = _plane(angle, facing, (40, 50), res)
    layers = terrain_layers(da.from_array(z, chunks=chunk), np.full(40, res), res)
    slope = layers["slope"].compute()[1:-1, 1:-1]
    northness = layers["northness"].compute()[1:-1, 1:-1]
    eastness = layers["eastness"].compute()[1:-1, 1:-1]
    np.testing.assert_allclose(slope, angle, atol=1e-3)
    np.testing.assert_allclose(northness, np.cos(np.radians(facing)), atol=1e-5)
    np.testing.assert_allclose(eastness, np.sin(np.radians(facing)), atol=1e-5)


def test_outer_edge_has_no_slope_but_chunk_edges_do() -> None:
    z = _plane(20.0, 90.0, (30, 30), 1000.0)
    slope = terrain_layers(da.from_array(z, chunks=10), np.full(30, 1000.0), 1000.0)[
        "slope"
    ].compute()
    assert np.isnan(slope[0]).all()
    assert np.isnan(slope[:, -1]).all()
    assert not np.isnan(slope[1:-1, 1:-1]).any()  # interior chunk borders read their halo


def test_flat_ground_has_zero_slope_and_no_aspect() -> None:
    layers = terrain_layers(da.zeros((12, 12), chunks=6), np.full(12, 1000.0), 1000.0)
    assert np.nanmax(layers["slope"].compute()) == 0.0
    assert np.nanmax(np.abs(layers["northness"].compute())) == 0.0


def test_pixel_width_per_row_scales_the_east_gradient() -> None:
    """On a geographic grid a narrower pixel means a steeper east-west slope."""
    z = _plane(10.0, 270.0, (12, 12), 1000.0)  # faces west, rises 176 m per 1,000 m eastwards
    widths = np.full(12, 500.0)  # the same rise over half the distance
    slope = terrain_layers(da.from_array(z, chunks=6), widths, 1000.0)["slope"].compute()
    assert np.nanmean(slope) == pytest.approx(np.degrees(np.arctan(2 * np.tan(np.radians(10)))))


def test_nodata_spreads_to_the_eight_neighbours_only() -> None:
    z = _plane(15.0, 180.0, (20, 20), 1000.0)
    z[10, 10] = np.nan
    slope = terrain_layers(da.from_array(z, chunks=8), np.full(20, 1000.0), 1000.0)[
        "slope"
    ].compute()
    inner = slope[1:-1, 1:-1]
    assert np.isnan(inner).sum() == 9
    assert np.isnan(slope[9:12, 9:12]).all()
