"""What a report reads: the element models ``tpgrid fit`` wrote (artifact, training table,
out-of-fold predictions, the grouped CV's held-out results) and the prediction run it maps."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd
import xarray as xr

from tpgrid.artifact import (
    HELD_OUT_FILE,
    MODEL_FILE,
    ModelArtifact,
    load_held_out,
    load_model,
)
from tpgrid.errors import AnalysisError, ArtifactError
from tpgrid.fit import CV_PREDICTIONS_FILE, TRAINING_FILE, HeldOutResults
from tpgrid.outputs import open_prediction


@dataclass(frozen=True, eq=False)
class ElementModel:
    """An element's artifact, its training table (one row per
    training sample: ``site_id``, the feature columns, ``observed`` in mg/kg) and its
    out-of-fold predictions of the fit's CV schemes, row for row; and what the grouped CV's
    forests said about the rows they did not see (``held_out``), row for row too."""

    directory: Path
    artifact: ModelArtifact
    training: pd.DataFrame
    cv: pd.DataFrame
    held_out: HeldOutResults

    @property
    def element(self) -> str:
        return self.artifact.element

    @property
    def X(self) -> npt.NDArray[np.float32]:
        columns = list(self.artifact.features.columns)
        return self.training[columns].to_numpy(dtype=np.float32)

    @property
    def y(self) -> npt.NDArray[np.float64]:
        return self.training["observed"].to_numpy(dtype=np.float64)

    @property
    def folds(self) -> npt.NDArray[np.intp]:
        return self.cv["fold_grouped"].to_numpy(dtype=np.intp)


def load_element(directory: str | Path) -> ElementModel:
    """Read one element directory written by ``tpgrid fit``; :class:`ArtifactError` if a part
    is missing or damaged, or the training table, CV predictions and held-out results do not
    match row for row."""
    directory = Path(directory)
    artifact = load_model(directory)
    tables = []
    for name in (TRAINING_FILE, CV_PREDICTIONS_FILE):
        path = directory / name
        if not path.is_file():
            raise ArtifactError(f"{path} is missing: fit the model again with `tpgrid fit`")
        tables.append(pd.read_parquet(path))
    training, cv = tables
    if not training["sample_id"].equals(cv["sample_id"]) or cv["fold_grouped"].isna().any():
        raise ArtifactError(
            f"{directory}: {TRAINING_FILE} and {CV_PREDICTIONS_FILE} do not describe the same "
            "rows with grouped folds: fit the model again with `tpgrid fit`"
        )
    try:
        held_out = HeldOutResults.from_arrays(load_held_out(directory))
    except ValueError as exc:
        raise ArtifactError(
            f"{directory / HELD_OUT_FILE} is not held-out results of this version ({exc}): fit "
            "the model again with `tpgrid fit`"
        ) from exc
    predictors = list(dict.fromkeys(artifact.features.column_variables))
    if list(held_out.variables) != predictors or held_out.trees.shape[0] != len(training):
        raise ArtifactError(
            f"{directory / HELD_OUT_FILE} does not describe this model's rows and predictors: "
            "fit the model again with `tpgrid fit`"
        )
    if not np.array_equal(held_out.folds, cv["fold_grouped"].to_numpy(dtype=np.int64)):
        raise ArtifactError(
            f"{directory}: {HELD_OUT_FILE} and {CV_PREDICTIONS_FILE} do not hold the same "
            "grouped folds: fit the model again with `tpgrid fit`"
        )
    return ElementModel(directory, artifact, training, cv, held_out)


def find_elements(models: str | Path) -> list[Path]:
    """The element directories under ``models`` (or ``models`` itself if it is one)."""
    models = Path(models)
    if (models / MODEL_FILE).is_file():
        return [models]
    found = sorted(path.parent for path in models.glob(f"*/{MODEL_FILE}"))
    if not found:
        raise ArtifactError(
            f"{models} holds no model ({MODEL_FILE} in it or a subdirectory): fit the models "
            "with `tpgrid fit`"
        )
    return found


def open_matching_prediction(
    path: str | Path, loaded: Sequence[ElementModel]
) -> tuple[xr.Dataset, str]:
    """The prediction run's group and id; :class:`AnalysisError` if an element of the report
    was predicted by another model than the one analysed."""
    maps, run = open_prediction(path)
    for model in loaded:
        entry = run["models"].get(model.element)
        if entry is not None and entry["model_hash"] != model.artifact.model_hash:
            raise AnalysisError(
                f"prediction {path} was made with another {model.element} model than the one "
                f"in {model.directory}: predict again with these models (`tpgrid predict`)"
            )
    return maps, str(run["run_id"])
