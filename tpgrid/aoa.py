"""Where a model may be trusted: dissimilarity index and area of applicability (Meyer & Pebesma
2021), as map layers computed chunk by chunk on the Dask cluster.

The dissimilarity index (DI) of a pixel is the distance, in the space of the model's
predictors, from the pixel to the nearest training site, divided by the mean distance between
training sites. Predictors are standardized with the training mean and SD and weighted by their
importance (so a predictor the model ignores cannot make a pixel look foreign). The threshold
is the upper whisker of the training sites' own DI, each computed against the sites of the
*other* cross-validation folds (grouped folds: a site's triplicates never count as its
neighbours); the area of applicability (AOA) is DI ≤ threshold.

Training points are one per site: a site's triplicates share one pixel, hence one predictor
vector, and adding it three times would only add zero distances to the mean.

The core is numpy in, numpy out (:func:`training_space`, :func:`dissimilarity`,
:func:`applicability_block`). :func:`applicability_cube` runs it over the cube like the
prediction, with the prediction's checks and chunk reader: one task per element and chunk reads
its variables straight from the Zarr store, the training space reaches each worker once
(scattered under its content hash), and the layers ``{element}_di`` and ``{element}_aoa`` are
written into a Zarr group on the cube's grid. A task holds one chunk and the training sites:
memory is bounded by the chunk size; a 512 × 512 chunk of ~30 columns queries a k-d tree of
~500 sites in under a second.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from distributed import Future, as_completed, get_client
from scipy.spatial import cKDTree
from scipy.spatial.distance import pdist

from tpgrid import __version__
from tpgrid.artifact import ModelArtifact
from tpgrid.compatibility import check_models
from tpgrid.core.features import FeatureSpec
from tpgrid.cube import VALID, cube_grid, read_window
from tpgrid.errors import AnalysisError, ClusterError, OutputExistsError
from tpgrid.grid import ChunkWindow
from tpgrid.store import VariableLayout, create_layout, finish, staging_path, swap_in, write_window

log = logging.getLogger(__name__)

F64 = npt.NDArray[np.float64]
FORMAT = "tpgrid-applicability/1"
AOA_NODATA = 255
#: Whisker length of the DI threshold, in interquartile ranges above the upper quartile.
WHISKER_IQR = 1.5


@dataclass(frozen=True, eq=False)
class TrainingSpace:
    """The training sites in weighted, standardized predictor space.

    ``centre``/``scale`` (per column of ``X``, the predictors' units) standardize a row;
    ``weights`` (0–1, the largest 1) multiply it; ``points`` (n_sites, n_columns) are the sites
    so transformed; ``mean_distance`` is the mean distance between two sites there; ``train_di``
    the cross-validated DI of every site and ``threshold`` the AOA's upper bound on DI.
    """

    columns: tuple[str, ...]
    centre: F64
    scale: F64
    weights: F64
    points: F64
    mean_distance: float
    train_di: F64
    threshold: float

    def transform(self, X: npt.ArrayLike) -> F64:
        """Rows of ``X`` (predictor units) in the weighted, standardized space."""
        result: F64 = (np.asarray(X, dtype=np.float64) - self.centre) / self.scale * self.weights
        return result

    def content_hash(self) -> str:
        """SHA-256 over every array and number, to name the scattered copy on the cluster."""
        digest = hashlib.sha256(repr((self.columns, self.mean_distance, self.threshold)).encode())
        for array in (self.centre, self.scale, self.weights, self.points, self.train_di):
            digest.update(np.ascontiguousarray(array).tobytes())
        return digest.hexdigest()


def column_weights(importance: Mapping[str, float], column_variables: Sequence[str]) -> F64:
    """Per column of ``X``, its predictor's importance scaled so the largest is 1; negative
    importances (shuffling helped) count as 0. Every indicator of a categorical gets the
    categorical's weight."""
    raw = np.array([max(float(importance.get(v, 0.0)), 0.0) for v in column_variables])
    if raw.max(initial=0.0) <= 0:
        raise AnalysisError("no predictor has a positive importance: nothing to weight by")
    result: F64 = raw / raw.max()
    return result


def training_space(
    X: npt.ArrayLike,
    sites: npt.ArrayLike,
    folds: npt.ArrayLike,
    weights: npt.ArrayLike,
    features: FeatureSpec,
) -> TrainingSpace:
    """Reduce the training rows (columns of ``features``) to one point per site, standardize
    and weight them, then derive the mean inter-site distance, the cross-validated DI of every
    site and the AOA threshold.

    ``sites`` and ``folds`` label every row of ``X``; a site's rows must share one fold.
    Continuous columns are standardized with the sites' mean and SD. Indicator columns stay
    0/1: standardized by its SD, the indicator of a rare class (one forest site: SD 0.09) would
    put that site ten units from all others and the DI would measure little else; unscaled, a
    change of class counts √2 · weight, like a 1.4-SD change of a continuous predictor. The
    threshold is the largest training DI not above ``Q3 + 1.5·IQR`` (the upper whisker of a
    box plot, as CAST uses), so it is a DI some training site actually has.
    """
    A = np.asarray(X, dtype=np.float64)
    site_labels, first = np.unique(np.asarray(sites), return_index=True)
    fold_ids = np.asarray(folds)
    per_site_folds = {s: set(fold_ids[np.asarray(sites) == s]) for s in site_labels}
    mixed = [str(s) for s, f in per_site_folds.items() if len(f) > 1]
    if mixed:
        raise AnalysisError(
            f"sites {mixed[:5]} have rows in more than one CV fold: use grouped folds"
        )
    if site_labels.size < 3:
        raise AnalysisError(f"{site_labels.size} training sites: the AOA needs at least 3")
    per_site = A[first]
    continuous = np.arange(A.shape[1]) < len(features.continuous)
    sd = per_site.std(axis=0, ddof=1)
    centre = np.where(continuous, per_site.mean(axis=0), 0.0)
    # A constant continuous column is 0 everywhere after centring, whatever its scale.
    scale = np.where(continuous & (sd > 0), sd, 1.0)
    space_weights = np.asarray(weights, dtype=np.float64)
    points = (per_site - centre) / scale * space_weights
    site_folds = fold_ids[first]
    mean_distance = float(np.mean(pdist(points)))
    if mean_distance <= 0:
        raise AnalysisError("all training sites coincide in predictor space: no DI possible")
    train_di = np.empty(site_labels.size)
    for fold in np.unique(site_folds):
        held = site_folds == fold
        if held.all():
            raise AnalysisError("the AOA's cross-validated DI needs at least two folds")
        distance, _ = cKDTree(points[~held]).query(points[held])
        train_di[held] = distance / mean_distance
    q1, q3 = np.quantile(train_di, [0.25, 0.75])
    threshold = float(train_di[train_di <= q3 + WHISKER_IQR * (q3 - q1)].max())
    return TrainingSpace(
        columns=features.columns,
        centre=centre,
        scale=scale,
        weights=space_weights,
        points=points,
        mean_distance=mean_distance,
        train_di=train_di,
        threshold=threshold,
    )


def dissimilarity(space: TrainingSpace, X: npt.ArrayLike) -> F64:
    """DI of each row of ``X``: distance to the nearest training site / mean inter-site
    distance, in the weighted standardized space; NaN for rows with a NaN predictor."""
    A = np.asarray(X, dtype=np.float64)
    di = np.full(A.shape[0], np.nan)
    complete = np.isfinite(A).all(axis=1)
    if complete.any():
        distance, _ = cKDTree(space.points).query(space.transform(A[complete]))
        di[complete] = distance / space.mean_distance
    return di


@dataclass(frozen=True)
class ApplicabilityBlock:
    """One chunk of one element: float32 DI (NaN = no data) and uint8 AOA (1 inside, 0
    outside, 255 no data), both (rows, cols)."""

    di: npt.NDArray[np.float32]
    aoa: npt.NDArray[np.uint8]


def applicability_block(
    space: TrainingSpace,
    features: FeatureSpec,
    values: Mapping[str, npt.NDArray[Any]],
    valid: npt.NDArray[np.bool_],
) -> ApplicabilityBlock:
    """DI and AOA of one chunk. ``values`` holds a (rows, cols) array per variable of
    ``features``; only ``valid`` pixels are computed. A pixel whose class was never seen in
    training is outside the AOA whatever its DI: no training site shares its class."""
    X, unseen = features.matrix({name: values[name][valid] for name in features.variables})
    di = dissimilarity(space, X)
    inside = (di <= space.threshold) & ~unseen
    block = ApplicabilityBlock(
        di=np.full(valid.shape, np.nan, dtype=np.float32),
        aoa=np.full(valid.shape, AOA_NODATA, dtype=np.uint8),
    )
    block.di[valid] = di
    block.aoa[valid] = np.where(np.isfinite(di), inside, AOA_NODATA)
    return block


# --- over the cube, on the cluster -------------------------------------------------------------


def layer_name(element: str, layer: str) -> str:
    """``{element}_di`` or ``{element}_aoa``."""
    return f"{element}_{layer}"


@dataclass(frozen=True)
class ApplicabilityJob:
    """What one task needs besides the (scattered) training space."""

    cube: Path
    out: Path
    element: str
    features: FeatureSpec
    window: ChunkWindow


def applicability_chunk(job: ApplicabilityJob, space: TrainingSpace) -> tuple[str, int, int]:
    """Read one chunk from the cube (as the prediction does), compute and write its DI and AOA;
    returns (element, valid pixels, pixels inside the AOA)."""
    valid = read_window(job.cube, VALID, job.window) == 1
    values = {name: read_window(job.cube, name, job.window) for name in job.features.variables}
    block = applicability_block(space, job.features, values, valid)
    write_window(job.out, layer_name(job.element, "di"), job.window, block.di)
    write_window(job.out, layer_name(job.element, "aoa"), job.window, block.aoa)
    return job.element, int((block.aoa != AOA_NODATA).sum()), int((block.aoa == 1).sum())


@dataclass(frozen=True, eq=False)
class ElementApplicability:
    """An element's model and its training space, as the cube run needs them."""

    artifact: ModelArtifact
    space: TrainingSpace

    @property
    def element(self) -> str:
        return self.artifact.element


def applicability_cube(
    cube: str | Path,
    models: Sequence[ElementApplicability],
    out: str | Path,
    *,
    overwrite: bool = False,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, float]:
    """Write DI and AOA of every element over the cube into a new Zarr group at ``out``.

    Runs on the current Dask client; ``out`` is assembled beside its final path and swapped in
    when complete. Returns the share of valid pixels inside the AOA per element.
    ``progress(element, chunks_done, chunks_total)`` is called as chunks finish.
    """
    cube, out = Path(cube), Path(out)
    if out.exists() and not overwrite:
        raise OutputExistsError(f"{out} exists: choose another path or pass --overwrite")
    grid = cube_grid(cube)
    # The prediction's checks: every variable present, of the same kind and class table, and
    # chunked like the grid (a task reads whole chunks).
    check_models(cube, grid, [model.artifact for model in models])
    try:
        client = get_client()
    except ValueError as exc:
        raise ClusterError("applicability runs on a Dask client: open one first") from exc
    staging = staging_path(out)
    futures: list[Future[Any]] = []
    try:
        create_layout(staging, grid, _layouts(models))
        token = uuid.uuid4().hex[:8]
        for model in models:
            key = f"tpgrid-aoa-space-{model.space.content_hash()}"
            space = client.scatter({key: model.space}, broadcast=True, hash=False)[key]
            futures += [
                client.submit(
                    applicability_chunk,
                    ApplicabilityJob(cube, staging, model.element, model.artifact.features, window),
                    space,
                    key=f"tpgrid-aoa-{model.element}-{window.key}-{token}",
                )
                for window in grid.windows()
            ]
        shares = _collect(futures, len(list(grid.windows())), progress)
        finish(staging, _attrs(models, shares))
        if out.exists():
            log.info("replacing %s", out)
        swap_in(staging, out)
    except BaseException:
        client.cancel(futures)
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return shares


def _layouts(models: Sequence[ElementApplicability]) -> dict[str, VariableLayout]:
    layouts: dict[str, VariableLayout] = {}
    for model in models:
        element = model.element
        common = {"tpgrid:element": element, "coverage_content_type": "qualityInformation"}
        layouts[layer_name(element, "di")] = VariableLayout(
            "float32",
            np.nan,
            common
            | {
                "long_name": f"dissimilarity index of the {element} model (Meyer & Pebesma 2021)",
                "units": "1",
                "tpgrid:threshold": model.space.threshold,
            },
        )
        layouts[layer_name(element, "aoa")] = VariableLayout(
            "uint8",
            AOA_NODATA,
            common
            | {
                "long_name": f"area of applicability of the {element} model",
                "flag_values": [0, 1],
                "flag_meanings": "outside_area_of_applicability inside_area_of_applicability",
            },
        )
    return layouts


def _collect(
    futures: list[Future[Any]], per_element: int, progress: Callable[[str, int, int], None] | None
) -> dict[str, float]:
    """Wait for every chunk (raising the first failure); share of valid pixels inside the AOA."""
    done: dict[str, int] = {}
    counts: dict[str, list[int]] = {}
    for future in as_completed(futures):
        element, n_valid, n_inside = future.result()
        done[element] = done.get(element, 0) + 1
        total = counts.setdefault(element, [0, 0])
        total[0] += n_valid
        total[1] += n_inside
        if progress:
            progress(element, done[element], per_element)
    return {e: (inside / n if n else float("nan")) for e, (n, inside) in counts.items()}


def _attrs(models: Sequence[ElementApplicability], shares: Mapping[str, float]) -> dict[str, Any]:
    return {
        "tpgrid:format": FORMAT,
        "tpgrid:version": __version__,
        "title": "Area of applicability of the tpgrid micronutrient models",
        "tpgrid:applicability": {
            model.element: {
                "threshold": model.space.threshold,
                "mean_distance": model.space.mean_distance,
                "n_training_sites": int(model.space.points.shape[0]),
                "share_inside": shares.get(model.element),
                "weights": dict(
                    zip(model.space.columns, model.space.weights.tolist(), strict=True)
                ),
            }
            for model in models
        },
    }
