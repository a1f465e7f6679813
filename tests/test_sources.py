"""The covariate catalog: validation, lazy opening, remote sources, fingerprints."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from affine import Affine

from tests.conftest import write_tif
from tpgrid.errors import ConfigError, SourceError
from tpgrid.grid import TargetGrid
from tpgrid.sources import check_overlap, choose_resampling, fingerprint, load_catalog, open_layer


def test_catalog_rejects_unknown_keys_naming_them(make_catalog: Callable[..., Path]) -> None:
    path = make_catalog(
        {"dem": {"path": "dem.tif", "kind": "continuous", "group": "topography", "unit": "m"}}
    )
    with pytest.raises(ConfigError, match=r"(?s)catalog\.yaml.*layers\.dem\.unit: unknown key"):
        load_catalog(path)


def test_catalog_rejects_wrong_types(make_catalog: Callable[..., Path]) -> None:
    path = make_catalog(
        {
            "dem": {
                "path": "dem.tif",
                "kind": "continuous",
                "group": "topography",
                "valid_range": "low to high",
            }
        }
    )
    with pytest.raises(ConfigError, match=r"layers\.dem\.valid_range"):
        load_catalog(path)


def test_a_group_is_any_name_and_defaults_to_other(make_catalog: Callable[..., Path]) -> None:
    path = make_catalog(
        {
            "twi": {"path": "twi.tif", "kind": "continuous", "group": "hydrology"},
            "pb_2": {"path": "pb.tif", "kind": "continuous", "group": "Legacy_mines2"},
            "elev": {"path": "e.tif", "kind": "continuous"},
        }
    )
    groups = {name: layer.group for name, layer in load_catalog(path).layers.items()}
    assert groups == {"twi": "hydrology", "pb_2": "Legacy_mines2", "elev": "other"}


@pytest.mark.parametrize("group", ["land cover", "2nd_order", "", "x" * 41])
def test_catalog_rejects_a_group_that_is_not_a_name(
    make_catalog: Callable[..., Path], group: str
) -> None:
    path = make_catalog({"dem": {"path": "dem.tif", "kind": "continuous", "group": group}})
    with pytest.raises(ConfigError, match=r"(?s)layers\.dem\.group.*letters, digits and _"):
        load_catalog(path)


def test_categorical_layer_needs_a_class_table(make_catalog: Callable[..., Path]) -> None:
    path = make_catalog({"veg": {"path": "veg.tif", "kind": "categorical", "group": "categorical"}})
    with pytest.raises(ConfigError, match=r"needs a 'classes' table"):
        load_catalog(path)


def test_categorical_layer_cannot_be_averaged(make_catalog: Callable[..., Path]) -> None:
    path = make_catalog(
        {
            "veg": {
                "path": "veg.tif",
                "kind": "categorical",
                "group": "categorical",
                "classes": {1: "forest"},
                "resampling": "average",
            }
        }
    )
    with pytest.raises(ConfigError, match=r"'mode' or 'nearest'"):
        load_catalog(path)


def test_terrain_must_name_a_layer(make_catalog: Callable[..., Path]) -> None:
    path = make_catalog(
        {"elev": {"path": "e.tif", "kind": "continuous", "group": "topography"}}, terrain="dem"
    )
    with pytest.raises(ConfigError, match=r"terrain\.dem names 'dem'"):
        load_catalog(path)


def test_missing_catalog_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nowhere\.yaml does not exist"):
        load_catalog(tmp_path / "nowhere.yaml")


def test_missing_source_file_names_layer_and_path(make_catalog: Callable[..., Path]) -> None:
    catalog = load_catalog(
        make_catalog({"map": {"path": "rain.tif", "kind": "continuous", "group": "climate"}})
    )
    with pytest.raises(SourceError, match=r"layer 'map': file .*rain\.tif does not exist"):
        open_layer(catalog, "map")


def test_source_without_crs_is_refused(tmp_path: Path, make_catalog: Callable[..., Path]) -> None:
    write_tif(tmp_path / "nocrs.tif", np.ones((10, 10), "float32"), crs=None)
    catalog = load_catalog(
        make_catalog({"ndvi": {"path": "nocrs.tif", "kind": "continuous", "group": "vegetation"}})
    )
    with pytest.raises(SourceError, match=r"layer 'ndvi': .*nocrs\.tif has no CRS"):
        open_layer(catalog, "ndvi")


def test_source_outside_the_grid_is_refused(
    tmp_path: Path, make_catalog: Callable[..., Path], small_grid: TargetGrid
) -> None:
    write_tif(
        tmp_path / "andes.tif",
        np.ones((10, 10), "float32"),
        transform=Affine(0.1, 0, -70.0, 0, -0.1, -10.0),
    )
    catalog = load_catalog(
        make_catalog({"mat": {"path": "andes.tif", "kind": "continuous", "group": "climate"}})
    )
    with pytest.raises(
        SourceError, match=r"layer 'mat' covers lon -70\.00\.\.-69\.00.*does not overlap"
    ):
        check_overlap("mat", open_layer(catalog, "mat"), small_grid)


def test_opening_is_lazy_and_takes_catalog_nodata(
    standard_sources: dict[str, Any], make_catalog: Callable[..., Path]
) -> None:
    layers = standard_sources | {"dem": standard_sources["dem"] | {"nodata": 3000.0}}
    catalog = load_catalog(make_catalog(layers))
    dem = open_layer(catalog, "dem", chunk=128)
    assert dem.chunks is not None
    assert max(dem.chunks[0]) == 128
    assert dem.attrs["nodata"] == 3000.0
    assert open_layer(catalog, "landcover").attrs["nodata"] == 0


def test_auto_resampling_averages_fine_sources_and_interpolates_coarse_ones(
    tmp_path: Path,
    standard_sources: dict[str, Any],
    make_catalog: Callable[..., Path],
    small_grid: TargetGrid,
) -> None:
    write_tif(
        tmp_path / "coarse.tif",
        np.ones((40, 60), "float32"),
        transform=Affine(0.1, 0, 89.5, 0, -0.1, 33.5),
    )
    layers = standard_sources | {
        "mat": {"path": "coarse.tif", "kind": "continuous", "group": "climate"}
    }
    catalog = load_catalog(make_catalog(layers))
    chosen = {
        name: choose_resampling(catalog.layers[name], open_layer(catalog, name), small_grid)
        for name in catalog.layers
    }
    assert chosen == {"dem": "average", "landcover": "mode", "mat": "bilinear"}


def test_fingerprint_follows_file_content_and_entry(
    tmp_path: Path, standard_sources: dict[str, Any], make_catalog: Callable[..., Path]
) -> None:
    catalog = load_catalog(make_catalog(standard_sources))
    before = fingerprint(catalog, "dem")
    assert fingerprint(catalog, "dem") == before
    (tmp_path / "dem.tif").touch()  # a new mtime alone changes nothing
    assert fingerprint(catalog, "dem") == before
    relabelled = load_catalog(
        make_catalog(
            standard_sources | {"dem": standard_sources["dem"] | {"units": "ft"}}, name="c2.yaml"
        )
    )
    assert fingerprint(relabelled, "dem") != before
    write_tif(tmp_path / "dem.tif", np.full(SOURCE_SHAPE_FOR_TEST, 4000, "float32"), nodata=-9999.0)
    assert fingerprint(catalog, "dem") != before


SOURCE_SHAPE_FOR_TEST = (480, 720)


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[str]:
    """Serve tmp_path over HTTP on 127.0.0.1 from another process."""
    server = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("range_http_server.py")), str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        yield f"http://127.0.0.1:{server.stdout.readline().strip()}"
    finally:
        server.kill()
        server.wait()


def test_http_url_is_read_through_gdal(
    tmp_path: Path,
    standard_sources: dict[str, Any],
    make_catalog: Callable[..., Path],
    http_root: str,
    small_grid: TargetGrid,
) -> None:
    layers = {"dem": standard_sources["dem"] | {"path": f"{http_root}/dem.tif"}}
    catalog = load_catalog(make_catalog(layers))
    remote = open_layer(catalog, "dem")
    check_overlap("dem", remote, small_grid)
    local = open_layer(load_catalog(make_catalog(standard_sources, name="local.yaml")), "dem")
    np.testing.assert_array_equal(remote[:50, :50].values, local[:50, :50].values)
