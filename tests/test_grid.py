"""The target grid: shape, chunking, pixel indexing at the edges, mask, spec validation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import yaml
from affine import Affine
from hypothesis import given, settings
from hypothesis import strategies as st

from tpgrid.errors import ConfigError, GridError
from tpgrid.grid import PLATEAU_GRID, GridSpec, TargetGrid, load_grid_spec


@pytest.fixture(scope="module")
def plateau() -> TargetGrid:
    return TargetGrid.from_spec(PLATEAU_GRID)


def test_plateau_grid_is_whole_kilometres_in_asia_albers(plateau: TargetGrid) -> None:
    affine = plateau.geobox.affine
    assert plateau.geobox.crs.epsg is None
    assert "Asia_North_Albers_Equal_Area_Conic" in plateau.crs_wkt
    assert (affine.a, affine.e) == (1000.0, -1000.0)
    assert affine.c % 1000 == 0
    assert affine.f % 1000 == 0
    assert plateau.shape == (1663, 2426)


def test_plateau_grid_covers_the_whole_lonlat_box(plateau: TargetGrid) -> None:
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


_PLATEAU = TargetGrid.from_spec(PLATEAU_GRID)


def test_plateau_mask_holds_lhasa_not_chengdu(plateau: TargetGrid) -> None:
    mask = plateau.mask()
    for (lon, lat), expected in {
        (91.1, 29.65): True,
        (104.07, 30.67): False,
        (88.0, 34.0): True,
    }.items():
        row, col, _ = plateau.pixel_index([lon], [lat])
        assert bool(mask[row[0], col[0]].compute()) is expected, (lon, lat)


def test_no_mask_keeps_every_pixel() -> None:
    grid = TargetGrid.from_spec(GridSpec(crs="ESRI:102025", resolution=1000, bbox=(90, 30, 91, 31)))
    assert grid.spec.mask is None
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


# --- grids anywhere: no plateau defaults, extent in the grid's CRS, template rasters ---------

_LAEA = {"crs": "EPSG:3035", "resolution": 100.0}


def _template(path: Path, transform: Affine, shape: tuple[int, int], crs: str) -> Path:
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=shape[1],
        height=shape[0],
        count=1,
        dtype="float32",
        crs=crs,
        transform=transform,
    ) as dst:
        dst.write(np.zeros(shape, dtype="float32"), 1)
    return path


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"bbox": (10, 50, 11, 51)}, r"set \['crs', 'resolution'\]"),
        ({"crs": "EPSG:3035", "bbox": (10, 50, 11, 51)}, r"set \['resolution'\]"),
        (_LAEA, "exactly one of 'bbox'.*got none"),
        (_LAEA | {"bbox": (10, 50, 11, 51), "extent": (0, 0, 1, 1)}, r"got \['bbox', 'extent'\]"),
        ({"like": "t.tif", "crs": "EPSG:3035"}, r"'like' takes CRS.*remove \['crs'\]"),
        (_LAEA | {"extent": (0, 0, 100, 100), "mask": "bbox"}, "leave 'mask' out"),
        (_LAEA | {"extent": (100, 0, 0, 100)}, "x_min, y_min, x_max, y_max"),
    ],
)
def test_a_grid_yaml_names_what_is_missing_or_clashes(
    tmp_path: Path, keys: dict[str, object], message: str
) -> None:
    path = tmp_path / "grid.yaml"
    path.write_text(
        yaml.safe_dump({k: list(v) if isinstance(v, tuple) else v for k, v in keys.items()})
    )
    with pytest.raises(ConfigError, match=rf"(?s)grid\.yaml.*{message}"):
        load_grid_spec(path)


def test_an_extent_on_whole_pixels_is_used_exactly_even_off_the_lattice() -> None:
    # 4321010: not a multiple of 100, but the extent spans 80 × 50 whole pixels.
    grid = TargetGrid.from_spec(GridSpec(**_LAEA, extent=(4321010, 3210020, 4329010, 3215020)))
    assert grid.shape == (50, 80)
    assert grid.geobox.affine == Affine(100, 0, 4321010, 0, -100, 3215020)


def test_an_extent_not_on_whole_pixels_snaps_outward_to_the_lattice() -> None:
    grid = TargetGrid.from_spec(GridSpec(**_LAEA, extent=(4321010, 3210020, 4329050, 3215020)))
    assert grid.geobox.affine == Affine(100, 0, 4321000, 0, -100, 3215100)
    assert grid.shape == (51, 81)  # y 3210000..3215100, x 4321000..4329100


def test_like_takes_the_template_geobox_pixel_for_pixel(tmp_path: Path) -> None:
    transform = Affine(30, 0, 500_015.0, 0, -30, 4_400_005.0)  # UTM, off any round lattice
    template = _template(tmp_path / "template.tif", transform, (70, 90), "EPSG:32633")
    grid = TargetGrid.from_spec(GridSpec(like=str(template), chunk=32))
    assert grid.geobox.affine == transform
    assert grid.shape == (70, 90)
    assert grid.crs.epsg == 32633
    # The record names the grid itself: it reads back without the template.
    record = grid.spec.model_dump(mode="json")
    template.unlink()
    assert "like" not in record
    again = TargetGrid.from_record(record, "cube x")
    assert again.geobox == grid.geobox
    assert again.spec.chunk == 32


def test_a_rotated_template_is_refused(tmp_path: Path) -> None:
    rotated = Affine(30, 5, 500_000.0, 5, -30, 4_400_000.0)
    template = _template(tmp_path / "rotated.tif", rotated, (10, 10), "EPSG:32633")
    with pytest.raises(GridError, match=r"rotated.*north-up"):
        TargetGrid.from_spec(GridSpec(like=str(template)))


def test_relative_paths_in_a_grid_yaml_are_read_from_its_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "grids").mkdir()
    _template(tmp_path / "grids" / "t.tif", Affine(100, 0, 0, 0, -100, 1000), (10, 10), "EPSG:3035")
    (tmp_path / "grids" / "aoi.geojson").write_text("{}")
    (tmp_path / "grids" / "grid.yaml").write_text("like: t.tif\nmask: aoi.geojson\n")
    monkeypatch.chdir(tmp_path)  # not the YAML's folder
    spec = load_grid_spec("grids/grid.yaml")
    assert spec.like == str(tmp_path / "grids" / "t.tif")
    assert spec.mask == str(tmp_path / "grids" / "aoi.geojson")
    assert load_grid_spec(tmp_path / "grids" / "grid.yaml") == spec


def test_the_plateau_mask_on_a_grid_elsewhere_is_found_before_any_build() -> None:
    grid = TargetGrid.from_spec(
        GridSpec(
            crs="EPSG:32633",
            resolution=100,
            extent=(500_000, 5e6, 510_000, 5.005e6),
            mask="plateau",
        )
    )
    with pytest.raises(
        GridError, match=r"mask 'plateau' does not overlap the grid.*EPSG:32633.*leave 'mask' out"
    ):
        grid.check_mask()


def test_a_geojson_mask_is_the_union_of_its_features(tmp_path: Path) -> None:
    grid = TargetGrid.from_spec(
        GridSpec(
            crs="EPSG:4326",
            resolution=0.1,
            extent=(10, 50, 12, 51),
            mask=str(tmp_path / "aoi.geojson"),
        )
    )

    def square(lon: float) -> dict[str, object]:
        ring = [[lon, 50.2], [lon + 0.4, 50.2], [lon + 0.4, 50.6], [lon, 50.6], [lon, 50.2]]
        return {
            "type": "Feature",
            "properties": {},
            "geometry": {"type": "Polygon", "coordinates": [ring]},
        }

    (tmp_path / "aoi.geojson").write_text(
        json.dumps({"type": "FeatureCollection", "features": [square(10.2), square(11.2)]})
    )
    grid.check_mask()
    mask = np.asarray(grid.mask())
    assert mask.sum() == 2 * 4 * 4
    row, col, _ = grid.pixel_index([10.45, 11.45, 10.95], [50.45, 50.45, 50.45])
    assert mask[row, col].tolist() == [True, True, False]


def test_a_record_of_the_old_bbox_mask_is_a_clear_grid_error() -> None:
    old = {
        "crs": "ESRI:102025",
        "resolution": 1000.0,
        "bbox": [90, 30, 94, 33],
        "chunk": 128,
        "mask": "bbox",
    }
    with pytest.raises(GridError, match=r"cube /w/cube\.zarr records a grid.*rebuild it"):
        TargetGrid.from_record(old, "cube /w/cube.zarr")


def test_a_record_written_before_extent_and_like_equals_todays(plateau: TargetGrid) -> None:
    # What a cube built by the previous version stored: every key of the spec it had then.
    old = {
        "crs": "ESRI:102025",
        "resolution": 1000.0,
        "bbox": [79.0, 27.0, 105.0, 40.0],
        "chunk": 512,
        "mask": "plateau",
    }
    assert plateau.spec.model_dump(mode="json") == old
    assert TargetGrid.from_record(old, "cube").geobox == plateau.geobox


def test_sites_on_exact_cell_edges_of_a_projected_grid_land_by_half_open_intervals() -> None:
    grid = TargetGrid.from_spec(
        GridSpec(**_LAEA, extent=(4_321_000, 3_210_000, 4_329_000, 3_215_000))
    )
    x = np.array([4_321_000.0, 4_321_100.0, 4_328_900.0, 4_329_000.0, 4_321_300.0])
    y = np.array([3_215_000.0, 3_214_900.0, 3_210_100.0, 3_212_000.0, 3_210_000.0])
    row, col, inside = grid.pixel_index_xy(x, y, "EPSG:3035")
    # NW corner → (0, 0); the next edges → (1, 1); the SE pixel's NW corner → last pixel;
    # the east and south edges belong to no pixel of the grid.
    assert row.tolist() == [0, 1, 49, -1, -1]
    assert col.tolist() == [0, 1, 79, -1, -1]
    assert inside.tolist() == [True, True, True, False, False]
