"""Pipeline configs: shipped ones are valid, the demo is the shipped demo, mistakes are named."""

from __future__ import annotations

from pathlib import Path

import pytest

from tpgrid.client import SchedulerFileSpec
from tpgrid.config import demo_config, load_pipeline
from tpgrid.errors import ConfigError
from tpgrid.fit import SiteSource

PIPELINES = Path(__file__).resolve().parents[1] / "pipelines"


@pytest.mark.parametrize("name", ["demo", "synthetic_1km", "tibet_1km"])
def test_shipped_pipelines_are_valid_with_absolute_paths(name: str) -> None:
    config = load_pipeline(PIPELINES / f"{name}.yaml")
    assert config.name == name
    assert config.workdir.is_absolute()
    assert config.catalog_path.is_absolute()


def test_the_real_template_reads_its_grid_and_catalog_beside_it() -> None:
    config = load_pipeline(PIPELINES / "tibet_1km.yaml")
    assert config.catalog_path == PIPELINES / "tibet_catalog.yaml"
    spec = config.grid_spec()
    assert (spec.crs, spec.resolution, spec.bbox) == ("ESRI:102025", 1000.0, (79, 27, 105, 40))
    assert spec.mask == "plateau"  # asked for, not a default
    assert config.fit.calibrate == ("Zn", "Ni")


@pytest.mark.parametrize(
    ("name", "full", "resolution"),
    [("demo", False, None), ("synthetic_1km", True, None), ("synthetic_250m", True, 250.0)],
)
def test_tpgrid_demo_runs_the_shipped_demo_pipelines(
    name: str, full: bool, resolution: float | None
) -> None:
    shipped = load_pipeline(PIPELINES / f"{name}.yaml")
    assert demo_config(shipped.workdir, full=full, resolution=resolution) == shipped


def test_unknown_keys_are_named(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("name: x\nworkdir: w\nsynthetic: {size: small}\nfit: {n_tress: 5}\n")
    with pytest.raises(ConfigError, match=r"(?s)p\.yaml.*fit\.n_tress: unknown key"):
        load_pipeline(path)


def test_inputs_must_be_synthetic_or_all_three(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("name: x\nworkdir: w\ncatalog: c.yaml\n")
    with pytest.raises(ConfigError, match=r"name the inputs \['grid', 'sites'\]"):
        load_pipeline(path)
    path.write_text("name: x\nworkdir: w\nsynthetic: {}\nsites: s.csv\n")
    with pytest.raises(ConfigError, match="remove \\['sites'\\] or 'synthetic'"):
        load_pipeline(path)


def test_a_missing_config_names_the_examples(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="pipelines/"):
        load_pipeline(tmp_path / "nope.yaml")


def test_fit_failures_is_drop_or_fail(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("name: x\nworkdir: w\nsynthetic: {size: small}\nfit_failures: fail\n")
    assert load_pipeline(path).fit_failures == "fail"
    path.write_text("name: x\nworkdir: w\nsynthetic: {size: small}\nfit_failures: skip\n")
    with pytest.raises(ConfigError, match=r"(?s)p\.yaml.*fit_failures"):
        load_pipeline(path)


def test_sites_take_a_path_or_a_mapping_with_crs_and_columns(tmp_path: Path) -> None:
    (tmp_path / "grid.yaml").write_text(
        "crs: EPSG:32633\nresolution: 100\nextent: [0, 0, 1000, 1000]\n"
    )
    path = tmp_path / "p.yaml"
    base = "name: x\nworkdir: w\ngrid: grid.yaml\ncatalog: c.yaml\n"
    path.write_text(base + "sites: data/s.csv\n")
    config = load_pipeline(path)
    assert config.site_source == SiteSource(path=tmp_path / "data" / "s.csv")
    assert config.sites_path == tmp_path / "data" / "s.csv"
    path.write_text(base + "sites: {path: data/s.csv, crs: EPSG:32633, x: easting, y: northing}\n")
    config = load_pipeline(path)
    assert config.site_source == SiteSource(
        path=tmp_path / "data" / "s.csv", crs="EPSG:32633", x="easting", y="northing"
    )
    path.write_text(base + "sites: {path: s.csv, crs: EPSG:99999999}\n")
    with pytest.raises(ConfigError, match=r"(?s)p\.yaml.*sites.*unknown CRS 'EPSG:99999999'"):
        load_pipeline(path)


def test_the_synthetic_plateau_sites_are_lonlat(tmp_path: Path) -> None:
    config = demo_config(tmp_path / "w")
    assert config.site_source.crs == "EPSG:4326"
    assert config.site_source.path == config.sites_path


def test_an_inline_grid_reads_its_paths_from_the_pipeline_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "jobs").mkdir()
    path = tmp_path / "jobs" / "p.yaml"
    path.write_text(
        "name: x\nworkdir: w\ncatalog: c.yaml\nsites: s.csv\n"
        "grid: {like: rasters/clay.tif, mask: aoi.geojson, chunk: 256}\n"
    )
    monkeypatch.chdir(tmp_path)
    spec = load_pipeline("jobs/p.yaml").grid_spec()
    assert spec.like == str(tmp_path / "jobs" / "rasters" / "clay.tif")
    assert spec.mask == str(tmp_path / "jobs" / "aoi.geojson")
    assert spec.chunk == 256


def test_a_grid_without_crs_and_resolution_names_the_keys(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(
        "name: x\nworkdir: w\ncatalog: c.yaml\nsites: s.csv\ngrid: {bbox: [10, 50, 11, 51]}\n"
    )
    with pytest.raises(ConfigError, match=r"(?s)p\.yaml.*grid.*set \['crs', 'resolution'\]"):
        load_pipeline(path)


def test_an_inline_cluster_spec_reads_its_paths_from_the_pipeline_folder(tmp_path: Path) -> None:
    folder = tmp_path / "pipelines"
    folder.mkdir()
    (folder / "p.yaml").write_text(
        "name: p\nworkdir: work\nsynthetic: {}\n"
        "cluster: {kind: scheduler_file, scheduler_file: run/scheduler.json}\n"
    )
    config = load_pipeline(folder / "p.yaml")
    assert isinstance(config.cluster, SchedulerFileSpec)
    assert config.cluster.scheduler_file == folder / "run" / "scheduler.json"
