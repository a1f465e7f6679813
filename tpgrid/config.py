"""Pipeline configs: one validated YAML naming the grid, covariates, sites, elements, model
settings, outputs and (optionally) the cluster of a run.

A config either points at real inputs::

    name: tibet_1km
    workdir: /data/tpgrid/tibet_1km        # cube, models, predictions, published maps, runs
    grid: grid.yaml                         # a grid YAML, or the grid spec inline
    catalog: tibet_catalog.yaml
    sites: /data/sites/tibet_sites.parquet  # lon/lat (EPSG:4326); or, in another CRS:
    # sites: {path: survey.csv, crs: EPSG:32633, x: easting, y: northing}
    fit: {elements: [Fe, Mn, Cu, Zn, Ni, V, Mo], n_trees: 500}

or asks for the built-in synthetic plateau (``synthetic: {size: small, seed: 0}``), which is
written into ``workdir/plateau`` and supplies grid, catalog and sites. Relative paths are read
from the config file's directory (a grid YAML's own paths from that YAML's).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tpgrid.client import ClusterSpec, resolved_against
from tpgrid.core.blocks import PredictOptions, UnseenPolicy
from tpgrid.errors import StorageError
from tpgrid.fit import PLATEAU_FIT, FitSettings, SearchGrid, SiteSource
from tpgrid.grid import GridSpec, load_grid_spec
from tpgrid.report import ReportSettings
from tpgrid.synthetic import PlateauFiles, plateau_files
from tpgrid.yamlfile import read_mapping, validated


@dataclass(frozen=True)
class WorkdirLayout:
    """Where a pipeline keeps its outputs inside its working directory."""

    workdir: Path

    @property
    def cube(self) -> Path:
        return self.workdir / "cube.zarr"

    @property
    def models(self) -> Path:
        return self.workdir / "models"

    @property
    def prediction(self) -> Path:
        return self.workdir / "prediction.zarr"

    @property
    def published(self) -> Path:
        return self.workdir / "published"

    @property
    def runs(self) -> Path:
        return self.workdir / "runs"


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SyntheticInputs(_Section):
    """Use the synthetic plateau of this size and seed as the run's inputs."""

    size: Literal["small", "full"] = "small"
    seed: int = Field(0, ge=0)
    resolution: float | None = Field(
        None,
        gt=0,
        description="pixel size of the target grid, metres (default: the plateau's own, 1000); "
        "the covariate files and sites are the same at every resolution",
    )


class PredictSettings(_Section):
    """What the prediction maps per pixel, besides mean, variance and sd."""

    unseen: UnseenPolicy = Field(
        "nan", description="pixels of a class never seen in training: 'nan' or 'predict'"
    )
    quantiles: tuple[float, ...] = Field(
        (0.05, 0.5, 0.95),
        description="quantiles of the quantile regression forest to map ([] for none)",
    )
    interval: bool = Field(
        True,
        description="map the prediction interval's bounds, calibrated on held-out sites per "
        "dissimilarity-index bin, at the level the models were fitted for (fit.interval_level)",
    )
    relative_width: bool = Field(
        False, description="map (Q95 - Q05) / Q50 (needs the quantiles 0.05, 0.5, 0.95)"
    )
    standard_error: bool = Field(
        False,
        description="map the infinitesimal-jackknife standard error of the mean (costs more "
        "than the other layers together)",
    )
    applicability: bool = Field(
        True, description="map the dissimilarity index and the area of applicability"
    )

    @model_validator(mode="after")
    def _options_hold_together(self) -> PredictSettings:
        self.options()  # its ValueError becomes the key's validation error
        return self

    def options(self) -> PredictOptions:
        """These settings as the prediction takes them."""
        return PredictOptions(**self.model_dump())


class PublishSettings(_Section):
    keep_versions: int = Field(
        3, ge=1, description="published versions kept by `tpgrid runs prune` (newest first)"
    )


class ReportSection(ReportSettings):
    """The science report written into every new published version: what it computes, and
    whether it is written at all."""

    enabled: bool = True


class PipelineConfig(_Section):
    """A whole run: inputs, settings, where everything goes. Paths are absolute once loaded."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    workdir: Path
    synthetic: SyntheticInputs | None = None
    grid: GridSpec | Path | None = None
    catalog: Path | None = None
    sites: SiteSource | None = Field(
        None,
        description="the site table: a path (lon/lat, EPSG:4326) or {path, crs, x, y}",
    )
    fit: FitSettings = FitSettings()
    # Here, not in FitSettings: those shape every model (and its hash); this shapes the run.
    fit_failures: Literal["drop", "fail"] = Field(
        "drop",
        description="an element with fewer usable sites than CV folds: 'drop' it (its model "
        "and maps are removed, the run record and report say why) or 'fail' the run",
    )
    predict: PredictSettings = PredictSettings()
    publish: PublishSettings = PublishSettings()
    report: ReportSection = ReportSection()
    cluster: ClusterSpec | None = None

    @field_validator("sites", mode="before")
    @classmethod
    def _a_path_is_a_lonlat_table(cls, value: Any) -> Any:
        return {"path": value} if isinstance(value, str | Path) else value

    @model_validator(mode="after")
    def _inputs_are_named_once(self) -> PipelineConfig:
        given = [key for key in ("grid", "catalog", "sites") if getattr(self, key) is not None]
        if self.synthetic is not None and given:
            raise ValueError(
                f"'synthetic' supplies grid, catalog and sites; remove {given} or 'synthetic'"
            )
        if self.synthetic is None and len(given) < 3:
            missing = sorted({"grid", "catalog", "sites"} - set(given))
            raise ValueError(f"name the inputs {missing}, or use 'synthetic: {{size: small}}'")
        return self

    # --- where things are ----------------------------------------------------------------

    @property
    def plateau_dir(self) -> Path:
        return self.workdir / "plateau"

    @property
    def truth_files(self) -> PlateauFiles | None:
        """The synthetic plateau whose truth the maps can be checked against: only when they
        are on the grid the truth was written on (the plateau's own resolution)."""
        if self.synthetic is None:
            return None
        files = plateau_files(self.plateau_dir)
        own = load_grid_spec(files.grid).resolution
        return files if self.synthetic.resolution in (None, own) else None

    @property
    def catalog_path(self) -> Path:
        if self.synthetic is not None:
            return plateau_files(self.plateau_dir).catalog
        assert self.catalog is not None
        return self.catalog

    @property
    def site_source(self) -> SiteSource:
        """The site table and how its locations are given (the synthetic plateau's is lon/lat)."""
        if self.synthetic is not None:
            return SiteSource(path=plateau_files(self.plateau_dir).sites)
        assert self.sites is not None
        return self.sites

    @property
    def sites_path(self) -> Path:
        return self.site_source.path

    def grid_spec(self) -> GridSpec:
        if self.synthetic is not None:
            plateau = load_grid_spec(plateau_files(self.plateau_dir).grid)
            if self.synthetic.resolution is None:
                return plateau
            return plateau.model_copy(update={"resolution": self.synthetic.resolution})
        if isinstance(self.grid, GridSpec):
            return self.grid
        assert self.grid is not None
        return load_grid_spec(self.grid)

    @property
    def cube_path(self) -> Path:
        return WorkdirLayout(self.workdir).cube

    @property
    def models_dir(self) -> Path:
        return WorkdirLayout(self.workdir).models

    @property
    def prediction_path(self) -> Path:
        return WorkdirLayout(self.workdir).prediction

    @property
    def published_dir(self) -> Path:
        return WorkdirLayout(self.workdir).published

    @property
    def runs_dir(self) -> Path:
        return WorkdirLayout(self.workdir).runs


def load_pipeline(path: str | Path) -> PipelineConfig:
    """Read and validate a pipeline YAML; relative paths are made absolute from its folder."""
    path = Path(path)
    data = read_mapping(path, "pipeline config", "see pipelines/*.yaml")
    return parse_pipeline(data, base_dir=path.parent.resolve(), source=f"pipeline config {path}")


def parse_pipeline(
    data: dict[str, Any], base_dir: Path, source: str = "pipeline config"
) -> PipelineConfig:
    """Validate a config mapping; relative paths are resolved against ``base_dir`` (those of a
    grid or cluster spec given inline too)."""
    config = validated(PipelineConfig.model_validate, data, source)
    absolute: dict[str, Any] = {
        key: (base_dir / value).resolve()
        for key in ("workdir", "grid", "catalog")
        if isinstance(value := getattr(config, key), Path)
    }
    if isinstance(config.grid, GridSpec):
        absolute["grid"] = config.grid.resolved_against(base_dir)
    if config.sites is not None:
        absolute["sites"] = config.sites.model_copy(
            update={"path": (base_dir / config.sites.path).resolve()}
        )
    if config.cluster is not None:
        absolute["cluster"] = resolved_against(config.cluster, base_dir)
    check_workdir(absolute["workdir"])
    return config.model_copy(update=absolute)


def check_workdir(workdir: Path) -> None:
    """Raise :class:`StorageError` when ``workdir``, or a folder it would be made in, is a file:
    checked when a config is loaded, before a cluster is started or anything is written."""
    for path in (workdir, *workdir.parents):
        if path.exists() or path.is_symlink():
            if not path.is_dir():
                what = "it" if path == workdir else f"{path}, a folder of it,"
                raise StorageError(
                    f"workdir {workdir}: {what} is a file, not a directory: move the file "
                    "away, or set 'workdir' to a directory"
                )
            return


def demo_config(
    workdir: Path, *, full: bool = False, seed: int = 0, resolution: float | None = None
) -> PipelineConfig:
    """The demo pipeline (``tpgrid demo``): the small synthetic plateau with a light search,
    or with ``full`` the paper-scale run on the full plateau; ``resolution`` (metres) maps it
    on a finer or coarser grid than the plateau's 1 km. Same as ``pipelines/demo.yaml``,
    ``synthetic_1km.yaml`` and (``resolution=250``) ``synthetic_250m.yaml``, with ``workdir``
    and ``seed`` as given."""
    check_workdir(workdir)
    if full:
        return PipelineConfig(
            name="synthetic_1km" if resolution is None else f"synthetic_{resolution:g}m",
            workdir=workdir,
            synthetic=SyntheticInputs(size="full", seed=seed, resolution=resolution),
            fit=PLATEAU_FIT,
        )
    return PipelineConfig(
        name="demo" if resolution is None else f"demo_{resolution:g}m",
        workdir=workdir,
        synthetic=SyntheticInputs(size="small", seed=seed, resolution=resolution),
        fit=PLATEAU_FIT.model_copy(
            update={
                "n_trees": 200,
                "search_trees": 50,
                "cv_folds": 5,
                "spatial_block_km": 50.0,
                "search_grid": SearchGrid(max_features=(0.33, 0.66), min_samples_leaf=(1, 5)),
            }
        ),
    )
