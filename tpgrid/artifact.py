"""Model artifacts on disk: one directory per element, no pickle anywhere.

A directory holds ``forest.npz`` (the packed forest, :class:`tpgrid.forest.PackedForest`) and
``model.json``: the element, the feature list (:class:`tpgrid.features.FeatureSpec`), the
forest's SHA-256 and a free-form ``record`` (hyperparameters, CV results, screening and
calibration, training-table hash, library versions) written by the fitting step. Loading reads
arrays and JSON only, so it never runs code from the file, and checks the forest against the
recorded hash, so a tampered or truncated artifact is refused with a clear error.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tpgrid.errors import ArtifactError, ConfigError
from tpgrid.features import FeatureSpec
from tpgrid.forest import PackedForest

FORMAT = "tpgrid-model/1"
FOREST_FILE = "forest.npz"
MODEL_FILE = "model.json"


@dataclass(frozen=True, eq=False)
class ModelArtifact:
    """A fitted model of one element: what prediction needs, plus the record of its fitting.

    The forest predicts the element in mg/kg from the columns of ``features``, in order.
    """

    element: str
    forest: PackedForest
    features: FeatureSpec
    record: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.forest.n_features != self.features.n_columns:
            raise ArtifactError(
                f"model {self.element}: the forest takes {self.forest.n_features} columns but "
                f"the feature list has {self.features.n_columns}"
            )

    @property
    def model_hash(self) -> str:
        """Content address of what decides predictions: the forest and the feature list."""
        digest = hashlib.sha256(self.forest.content_hash().encode())
        digest.update(json.dumps(self.features.to_json(), sort_keys=True).encode())
        return digest.hexdigest()


def save_model(artifact: ModelArtifact, directory: str | Path) -> Path:
    """Write ``artifact`` into ``directory`` (created if needed); returns the directory.

    ``model.json`` is written last, so a directory without it is an incomplete artifact.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / MODEL_FILE).unlink(missing_ok=True)
    artifact.forest.save_npz(directory / FOREST_FILE)
    doc = {
        "format": FORMAT,
        "element": artifact.element,
        "features": artifact.features.to_json(),
        "forest_sha256": artifact.forest.content_hash(),
        "model_hash": artifact.model_hash,
        "record": artifact.record,
    }
    (directory / MODEL_FILE).write_text(json.dumps(doc, indent=2, sort_keys=False) + "\n")
    return directory


def load_model(directory: str | Path) -> ModelArtifact:
    """Read an artifact written by :func:`save_model`; raise :class:`ArtifactError` when it is
    missing, incomplete, of another format, or does not match its recorded hash."""
    directory = Path(directory)
    model_json = directory / MODEL_FILE
    if not model_json.is_file():
        raise ArtifactError(
            f"{directory} is not a complete model artifact (no {MODEL_FILE}): fit it again "
            "with `tpgrid fit`"
        )
    try:
        doc = json.loads(model_json.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{model_json} is not valid JSON ({exc}): fit the model again") from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        found = doc.get("format") if isinstance(doc, dict) else None
        raise ArtifactError(
            f"{model_json} is format {found!r}, not {FORMAT!r}: fit the model again with this "
            "version of tpgrid"
        )
    try:
        forest = PackedForest.load_npz(directory / FOREST_FILE)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as exc:
        raise ArtifactError(
            f"{directory / FOREST_FILE} cannot be read ({exc}): the artifact is damaged; fit "
            "the model again"
        ) from exc
    if forest.content_hash() != doc.get("forest_sha256"):
        raise ArtifactError(
            f"{directory / FOREST_FILE} does not match the hash recorded in {model_json}: the "
            "artifact was changed or damaged; fit the model again"
        )
    try:
        element = str(doc["element"])
        record = dict(doc.get("record") or {})
    except (KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(f"{model_json} is malformed ({exc!r}): fit the model again") from exc
    try:
        features = FeatureSpec.from_json(doc["features"])
    except (KeyError, ConfigError) as exc:
        raise ArtifactError(
            f"{model_json} has no usable feature list: fit the model again"
        ) from exc
    return ModelArtifact(element=element, forest=forest, features=features, record=record)
