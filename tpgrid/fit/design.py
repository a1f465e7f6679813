"""One element's training data as the forest sees it: target values and covariates at its sites.

The target values are screened (mean ± n·SD over the measured samples, as in the paper),
calibrated from XRF to the ICP-MS scale where asked, and kept as samples or site means
(:func:`training_table`). The cube's layers at the site pixels (:func:`site_covariates`) become
the feature spec and the design matrix (:func:`build_design`), hashed with the settings that
shape the fit, so a model fitted from the same inputs can be kept instead of fitted again.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import xarray as xr

from tpgrid.core.arrays import F64
from tpgrid.core.features import CATEGORICAL_NODATA, CategoricalFeature, FeatureSpec
from tpgrid.cube import ATTR_FEATURES
from tpgrid.errors import CubeError, SiteTableError
from tpgrid.fit.elements import CALIBRATE_FIX, ELEMENTS_KEYS
from tpgrid.fit.settings import FitSettings, TrainOn
from tpgrid.fit.sites import ICPMS_SUFFIX, SiteLocations, SiteTable, extract_covariates

log = logging.getLogger(__name__)

#: A calibration line needs a few pairs, and XRF must follow ICP-MS (R² of the line) for the
#: inversion not to amplify noise; below these the element cannot be calibrated.
MIN_CALIBRATION_PAIRS = 10
MIN_CALIBRATION_R2 = 0.5


# --- the target values: screened, calibrated, samples or site means ---------------------------


@dataclass(frozen=True)
class Screening:
    """Outlier screening of one element: values outside ``mean ± n_sd · sd`` are removed.

    ``mean`` and ``sd`` (sample SD) are over all measured samples, in mg/kg, as in the paper.
    """

    n_sd: float
    mean: float
    sd: float
    removed: dict[str, float]  # sample_id -> value (mg/kg)

    @property
    def low(self) -> float:
        return self.mean - self.n_sd * self.sd

    @property
    def high(self) -> float:
        return self.mean + self.n_sd * self.sd

    def to_json(self) -> dict[str, Any]:
        return {
            "rule": "mean ± n_sd · sd over the measured samples",
            "n_sd": self.n_sd,
            "mean": self.mean,
            "sd": self.sd,
            "low": self.low,
            "high": self.high,
            "removed": self.removed,
        }


def screen_outliers(values: pd.Series[float], n_sd: float) -> Screening:
    """Screen ``values`` (index sample_id, no NaN) with the paper's mean ± n_sd · SD rule."""
    mean = float(values.mean())
    sd = float(values.std(ddof=1)) if values.size > 1 else 0.0
    outside = (values - mean).abs() > n_sd * sd
    removed = {str(k): float(v) for k, v in values[outside].items()}
    return Screening(n_sd=n_sd, mean=mean, sd=sd, removed=removed)


@dataclass(frozen=True)
class Calibration:
    """XRF against ICP-MS on the re-measured samples: ``xrf = intercept + slope · icpms`` (OLS).

    XRF carries the measurement error and ICP-MS is the reference, so XRF is regressed on
    ICP-MS (error in the dependent variable, as OLS assumes) and the line is inverted to
    calibrate; regressing ICP-MS on XRF instead would flatten the slope by about R²
    (regression dilution). Intercept in mg/kg.
    """

    intercept: float
    slope: float
    r2: float
    n_pairs: int

    def apply(self, xrf: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """XRF values (mg/kg) on the ICP-MS scale: ``(xrf − intercept) / slope``."""
        return (np.asarray(xrf, dtype=np.float64) - self.intercept) / self.slope

    def to_json(self) -> dict[str, Any]:
        return {
            "model": "xrf = intercept + slope * icpms (OLS on the paired samples)",
            "applied": "value = (xrf - intercept) / slope",
            "intercept": self.intercept,
            "slope": self.slope,
            "r2": self.r2,
            "n_pairs": self.n_pairs,
        }


def fit_calibration(xrf: npt.ArrayLike, icpms: npt.ArrayLike) -> Calibration:
    """OLS of XRF on ICP-MS over paired samples (both arrays in mg/kg, no NaN)."""
    x = np.asarray(icpms, dtype=np.float64)
    y = np.asarray(xrf, dtype=np.float64)
    slope, intercept = np.polyfit(x, y, 1)
    residual = y - (intercept + slope * x)
    total = float(np.sum((y - y.mean()) ** 2))
    r2 = 1.0 - float(np.sum(residual**2)) / total if total > 0 else 0.0
    return Calibration(float(intercept), float(slope), r2, int(x.size))


@dataclass(frozen=True, eq=False)
class TrainingTable:
    """One element's target values, ready to meet the covariates.

    ``frame`` has ``site_id``, ``sample_id`` (``<NA>`` for site means) and ``value`` (mg/kg,
    screened and calibrated), one row per training example, every site located. ``record``
    says what was done: counts, screening, calibration, aggregation.
    """

    element: str
    frame: pd.DataFrame
    record: dict[str, Any]

    @property
    def n_sites(self) -> int:
        return int(self.frame["site_id"].nunique())


def training_table(
    table: SiteTable,
    element: str,
    located: SiteLocations,
    *,
    screening_sd: float | None = 3.0,
    calibrate: bool = False,
    train_on: TrainOn = "samples",
) -> TrainingTable:
    """Screen, calibrate and (optionally) average ``element`` over the located sites.

    Screening and calibration use every measured sample of the table (the measured population,
    as in the paper), then samples of excluded sites are dropped. Raises
    :class:`SiteTableError` when no usable row remains, or when calibration is asked but the
    table cannot support it.
    """
    frame = table.frame
    measured = frame[element].notna()
    values = pd.Series(frame[element].to_numpy(), index=frame["sample_id"].to_numpy())[
        measured.to_numpy()
    ]
    record: dict[str, Any] = {"n_samples_measured": int(measured.sum())}
    if values.empty:
        raise SiteTableError(
            f"{table.path}: column {element!r} has no values: there is nothing to train "
            f"{element} on; fill in the column, or leave {element} out of {ELEMENTS_KEYS}"
        )
    keep = pd.Series(True, index=values.index)
    if screening_sd is not None:
        screening = screen_outliers(values, screening_sd)
        keep[list(screening.removed)] = False
        record["screening"] = screening.to_json()
        if screening.removed:
            log.info(
                "%s: %d of %d samples outside mean ± %g SD removed",
                element,
                len(screening.removed),
                values.size,
                screening_sd,
            )
    else:
        record["screening"] = None
    kept = values[keep]
    if calibrate:
        calibration = _calibrate(table, element, kept)
        kept = pd.Series(calibration.apply(kept.to_numpy()), index=kept.index)
        record["calibration"] = calibration.to_json()
        record["scale"] = "ICP-MS (XRF calibrated)"
    else:
        record["calibration"] = None
        record["scale"] = "as measured (XRF)"

    site_of = pd.Series(frame["site_id"].to_numpy(), index=frame["sample_id"].to_numpy())
    rows = pd.DataFrame(
        {
            "site_id": site_of[kept.index].to_numpy(),
            "sample_id": kept.index.to_numpy(),
            "value": kept.to_numpy(),
        }
    ).reset_index(drop=True)
    located_rows = rows["site_id"].isin(located.frame.index)
    record["n_samples_on_excluded_sites"] = int((~located_rows).sum())
    rows = rows[located_rows]
    if rows.empty:
        raise SiteTableError(
            f"{table.path}: no usable {element} values: {values.size} measured, "
            f"{int((~keep).sum())} screened out, the rest on sites outside the grid or on "
            f"invalid pixels; check the coordinates, or leave {element} out of {ELEMENTS_KEYS}"
        )
    if train_on == "site_means":
        rows = rows.groupby("site_id", sort=True)["value"].mean().reset_index()
        rows.insert(1, "sample_id", pd.Series(pd.NA, index=rows.index, dtype="string"))
    record["train_on"] = train_on
    record["n_rows"] = len(rows)
    record["n_sites"] = int(rows["site_id"].nunique())
    return TrainingTable(element=element, frame=rows.reset_index(drop=True), record=record)


def _calibrate(table: SiteTable, element: str, kept: pd.Series[float]) -> Calibration:
    column = element + ICPMS_SUFFIX
    if column not in table.frame.columns:
        raise SiteTableError(
            f"{table.path}: calibrating {element} needs the re-measured values in a column "
            f"{column!r}, which the table does not have: add it, or {CALIBRATE_FIX}"
        )
    icpms = pd.Series(table.frame[column].to_numpy(), index=table.frame["sample_id"].to_numpy())
    paired = icpms[kept.index].notna().to_numpy()
    if paired.sum() < MIN_CALIBRATION_PAIRS:
        raise SiteTableError(
            f"{table.path}: calibrating {element} needs at least {MIN_CALIBRATION_PAIRS} samples "
            f"with both {element!r} and {column!r}, found {int(paired.sum())}: add ICP-MS "
            f"values, or {CALIBRATE_FIX}"
        )
    calibration = fit_calibration(kept[paired].to_numpy(), icpms[kept.index][paired].to_numpy())
    if calibration.slope <= 0 or calibration.r2 < MIN_CALIBRATION_R2:
        raise SiteTableError(
            f"{table.path}: XRF does not follow ICP-MS for {element} (slope "
            f"{calibration.slope:.3g}, R² {calibration.r2:.2f} over {calibration.n_pairs} "
            f"pairs; at least {MIN_CALIBRATION_R2} needed): calibrating would amplify noise, "
            f"so {CALIBRATE_FIX}"
        )
    return calibration


# --- the covariates at the sites and the design matrix ---------------------------------------


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
class Design:
    """One element's training data as the forest sees it, and the hash of all fit inputs."""

    spec: FeatureSpec
    X: npt.NDArray[np.float32]
    y: F64
    table: pd.DataFrame  # ids, pixel, X columns and the observed value
    site_index: npt.NDArray[np.intp]
    inputs_sha256: str


def build_design(
    training: TrainingTable,
    located: SiteLocations,
    covariates: Mapping[str, npt.NDArray[Any]],
    layers: Mapping[str, Mapping[str, Any]],
    settings: FitSettings,
) -> Design:
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
    # The lists of elements and of calibrated elements do not shape one element's fit, only
    # whether it is calibrated does; everything else may. ``settings`` are resolved (no None
    # or "auto" left), so a kept model is reused exactly when the resolved inputs are equal.
    shaping = settings.model_dump(mode="json", exclude={"elements", "calibrate"})
    shaping["calibrated"] = training.record["calibration"] is not None
    inputs = json_sha256({"table": training_hash(table), "settings": shaping})
    return Design(spec, X, y, table, site_index, inputs)


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


def json_sha256(doc: Any) -> str:
    """SHA-256 of a JSON document with sorted keys (the same document, the same hash)."""
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()
