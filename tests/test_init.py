"""`tpgrid init` and a whole run on a survey unlike the plateau (tests/regions.py): projected
EPSG:3035 at 50 m, Pb/Cd/As, no DEM, its own land-use classes, sites as x/y."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import yaml

from tests.regions import CRS, ELEMENTS, LAND_USE, SOIL_TYPES, Region, build_region
from tpgrid.config import load_pipeline
from tpgrid.errors import OutputExistsError, SiteTableError, SourceError
from tpgrid.grid import TargetGrid
from tpgrid.scaffold import scaffold_pipeline


@pytest.fixture(scope="module")
def region(tmp_path_factory: pytest.TempPathFactory) -> Region:
    return build_region(tmp_path_factory.mktemp("survey"))


def test_init_guesses_kinds_grid_sites_and_elements(region: Region, tmp_path: Path) -> None:
    made = scaffold_pipeline(region.rasters, region.sites, tmp_path / "project")
    kinds = {layer.name: (layer.kind, layer.classes) for layer in made.layers}
    assert kinds == {
        "clay": ("continuous", ()),
        "landuse": ("categorical", tuple(LAND_USE)),  # nodata 0 is not a class
        "ndwi": ("continuous", ()),
    }
    assert made.elements == ELEMENTS
    assert made.site_columns == ("x", "y")
    assert made.site_crs == CRS
    assert any("x/y are taken to be in the grid's CRS EPSG:3035" in c for c in made.checks)

    config = load_pipeline(made.pipeline)
    grid = TargetGrid.from_spec(config.grid_spec())
    # The finest rasters' grid (NDWI and land use, 50 m), not the 100 m clay grid.
    with rasterio.open(region.rasters / "ndwi.tif") as src:
        assert grid.shape == (src.height, src.width)
        assert tuple(grid.geobox.affine)[:6] == tuple(src.transform)[:6]
        assert grid.crs.epsg == 3035
    source = config.site_source
    assert (source.crs, source.x, source.y) == (CRS, "x", "y")
    assert source.path == region.sites
    catalog = yaml.safe_load(made.catalog.read_text())
    assert catalog["layers"]["landuse"]["classes"] == {c: f"class {c}" for c in LAND_USE}
    assert Path(made.catalog.parent / catalog["layers"]["clay"]["path"]).resolve() == (
        region.rasters / "clay.tif"
    )


def test_init_refuses_to_overwrite_and_replaces_when_asked(region: Region, tmp_path: Path) -> None:
    out = tmp_path / "project"
    scaffold_pipeline(region.rasters, region.sites, out)
    (out / "grid.yaml").write_text("# edited by hand\n")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        scaffold_pipeline(region.rasters, region.sites, out)
    assert (out / "grid.yaml").read_text() == "# edited by hand\n"
    scaffold_pipeline(region.rasters, region.sites, out, overwrite=True)
    assert "extent:" in (out / "grid.yaml").read_text()


def test_init_names_what_is_wrong_with_the_inputs(region: Region, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SourceError, match="holds no GeoTIFF"):
        scaffold_pipeline(empty, region.sites, tmp_path / "a")

    no_crs = tmp_path / "no_crs"
    no_crs.mkdir()
    with rasterio.open(
        no_crs / "bare.tif", "w", driver="GTiff", height=4, width=4, count=1, dtype="float32"
    ) as dst:
        dst.write(np.ones((4, 4), "float32"), 1)
    with pytest.raises(SourceError, match=r"bare\.tif has no CRS: assign one"):
        scaffold_pipeline(no_crs, region.sites, tmp_path / "b")

    no_coords = tmp_path / "sites.csv"
    no_coords.write_text("site_id,sample_id,east,north,Pb\nA,A1,1,2,3\n")
    with pytest.raises(SiteTableError, match="neither x/y nor lon/lat"):
        scaffold_pipeline(region.rasters, no_coords, tmp_path / "c")

    no_elements = tmp_path / "sites2.csv"
    no_elements.write_text("site_id,sample_id,x,y,lead\nA,A1,1,2,3\n")
    with pytest.raises(SiteTableError, match="no element column"):
        scaffold_pipeline(region.rasters, no_elements, tmp_path / "d")
    # Nothing was left behind by the refusals.
    assert not any((tmp_path / d).exists() for d in "abcd")


def _tpgrid(*args: str | Path) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "tpgrid", *map(str, args)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def _published_maps(workdir: Path) -> list[Path]:
    maps = sorted((workdir / "published" / "current").rglob("*.tif"))
    assert maps, f"nothing published in {workdir}"
    return maps


@pytest.mark.slow
def test_init_then_run_maps_the_survey_then_on_a_template_grid(
    region: Region, tmp_path: Path
) -> None:
    project = tmp_path / "project"
    _tpgrid("init", region.rasters, "--sites", region.sites, "--out", project)
    _tpgrid("run", project / "pipeline.yaml", "--workers", "2")

    config = load_pipeline(project / "pipeline.yaml")
    with rasterio.open(region.rasters / "ndwi.tif") as src:
        ndwi_grid = (src.crs, src.transform, src.shape)
    maps = _published_maps(config.workdir)
    elements_mapped = {m.name.split("_")[0] for m in maps}
    assert set(ELEMENTS) <= elements_mapped
    for path in maps:
        with rasterio.open(path) as cog:
            assert (cog.crs, cog.transform, cog.shape) == ndwi_grid, path.name
    current = config.published_dir / "current"
    report = json.loads((current / "report" / "report.json").read_text())
    for element in ELEMENTS:
        analysis = report["elements"][element]
        # Effects of the survey's own continuous predictors; groups by its own classes.
        assert analysis["effects"]
        assert set(analysis["effects"]) <= {"ndwi", "clay"}
        assert set(analysis["groups"]) == {"landuse", "soil_type"}
        assert set(analysis["groups"]["landuse"]["means"]) <= {f"class {c}" for c in LAND_USE}
        assert set(analysis["groups"]["soil_type"]["means"]) == set(SOIL_TYPES)
        record = json.loads((config.models_dir / element / "model.json").read_text())["record"]
        choice = record["cv"]["spatial"]["block_choice"]
        # Derived from the sites' spacing: well below the 16 km survey, not the plateau's 100 km.
        assert 0 < choice["block_km"] < 16
        assert record["sites"]["crs"] == CRS
    item = json.loads((current / "item.json").read_text())
    assert "tpgrid:cv_r2" in item["assets"]["Pb_mean"]
    assert "plateau" not in (current / "report" / "report.html").read_text().lower()

    # The same survey mapped on a template raster's grid: 100 m, offset, part of the area.
    (project / "grid_like.yaml").write_text(f"like: {region.template}\n")
    pipeline = yaml.safe_load((project / "pipeline.yaml").read_text())
    pipeline |= {"name": "survey-on-template", "workdir": "work-template", "grid": "grid_like.yaml"}
    (project / "template.yaml").write_text(yaml.safe_dump(pipeline))
    _tpgrid("run", project / "template.yaml", "--workers", "2")
    with rasterio.open(region.template) as src:
        template_grid = (src.crs, src.transform, src.shape)
    for path in _published_maps(project / "work-template"):
        with rasterio.open(path) as cog:
            assert (cog.crs, cog.transform, cog.shape) == template_grid, path.name
