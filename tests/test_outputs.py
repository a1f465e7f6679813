"""Publishing a run: COGs GDAL validates, quicklooks with colour bars, a STAC item, CF/ACDD.

The run is a prediction group written with the same layout functions as `tpgrid predict`, filled
with known values, so every published pixel can be checked against them.
"""

from __future__ import annotations

import json
import shutil
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pytest
import rasterio
import xarray as xr
import zarr
from distributed import Client
from rio_cogeo.cogeo import cog_validate

from tests.conftest import SMALL_SPEC, DaskProcesses
from tests.run_groups import CALIBRATION, LAYERS, OPTIONS, known_layers, write_run_group
from tpgrid.core.blocks import UNSEEN_NODATA
from tpgrid.errors import OutputExistsError, PredictionError
from tpgrid.grid import TargetGrid
from tpgrid.outputs import (
    ATTR_RUN,
    COG_MEDIA_TYPE,
    RUN_GROUP,
    STAC_ITEM,
    file_digests,
    layer_layouts,
    open_prediction,
    publish,
    quicklook_figure,
    variable_name,
)
from tpgrid.outputs.names import element_files
from tpgrid.outputs.quicklook import NO_DATA_NOTE, quicklook_layers
from tpgrid.store import create_layout

ELEMENTS = ("Fe", "Mo")
RUN_ID = "ab" * 32


@pytest.fixture(scope="module")
def grid() -> TargetGrid:
    return TargetGrid.from_spec(SMALL_SPEC)


@pytest.fixture(scope="module")
def run(grid: TargetGrid, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A complete prediction group of two elements, laid out as `predict_cube` lays it out."""
    path = tmp_path_factory.mktemp("run") / "maps.zarr"
    return write_run_group(path, grid, ELEMENTS, RUN_ID, cv_r2={"Fe": 0.62, "Mo": -0.31})


@pytest.fixture(scope="module")
def published(run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("published") / "maps"
    publish(run, directory)
    return directory


@pytest.mark.parametrize("layer", LAYERS)
def test_every_layer_is_a_valid_cloud_optimized_geotiff(published: Path, layer: str) -> None:
    for element in ELEMENTS:
        valid, errors, _ = cog_validate(published / f"{variable_name(element, layer)}.tif")
        assert valid, errors
        with rasterio.open(published / f"{variable_name(element, layer)}.tif") as cog:
            assert cog.profile["tiled"]
            assert cog.overviews(1)


@pytest.mark.parametrize("layer", LAYERS)
def test_cog_pixels_equal_the_layer_with_its_nodata_and_statistics(
    published: Path, grid: TargetGrid, layer: str
) -> None:
    expected = known_layers(grid, "Mo")[layer]
    with rasterio.open(published / f"Mo_{layer}.tif") as cog:
        values = cog.read(1)
        nodata = cog.nodata
        tags = cog.tags(1)
    assert values.shape == grid.shape
    assert np.array_equal(values, expected, equal_nan=True)
    if layer == "unseen":
        assert nodata == UNSEEN_NODATA
    else:
        assert np.isnan(nodata)
        assert float(tags["STATISTICS_MEAN"]) == pytest.approx(np.nanmean(expected), rel=1e-4)


def test_published_directory_holds_the_product_files_and_nothing_else(published: Path) -> None:
    # The tiled GeoTIFFs each COG is made from are temporary.
    expected = {f"{variable_name(e, layer)}.tif" for e in ELEMENTS for layer in LAYERS}
    expected |= {f"{e}_quicklook.png" for e in ELEMENTS} | {STAC_ITEM}
    assert {path.name for path in published.iterdir()} == expected


@pytest.mark.parametrize(
    ("layer", "rendered"),
    [
        ("mean", {"Mo_mean.tif", "Mo_quicklook.png"}),  # the quicklook shows mean and sd
        ("upper", {"Mo_upper.tif", "Mo_quicklook.png"}),  # and the interval
        ("variance", {"Mo_variance.tif"}),
        ("unseen", {"Mo_unseen.tif"}),
    ],
)
def test_only_the_changed_layer_and_a_quicklook_showing_it_are_rendered_the_rest_linked(
    run: Path, published: Path, tmp_path: Path, layer: str, rendered: set[str]
) -> None:
    changed = tmp_path / "changed.zarr"
    shutil.copytree(run, changed)  # copies: equal bytes, other files
    array = zarr.open_array(changed / f"Mo_{layer}", mode="r+", zarr_format=3)
    array[0:10, 0:10] = 1
    report = publish(changed, tmp_path / "maps", previous=published)
    assert report.reused == ("Fe",)
    for name in (n for e in ELEMENTS for n in element_files(e, LAYERS)):
        same = (tmp_path / "maps" / name).stat().st_ino == (published / name).stat().st_ino
        assert same == (name not in rendered), name
    with rasterio.open(tmp_path / "maps" / f"Mo_{layer}.tif") as cog:
        assert (cog.read(1, window=((0, 10), (0, 10))) == 1).all()
        assert (cog.read(1, window=((0, 10), (10, 20))) != 1).all()
    item = json.loads((tmp_path / "maps" / STAC_ITEM).read_text())
    assert set(item["properties"]["tpgrid:file_digests"]) == {
        name for e in ELEMENTS for name in element_files(e, LAYERS)
    }
    again = publish(changed, tmp_path / "maps-again", previous=tmp_path / "maps")
    assert again.reused == ("Fe", "Mo")


def test_file_digests_change_with_the_grid_and_a_quicklook_only_with_mean_and_sd(
    run: Path, tmp_path: Path
) -> None:
    _, record = open_prediction(run)
    digests = file_digests(run, record, "Mo")
    moved = record | {"grid": record["grid"] | {"bbox": [90.5, 30.0, 94.5, 33.0]}}
    elsewhere = file_digests(run, moved, "Mo")
    assert all(elsewhere[name] != digests[name] for name in digests)  # a COG is georeferenced
    changed = tmp_path / "changed.zarr"
    shutil.copytree(run, changed)
    zarr.open_array(changed / "Mo_variance", mode="r+", zarr_format=3)[0:2, 0:2] = 1
    after = file_digests(changed, record, "Mo")
    assert {name for name in digests if after[name] != digests[name]} == {"Mo_variance.tif"}


@pytest.mark.parametrize("where", ["threads", pytest.param("cluster", marks=pytest.mark.slow)])
def test_maps_published_with_reuse_are_byte_identical_to_maps_published_fresh(
    run: Path,
    published: Path,
    grid: TargetGrid,
    tmp_path: Path,
    where: str,
    request: pytest.FixtureRequest,
) -> None:
    changed = tmp_path / "changed.zarr"
    shutil.copytree(run, changed)
    window = list(grid.windows())[-1]
    for layer in ("mean", "sd"):
        array = zarr.open_array(changed / f"Mo_{layer}", mode="r+", zarr_format=3)
        array[window.rows, window.cols] = np.asarray(array[window.rows, window.cols]) * 2
    with ExitStack() as stack:
        if where == "cluster":  # rendered on the workers of a real cluster, the rest linked
            cluster: DaskProcesses = request.getfixturevalue("dask_processes")
            stack.enter_context(Client(cluster.address))
        reused = publish(changed, tmp_path / "reused", previous=published)
    fresh = publish(changed, tmp_path / "fresh")  # all rendered here, on a thread
    assert reused.reused == ("Fe",)
    assert fresh.reused == ()
    linked = {p.name for p in (tmp_path / "reused").iterdir() if p.stat().st_nlink > 1}
    assert linked == {n for e in ELEMENTS for n in element_files(e, LAYERS)} - {
        "Mo_mean.tif",
        "Mo_sd.tif",
        "Mo_quicklook.png",
    }
    for name in (n for e in ELEMENTS for n in element_files(e, LAYERS)):
        assert (tmp_path / "reused" / name).read_bytes() == (
            tmp_path / "fresh" / name
        ).read_bytes(), name
    for cog in fresh.cogs:
        with rasterio.open(cog) as a, rasterio.open(tmp_path / "reused" / cog.name) as b:
            assert a.profile | {"nodata": 0} == b.profile | {"nodata": 0}
            assert np.array_equal([a.nodata], [b.nodata], equal_nan=True)
            assert a.tags(1) == b.tags(1)
            assert np.array_equal(a.read(1), b.read(1), equal_nan=True)
            assert np.array_equal(
                a.read(1, out_shape=(40, 40)), b.read(1, out_shape=(40, 40)), equal_nan=True
            )
    with rasterio.open(tmp_path / "reused" / "Mo_sd.tif") as cog:
        values = cog.read(
            1, window=((window.rows.start, window.rows.stop), (window.cols.start, window.cols.stop))
        )
    expected = known_layers(grid, "Mo")["sd"][window.rows, window.cols] * 2
    assert np.array_equal(values, expected, equal_nan=True)
    items = [
        json.loads((d / STAC_ITEM).read_text()) for d in (tmp_path / "reused", tmp_path / "fresh")
    ]
    assert (
        items[0]["properties"]["tpgrid:file_digests"]
        == items[1]["properties"]["tpgrid:file_digests"]
    )
    assert items[0]["assets"] == items[1]["assets"]


def test_cog_has_the_grid_crs_and_transform(published: Path, grid: TargetGrid) -> None:
    with rasterio.open(published / "Fe_mean.tif") as cog:
        assert cog.crs == rasterio.CRS.from_wkt(grid.crs_wkt)
        assert cog.transform == grid.geobox.affine


def test_cog_band_description_names_the_element_and_units(published: Path) -> None:
    with rasterio.open(published / "Fe_sd.tif") as cog:
        assert cog.descriptions == ("Fe content, standard deviation between 20 trees (mg/kg)",)


def test_quicklook_shows_mean_interval_and_sd_with_colour_bars_in_mg_per_kg(
    published: Path,
) -> None:
    figure = quicklook_figure(published, "Mo", LAYERS, CALIBRATION.level)
    bars = [axes for axes in figure.axes if axes.get_label() == "<colorbar>"]
    maps = [axes for axes in figure.axes if axes not in bars]
    assert [axes.get_ylabel() for axes in bars] == ["Mo (mg/kg)"] * 4
    assert [axes.get_title() for axes in maps] == [
        "Mo mean",
        "Mo 90 % prediction interval, lower bound",
        "Mo 90 % prediction interval, upper bound",
        "Mo between-tree SD",
    ]
    # Light is low for the uncertainty, as in the report's maps; white is said to be no data.
    assert [axes.images[0].get_cmap().name for axes in maps] == ["viridis"] * 3 + ["plasma_r"]
    # The bounds share the mean's colour scale, so a colour means one content in all three.
    limits = [axes.images[0].get_clim() for axes in maps]
    assert limits[0] == limits[1] == limits[2] != limits[3]
    assert quicklook_layers(("mean", "variance", "sd", "unseen")) == ("mean", "sd")
    assert [text.get_text() for text in figure.texts] == [NO_DATA_NOTE]
    assert NO_DATA_NOTE.startswith("White: no data (outside the mask, a covariate missing")
    with open(published / "Mo_quicklook.png", "rb") as png:
        assert png.read(8) == b"\x89PNG\r\n\x1a\n"


def test_stac_item_describes_the_run_and_every_asset(published: Path, grid: TargetGrid) -> None:
    item = json.loads((published / "item.json").read_text())
    assert item["type"] == "Feature"
    assert item["stac_version"] == "1.0.0"
    assert item["id"] == f"tpgrid-{RUN_ID[:16]}"
    assert item["properties"]["tpgrid:run_id"] == RUN_ID
    assert item["properties"]["datetime"].endswith("+00:00")
    assert item["properties"]["proj:code"] == "ESRI:102025"
    with rasterio.open(published / "Fe_mean.tif") as cog:
        assert item["properties"]["proj:shape"] == [cog.height, cog.width]
        assert item["properties"]["proj:bbox"] == list(cog.bounds)
    west, south, east, north = item["bbox"]
    assert 89.5 < west < 90.0 < 94.0 < east < 94.5
    assert 29.5 < south < 30.0 < 33.0 < north < 33.5
    ring = np.array(item["geometry"]["coordinates"][0])
    assert item["geometry"]["type"] == "Polygon"
    assert np.allclose(ring.min(axis=0), [west, south])
    assert np.allclose(ring.max(axis=0), [east, north])
    tiffs = {name for name, a in item["assets"].items() if a["type"] == COG_MEDIA_TYPE}
    assert tiffs == {variable_name(e, layer) for e in ELEMENTS for layer in LAYERS}
    for asset in item["assets"].values():
        assert (published / asset["href"]).is_file()
    assert item["assets"]["Fe_quicklook"]["roles"] == ["overview"]
    assert item["assets"]["Fe_variance"]["raster:bands"][0]["unit"] == "mg2 kg-2"
    assert item["assets"]["Fe_unseen"]["raster:bands"][0]["nodata"] == UNSEEN_NODATA
    assert item["assets"]["Fe_lower"]["raster:bands"][0]["unit"] == "mg/kg"
    assert item["assets"]["Fe_lower"]["tpgrid:interval"] == CALIBRATION.to_json()
    assert item["assets"]["Fe_upper"]["title"] == "Fe 90 % prediction interval, upper bound"
    assert "tpgrid:interval" not in item["assets"]["Fe_mean"]
    assert item["properties"]["tpgrid:options"] == OPTIONS.to_json()


def test_stac_item_flags_every_file_of_a_model_worse_than_the_mean(published: Path) -> None:
    item = json.loads((published / "item.json").read_text())
    for name in element_files("Mo", LAYERS):
        asset = item["assets"][Path(name).stem]
        assert asset["tpgrid:cv_r2"] == -0.31
        assert asset["tpgrid:quality_warning"].startswith("grouped-CV R² -0.31: ")
        assert "worse than their mean" in asset["tpgrid:quality_warning"]
        assert asset["title"].endswith("(poor model: grouped-CV R² -0.31)")
    for name in element_files("Fe", LAYERS):
        asset = item["assets"][Path(name).stem]
        assert asset["tpgrid:cv_r2"] == 0.62
        assert "tpgrid:quality_warning" not in asset
        assert "poor" not in asset["title"]


def test_group_has_cf_and_acdd_attributes(run: Path) -> None:
    ds = xr.open_zarr(run, consolidated=True, zarr_format=3, decode_coords="all")
    assert ds.attrs["Conventions"] == "CF-1.10, ACDD-1.3"
    assert ds.attrs["id"] == RUN_ID
    assert {"title", "summary", "history", "geospatial_bounds"} <= set(ds.attrs)
    assert 89.5 < ds.attrs["geospatial_lon_min"] < 90.0
    assert ds["Fe_mean"].attrs["units"] == "mg/kg"
    assert ds["Fe_variance"].attrs["units"] == "mg2 kg-2"
    assert ds["Fe_unseen"].attrs["flag_values"] == [0, 1]
    assert ds["Fe_mean"].encoding["grid_mapping"] == "spatial_ref"
    assert "crs_wkt" in ds["spatial_ref"].attrs


def test_plain_xarray_opens_the_group_with_its_crs_and_a_short_run_attribute(
    run: Path, grid: TargetGrid
) -> None:
    ds = xr.open_zarr(run)  # no decode_coords: what a user types first
    assert "spatial_ref" in ds.coords
    assert "spatial_ref" not in ds.data_vars
    assert ds.rio.crs == rasterio.CRS.from_wkt(grid.crs_wkt)
    assert ds["Fe_mean"].rio.crs == rasterio.CRS.from_wkt(grid.crs_wkt)
    assert ds.rio.transform() == grid.geobox.affine
    # The run record is a child group's attributes; the group's attribute only names it.
    assert ds.attrs[ATTR_RUN] == {"run_id": RUN_ID, "record": RUN_GROUP}
    assert zarr.open_group(run / RUN_GROUP, mode="r").attrs["run_id"] == RUN_ID


def test_a_group_whose_run_record_is_another_runs_is_not_a_prediction(
    run: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "maps.zarr"
    shutil.copytree(run, copy)
    zarr.open_group(copy / RUN_GROUP, mode="r+").attrs["run_id"] = "cd" * 32
    with pytest.raises(PredictionError, match=RUN_GROUP):
        open_prediction(copy)


def test_publishing_the_same_run_again_is_up_to_date(run: Path, published: Path) -> None:
    before = (published / "item.json").stat().st_mtime_ns
    report = publish(run, published)
    assert report.up_to_date
    assert (published / "item.json").stat().st_mtime_ns == before


def test_directory_holding_something_else_is_refused_unless_overwrite(
    run: Path, tmp_path: Path
) -> None:
    directory = tmp_path / "maps"
    directory.mkdir()
    (directory / "old.tif").write_bytes(b"old")
    with pytest.raises(OutputExistsError, match=r"maps exists.*--overwrite"):
        publish(run, directory)
    assert (directory / "old.tif").is_file()
    publish(run, directory, overwrite=True)
    assert not (directory / "old.tif").exists()
    assert (directory / "Fe_mean.tif").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["maps"]


def test_incomplete_group_is_not_a_prediction(grid: TargetGrid, tmp_path: Path) -> None:
    create_layout(tmp_path / "maps.zarr", grid, layer_layouts("Fe", 20, OPTIONS))
    with pytest.raises(PredictionError, match="not a complete tpgrid prediction"):
        open_prediction(tmp_path / "maps.zarr")
