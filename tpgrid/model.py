"""Fit one random forest per element, centrally, with its hyperparameter search on Dask.

For each element: the training table (screened, calibrated, see :mod:`tpgrid.sites`) meets the
covariates at its sites' pixels; a grid search picks hyperparameters by 10-fold CV *grouped by
site* (triplicates of one site share their covariates, so they never sit on both sides of a
split); the winner is assessed by three CVs side by side — grouped by site, by random sample
(the leaky scheme the grouping prevents, for comparison) and by spatial blocks — and refitted
on all rows with the full number of trees. The CV fits are independent tasks on whatever Dask
client is current (local threads when there is none); the final forest is fitted here.

Each element is written to ``<out>/<element>/``: the artifact (:mod:`tpgrid.artifact`, with
scikit-learn's trees), ``cv_predictions.parquet`` (out-of-fold predictions of the three CVs)
and ``training.parquet`` (the training table the model saw).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import xarray as xr
from pydantic import BaseModel, ConfigDict, Field, field_validator
from pyproj import Transformer

from tpgrid import __version__
from tpgrid.artifact import ModelArtifact, check_model, save_model
from tpgrid.core.arrays import F64, I64
from tpgrid.core.features import CATEGORICAL_NODATA, CategoricalFeature, FeatureSpec
from tpgrid.core.forest import pack_forest
from tpgrid.cube import ATTR_FEATURES, chunk_hashes, cube_grid, open_cube
from tpgrid.errors import (
    ArtifactError,
    CubeError,
    FitError,
    OutputExistsError,
)
from tpgrid.grid import TargetGrid
from tpgrid.sites import (
    ELEMENTS,
    SiteLocations,
    TrainingTable,
    TrainOn,
    extract_covariates,
    locate_sites,
    read_sites,
    training_table,
)
from tpgrid.store import staging_path, swap_in
from tpgrid.tasks import Progress, task_runner
from tpgrid.yamlfile import read_mapping, validated

log = logging.getLogger(__name__)

CV_PREDICTIONS_FILE = "cv_predictions.parquet"
TRAINING_FILE = "training.parquet"
SCHEMES = ("grouped", "random", "spatial")


# --- settings ------------------------------------------------------------------------------


class SearchGrid(BaseModel):
    """Hyperparameter values tried by the search (every combination is one candidate)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_features: tuple[float, ...] = Field(
        (0.33, 0.66), min_length=1, description="fraction of columns tried at each split"
    )
    min_samples_leaf: tuple[int, ...] = Field((1, 5), min_length=1)
    max_depth: tuple[int | None, ...] = Field((None,), min_length=1, description="None: no limit")

    @field_validator("max_features")
    @classmethod
    def _fractions(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if any(not 0 < v <= 1 for v in value):
            raise ValueError("max_features are fractions of the columns, in (0, 1]")
        return value

    @field_validator("min_samples_leaf")
    @classmethod
    def _leaves(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if any(v < 1 for v in value):
            raise ValueError("min_samples_leaf must be at least 1")
        return value

    @field_validator("max_depth")
    @classmethod
    def _depths(cls, value: tuple[int | None, ...]) -> tuple[int | None, ...]:
        if any(v is not None and v < 1 for v in value):
            raise ValueError("max_depth must be at least 1, or null for no limit")
        return value

    def candidates(self) -> list[dict[str, Any]]:
        """Every combination, as ``RandomForestRegressor`` keyword arguments."""
        return [
            {"max_features": f, "min_samples_leaf": leaf, "max_depth": depth}
            for f, leaf, depth in itertools.product(
                self.max_features, self.min_samples_leaf, self.max_depth
            )
        ]


class FitSettings(BaseModel):
    """How the element models are fitted (YAML-friendly, validated, frozen)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    elements: tuple[str, ...] = Field(ELEMENTS, min_length=1)
    n_trees: int = Field(500, ge=1, description="trees of the final forest")
    search_trees: int = Field(
        100, ge=1, description="trees of every CV forest (search and assessment): cost control"
    )
    search_grid: SearchGrid = SearchGrid()
    cv_folds: int = Field(10, ge=2)
    spatial_block_km: float = Field(100.0, gt=0, description="edge of the spatial CV blocks")
    screening_sd: float | None = Field(
        3.0, gt=0, description="remove values outside mean ± this many SD; null: no screening"
    )
    calibrate: tuple[str, ...] = Field(
        ("Zn", "Ni"), description="elements calibrated from XRF to ICP-MS"
    )
    train_on: TrainOn = "samples"
    seed: int = Field(0, ge=0)

    @field_validator("elements")
    @classmethod
    def _distinct(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(value)) != len(value):
            raise ValueError(f"an element is listed twice: {list(value)}")
        return value


def load_fit_settings(path: str | Path) -> FitSettings:
    """Read fit settings from YAML, naming the file in any error."""
    data = read_mapping(path, "fit settings file", "pass the path of a YAML")
    return validated(FitSettings.model_validate, data, f"fit settings file {path}")


def fit_settings(path: str | Path | None, overrides: Mapping[str, Any]) -> FitSettings:
    """Settings from a YAML file (or the defaults) with ``overrides`` on top; raises
    :class:`ConfigError` naming what is wrong."""
    base = load_fit_settings(path) if path is not None else FitSettings()
    return validated(
        FitSettings.model_validate, base.model_dump() | dict(overrides), "fit settings"
    )


# --- metrics (observed and predicted in mg/kg) ---------------------------------------------


def r2_score(observed: npt.ArrayLike, predicted: npt.ArrayLike) -> float:
    """Coefficient of determination ``1 − SS_res / SS_tot`` (can be negative)."""
    obs, pred = _pair(observed, predicted)
    return 1.0 - float(np.sum((obs - pred) ** 2)) / float(np.sum((obs - obs.mean()) ** 2))


def rmse(observed: npt.ArrayLike, predicted: npt.ArrayLike) -> float:
    """Root mean squared error, in the units of the data."""
    obs, pred = _pair(observed, predicted)
    return float(np.sqrt(np.mean((pred - obs) ** 2)))


def mae(observed: npt.ArrayLike, predicted: npt.ArrayLike) -> float:
    """Mean absolute error, in the units of the data."""
    obs, pred = _pair(observed, predicted)
    return float(np.mean(np.abs(pred - obs)))


def bias(observed: npt.ArrayLike, predicted: npt.ArrayLike) -> float:
    """Mean of ``predicted − observed``: positive when the model over-predicts."""
    obs, pred = _pair(observed, predicted)
    return float(np.mean(pred - obs))


def lins_ccc(observed: npt.ArrayLike, predicted: npt.ArrayLike) -> float:
    """Lin's concordance correlation coefficient (agreement with the 1:1 line):
    ``2·cov / (var_obs + var_pred + (mean_obs − mean_pred)²)``, population moments."""
    obs, pred = _pair(observed, predicted)
    covariance = float(np.mean((obs - obs.mean()) * (pred - pred.mean())))
    spread = float(obs.var() + pred.var() + (obs.mean() - pred.mean()) ** 2)
    return 2.0 * covariance / spread


def cv_metrics(observed: npt.ArrayLike, predicted: npt.ArrayLike) -> dict[str, float]:
    """R², RMSE, MAE, bias and Lin's CCC of pooled out-of-fold predictions."""
    return {
        "r2": r2_score(observed, predicted),
        "rmse": rmse(observed, predicted),
        "mae": mae(observed, predicted),
        "bias": bias(observed, predicted),
        "ccc": lins_ccc(observed, predicted),
        "n": int(np.size(observed)),
    }


def _pair(observed: npt.ArrayLike, predicted: npt.ArrayLike) -> tuple[F64, F64]:
    obs = np.asarray(observed, dtype=np.float64)
    pred = np.asarray(predicted, dtype=np.float64)
    if obs.shape != pred.shape or obs.ndim != 1 or obs.size < 2:
        raise ValueError(f"need two 1-D arrays of equal length ≥ 2, got {obs.shape}, {pred.shape}")
    return obs, pred


# --- folds ---------------------------------------------------------------------------------


def group_folds(groups: npt.ArrayLike, n_folds: int, seed: int) -> I64:
    """Fold number (0 … n_folds − 1) of every row; all rows of a group share one fold.

    Groups are shuffled and dealt round-robin, so folds hold ⌊G/k⌋ or ⌈G/k⌉ groups. With one
    group per row this is plain random k-fold.
    """
    _, inverse = np.unique(np.asarray(groups), return_inverse=True)
    n_groups = int(inverse.max()) + 1 if inverse.size else 0
    if n_groups < n_folds:
        raise ValueError(f"{n_groups} groups cannot fill {n_folds} folds")
    order = np.random.default_rng(seed).permutation(n_groups)
    fold_of_group = np.empty(n_groups, dtype=np.int64)
    fold_of_group[order] = np.arange(n_groups) % n_folds
    return fold_of_group[inverse.ravel()]


def spatial_blocks(x_m: npt.ArrayLike, y_m: npt.ArrayLike, block_km: float) -> I64:
    """Block id of each point on a square ``block_km`` lattice of projected metres."""
    size = block_km * 1000.0
    bx = np.floor(np.asarray(x_m, dtype=np.float64) / size).astype(np.int64)
    by = np.floor(np.asarray(y_m, dtype=np.float64) / size).astype(np.int64)
    _, block = np.unique(np.column_stack([bx, by]), axis=0, return_inverse=True)
    return block.ravel().astype(np.int64)


def projected_xy(grid: TargetGrid, lon: npt.ArrayLike, lat: npt.ArrayLike) -> tuple[F64, F64]:
    """Lon/lat in metres: the grid's own CRS when projected, else a Lambert azimuthal
    equal-area projection centred on the grid (blocks must be equal areas, not degrees)."""
    if grid.is_geographic:
        lon_min, lat_min, lon_max, lat_max = grid.spec.bbox
        crs = (
            f"+proj=laea +lon_0={(lon_min + lon_max) / 2} +lat_0={(lat_min + lat_max) / 2} +units=m"
        )
    else:
        crs = grid.crs_wkt
    x, y = Transformer.from_crs("EPSG:4326", crs, always_xy=True).transform(
        np.asarray(lon, dtype=np.float64), np.asarray(lat, dtype=np.float64)
    )
    return np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)


# --- CV fits as independent tasks ----------------------------------------------------------


def fold_predictions(
    X: npt.NDArray[np.float32],
    y: F64,
    folds: I64,
    fold: int,
    params: Mapping[str, Any],
    n_trees: int,
    seed: int,
) -> F64:
    """Fit a forest on the rows outside ``fold`` and predict the rows inside it (one CV task)."""
    from sklearn.ensemble import RandomForestRegressor

    test = folds == fold
    forest = RandomForestRegressor(n_estimators=n_trees, random_state=seed, n_jobs=1, **params)
    forest.fit(X[~test], y[~test])
    return np.asarray(forest.predict(X[test]), dtype=np.float64)


# --- fitting one element -------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class ElementFit:
    """What fitting one element produced: the fitted scikit-learn forest, out-of-fold
    predictions of each CV scheme (NaN where a scheme was skipped), folds, and the record."""

    estimator: Any
    predictions: dict[str, F64]
    folds: dict[str, I64 | None]
    record: dict[str, Any]


def fit_forest(
    X: npt.NDArray[np.float32],
    y: F64,
    sites: npt.ArrayLike,
    blocks: I64,
    settings: FitSettings,
    *,
    local_threads: int | None = None,
    progress: Progress | None = None,
    label: str = "",
) -> ElementFit:
    """Search, assess and fit one element's forest on ``X`` (float32) and ``y`` (mg/kg).

    ``sites`` is the site of each row (CV groups), ``blocks`` its spatial block. The search and
    the three CVs use ``settings.search_trees`` trees per forest; the final forest
    ``settings.n_trees``.
    """
    k, seed, trees = settings.cv_folds, settings.seed, settings.search_trees
    grouped = group_folds(sites, k, seed)
    n_blocks = int(np.unique(blocks).size)
    assessed = {"random": group_folds(np.arange(y.size), k, seed)}
    if n_blocks >= 2:
        assessed["spatial"] = group_folds(blocks, min(k, n_blocks), seed)
    if n_blocks < 2:
        log.warning(
            "%s: every site in one %g km block, no spatial CV", label, settings.spatial_block_km
        )
    elif n_blocks < k:
        log.warning(
            "%s: only %d spatial blocks of %g km, so spatial CV has %d folds, not %d",
            label,
            n_blocks,
            settings.spatial_block_km,
            n_blocks,
            k,
        )

    def report(stage: str) -> Callable[[int, int], None] | None:
        if progress is None:
            return None
        return lambda done, total: progress(f"{label} {stage}".strip(), done, total)

    with task_runner(local_threads) as runner:
        shared = runner.share(X, y)
        candidates = settings.search_grid.candidates()
        started = time.perf_counter()
        futures = [
            runner.submit(fold_predictions, *shared, grouped, f, params, trees, seed)
            for params in candidates
            for f in range(k)
        ]
        results = runner.gather(futures, report("search"))
        search_wall = time.perf_counter() - started
        oof = [_assemble(grouped, results[c * k : (c + 1) * k]) for c in range(len(candidates))]
        scores = [cv_metrics(y, pred) for pred in oof]
        best = int(np.argmin([score["rmse"] for score in scores]))
        params = candidates[best]

        # The winner's other CVs run on the cluster while the final forest is fitted here.
        pending = {
            scheme: [
                runner.submit(fold_predictions, *shared, folds, f, params, trees, seed)
                for f in range(int(folds.max()) + 1)
            ]
            for scheme, folds in assessed.items()
        }
        estimator = _final_forest(X, y, params, settings)
        predictions = {"grouped": oof[best], "spatial": np.full(y.size, np.nan)}
        for scheme, scheme_futures in pending.items():
            results = runner.gather(scheme_futures, report(scheme))
            predictions[scheme] = _assemble(assessed[scheme], results)
        backend = runner.description

    record = {
        "hyperparameters": {
            "n_estimators": settings.n_trees,
            **params,
            "bootstrap": True,
            "random_state": seed,
        },
        "search": {
            "cv": "k-fold grouped by site",
            "n_folds": k,
            "trees_per_fit": trees,
            "selected_by": "lowest pooled grouped-CV RMSE",
            "candidates": [
                {"params": c, "r2": score["r2"], "rmse": score["rmse"]}
                for c, score in zip(candidates, scores, strict=True)
            ],
            "selected": params,
            "n_fits": len(futures),
            "wall_s": round(search_wall, 3),
            "backend": backend,
        },
        "cv": _cv_record(y, predictions, k, n_blocks, settings),
        "fit": {
            "r2": r2_score(y, estimator.predict(X)),
            "oob_r2": float(estimator.oob_score_),
            "note": (
                "fit R² on the training rows; out-of-bag R² leaks like random CV when a "
                "site's samples are rows of their own"
            ),
        },
    }
    folds_by_scheme: dict[str, I64 | None] = {"grouped": grouped, "spatial": None, **assessed}
    return ElementFit(estimator, predictions, folds_by_scheme, record)


def _cv_record(
    y: F64, predictions: Mapping[str, F64], k: int, n_blocks: int, settings: FitSettings
) -> dict[str, Any]:
    """The three CVs side by side, with what each groups by."""
    spatial: dict[str, Any] = {
        "groups": f"{settings.spatial_block_km:g} km blocks",
        "block_km": settings.spatial_block_km,
        "n_blocks": n_blocks,
    }
    if n_blocks < 2:
        spatial["skipped"] = "all sites lie in one block: choose smaller blocks"
    else:
        spatial |= {"n_folds": min(k, n_blocks), **cv_metrics(y, predictions["spatial"])}
    return {
        "trees_per_fit": settings.search_trees,
        "note": (
            "pooled out-of-fold metrics; grouped is the search's own CV of the selected "
            "candidate (not nested, so slightly optimistic); random splits samples and lets a "
            "site's triplicates leak across folds, shown for comparison only"
        ),
        "grouped": {"groups": "site", "n_folds": k, **cv_metrics(y, predictions["grouped"])},
        "random": {"groups": "row", "n_folds": k, **cv_metrics(y, predictions["random"])},
        "spatial": spatial,
    }


def _assemble(folds: I64, fold_results: Sequence[F64]) -> F64:
    """Out-of-fold predictions in row order from per-fold test predictions."""
    out = np.full(folds.size, np.nan)
    for fold, values in enumerate(fold_results):
        out[folds == fold] = values
    return out


def _final_forest(
    X: npt.NDArray[np.float32], y: F64, params: Mapping[str, Any], settings: FitSettings
) -> Any:
    from sklearn.ensemble import RandomForestRegressor

    forest = RandomForestRegressor(
        n_estimators=settings.n_trees,
        oob_score=True,
        random_state=settings.seed,
        n_jobs=-1,
        **params,
    )
    return forest.fit(X, y)


# --- the whole fit: sites + cube → one artifact per element ---------------------------------


@dataclass(frozen=True)
class FittedElement:
    element: str
    directory: Path
    record: dict[str, Any]


@dataclass(frozen=True)
class SkippedElement:
    element: str
    reason: str


@dataclass(frozen=True)
class FitReport:
    """Elements fitted now, kept as they were (``reuse_unchanged``), and skipped; ``repaired``:
    (element, reason) of each artifact that would have been kept but failed its checks, and
    was fitted again."""

    fitted: tuple[FittedElement, ...]
    skipped: tuple[SkippedElement, ...]
    excluded_sites: dict[str, tuple[str, ...]]
    unchanged: tuple[FittedElement, ...] = ()
    pending: tuple[str, ...] = ()  # with dry_run: the elements a run would fit
    repaired: tuple[tuple[str, str], ...] = ()


def fit_models(
    sites: str | Path,
    cube: str | Path,
    out: str | Path,
    settings: FitSettings | None = None,
    *,
    overwrite: bool = False,
    reuse_unchanged: bool = False,
    dry_run: bool = False,
    progress: Progress | None = None,
    local_threads: int | None = None,
) -> FitReport:
    """Fit every element of ``settings`` from the site table ``sites`` and the cube ``cube``
    into ``out/<element>/``.

    Elements with fewer sites than CV folds are skipped (logged, in the report); if none is
    left, :class:`FitError`. Existing element directories are replaced only when
    ``overwrite`` or ``reuse_unchanged``; with ``reuse_unchanged`` an element whose training
    table and settings are those its artifact records is kept as it is, not refitted, if the
    artifact passes its checks (a damaged one is fitted again, with a warning, and reported).
    ``dry_run`` fits nothing and lists the elements a run would fit in ``pending``.
    ``local_threads`` sets the CV parallelism when no Dask client is current.
    """
    settings = settings or FitSettings()
    cube, out = Path(cube), Path(out)
    table = read_sites(sites, settings.elements)
    dataset = open_cube(cube)
    grid = cube_grid(cube)
    layers = cube_layers(dataset, cube)
    existing = [str(out / e) for e in settings.elements if (out / e).exists()]
    if existing and not (overwrite or reuse_unchanged):
        raise OutputExistsError(
            f"model directories {existing} exist; pass --overwrite to replace them, or choose "
            "another output directory"
        )
    located = locate_sites(table, grid, dataset)
    covariates = site_covariates(dataset, cube, located, layers)
    x_m, y_m = projected_xy(grid, located.frame["lon"], located.frame["lat"])
    site_blocks = spatial_blocks(x_m, y_m, settings.spatial_block_km)
    # Every element's table is built before any fitting, so a bad column fails in seconds.
    tables = {
        e: training_table(
            table,
            e,
            located,
            screening_sd=settings.screening_sd,
            calibrate=e in settings.calibrate,
            train_on=settings.train_on,
        )
        for e in settings.elements
    }
    provenance = {
        "sites": {"path": str(table.path.resolve()), "sha256": table.sha256},
        "cube": {
            "path": str(cube.resolve()),
            "grid": grid.spec.model_dump(mode="json"),
            "chunk_hashes_sha256": _json_sha256(chunk_hashes(cube)),
        },
        "excluded_sites": {r: list(ids) for r, ids in located.excluded.items()},
        "settings": settings.model_dump(mode="json"),
        "versions": _versions(),
    }
    fitted, skipped, unchanged, pending = [], [], [], []
    repaired: list[tuple[str, str]] = []
    for element, training in tables.items():
        if training.n_sites < settings.cv_folds:
            reason = (
                f"{training.n_sites} sites with usable {element} values, fewer than the "
                f"{settings.cv_folds} CV folds (every fold must test at least one site): add "
                "sites or lower the number of folds"
            )
            log.warning("%s skipped: %s", element, reason)
            skipped.append(SkippedElement(element, reason))
            continue
        directory = out / element
        design = _design(training, located, covariates, layers, settings)
        kept, damage = (
            _unchanged_record(directory, design.inputs_sha256) if reuse_unchanged else (None, None)
        )
        if kept is not None:
            log.info("%s: training table and settings unchanged, model kept", element)
            unchanged.append(FittedElement(element, directory, kept))
            continue
        if dry_run:
            pending.append(element)
            continue
        if damage is not None:
            log.warning(
                "%s: the model in %s is damaged, fitted again: %s", element, directory, damage
            )
            repaired.append((element, damage))
        record = _fit_element(
            design,
            training,
            located,
            site_blocks,
            settings,
            provenance,
            directory,
            progress=progress,
            local_threads=local_threads,
        )
        fitted.append(FittedElement(element, directory, record))
    if not fitted and not unchanged and not pending:
        raise FitError(
            "no element could be fitted:\n"
            + "\n".join(f"  {s.element}: {s.reason}" for s in skipped)
        )
    return FitReport(
        tuple(fitted),
        tuple(skipped),
        dict(located.excluded),
        tuple(unchanged),
        tuple(pending),
        tuple(repaired),
    )


def cube_layers(cube: xr.Dataset, path: Path) -> dict[str, dict[str, Any]]:
    """The cube's covariate layers (name → attributes, in catalog order).

    Every layer the cube's catalog lists must be present with its kind (and class table for a
    categorical one); otherwise :class:`CubeError`.
    """
    listed = list(cube.attrs.get(ATTR_FEATURES) or [])
    missing = [name for name in listed if name not in cube.data_vars]
    if missing:
        raise CubeError(
            f"cube {path} lacks layer(s) {missing} listed in its catalog: rebuild it with "
            "`tpgrid cube`"
        )
    layers = {name: dict(cube[name].attrs) for name in listed}
    for name, attrs in layers.items():
        kind = attrs.get("tpgrid:kind")
        if kind not in ("continuous", "categorical") or (
            kind == "categorical" and not attrs.get("tpgrid:classes")
        ):
            raise CubeError(
                f"cube {path}: layer {name!r} has no valid kind / class table in its attributes: "
                "rebuild the cube with `tpgrid cube`"
            )
    if not layers:
        raise CubeError(f"cube {path} lists no covariate layers: rebuild it with `tpgrid cube`")
    return layers


def site_covariates(
    cube: xr.Dataset, path: Path, located: SiteLocations, layers: Mapping[str, Mapping[str, Any]]
) -> dict[str, npt.NDArray[Any]]:
    """Every layer's value at every located site (arrays in ``located.frame`` order).

    The sites sit on pixels the cube marks valid, so a missing value here means a damaged or
    partly deleted cube: :class:`CubeError`.
    """
    values = extract_covariates(
        cube, located.frame["row"].to_numpy(), located.frame["col"].to_numpy(), list(layers)
    )
    for name, attrs in layers.items():
        data = values[name]
        absent = (
            data == CATEGORICAL_NODATA if attrs["tpgrid:kind"] == "categorical" else np.isnan(data)
        )
        if absent.any():
            raise CubeError(
                f"cube {path}: layer {name!r} has no data at {int(absent.sum())} site pixel(s) "
                "its 'valid' mask calls valid: the cube is damaged or incomplete; rebuild it "
                "with `tpgrid cube`"
            )
    return values


def feature_spec(
    layers: Mapping[str, Mapping[str, Any]], values: Mapping[str, npt.NDArray[Any]]
) -> FeatureSpec:
    """Continuous layers as they are; categorical ones one-hot over the classes present in
    ``values`` (the training rows), named from the layer's class table."""
    continuous = tuple(n for n, a in layers.items() if a["tpgrid:kind"] == "continuous")
    categorical = []
    for name, attrs in layers.items():
        if attrs["tpgrid:kind"] != "categorical":
            continue
        table = {int(code): str(label) for code, label in dict(attrs["tpgrid:classes"]).items()}
        seen = sorted(int(c) for c in np.unique(values[name]) if int(c) != CATEGORICAL_NODATA)
        # The cube builder refuses codes outside the class table, so every code has a name.
        categorical.append(CategoricalFeature(name, tuple(seen), tuple(table[c] for c in seen)))
    return FeatureSpec(continuous=continuous, categorical=tuple(categorical))


@dataclass(frozen=True)
class _Design:
    """One element's training data as the forest sees it, and the hash of all fit inputs."""

    spec: FeatureSpec
    X: npt.NDArray[np.float32]
    y: F64
    table: pd.DataFrame  # ids, pixel, X columns and the observed value
    site_index: npt.NDArray[np.intp]
    inputs_sha256: str


def _design(
    training: TrainingTable,
    located: SiteLocations,
    covariates: Mapping[str, npt.NDArray[Any]],
    layers: Mapping[str, Mapping[str, Any]],
    settings: FitSettings,
) -> _Design:
    """Build X, y and the training table; hash them with the settings that shape the fit."""
    frame = training.frame
    site_index = located.frame.index.get_indexer(pd.Index(frame["site_id"]))
    values = {name: covariates[name][site_index] for name in layers}
    spec = feature_spec(layers, values)
    X, _ = spec.matrix(values)
    y = frame["value"].to_numpy(dtype=np.float64)
    table = pd.DataFrame(X, columns=list(spec.columns))
    table.insert(0, "site_id", frame["site_id"].to_numpy())
    table.insert(1, "sample_id", frame["sample_id"].astype("string").to_numpy())
    table.insert(2, "row", located.frame["row"].to_numpy()[site_index])
    table.insert(3, "col", located.frame["col"].to_numpy()[site_index])
    table["observed"] = y
    # The list of elements does not shape one element's fit; everything else may.
    shaping = settings.model_dump(mode="json", exclude={"elements"})
    inputs = _json_sha256({"table": training_hash(table), "settings": shaping})
    return _Design(spec, X, y, table, site_index, inputs)


def _unchanged_record(
    directory: Path, inputs_sha256: str
) -> tuple[dict[str, Any] | None, str | None]:
    """The record of the artifact in ``directory`` if it was fitted from these inputs and
    passes its checks, else None; and why the artifact there fails them (None: it passes, or
    there is none)."""
    if not directory.exists():
        return None, None
    try:
        artifact = check_model(directory)
    except ArtifactError as exc:
        return None, str(exc)
    kept = artifact.record.get("inputs_sha256") == inputs_sha256
    return (artifact.record if kept else None), None


def _fit_element(
    design: _Design,
    training: TrainingTable,
    located: SiteLocations,
    site_blocks: I64,
    settings: FitSettings,
    provenance: Mapping[str, Any],
    directory: Path,
    *,
    progress: Progress | None,
    local_threads: int | None,
) -> dict[str, Any]:
    """Fit one element and write its directory; returns its record."""
    element, spec, table = training.element, design.spec, design.table
    started = time.perf_counter()
    result = fit_forest(
        design.X,
        design.y,
        training.frame["site_id"].to_numpy(),
        site_blocks[design.site_index],
        settings,
        local_threads=local_threads,
        progress=progress,
        label=element,
    )
    record = {
        "element": element,
        "target": {"units": "mg/kg", "transform": "none", "scale": training.record["scale"]},
        "training": {
            **{
                key: value
                for key, value in training.record.items()
                if key not in ("screening", "calibration", "scale")
            },
            "table_sha256": training_hash(table),
            "table_file": TRAINING_FILE,
        },
        "inputs_sha256": design.inputs_sha256,
        "screening": training.record["screening"],
        "calibration": training.record["calibration"],
        "classes": {f.variable: dict(zip(f.codes, f.names, strict=True)) for f in spec.categorical},
        **result.record,
        "cv_predictions_file": CV_PREDICTIONS_FILE,
        "fit_wall_s": round(time.perf_counter() - started, 3),
        **provenance,
    }
    artifact = ModelArtifact(element, pack_forest(result.estimator), spec, _jsonable(record))
    predictions = table[["site_id", "sample_id", "observed"]].copy()
    for scheme in SCHEMES:
        predictions[f"predicted_{scheme}"] = result.predictions[scheme]
        scheme_folds = result.folds[scheme]
        predictions[f"fold_{scheme}"] = (
            pd.array(scheme_folds, dtype="Int64")
            if scheme_folds is not None
            else pd.array([pd.NA] * len(design.y), dtype="Int64")
        )
    staging = staging_path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    save_model(artifact, staging, estimator=result.estimator)
    table.to_parquet(staging / TRAINING_FILE, index=False)
    predictions.to_parquet(staging / CV_PREDICTIONS_FILE, index=False)
    swap_in(staging, directory)
    log.info("%s: model written to %s", element, directory)
    return artifact.record


def training_hash(table: pd.DataFrame) -> str:
    """SHA-256 of a training table: column names, dtypes and every column's values."""
    digest = hashlib.sha256()
    for name in table.columns:
        column = table[name]
        digest.update(f"{name}:{column.dtype};".encode())
        if column.dtype.kind in "biuf":
            digest.update(np.ascontiguousarray(column.to_numpy()).tobytes())
        else:
            digest.update("\x1f".join(column.astype("string").fillna("<NA>")).encode())
    return digest.hexdigest()


def _json_sha256(doc: Any) -> str:
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def _versions() -> dict[str, str]:
    import sklearn

    return {
        "tpgrid": __version__,
        "scikit-learn": sklearn.__version__,
        "numpy": np.__version__,
        "pandas": pd.__version__,
        "python": platform.python_version(),
    }


def _jsonable(value: Any) -> Any:
    """Plain JSON types all the way down (numpy scalars, tuples, int keys)."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value
