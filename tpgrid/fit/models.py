"""Fit one random forest per element, centrally: the site table and the cube in, one model
directory per element out.

The fit goes down the package once: the site table is read and its sites placed on the cube
(:mod:`tpgrid.fit.sites`), every element's training table and design matrix are built
(:mod:`tpgrid.fit.design`), then each element's forest is searched, assessed and fitted
(:mod:`tpgrid.fit.search`). An element whose inputs are those its kept model records is not
fitted again (``reuse_unchanged``), unless that model fails its checks.

Each element is written to ``<out>/<element>/``: the artifact (:mod:`tpgrid.artifact`, with
scikit-learn's trees and the grouped CV's held-out results), ``cv_predictions.parquet``
(out-of-fold predictions of the three CVs) and ``training.parquet`` (the training table the
model saw).
"""

from __future__ import annotations

import importlib.metadata
import logging
import platform
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from tpgrid import __version__
from tpgrid.artifact import ModelArtifact, check_model, load_held_out, save_model
from tpgrid.core.bootstrap import inbag_counts
from tpgrid.core.forest import pack_forest
from tpgrid.core.quantiles import leaf_membership
from tpgrid.cube import chunk_hashes, cube_grid, open_cube
from tpgrid.errors import ArtifactError, FitError, OutputExistsError
from tpgrid.fit.blocks import (
    BlockChoice,
    choose_blocks,
    given_blocks,
    prediction_points,
    projected_xy,
)
from tpgrid.fit.design import (
    Design,
    TrainingTable,
    build_design,
    cube_layers,
    json_sha256,
    site_covariates,
    training_hash,
    training_table,
)
from tpgrid.fit.heldout import FORMAT_VERSION as HELD_OUT_FORMAT
from tpgrid.fit.intervals import applicability, interval_calibration
from tpgrid.fit.search import fit_forest
from tpgrid.fit.settings import FitSettings, read_fit_sites
from tpgrid.fit.sites import SiteSource, locate_sites
from tpgrid.grid import TargetGrid
from tpgrid.jsonable import plain
from tpgrid.store import staging_path, swap_in
from tpgrid.tasks import Progress

log = logging.getLogger(__name__)

CV_PREDICTIONS_FILE = "cv_predictions.parquet"
TRAINING_FILE = "training.parquet"
SCHEMES = ("grouped", "random", "spatial")


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
    was fitted again.

    ``elements`` are the elements the settings resolved to (every element column of the site
    table unless ``fit.elements`` names them); ``poor`` the grouped-CV R² of each model fitted
    or kept whose R² is below 0 (it predicts held-out sites worse than their mean);
    ``warnings`` one line per poor model and per spatial CV with fewer blocks than folds.
    """

    fitted: tuple[FittedElement, ...]
    skipped: tuple[SkippedElement, ...]
    excluded_sites: dict[str, tuple[str, ...]]
    unchanged: tuple[FittedElement, ...] = ()
    pending: tuple[str, ...] = ()  # with dry_run: the elements a run would fit
    repaired: tuple[tuple[str, str], ...] = ()
    elements: tuple[str, ...] = ()
    poor: dict[str, float] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()


def fit_models(
    sites: SiteSource | str | Path,
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

    The settings are resolved against the data first (:func:`read_fit_sites`; the spatial CV's
    block edge by :func:`tpgrid.fit.blocks.choose_blocks` unless given), and the models record
    and hash the resolved values. Elements with fewer sites than CV folds are skipped (logged,
    in the report); if none is left, :class:`FitError`. Existing element directories are
    replaced only when ``overwrite`` or ``reuse_unchanged``; with ``reuse_unchanged`` an
    element whose training table and resolved settings are those its artifact records is kept
    as it is, not refitted, if the artifact passes its checks (a damaged one is fitted again,
    with a warning, and reported). ``dry_run`` fits nothing and lists the elements a run would
    fit in ``pending``. ``local_threads`` sets the CV parallelism when no Dask client is
    current.
    """
    cube, out = Path(cube), Path(out)
    read = read_fit_sites(sites, settings or FitSettings())
    table, elements = read.table, read.elements
    dataset = open_cube(cube)
    grid = cube_grid(cube)
    layers = cube_layers(dataset, cube)
    existing = [str(out / e) for e in elements if (out / e).exists()]
    if existing and not (overwrite or reuse_unchanged):
        raise OutputExistsError(
            f"model directories {existing} exist; pass --overwrite to replace them, or choose "
            "another output directory"
        )
    located = locate_sites(table, grid, dataset)
    covariates = site_covariates(dataset, cube, located, layers)
    blocks = _spatial_blocks(read.settings, located.frame, grid, dataset)
    resolved = read.settings.model_copy(update={"spatial_block_km": blocks.block_km})
    # Every element's table is built before any fitting, so a bad column fails in seconds.
    tables = {
        e: training_table(
            table,
            e,
            located,
            screening_sd=resolved.screening_sd,
            calibrate=e in read.calibrate,
            train_on=resolved.train_on,
        )
        for e in elements
    }
    provenance = {
        "sites": {
            "path": str(table.path.resolve()),
            "sha256": table.sha256,
            "crs": table.crs,
            "x": table.coordinates[0],
            "y": table.coordinates[1],
        },
        "cube": {
            "path": str(cube.resolve()),
            "grid": grid.spec.model_dump(mode="json"),
            "chunk_hashes_sha256": json_sha256(chunk_hashes(cube)),
        },
        "excluded_sites": {r: list(ids) for r, ids in located.excluded.items()},
        "settings": resolved.model_dump(mode="json"),
        "settings_given": (settings or FitSettings()).model_dump(mode="json"),
        "versions": _versions(),
    }
    fitted, skipped, unchanged, pending = [], [], [], []
    repaired: list[tuple[str, str]] = []
    for element, training in tables.items():
        if training.n_sites < resolved.cv_folds:
            reason = (
                f"{training.n_sites} sites with usable {element} values, fewer than the "
                f"{resolved.cv_folds} CV folds (every fold must test at least one site): add "
                "sites or lower the number of folds"
            )
            log.warning("%s skipped: %s", element, reason)
            skipped.append(SkippedElement(element, reason))
            continue
        directory = out / element
        design = build_design(training, located, covariates, layers, resolved)
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
            blocks,
            resolved,
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
    poor, warnings = model_warnings([*fitted, *unchanged])
    return FitReport(
        tuple(fitted),
        tuple(skipped),
        dict(located.excluded),
        tuple(unchanged),
        tuple(pending),
        tuple(repaired),
        elements,
        poor,
        warnings,
    )


def _spatial_blocks(
    settings: FitSettings, sites: pd.DataFrame, grid: TargetGrid, cube: xr.Dataset
) -> BlockChoice:
    """The spatial CV's blocks of the located ``sites``: of the given edge, or of the edge
    matching the cube's prediction area (the cube's valid pixels)."""
    x_m, y_m = projected_xy(grid, sites["lon"], sites["lat"])
    prediction = prediction_points(cube, grid, settings.seed)
    if settings.spatial_block_km is None:
        return choose_blocks(x_m, y_m, prediction, settings.cv_folds, settings.seed)
    return given_blocks(
        x_m, y_m, prediction, settings.spatial_block_km, settings.cv_folds, settings.seed
    )


def model_warnings(models: Sequence[FittedElement]) -> tuple[dict[str, float], tuple[str, ...]]:
    """From the models' records: the grouped-CV R² of each model below 0, and one warning per
    such model and per spatial CV with fewer blocks than folds."""
    poor: dict[str, float] = {}
    warnings: list[str] = []
    for model in models:
        cv = model.record.get("cv", {})
        r2 = cv.get("grouped", {}).get("r2")
        if r2 is not None and r2 < 0:
            poor[model.element] = float(r2)
            shown = f"{r2:.2f}".replace("-", "−")  # a minus sign, not a hyphen
            warnings.append(
                f"{model.element}: grouped-CV R² {shown} — this model predicts held-out sites "
                "worse than their mean; its map is published but flagged"
            )
        spatial = cv.get("spatial", {}).get("warning")
        if spatial:
            warnings.append(f"{model.element}: {spatial}")
    return poor, tuple(warnings)


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
        held_out_format = int(load_held_out(directory)["format_version"])
    except ArtifactError as exc:
        return None, str(exc)
    # A model fitted by a version whose held-out results (or uncertainty parts) were not these
    # is fitted again: its inputs may be the same, what is derived from them is not.
    current = held_out_format == HELD_OUT_FORMAT and artifact.calibration is not None
    kept = current and artifact.record.get("inputs_sha256") == inputs_sha256
    return (artifact.record if kept else None), None


def _fit_element(
    design: Design,
    training: TrainingTable,
    blocks: BlockChoice,
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
        blocks.blocks[design.site_index],
        settings,
        spec.column_variables,
        local_threads=local_threads,
        progress=progress,
        label=element,
    )
    # One block choice serves every element: the spatial CV's record says how it was made.
    result.record["cv"]["spatial"]["block_choice"] = blocks.to_json()
    site_ids = training.frame["site_id"].to_numpy()
    space, held_out = applicability(result.held_out, design.X, site_ids, spec)
    calibration, intervals = interval_calibration(
        held_out, design.y, site_ids, settings.interval_level
    )
    # Calibrated on the quantiles of CV forests of search_trees trees: the maps' quantile
    # forest is the final forest's first search_trees trees, so it is the same estimator (at
    # a fifth of the cost of all 500, docs/uncertainty.md).
    calibration = replace(calibration, trees=min(settings.search_trees, settings.n_trees))
    intervals["quantile_trees"] = calibration.trees
    packed = pack_forest(result.estimator)
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
        "intervals": intervals,
        "cv_predictions_file": CV_PREDICTIONS_FILE,
        "fit_wall_s": round(time.perf_counter() - started, 3),
        **provenance,
    }
    artifact = ModelArtifact(
        element,
        packed,
        spec,
        plain(record),
        membership=leaf_membership(result.estimator, design.X, design.y, packed),
        inbag=inbag_counts(result.estimator, design.y.size),
        space=space,
        calibration=calibration,
    )
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
    save_model(artifact, staging, estimator=result.estimator, held_out=held_out.to_arrays())
    table.to_parquet(staging / TRAINING_FILE, index=False)
    predictions.to_parquet(staging / CV_PREDICTIONS_FILE, index=False)
    swap_in(staging, directory)
    log.info("%s: model written to %s", element, directory)
    return artifact.record


def _versions() -> dict[str, str]:
    return {
        "tpgrid": __version__,
        # From the installed metadata: importing scikit-learn to ask takes a second, and
        # checking that kept models are current needs nothing else of it.
        "scikit-learn": importlib.metadata.version("scikit-learn"),
        "numpy": np.__version__,
        "pandas": pd.__version__,
        "python": platform.python_version(),
    }
