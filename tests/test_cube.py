"""The covariate cube: reprojection, layout, chunk hashes, safe incremental updates."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from affine import Affine
from pyproj import CRS
from scipy.ndimage import binary_dilation
from typer.testing import CliRunner

from tests.conftest import SMALL_SPEC, linear_field, write_tif
from tpgrid.cli import app
from tpgrid.cube import VALID, build_cube, chunk_hashes, cube_grid, open_cube, verify_cube
from tpgrid.errors import (
    CubeError,
    GridError,
    LayerValueError,
    OutputExistsError,
    SourceError,
)
from tpgrid.grid import GridSpec, TargetGrid
from tpgrid.sources import load_catalog
from tpgrid.store import ATTR_CHUNK_FILES, link_file
from tpgrid.terrain import TERRAIN_LAYERS

BuildCube = Callable[..., Any]


@pytest.fixture
def build(make_catalog: Callable[..., Path], small_grid: TargetGrid, tmp_path: Path) -> BuildCube:
    """Build (or update) a cube at ``tmp_path/cube.zarr`` from catalog layers."""

    def run(layers: dict[str, Any], terrain: str | None = None, **kwargs: Any) -> Any:
        catalog = load_catalog(make_catalog(layers, terrain=terrain))
        return build_cube(catalog, kwargs.pop("grid", small_grid), tmp_path / "cube.zarr", **kwargs)

    return run


def interior(grid: TargetGrid) -> tuple[np.ndarray, np.ndarray]:
    """Row/col index arrays of every pixel at least 2 px from the grid edge."""
    rows, cols = grid.shape
    return np.meshgrid(np.arange(2, rows - 2), np.arange(2, cols - 2), indexing="ij")


def test_field_linear_in_lonlat_is_reproduced_at_pixel_centres(
    build: BuildCube, standard_sources: dict[str, Any], small_grid: TargetGrid, tmp_path: Path
) -> None:
    # A 0.1° source (coarser than 1 km: bilinear) and the 30″ DEM (finer: average).
    lon = 89.45 + 0.1 * np.arange(60)
    lat = 33.55 - 0.1 * np.arange(40)
    coarse = linear_field(lon[None, :], lat[:, None]).astype("float32")
    write_tif(tmp_path / "mat.tif", coarse, transform=Affine(0.1, 0, 89.4, 0, -0.1, 33.6))
    layers = standard_sources | {
        "mat": {"path": "mat.tif", "kind": "continuous", "group": "climate"}
    }
    build(layers)
    cube = open_cube(tmp_path / "cube.zarr")
    rows, cols = interior(small_grid)
    expected = linear_field(*small_grid.pixel_lonlat(rows, cols))
    mat = cube["mat"].values[rows, cols]
    dem = cube["dem"].values[rows, cols]
    assert cube["mat"].attrs["tpgrid:resampling"] == "bilinear"
    assert cube["dem"].attrs["tpgrid:resampling"] == "average"
    # Bilinear is exact on a plane, up to GDAL's approximation of the transformation (within
    # 1/8 source pixel per warped chunk): here within 0.12 of values near 3,500.
    np.testing.assert_allclose(mat, expected, atol=0.15)
    # Pixels at the rim of the DEM void average only their valid side, so leave them out.
    void = ~np.isfinite(cube["dem"].values)
    near_void = binary_dilation(void, iterations=2)[rows, cols]
    assert 0 < near_void.mean() < 0.01
    # Averaging 30″ cells over a 1 km pixel: off by at most a fraction of a source cell.
    np.testing.assert_allclose(dem[~near_void], expected[~near_void], atol=1.0)


def test_categorical_layer_keeps_exactly_its_class_codes(
    build: BuildCube, standard_sources: dict[str, Any], small_grid: TargetGrid, tmp_path: Path
) -> None:
    build(standard_sources)
    landcover = open_cube(tmp_path / "cube.zarr")["landcover"]
    codes = landcover.values
    assert codes.dtype == np.uint8
    assert set(np.unique(codes)) <= {1, 2, 3, 255}
    assert set(np.unique(codes)) >= {1, 2, 3}
    assert landcover.attrs["tpgrid:classes"] == {"1": "forest", "2": "meadow", "3": "desert"}
    # Away from class boundaries (30 km squares in the source), the code is the source's.
    rows, cols = interior(small_grid)
    lon, lat = small_grid.pixel_lonlat(rows, cols)
    src_col = (lon - 89.5) * 120
    src_row = (33.5 - lat) * 120
    source_code = (src_col // 60 + src_row // 60) % 3 + 1
    far = (np.abs(src_col % 60 - 30) < 25) & (np.abs(src_row % 60 - 30) < 25)
    np.testing.assert_array_equal(codes[rows, cols][far], source_code[far])


def test_nodata_reaches_the_valid_mask_and_terrain(
    build: BuildCube, standard_sources: dict[str, Any], small_grid: TargetGrid, tmp_path: Path
) -> None:
    build(standard_sources, terrain="dem")
    cube = open_cube(tmp_path / "cube.zarr")
    row, col, _ = small_grid.pixel_index([92.125], [31.71])  # the middle of the DEM void
    r, c = int(row[0]), int(col[0])
    assert np.isnan(cube["dem"].values[r, c])
    assert np.isnan(cube["slope"].values[r, c])
    assert cube[VALID].values[r, c] == 0
    valid = cube[VALID].values.astype(bool)
    every_layer = np.isfinite(cube["dem"].values) & (cube["landcover"].values != 255)
    every_layer &= np.isfinite(cube["slope"].values)
    np.testing.assert_array_equal(valid, every_layer & small_grid.mask().compute())


def test_layout_is_zarr_v3_with_cf_grid_mapping_and_typed_variables(
    build: BuildCube, standard_sources: dict[str, Any], small_grid: TargetGrid, tmp_path: Path
) -> None:
    build(standard_sources, terrain="dem")
    group = zarr.open_group(tmp_path / "cube.zarr", mode="r")
    assert group.metadata.zarr_format == 3
    dem = group["dem"]
    assert isinstance(dem, zarr.Array)
    assert dem.chunks == (128, 128)
    assert dem.dtype == np.float32
    assert "zstd" in str(dem.compressors).lower()
    assert group["landcover"].dtype == np.uint8
    cube = open_cube(tmp_path / "cube.zarr")
    assert set(cube.data_vars) == {"dem", "landcover", "slope", "northness", "eastness", VALID}
    assert "spatial_ref" in cube.coords
    assert cube["dem"].encoding["grid_mapping"] == "spatial_ref"
    assert CRS(cube.rio.crs.to_wkt()) == CRS(small_grid.crs_wkt)
    assert cube.rio.transform() == small_grid.geobox.affine
    assert cube_grid(tmp_path / "cube.zarr").spec == small_grid.spec
    np.testing.assert_allclose(cube["x"].values, small_grid.coords()["x"])


def test_inclined_plane_in_a_projected_crs_gives_its_slope_in_degrees(
    build: BuildCube, tmp_path: Path
) -> None:
    """A 250 m DEM in the grid's own CRS, rising 0.1 m per metre eastward: slope 5.71°."""
    grid = TargetGrid.from_spec(SMALL_SPEC.model_copy(update={"mask": None}))
    x0, y0 = grid.geobox.affine.c - 5000, grid.geobox.affine.f + 5000
    rows, cols = grid.shape[0] * 4 + 40, grid.shape[1] * 4 + 40
    east_m = x0 + 250 * (np.arange(cols) + 0.5)
    plane = np.broadcast_to(0.1 * (east_m - x0) + 1000.0, (rows, cols)).astype("float32")
    write_tif(
        tmp_path / "plane.tif", plane, crs=grid.crs_wkt, transform=Affine(250, 0, x0, 0, -250, y0)
    )
    layers = {"dem": {"path": "plane.tif", "kind": "continuous", "group": "topography"}}
    build(layers, terrain="dem", grid=grid)
    cube = open_cube(tmp_path / "cube.zarr")
    r, c = interior(grid)
    np.testing.assert_allclose(cube["slope"].values[r, c], np.degrees(np.arctan(0.1)), atol=1e-3)
    np.testing.assert_allclose(cube["eastness"].values[r, c], -1.0, atol=1e-6)  # faces west


def test_chunk_hashes_are_stable_across_builds(
    make_catalog: Callable[..., Path],
    standard_sources: dict[str, Any],
    small_grid: TargetGrid,
    tmp_path: Path,
) -> None:
    catalog = load_catalog(make_catalog(standard_sources, terrain="dem"))
    build_cube(catalog, small_grid, tmp_path / "a.zarr")
    build_cube(catalog, small_grid, tmp_path / "b.zarr")
    first, second = chunk_hashes(tmp_path / "a.zarr"), chunk_hashes(tmp_path / "b.zarr")
    assert first == second
    assert len(first["dem"]) == 9
    assert len(set(first["dem"].values())) == 9  # every chunk differs, so hashes do


def test_unchanged_sources_are_carried_over_without_writing(
    build: BuildCube, standard_sources: dict[str, Any]
) -> None:
    build(standard_sources, terrain="dem")
    report = build(standard_sources, terrain="dem")
    assert report.chunks_written == 0
    assert {u.action for u in report.layers} == {"unchanged"}


def test_an_unchanged_cube_is_left_as_it_is_not_rebuilt(
    build: BuildCube, standard_sources: dict[str, Any], tmp_path: Path
) -> None:
    build(standard_sources, terrain="dem")
    cube = tmp_path / "cube.zarr"
    files = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in cube.rglob("*") if p.is_file()}
    report = build(standard_sources, terrain="dem")
    assert [u.name for u in report.layers] == ["dem", "landcover", *TERRAIN_LAYERS, VALID]
    assert {u.action for u in report.layers} == {"unchanged"}
    # Not one file replaced, the group's metadata included: no staging copy was swapped in.
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in files} == files
    assert sorted(p for p in cube.rglob("*") if p.is_file()) == sorted(files)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".cube.zarr")] == []


def test_a_mask_file_is_read_again_on_every_build(
    build: BuildCube, standard_sources: dict[str, Any], small_grid: TargetGrid, tmp_path: Path
) -> None:
    """A mask file may change under its name: the build recomputes ``valid`` to see it."""
    mask = tmp_path / "mask.geojson"
    west, south, east, north = 90.5, 30.5, 93.5, 32.5
    ring = [[west, south], [east, south], [east, north], [west, north], [west, south]]
    mask.write_text(json.dumps({"type": "Polygon", "coordinates": [ring]}))
    grid = TargetGrid.from_spec(small_grid.spec.model_copy(update={"mask": str(mask)}))
    build(standard_sources, grid=grid)
    before = chunk_hashes(tmp_path / "cube.zarr")[VALID]
    smaller = [[west, south], [92.0, south], [92.0, north], [west, north], [west, south]]
    mask.write_text(json.dumps({"type": "Polygon", "coordinates": [smaller]}))
    report = build(standard_sources, grid=grid)
    (valid,) = [u for u in report.layers if u.name == VALID]
    assert valid.chunks_written > 0
    assert chunk_hashes(tmp_path / "cube.zarr")[VALID] != before


def test_a_source_changed_in_one_region_rewrites_only_the_chunks_it_touches(
    build: BuildCube, standard_sources: dict[str, Any], small_grid: TargetGrid, tmp_path: Path
) -> None:
    build(standard_sources, terrain="dem")
    before = chunk_hashes(tmp_path / "cube.zarr")
    # Raise the DEM by 100 m in a 0.2° square around 91.9 °E, 32.4 °N.
    with_bump = write_dem_with_bump(tmp_path, lon=(91.8, 92.0), lat=(32.3, 32.5))
    report = build(
        standard_sources | {"dem": standard_sources["dem"] | {"path": with_bump}}, terrain="dem"
    )
    after = chunk_hashes(tmp_path / "cube.zarr")
    actions = {u.name: (u.action, u.chunks_written) for u in report.layers}
    changed = {key for key in after["dem"] if after["dem"][key] != before["dem"][key]}
    row, col, _ = small_grid.pixel_index([91.9], [32.4])
    bump_chunk = f"{int(row[0]) // 128}.{int(col[0]) // 128}"
    assert changed == {bump_chunk}
    assert actions["dem"] == ("updated", 1)
    assert actions["landcover"] == ("unchanged", 0)
    # A uniform raise does not change slope inside the bump, only along its rim, so slope
    # changes in the bump's chunk and nowhere else.
    assert actions["slope"][1] == 1
    assert after["landcover"] == before["landcover"]


def test_valid_is_recomputed_only_where_a_layer_changed_and_equals_a_fresh_build(
    build: BuildCube, standard_sources: dict[str, Any], small_grid: TargetGrid, tmp_path: Path
) -> None:
    build(standard_sources, terrain="dem")
    before = chunk_hashes(tmp_path / "cube.zarr")
    # A void in the DEM around 91.9 °E, 32.4 °N: valid changes in that chunk (and, through
    # the terrain's halo, at most its neighbours), and must not be carried over there.
    voided = write_dem_with_bump(tmp_path, lon=(91.8, 92.0), lat=(32.3, 32.5), void=True)
    sources = standard_sources | {"dem": standard_sources["dem"] | {"path": voided}}
    report = build(sources, terrain="dem")
    after = chunk_hashes(tmp_path / "cube.zarr")
    changed = {key for key in after[VALID] if after[VALID][key] != before[VALID][key]}
    row, col, _ = small_grid.pixel_index([91.9], [32.4])
    assert f"{int(row[0]) // 128}.{int(col[0]) // 128}" in changed
    actions = {u.name: (u.action, u.chunks_written) for u in report.layers}
    assert actions[VALID] == ("updated", len(changed))
    fresh = build_cube(load_catalog(tmp_path / "catalog.yaml"), small_grid, tmp_path / "fresh.zarr")
    assert fresh.chunks_written
    np.testing.assert_array_equal(
        open_cube(tmp_path / "cube.zarr")[VALID].values,
        open_cube(tmp_path / "fresh.zarr")[VALID].values,
    )
    assert after[VALID] == chunk_hashes(tmp_path / "fresh.zarr")[VALID]
    assert verify_cube(tmp_path / "cube.zarr") == []


def write_dem_with_bump(
    tmp_path: Path, lon: tuple[float, float], lat: tuple[float, float], *, void: bool = False
) -> str:
    from tests.conftest import source_lonlat

    src_lon, src_lat = source_lonlat()
    dem = linear_field(src_lon[None, :], src_lat[:, None]).astype("float32")
    dem[200:230, 300:330] = -9999.0
    inside = (
        (src_lon[None, :] > lon[0])
        & (src_lon[None, :] < lon[1])
        & (src_lat[:, None] > lat[0])
        & (src_lat[:, None] < lat[1])
    )
    if void:
        dem[inside] = -9999.0
    else:
        dem[inside] += 100.0
    write_tif(tmp_path / "dem_bump.tif", dem, nodata=-9999.0)
    return "dem_bump.tif"


def test_failed_build_leaves_the_previous_cube_untouched(
    build: BuildCube, standard_sources: dict[str, Any], tmp_path: Path
) -> None:
    build(standard_sources)
    before = chunk_hashes(tmp_path / "cube.zarr")
    files_before = sorted(p.name for p in tmp_path.iterdir())
    broken = standard_sources | {"dem": standard_sources["dem"] | {"valid_range": [0, 3100]}}
    with pytest.raises(LayerValueError):
        build(broken)
    assert chunk_hashes(tmp_path / "cube.zarr") == before
    assert open_cube(tmp_path / "cube.zarr")["dem"].notnull().any()
    assert sorted(p.name for p in tmp_path.iterdir()) == files_before  # no staging left


def test_values_outside_the_valid_range_name_the_layer_and_the_fix(
    build: BuildCube, standard_sources: dict[str, Any]
) -> None:
    broken = standard_sources | {"dem": standard_sources["dem"] | {"valid_range": [0, 3100]}}
    with pytest.raises(
        LayerValueError, match=r"layer 'dem'.*outside its valid_range \[0.0, 3100.0\]"
    ):
        build(broken)


def test_class_codes_missing_from_the_table_name_the_layer(
    build: BuildCube, standard_sources: dict[str, Any]
) -> None:
    two_classes = standard_sources["landcover"] | {"classes": {1: "forest", 2: "meadow"}}
    with pytest.raises(LayerValueError, match=r"layer 'landcover' has class codes \[3\]"):
        build(standard_sources | {"landcover": two_classes})


def test_layer_missing_the_grid_is_refused_before_anything_is_written(
    build: BuildCube, tmp_path: Path
) -> None:
    write_tif(
        tmp_path / "far.tif",
        np.ones((10, 10), "float32"),
        transform=Affine(0.1, 0, 10.0, 0, -0.1, 50.0),
    )
    with pytest.raises(SourceError, match=r"'far'.*does not overlap"):
        build({"far": {"path": "far.tif", "kind": "continuous", "group": "climate"}})
    assert not (tmp_path / "cube.zarr").exists()


def test_a_directory_that_is_not_a_cube_is_not_overwritten_unless_asked(
    build: BuildCube, standard_sources: dict[str, Any], tmp_path: Path
) -> None:
    (tmp_path / "cube.zarr").mkdir()
    (tmp_path / "cube.zarr" / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        build(standard_sources)
    assert (tmp_path / "cube.zarr" / "notes.txt").read_text() == "mine"
    build(standard_sources, overwrite=True)
    assert not (tmp_path / "cube.zarr" / "notes.txt").exists()


def test_a_cube_of_another_grid_is_not_overwritten_unless_asked(
    build: BuildCube, standard_sources: dict[str, Any]
) -> None:
    build(standard_sources)
    other = TargetGrid.from_spec(SMALL_SPEC.model_copy(update={"bbox": (90.0, 30.0, 93.0, 33.0)}))
    with pytest.raises(OutputExistsError, match="another grid"):
        build(standard_sources, grid=other)


def test_opening_an_incomplete_cube_is_a_cube_error(tmp_path: Path) -> None:
    zarr.open_group(tmp_path / "half.zarr", mode="w", zarr_format=3)
    with pytest.raises(CubeError, match="not a complete tpgrid cube"):
        open_cube(tmp_path / "half.zarr")


def test_cli_reports_a_bad_catalog_without_a_traceback(
    make_catalog: Callable[..., Path], tmp_path: Path
) -> None:
    catalog = make_catalog(
        {"dem": {"path": "nowhere.tif", "kind": "continuous", "group": "topography"}}
    )
    grid = tmp_path / "grid.yaml"
    grid.write_text("crs: ESRI:102025\nresolution: 1000\nbbox: [90, 30, 94, 33]\nchunk: 128\n")
    result = CliRunner().invoke(
        app,
        ["cube", "--catalog", str(catalog), "--grid", str(grid), "--out", str(tmp_path / "c.zarr")],
    )
    assert result.exit_code == 2
    assert "layer 'dem'" in result.output
    assert "nowhere.tif" in result.output
    assert "Traceback" not in result.output
    assert "Dask dashboard" not in result.output  # refused before a cluster was started


# --- damage in what a build carries over -------------------------------------------------


def chunk_files(path: Path) -> dict[str, bytes]:
    """Every chunk file of a group by relative path (metadata left out: it holds timestamps)."""
    return {
        str(p.relative_to(path)): p.read_bytes()
        for p in sorted(path.rglob("*"))
        if p.is_file() and p.name not in ("zarr.json",)
    }


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_every_stored_chunk_file_is_recorded_with_its_size_and_sha256(
    build: BuildCube, standard_sources: dict[str, Any], tmp_path: Path
) -> None:
    build(standard_sources, terrain="dem")
    cube = tmp_path / "cube.zarr"
    records = zarr.open_group(cube, mode="r").attrs[ATTR_CHUNK_FILES]
    assert set(records) == {"dem", "landcover", "slope", "northness", "eastness", VALID}
    assert set(records["dem"]) == set(chunk_hashes(cube)["dem"])
    size, sha256 = records["dem"]["1.1"]
    data = (cube / "dem" / "c" / "1" / "1").read_bytes()
    assert (size, sha256) == (len(data), hashlib.sha256(data).hexdigest())
    assert verify_cube(cube) == []


def test_a_deleted_chunk_of_an_unchanged_layer_is_recomputed_alone(
    build: BuildCube, standard_sources: dict[str, Any], tmp_path: Path
) -> None:
    build(standard_sources, terrain="dem")
    cube = tmp_path / "cube.zarr"
    before, hashes = chunk_files(cube), chunk_hashes(cube)
    (cube / "dem" / "c" / "1" / "1").unlink()
    assert [(d.path, d.problem) for d in verify_cube(cube)] == [
        (cube / "dem" / "c" / "1" / "1", "missing")
    ]
    report = build(standard_sources, terrain="dem")
    updates = {u.name: (u.action, u.chunks_written, u.chunks_repaired) for u in report.layers}
    assert updates["dem"] == ("repaired", 1, 1)
    assert {name: u for name, u in updates.items() if name != "dem"} == {
        name: ("unchanged", 0, 0) for name in updates if name != "dem"
    }
    (damage,) = report.repaired
    assert damage.path == cube / "dem" / "c" / "1" / "1"
    assert damage.problem == "missing; recomputed from its source"
    assert chunk_files(cube) == before
    assert chunk_hashes(cube) == hashes
    assert verify_cube(cube) == []


def test_a_changed_chunk_is_recomputed_not_linked(
    build: BuildCube, standard_sources: dict[str, Any], tmp_path: Path
) -> None:
    build(standard_sources, terrain="dem")
    cube = tmp_path / "cube.zarr"
    before = chunk_files(cube)
    # A flipped byte in a layer carried over unread, and in `valid`, recomputed every build.
    flip_a_byte(cube / "slope" / "c" / "0" / "2")
    flip_a_byte(cube / VALID / "c" / "2" / "1")
    report = build(standard_sources, terrain="dem")
    written = {u.name: u.chunks_written for u in report.layers if u.chunks_written}
    assert written == {"slope": 1, VALID: 1}
    assert sorted(str(d.path.relative_to(cube)) for d in report.repaired) == [
        "slope/c/0/2",
        "valid/c/2/1",
    ]
    assert all("differs from its SHA-256" in d.problem for d in report.repaired)
    assert chunk_files(cube) == before


def test_a_layer_changed_by_its_source_relinks_only_intact_chunks(
    build: BuildCube, standard_sources: dict[str, Any], tmp_path: Path
) -> None:
    build(standard_sources, terrain="dem")
    cube = tmp_path / "cube.zarr"
    (cube / "landcover" / "c" / "0" / "0").unlink()
    # A new catalog entry (another description) changes the fingerprint, not the pixels:
    # every chunk hash matches, so every chunk would be linked, but (0, 0) is gone.
    described = standard_sources["landcover"] | {"description": "land cover, renamed"}
    report = build(standard_sources | {"landcover": described}, terrain="dem")
    landcover = next(u for u in report.layers if u.name == "landcover")
    assert (landcover.action, landcover.chunks_written, landcover.chunks_repaired) == (
        "repaired",
        1,
        1,
    )
    assert [d.path for d in report.repaired] == [cube / "landcover" / "c" / "0" / "0"]
    assert verify_cube(cube) == []


def test_a_cube_without_file_records_is_rebuilt_and_says_so_once(
    build: BuildCube, standard_sources: dict[str, Any], tmp_path: Path
) -> None:
    build(standard_sources)
    cube = tmp_path / "cube.zarr"
    before = chunk_files(cube)
    group = zarr.open_group(cube, mode="r+", zarr_format=3)
    del group.attrs[ATTR_CHUNK_FILES]  # as an older tpgrid wrote it
    zarr.consolidate_metadata(cube, zarr_format=3)
    (damage,) = verify_cube(cube)
    assert "cannot be verified" in damage.problem
    report = build(standard_sources)
    (said,) = report.repaired
    assert said.path == cube
    assert "every chunk recomputed" in said.problem
    assert {u.name: u.chunks_written for u in report.layers} == {
        name: len(chunk_hashes(cube)[name]) for name in ("dem", "landcover", VALID)
    }
    assert chunk_files(cube) == before
    assert verify_cube(cube) == []


def test_leftovers_of_killed_builds_are_removed_and_named(
    build: BuildCube, standard_sources: dict[str, Any], tmp_path: Path
) -> None:
    build(standard_sources)
    for name in (".cube.zarr.staging-0badc0de", ".cube.zarr.retired-0badc0de"):
        (tmp_path / name / "dem").mkdir(parents=True)
    report = build(standard_sources)
    assert sorted(d.path.name for d in report.repaired) == [
        ".cube.zarr.retired-0badc0de",
        ".cube.zarr.staging-0badc0de",
    ]
    assert not list(tmp_path.glob(".cube.zarr.*"))


def test_verify_cube_names_a_flipped_byte_a_deleted_file_and_a_stray_file(
    build: BuildCube, standard_sources: dict[str, Any], tmp_path: Path
) -> None:
    build(standard_sources)
    cube = tmp_path / "cube.zarr"
    flip_a_byte(cube / "dem" / "c" / "0" / "1")
    (cube / "landcover" / "c" / "2" / "2").unlink()
    (cube / "dem" / "c" / "7").mkdir()
    (cube / "dem" / "c" / "7" / "7").write_bytes(b"stray")
    found = {str(d.path.relative_to(cube)): d.problem for d in verify_cube(cube)}
    assert found == {
        "dem/c/0/1": "content differs from its SHA-256 recorded when written",
        "landcover/c/2/2": "missing",
        "dem/c/7/7": "a file is here where none was written",
    }


def test_verify_cube_calls_an_incomplete_cube_damaged(tmp_path: Path) -> None:
    zarr.open_group(tmp_path / "half.zarr", mode="w", zarr_format=3)
    problems = [d.problem for d in verify_cube(tmp_path / "half.zarr")]
    assert problems[0] == "not marked complete: the run writing it did not finish"
    assert [d.path for d in verify_cube(tmp_path / "nothing.zarr")] == [tmp_path / "nothing.zarr"]


def test_link_file_refuses_a_missing_source(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="cannot be carried over"):
        link_file(tmp_path / "gone", tmp_path / "target")
    assert not (tmp_path / "target").exists()


# --- a survey elsewhere: a projected grid taken from a covariate, masks, no valid pixel --------

_UTM = "EPSG:32633"
_UTM_ORIGIN = (500_010.0, 4_990_030.0)  # a 20 m grid off the round lattice


def _utm_layer(tmp_path: Path, name: str, data: np.ndarray) -> dict[str, Any]:
    transform = Affine(20, 0, _UTM_ORIGIN[0], 0, -20, _UTM_ORIGIN[1])
    write_tif(tmp_path / f"{name}.tif", data, crs=_UTM, transform=transform, nodata=-9999.0)
    return {name: {"path": f"{name}.tif", "kind": "continuous", "group": "soil"}}


def test_a_grid_like_a_covariate_holds_it_pixel_for_pixel(build: BuildCube, tmp_path: Path) -> None:
    values = np.arange(60 * 90, dtype="float32").reshape(60, 90)
    layers = _utm_layer(tmp_path, "clay", values)
    grid = TargetGrid.from_spec(GridSpec(like=str(tmp_path / "clay.tif"), chunk=32))
    build(layers, grid=grid)
    cube = open_cube(tmp_path / "cube.zarr")
    assert cube.rio.transform() == Affine(20, 0, _UTM_ORIGIN[0], 0, -20, _UTM_ORIGIN[1])
    assert cube["clay"].shape == (60, 90)
    np.testing.assert_array_equal(cube["clay"].values, values)
    assert int(cube[VALID].sum()) == 60 * 90  # no mask: every pixel
    assert cube_grid(tmp_path / "cube.zarr").geobox == grid.geobox


def test_a_mask_that_misses_the_grid_fails_before_any_layer_is_read(
    build: BuildCube, tmp_path: Path
) -> None:
    layers = _utm_layer(tmp_path, "clay", np.ones((60, 90), dtype="float32"))
    (tmp_path / "clay.tif").write_bytes(b"not a GeoTIFF any more")  # read: would fail
    grid = TargetGrid.from_spec(
        GridSpec(
            crs=_UTM, resolution=20, extent=(500_010, 4_988_830, 501_810, 4_990_030), mask="plateau"
        )
    )
    with pytest.raises(
        GridError, match=r"mask 'plateau' does not overlap the grid.*leave 'mask' out"
    ):
        build(layers, grid=grid)
    assert not (tmp_path / "cube.zarr").exists()


def test_a_cube_with_no_valid_pixel_is_refused_naming_the_empty_layer(
    build: BuildCube, tmp_path: Path
) -> None:
    grid_spec = GridSpec(crs=_UTM, resolution=20, extent=(500_010, 4_988_830, 501_810, 4_990_030))
    # The mask: the grid's west half (in lon/lat, as GeoJSON is).
    west = TargetGrid.from_spec(
        grid_spec.model_copy(update={"extent": (500_010, 4_988_830, 500_900, 4_990_030)})
    )
    ring = [list(p) for p in west.geobox.geographic_extent.exterior.points]
    (tmp_path / "west.geojson").write_text(json.dumps({"type": "Polygon", "coordinates": [ring]}))
    clay = np.ones((60, 90), dtype="float32")
    sand = np.ones((60, 90), dtype="float32")
    sand[:, :50] = -9999.0  # no sand west of x = 501,010
    layers = _utm_layer(tmp_path, "clay", clay) | _utm_layer(tmp_path, "sand", sand)
    grid = TargetGrid.from_spec(
        grid_spec.model_copy(update={"mask": str(tmp_path / "west.geojson")})
    )
    with pytest.raises(
        GridError,
        match=r"inside mask .*west\.geojson' has all covariates: \['sand'\] have no data there",
    ):
        build(layers, grid=grid)
    assert not (tmp_path / "cube.zarr").exists()
    # Without the mask the east half is valid: the same layers build.
    build(layers, grid=TargetGrid.from_spec(grid_spec))
    assert int(open_cube(tmp_path / "cube.zarr")[VALID].sum()) == 60 * 40


def test_a_cube_recorded_with_the_dropped_bbox_mask_is_a_changed_grid(
    build: BuildCube, standard_sources: dict[str, Any], small_grid: TargetGrid, tmp_path: Path
) -> None:
    """A cube an older tpgrid built with ``mask: bbox``: reading its grid is a clear error, and
    a build treats it as a cube of another grid (replaced only with --overwrite)."""
    build(standard_sources)
    meta = tmp_path / "cube.zarr" / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["attributes"]["tpgrid:grid"]["mask"] = "bbox"
    meta.write_text(json.dumps(doc))
    with pytest.raises(GridError, match=r"cube .*cube\.zarr records a grid.*--overwrite"):
        cube_grid(tmp_path / "cube.zarr")
    with pytest.raises(OutputExistsError, match="a cube built for another grid"):
        build(standard_sources)
    build(standard_sources, overwrite=True)
    assert cube_grid(tmp_path / "cube.zarr").spec == small_grid.spec
