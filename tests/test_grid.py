"""The target grid: shape, chunking, pixel indexing at the edges, mask, spec validation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tpgrid.errors import ConfigError
from tpgrid.grid import GridSpec, TargetGrid, load_grid_spec


@pytest.fixture(scope="module")
def plateau() -> TargetGrid:
    return TargetGrid.from_spec()


def test_default_grid_is_whole_kilometres_in_asia_albers(plateau: TargetGrid) -> None:
    affine = plateau.geobox.affine
    assert plateau.geobox.crs.epsg is None
    assert "Asia_North_Albers_Equal_Area_Conic" in plateau.crs_wkt
    assert (affine.a, affine.e) == (1000.0, -1000.0)
    assert affine.c % 1000 == 0
    assert affine.f % 1000 == 0
    assert plateau.shape == (1663, 2426)


def test_default_grid_covers_the_whole_lonlat_box(plateau: TargetGrid) -> None:
    lon = np.r_[np.linspace(79, 105, 200), np.linspace(79, 105, 200), [79] * 50, [105] * 50]
    lat = np.r_[[27.0] * 200, [40.0] * 200, np.linspace(27, 40, 50), np.linspace(27, 40, 50)]
    *_, inside = plateau.pixel_index(lon, lat)
    assert inside.all()


def test_chunks_tile_the_grid(plateau: TargetGrid) -> None:
    rows, cols = plateau.chunks
    assert sum(rows) == plateau.shape[0]
    assert sum(cols) == plateau.shape[1]
    assert set(rows[:-1]) == {512}
    assert rows[-1] <= 512
    windows = list(plateau.windows())
    assert len(windows) == plateau.n_chunks[0] * plateau.n_chunks[1]
    assert sum((w.rows.stop - w.rows.start) * (w.cols.stop - w.cols.start) for w in windows) == (
        plateau.shape[0] * plateau.shape[1]
    )


def test_a_chunk_is_keyed_by_its_block_index(plateau: TargetGrid) -> None:
    # Records, cube hashes and done markers all name a chunk "i.j".
    windows = list(plateau.windows())
    assert windows[0].key == "0.0"
    assert windows[-1].key == f"{plateau.n_chunks[0] - 1}.{plateau.n_chunks[1] - 1}"
    assert len({w.key for w in windows}) == len(windows)


def test_pixel_index_at_the_grid_edges(plateau: TargetGrid) -> None:
    """Pixel-is-area: just inside the NW corner is pixel (0, 0); the east edge is outside.

    Points sit 1 mm off the exact corners: a lon/lat round trip moves a point by ~1e-9 m, so
    a point exactly on a pixel edge has no well-defined side.
    """
    rows, cols = plateau.shape
    x0, y0 = plateau.geobox.affine.c, plateau.geobox.affine.f
    corners = np.array(
        [
            [x0 + 1e-3, y0 - 1e-3],  # just inside the NW corner → (0, 0)
            [x0 + cols * 1000 - 1e-3, y0 - rows * 1000 + 1e-3],  # just inside SE → last pixel
            [x0 + cols * 1000, y0 - 500],  # on the east edge → outside
            [x0 - 1e-3, y0 - 500],  # just west of the grid → outside
        ]
    )
    lon, lat = _to_lonlat(plateau, corners)
    row, col, inside = plateau.pixel_index(lon, lat)
    assert (row[0], col[0]) == (0, 0)
    assert (row[1], col[1]) == (rows - 1, cols - 1)
    assert inside.tolist() == [True, True, False, False]
    assert (row[2], col[2]) == (-1, -1)


@settings(max_examples=50, deadline=None)
@given(row=st.integers(0, 1662), col=st.integers(0, 2425))
def test_pixel_centre_maps_back_to_its_pixel(row: int, col: int) -> None:
    grid = _PLATEAU
    lon, lat = grid.pixel_lonlat([row], [col])
    back_row, back_col, inside = grid.pixel_index(lon, lat)
    assert inside[0]
    assert (back_row[0], back_col[0]) == (row, col)


_PLATEAU = TargetGrid.from_spec()


def test_plateau_mask_holds_lhasa_not_chengdu(plateau: TargetGrid) -> None:
    mask = plateau.mask()
    for (lon, lat), expected in {
        (91.1, 29.65): True,
        (104.07, 30.67): False,
        (88.0, 34.0): True,
    }.items():
        row, col, _ = plateau.pixel_index([lon], [lat])
        assert bool(mask[row[0], col[0]].compute()) is expected, (lon, lat)


def test_bbox_mask_keeps_every_pixel() -> None:
    grid = TargetGrid.from_spec(GridSpec(bbox=(90, 30, 91, 31), mask="bbox"))
    assert bool(grid.mask().all().compute())


def test_geographic_grid_has_latitude_dependent_pixel_width() -> None:
    grid = TargetGrid.from_spec(
        GridSpec(crs="EPSG:4326", resolution=1 / 120, bbox=(90, 30, 91, 40))
    )
    widths, height = grid.pixel_size_m()
    assert widths[0] < widths[-1]  # the north row is narrower
    assert widths[-1] == pytest.approx(926.6 * np.cos(np.radians(30 + 1 / 240)), rel=1e-3)
    assert height == pytest.approx(926.6, rel=1e-3)
    assert set(grid.coords()) == {"y", "x"}


def test_grid_yaml_rejects_unknown_keys(tmp_path: Path) -> None:
    path = tmp_path / "grid.yaml"
    path.write_text("crs: ESRI:102025\nresolutoin: 500\n")
    with pytest.raises(ConfigError, match=r"(?s)grid\.yaml.*resolutoin: unknown key"):
        load_grid_spec(path)


def test_grid_yaml_rejects_a_bad_crs_and_bbox(tmp_path: Path) -> None:
    path = tmp_path / "grid.yaml"
    path.write_text("crs: EPSG:999999\nbbox: [105, 27, 79, 40]\n")
    with pytest.raises(ConfigError, match=r"(?s)unknown CRS.*lon_min < lon_max"):
        load_grid_spec(path)


def _to_lonlat(grid: TargetGrid, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from pyproj import Transformer

    to_lonlat = Transformer.from_crs(grid.crs_wkt, "EPSG:4326", always_xy=True)
    lon, lat = to_lonlat.transform(xy[:, 0], xy[:, 1])
    return np.asarray(lon), np.asarray(lat)
