"""Model artifacts on disk: one directory per element, no pickle anywhere.

A directory holds ``forest.npz`` (the packed forest, :class:`tpgrid.core.forest.PackedForest`) and
``model.json``: the element, the feature list (:class:`tpgrid.core.features.FeatureSpec`), the
forest's SHA-256 and a free-form ``record`` (hyperparameters, CV results, screening and
calibration, training-table hash, library versions) written by the fitting step. Loading reads
arrays and JSON only, so it never runs code from the file, and checks the forest against the
recorded hash, so a tampered or truncated artifact is refused with a clear error.

Optionally it also holds ``sklearn_trees.npz``: scikit-learn's own node arrays of every tree,
from which :func:`load_estimator` rebuilds the fitted ``RandomForestRegressor`` for analysis
(importances, partial dependence). It is hash-checked like the forest and must pack into exactly
the recorded forest, so the two files can never disagree.

A fitted model also holds ``held_out.npz``: arrays its fitting computed on rows its CV forests
did not see (``tpgrid.fit.heldout``), for the report. Its hash is recorded in ``model.json``
too, and :func:`check_model` checks it, so a damaged file makes the model be fitted again.

What the uncertainty layers need travels with the forest, each optional, hash-checked on
loading and part of the model hash (they change the maps): ``leaves.npz``, the training
samples in every leaf (:class:`~tpgrid.core.quantiles.LeafMembership`, quantile maps);
``inbag.npz``, every tree's in-bag counts of the training rows (standard-error maps);
``applicability.npz``, the training sites in the model's predictor space
(:class:`~tpgrid.core.applicability.TrainingSpace`: DI and AOA maps, and the bins of the
interval calibration); and in ``model.json`` the interval calibration
(:class:`~tpgrid.core.intervals.IntervalCalibration`).
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from tpgrid.core.applicability import TrainingSpace
from tpgrid.core.blocks import PixelModel
from tpgrid.core.features import FeatureSpec
from tpgrid.core.forest import PackedForest, pack_forest
from tpgrid.core.intervals import IntervalCalibration
from tpgrid.core.quantiles import LeafMembership
from tpgrid.errors import ArtifactError, ConfigError
from tpgrid.integrity import Damage

FORMAT = "tpgrid-model/1"
FOREST_FILE = "forest.npz"
MODEL_FILE = "model.json"
SKLEARN_FILE = "sklearn_trees.npz"
HELD_OUT_FILE = "held_out.npz"
LEAVES_FILE = "leaves.npz"
INBAG_FILE = "inbag.npz"
SPACE_FILE = "applicability.npz"

#: Per-node arrays of ``sklearn_trees.npz``: the fields of scikit-learn's node record, plus the
#: node value (one output).
_NODE_FIELDS = (
    "left_child",
    "right_child",
    "feature",
    "threshold",
    "impurity",
    "n_node_samples",
    "weighted_n_node_samples",
    "missing_go_to_left",
)
_SKLEARN_FORMAT_VERSION = 1
#: Each uncertainty file, by the ``model.json`` key recording its hash.
_UNCERTAINTY_KEYS = {
    LEAVES_FILE: "leaf_membership",
    INBAG_FILE: "inbag",
    SPACE_FILE: "training_space",
}


@dataclass(frozen=True, eq=False)
class ModelArtifact:
    """A fitted model of one element: what prediction needs, plus the record of its fitting.

    The forest predicts the element in mg/kg from the columns of ``features``, in order.
    ``membership`` (quantiles), ``inbag`` (int32 (n_train, n_trees), standard errors),
    ``space`` (DI, AOA) and ``calibration`` (intervals) are what the uncertainty layers need;
    a model without one cannot make those layers.
    """

    element: str
    forest: PackedForest
    features: FeatureSpec
    record: dict[str, Any] = field(default_factory=dict)
    membership: LeafMembership | None = None
    inbag: npt.NDArray[np.int32] | None = None
    space: TrainingSpace | None = None
    calibration: IntervalCalibration | None = None

    def __post_init__(self) -> None:
        if self.forest.n_features != self.features.n_columns:
            raise ArtifactError(
                f"model {self.element}: the forest takes {self.forest.n_features} columns but "
                f"the feature list has {self.features.n_columns}"
            )
        if self.membership is not None and self.membership.n_nodes != self.forest.n_nodes:
            raise ArtifactError(
                f"model {self.element}: the leaf membership has {self.membership.n_nodes} "
                f"nodes, the forest {self.forest.n_nodes}"
            )
        if self.inbag is not None and (
            self.inbag.ndim != 2 or self.inbag.shape[1] != self.forest.n_trees
        ):
            raise ArtifactError(
                f"model {self.element}: in-bag counts of shape {self.inbag.shape} for "
                f"{self.forest.n_trees} trees"
            )
        if self.space is not None and self.space.columns != self.features.columns:
            raise ArtifactError(
                f"model {self.element}: the training space's columns are not the model's"
            )

    @cached_property
    def model_hash(self) -> str:
        """Content address of what decides the maps: the forest, the feature list and the
        uncertainty parts present. Computed once: all of them are immutable."""
        digest = hashlib.sha256(self.forest.content_hash().encode())
        digest.update(json.dumps(self.features.to_json(), sort_keys=True).encode())
        for name, arrays in self._uncertainty_arrays().items():
            digest.update(f"{name}:{_arrays_hash(arrays)}".encode())
        if self.calibration is not None:
            digest.update(json.dumps(self.calibration.to_json(), sort_keys=True).encode())
        return digest.hexdigest()

    @property
    def pixel_model(self) -> PixelModel:
        """What predicting this model's pixels needs (the forest and its uncertainty parts)."""
        return PixelModel(self.forest, self.membership, self.inbag, self.space, self.calibration)

    def _uncertainty_arrays(self) -> dict[str, dict[str, npt.NDArray[Any]]]:
        """The uncertainty parts present, as the arrays each is saved as, by file name."""
        parts: dict[str, dict[str, npt.NDArray[Any]]] = {}
        if self.membership is not None:
            parts[LEAVES_FILE] = self.membership.to_arrays()
        if self.inbag is not None:
            parts[INBAG_FILE] = {"inbag": self.inbag}
        if self.space is not None:
            parts[SPACE_FILE] = self.space.to_arrays()
        return parts


def save_model(
    artifact: ModelArtifact,
    directory: str | Path,
    *,
    estimator: Any | None = None,
    held_out: dict[str, npt.NDArray[Any]] | None = None,
) -> Path:
    """Write ``artifact`` into ``directory`` (created if needed); returns the directory.

    With ``estimator`` (the fitted ``RandomForestRegressor`` the forest was packed from), its
    node arrays go to ``sklearn_trees.npz`` too, for :func:`load_estimator`; with ``held_out``
    (plain arrays), they go to ``held_out.npz``, for :func:`load_held_out`. ``model.json`` is
    written last, so a directory without it is an incomplete artifact.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / MODEL_FILE).unlink(missing_ok=True)
    artifact.forest.save_npz(directory / FOREST_FILE)
    doc: dict[str, Any] = {
        "format": FORMAT,
        "element": artifact.element,
        "features": artifact.features.to_json(),
        "forest_sha256": artifact.forest.content_hash(),
        "model_hash": artifact.model_hash,
        "record": artifact.record,
    }
    if estimator is not None:
        if pack_forest(estimator).content_hash() != doc["forest_sha256"]:
            raise ValueError("the estimator is not the one the artifact's forest was packed from")
        arrays = sklearn_tree_arrays(estimator)
        np.savez(directory / SKLEARN_FILE, allow_pickle=False, **arrays)
        doc["sklearn_trees"] = {
            "file": SKLEARN_FILE,
            "sha256": _arrays_hash(arrays),
            "params": _json_params(estimator.get_params()),
        }
    if held_out is not None:
        np.savez(directory / HELD_OUT_FILE, allow_pickle=False, **held_out)
        doc["held_out"] = {"file": HELD_OUT_FILE, "sha256": _arrays_hash(held_out)}
    for name, arrays in artifact._uncertainty_arrays().items():
        np.savez(directory / name, allow_pickle=False, **arrays)
        doc[_UNCERTAINTY_KEYS[name]] = {"file": name, "sha256": _arrays_hash(arrays)}
    if artifact.calibration is not None:
        doc["interval_calibration"] = artifact.calibration.to_json()
    (directory / MODEL_FILE).write_text(json.dumps(doc, indent=2, sort_keys=False) + "\n")
    return directory


def load_model(directory: str | Path) -> ModelArtifact:
    """Read an artifact written by :func:`save_model`; raise :class:`ArtifactError` when it is
    missing, incomplete, of another format, or does not match its recorded hash."""
    directory = Path(directory)
    doc = _read_model_json(directory)
    model_json = directory / MODEL_FILE
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
    parts = {
        name: _checked_arrays(directory, doc, key, name)
        for name, key in _UNCERTAINTY_KEYS.items()
        if isinstance(doc.get(key), dict)
    }
    try:
        membership = (
            LeafMembership.from_arrays(parts[LEAVES_FILE]) if LEAVES_FILE in parts else None
        )
        inbag = np.ascontiguousarray(parts[INBAG_FILE]["inbag"]) if INBAG_FILE in parts else None
        space = TrainingSpace.from_arrays(parts[SPACE_FILE]) if SPACE_FILE in parts else None
        calibration = (
            IntervalCalibration.from_json(doc["interval_calibration"])
            if "interval_calibration" in doc
            else None
        )
        return ModelArtifact(
            element=element,
            forest=forest,
            features=features,
            record=record,
            membership=membership,
            inbag=None if inbag is None else inbag.astype(np.int32, copy=False),
            space=space,
            calibration=calibration,
        )
    except (KeyError, ValueError) as exc:
        raise ArtifactError(
            f"{directory}: its uncertainty parts cannot be read ({exc}): fit the model again"
        ) from exc


def check_model(directory: str | Path) -> ModelArtifact:
    """:func:`load_model`, and the scikit-learn tree arrays and held-out arrays (when saved)
    checked against their recorded hashes, without rebuilding the estimator: an artifact fit to
    be reused as it is."""
    directory = Path(directory)
    artifact = load_model(directory)
    doc = _read_model_json(directory)
    for key, name in (("sklearn_trees", SKLEARN_FILE), ("held_out", HELD_OUT_FILE)):
        if isinstance(doc.get(key), dict):
            _checked_arrays(directory, doc, key, name)
    return artifact


def load_held_out(directory: str | Path) -> dict[str, npt.NDArray[Any]]:
    """The held-out arrays saved with the model in ``directory``, checked against their
    recorded hash; :class:`ArtifactError` when there are none or they are damaged."""
    directory = Path(directory)
    doc = _read_model_json(directory)
    if not isinstance(doc.get("held_out"), dict):
        raise ArtifactError(
            f"{directory} was saved without held-out results ({HELD_OUT_FILE}): fit the model "
            "again with this version of `tpgrid fit`"
        )
    return _checked_arrays(directory, doc, "held_out", HELD_OUT_FILE)


def _checked_arrays(
    directory: Path, doc: dict[str, Any], key: str, name: str
) -> dict[str, npt.NDArray[Any]]:
    """The arrays of ``directory/name``, which ``doc[key]["sha256"]`` must describe."""
    path = directory / name
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {array: data[array] for array in data.files}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as exc:
        raise ArtifactError(
            f"{path} cannot be read ({exc}): the artifact is damaged; fit the model again"
        ) from exc
    if _arrays_hash(arrays) != doc[key].get("sha256"):
        raise ArtifactError(
            f"{path} does not match the hash recorded in {directory / MODEL_FILE}: the "
            "artifact was changed or damaged; fit the model again"
        )
    return arrays


def verify_models(directory: str | Path) -> list[Damage]:
    """Every model artifact under ``directory`` (it, or its subdirectories: one per element)
    that fails :func:`check_model`, as the damaged file and the reason. A directory with no
    artifact at all is damage too. Reads the files only, no Dask."""
    directory = Path(directory)
    found = _artifact_dirs(directory)
    if not found:
        return [Damage(directory, f"no model artifact ({MODEL_FILE}) in it or its subdirectories")]
    damage = []
    for path in found:
        try:
            check_model(path)
        except ArtifactError as exc:
            damage.append(Damage(path / _failing_file(path), str(exc)))
    return damage


def _artifact_dirs(directory: Path) -> list[Path]:
    """``directory`` if it holds an artifact's files, else its (non-hidden) subdirectories that
    do; a directory with either file counts, so one missing the other is found."""

    def has_artifact(path: Path) -> bool:
        return (path / MODEL_FILE).exists() or (path / FOREST_FILE).exists()

    if has_artifact(directory):
        return [directory]
    if not directory.is_dir():
        return []
    return sorted(
        path
        for path in directory.iterdir()
        if path.is_dir() and not path.name.startswith(".") and has_artifact(path)
    )


def _failing_file(directory: Path) -> str:
    """The file a failing artifact's check is about: ``model.json`` when it cannot be read, the
    forest, an uncertainty file, the tree arrays or the held-out arrays when they do not load
    or match its hashes (in that order of checking)."""
    try:
        doc = _read_model_json(directory)
    except ArtifactError:
        return MODEL_FILE
    try:
        forest = PackedForest.load_npz(directory / FOREST_FILE)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError):
        return FOREST_FILE
    if forest.content_hash() != doc.get("forest_sha256"):
        return FOREST_FILE
    for name, key in _UNCERTAINTY_KEYS.items():
        if isinstance(doc.get(key), dict):
            try:
                _checked_arrays(directory, doc, key, name)
            except ArtifactError:
                return name
    try:
        load_model(directory)
    except ArtifactError:
        return MODEL_FILE
    if isinstance(doc.get("sklearn_trees"), dict):
        try:
            _checked_arrays(directory, doc, "sklearn_trees", SKLEARN_FILE)
        except ArtifactError:
            return SKLEARN_FILE
    return HELD_OUT_FILE


def _read_model_json(directory: Path) -> dict[str, Any]:
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
    return doc


# --- scikit-learn's own trees, for analysis ------------------------------------------------


def sklearn_tree_arrays(estimator: Any) -> dict[str, npt.NDArray[Any]]:
    """A fitted single-output ``RandomForestRegressor`` as plain arrays (``np.savez``-able).

    Node arrays (:data:`_NODE_FIELDS` and ``value``) are the trees' nodes one tree after the
    other, in scikit-learn's own order and dtypes (threshold float64); ``node_offset``
    [n_trees + 1] says where each tree starts; ``max_depth`` and ``random_state`` are per tree.
    """
    trees = [tree.tree_ for tree in estimator.estimators_]
    if estimator.n_outputs_ != 1:
        raise ValueError(f"only single-output forests are stored, not {estimator.n_outputs_}")
    nodes = [tree.__getstate__()["nodes"] for tree in trees]
    arrays: dict[str, npt.NDArray[Any]] = {
        name: np.ascontiguousarray(np.concatenate([n[name] for n in nodes]))
        for name in _NODE_FIELDS
    }
    arrays["value"] = np.concatenate([tree.value[:, 0, 0] for tree in trees]).astype(np.float64)
    counts = np.array([tree.node_count for tree in trees], dtype=np.int64)
    arrays["node_offset"] = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    arrays["max_depth"] = np.array([tree.max_depth for tree in trees], dtype=np.int64)
    arrays["random_state"] = np.array(
        [tree.random_state for tree in estimator.estimators_], dtype=np.int64
    )
    arrays["n_features"] = np.array(estimator.n_features_in_, dtype=np.int64)
    arrays["format_version"] = np.array(_SKLEARN_FORMAT_VERSION, dtype=np.int64)
    return arrays


def rebuild_estimator(arrays: dict[str, npt.NDArray[Any]], params: dict[str, Any]) -> Any:
    """The fitted ``RandomForestRegressor`` (hyperparameters ``params``) from
    :func:`sklearn_tree_arrays` output: it predicts exactly as the one the arrays came from.

    Each tree is restored through scikit-learn's own ``Tree.__setstate__`` (the path unpickling
    takes), but from arrays read without pickle.
    """
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.tree import DecisionTreeRegressor
    from sklearn.tree._tree import NODE_DTYPE, Tree

    missing = {*_NODE_FIELDS, "value", "node_offset", "max_depth", "random_state"} - set(arrays)
    if missing:
        raise ValueError(f"not scikit-learn tree arrays: missing {sorted(missing)}")
    if int(arrays["format_version"]) != _SKLEARN_FORMAT_VERSION:
        raise ValueError(f"tree arrays format {int(arrays['format_version'])} is not supported")
    unknown = set(NODE_DTYPE.names or ()) - set(_NODE_FIELDS)
    if unknown:
        raise ValueError(f"this scikit-learn's tree nodes have fields {sorted(unknown)} not stored")
    forest = RandomForestRegressor(**params)
    n_features = int(arrays["n_features"])
    offsets = arrays["node_offset"]
    estimators = []
    for t in range(offsets.size - 1):
        part = slice(int(offsets[t]), int(offsets[t + 1]))
        n_nodes = part.stop - part.start
        nodes = np.zeros(n_nodes, dtype=NODE_DTYPE)
        for name in _NODE_FIELDS:
            nodes[name] = arrays[name][part]
        tree = Tree(n_features, np.ones(1, dtype=np.intp), 1)
        tree.__setstate__(
            {
                "max_depth": int(arrays["max_depth"][t]),
                "node_count": n_nodes,
                "nodes": nodes,
                "values": np.ascontiguousarray(arrays["value"][part].reshape(n_nodes, 1, 1)),
            }
        )
        member = DecisionTreeRegressor(
            **{name: getattr(forest, name) for name in forest.estimator_params}
            | {"random_state": int(arrays["random_state"][t])}
        )
        member.tree_ = tree
        member.n_features_in_ = n_features
        member.n_outputs_ = 1
        estimators.append(member)
    forest.estimators_ = estimators
    forest.estimator_ = DecisionTreeRegressor()
    forest.n_features_in_ = n_features
    forest.n_outputs_ = 1
    return forest


def load_estimator(directory: str | Path) -> Any:
    """The fitted scikit-learn ``RandomForestRegressor`` of an artifact saved with its estimator.

    Raises :class:`ArtifactError` when the artifact has no tree arrays, when they are damaged or
    do not match their recorded hash, or when they do not pack into the artifact's forest.
    """
    directory = Path(directory)
    doc = _read_model_json(directory)
    entry = doc.get("sklearn_trees")
    path = directory / SKLEARN_FILE
    if not isinstance(entry, dict):
        raise ArtifactError(
            f"{directory} was saved without scikit-learn trees: fit the model again with "
            "`tpgrid fit` to analyse it"
        )
    arrays = _checked_arrays(directory, doc, "sklearn_trees", SKLEARN_FILE)
    try:
        estimator = rebuild_estimator(arrays, dict(entry["params"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(
            f"{path} cannot be rebuilt into a scikit-learn forest ({exc}): fit the model again "
            "with this version of tpgrid and scikit-learn"
        ) from exc
    if pack_forest(estimator).content_hash() != doc.get("forest_sha256"):
        raise ArtifactError(
            f"{path} and {directory / FOREST_FILE} describe different forests: the artifact "
            "was changed; fit the model again"
        )
    return estimator


def _arrays_hash(arrays: dict[str, npt.NDArray[Any]]) -> str:
    """SHA-256 over every array's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}:{array.dtype.str}:{array.shape};".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def _json_params(params: dict[str, Any]) -> dict[str, Any]:
    """Estimator hyperparameters as JSON values (numpy scalars to Python ones)."""
    return {
        name: value.item() if isinstance(value, np.generic) else value
        for name, value in params.items()
    }
