"""The rows and forests the sections time: the synthetic plateau's, or the reference forest's.

The plateau, its cubes (one per chunk size) and the element models fitted on it are kept in the
work directory and reused by later runs: writing them takes minutes, timing them does not. The
reference forest (500 trees, ``max_features=1/3``, 18 standard-normal covariates) and its
synthetic rows are made in memory, for the kernel and uncertainty sections only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tpgrid.artifact import ModelArtifact
from tpgrid.bench.settings import Log
from tpgrid.core.arrays import F32, F64
from tpgrid.cube import VALID, build_cube, cube_grid, open_cube
from tpgrid.fit import PLATEAU_FIT, TRAINING_FILE, fit_models
from tpgrid.grid import TargetGrid, load_grid_spec
from tpgrid.predict import load_models
from tpgrid.sources import load_catalog
from tpgrid.synthetic import PlateauFiles, reuse_or_write_plateau

# --- the synthetic plateau -----------------------------------------------------------------------


@dataclass(frozen=True)
class PlateauInputs:
    """The synthetic plateau, its cube and the element models fitted on it."""

    files: PlateauFiles
    cube: Path
    models: list[ModelArtifact]
    model_dir: Path


def prepare_plateau(workdir: Path, size: str, seed: int, log: Log) -> PlateauInputs:
    """Write (or reuse) the synthetic plateau, its cube and 500-tree models in ``workdir``."""
    log(f"plateau ({size}, seed {seed}) in {workdir / 'plateau'}")
    files = reuse_or_write_plateau(workdir / "plateau", size=size, seed=seed)
    cube = cube_with_chunk(workdir, files, None, log)
    model_dir = workdir / "models"
    log(f"models (tpgrid.fit.fit_models, 500 trees, seed {seed}) in {model_dir}")
    fit_models(
        files.sites,
        cube,
        model_dir,
        PLATEAU_FIT.model_copy(update={"seed": seed}),
        reuse_unchanged=True,
    )
    return PlateauInputs(files, cube, load_models(model_dir), model_dir)


def cube_with_chunk(workdir: Path, files: PlateauFiles, chunk: int | None, log: Log) -> Path:
    """The plateau's cube, chunked as its grid says or ``chunk`` px square (built once)."""
    spec = load_grid_spec(files.grid)
    if chunk is not None:
        spec = spec.model_copy(update={"chunk": chunk})
    path = workdir / f"cube-{spec.chunk}.zarr"
    log(f"cube in chunks of {spec.chunk}² px: {path}")
    build_cube(load_catalog(files.catalog), TargetGrid.from_spec(spec), path)
    return path


def plateau_pixels(cube: Path, model: ModelArtifact, n_rows: int, seed: int) -> dict[str, F32]:
    """``n_rows`` rows of the model's features in two kinds: "chunks" (valid pixels of whole
    cube chunks in raster order, fullest chunks first) and "random" (valid pixels drawn at
    random over the plateau). Rows with a missing value or an unseen class are left out."""
    grid = cube_grid(cube)
    ds = open_cube(cube)
    valid = ds[VALID].values == 1
    values = {name: ds[name].values for name in model.features.variables}

    def rows_of(selection: Any) -> F32:
        X, unseen = model.features.matrix({k: v[selection] for k, v in values.items()})
        return np.ascontiguousarray(X[~unseen & ~np.isnan(X).any(axis=1)])

    chunks: list[F32] = []
    for window in sorted(grid.windows(), key=lambda w: -int(valid[w.rows, w.cols].sum())):
        if sum(part.shape[0] for part in chunks) >= n_rows:
            break
        rows, cols = np.nonzero(valid[window.rows, window.cols])  # raster order
        chunks.append(rows_of((rows + window.rows.start, cols + window.cols.start)))
    rows, cols = np.nonzero(valid)
    pick = np.random.default_rng(seed).choice(rows.size, min(rows.size, 2 * n_rows), replace=False)
    return {
        "chunks": np.concatenate(chunks)[:n_rows],
        "random": rows_of((rows[pick], cols[pick]))[:n_rows],
    }


def training_rows(model_dir: Path, model: ModelArtifact) -> tuple[F32, F64]:
    """The rows and target a model was fitted on, from the training table ``tpgrid fit`` keeps
    beside it: the quantile forest's leaf membership and the jackknife's in-bag counts need
    them."""
    table = pd.read_parquet(model_dir / TRAINING_FILE)
    X = table[list(model.features.columns)].to_numpy(dtype=np.float32)
    return np.ascontiguousarray(X), table["observed"].to_numpy(dtype=np.float64)


# --- the reference forest and its rows (kernel and uncertainty sections only) ---------------------


def reference_target(X: F32) -> F64:
    """A nonlinear target on standard-normal covariates, so the trees grow deep and uneven."""
    x = X.astype(np.float64)
    y: F64 = (
        np.sin(2.0 * x[:, 0])
        + x[:, 1] * x[:, 2]
        + np.where(x[:, 3] > 0.3, 1.5, -0.5) * x[:, 4]
        + 0.5 * np.abs(x[:, 5] - x[:, 6])
        + 0.3 * x[:, 7:].sum(axis=1)
    )
    return y


def reference_training(n_rows: int = 1600, n_features: int = 18, seed: int = 0) -> tuple[F32, F64]:
    """The reference forest's training rows and target."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n_rows, n_features)).astype(np.float32)
    y = reference_target(X) + 0.2 * rng.standard_normal(n_rows)
    return X, y


def build_reference_forest(
    n_trees: int = 500, n_rows: int = 1600, n_features: int = 18, seed: int = 0, n_jobs: int = 2
) -> Any:
    """The reference ``RandomForestRegressor`` (max_features=1/3) on float32 rows
    (:func:`reference_training`)."""
    from sklearn.ensemble import RandomForestRegressor

    X, y = reference_training(n_rows, n_features, seed)
    forest = RandomForestRegressor(
        n_estimators=n_trees, max_features=1 / 3, random_state=seed, n_jobs=n_jobs
    )
    return forest.fit(X, y)


def random_rows(n_rows: int, n_features: int, seed: int) -> F32:
    """Independent standard-normal float32 rows: every pixel takes its own path (worst case)."""
    return np.random.default_rng(seed + 1).standard_normal((n_rows, n_features)).astype(np.float32)


def coherent_rows(n_rows: int, n_features: int, seed: int, wavelength_px: float = 64.0) -> F32:
    """Rows of a square raster, row-major, whose covariates are smooth standard-normal fields
    (white noise low-passed in Fourier space, features ~``wavelength_px`` pixels across)."""
    rng = np.random.default_rng(seed + 2)
    side = int(np.ceil(np.sqrt(n_rows)))
    freq = np.hypot(*np.meshgrid(np.fft.fftfreq(side), np.fft.rfftfreq(side), indexing="ij"))
    low_pass = np.exp(-((freq * wavelength_px) ** 2))
    fields = np.empty((side * side, n_features), dtype=np.float32)
    for f in range(n_features):
        noise = np.fft.rfft2(rng.standard_normal((side, side)))
        field_ = np.fft.irfft2(noise * low_pass, (side, side))
        fields[:, f] = ((field_ - field_.mean()) / field_.std()).ravel()
    return np.ascontiguousarray(fields[:n_rows])
