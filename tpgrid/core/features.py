"""The feature matrix of a model: which cube variables feed a forest, and in which columns.

Training (covariates extracted at sites) and prediction (cube chunks) both build ``X`` through
:meth:`FeatureSpec.matrix`, so a column never means one thing at fit time and another at
predict time.

- A continuous variable is one float32 column, NaN where missing.
- A categorical variable becomes one 0/1 indicator column per class *seen in training*, in the
  order of its fixed code table. One-hot rather than the raw code: the classes are nominal (a
  tree split on "code ≤ 3" would impose an order lithology does not have), and the linear
  analyses of the report (betasq) need indicators too. A pixel whose class was never seen in
  training gets all-zero indicators and is flagged ``unseen``; a pixel with the categorical
  nodata code gets a NaN row, like any missing covariate.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from tpgrid.errors import ConfigError

#: Categorical nodata code in the cube (see ``tpgrid.sources.CATEGORICAL_NODATA``).
CATEGORICAL_NODATA = 255


@dataclass(frozen=True)
class CategoricalFeature:
    """One categorical cube variable and the classes (code → name) seen in training."""

    variable: str
    codes: tuple[int, ...]
    names: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.codes) != len(self.names) or len(set(self.codes)) != len(self.codes):
            raise ConfigError(
                f"categorical feature {self.variable!r}: codes {self.codes} and names "
                f"{self.names} must be the same length with no repeated code"
            )
        if any(not 0 <= code < CATEGORICAL_NODATA for code in self.codes):
            raise ConfigError(
                f"categorical feature {self.variable!r}: codes must be 0..254, got {self.codes}"
            )

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(f"{self.variable}={name}" for name in self.names)


@dataclass(frozen=True)
class FeatureSpec:
    """The model's input columns: continuous variables first, then each categorical's
    indicators. ``columns`` is the order of ``X``; ``variables`` the cube variables read."""

    continuous: tuple[str, ...]
    categorical: tuple[CategoricalFeature, ...] = ()

    def __post_init__(self) -> None:
        names = [*self.continuous, *(c.variable for c in self.categorical)]
        if len(set(names)) != len(names):
            raise ConfigError(f"a feature variable is listed twice: {names}")
        if not names:
            raise ConfigError("a model needs at least one feature variable")

    @property
    def variables(self) -> tuple[str, ...]:
        """Cube variables the matrix is built from."""
        return (*self.continuous, *(c.variable for c in self.categorical))

    @property
    def columns(self) -> tuple[str, ...]:
        """Column names of ``X``, in order (``variable=class`` for indicators)."""
        return (*self.continuous, *(col for c in self.categorical for col in c.columns))

    @property
    def column_variables(self) -> tuple[str, ...]:
        """For each column of ``X``, the cube variable it comes from."""
        return (
            *self.continuous,
            *(c.variable for c in self.categorical for _ in c.codes),
        )

    @property
    def n_columns(self) -> int:
        return len(self.columns)

    def matrix(
        self, values: Mapping[str, npt.ArrayLike]
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]]:
        """``X`` (n, n_columns) float32 and ``unseen`` (n,) bool from per-variable arrays.

        Each array in ``values`` holds the same n pixels (any shape; it is flattened in C
        order). Continuous arrays are read as float (NaN = missing); categorical ones as class
        codes (``CATEGORICAL_NODATA`` or NaN = missing).
        """
        missing = [name for name in self.variables if name not in values]
        if missing:
            raise ConfigError(
                f"the model needs variables {missing}, which the input does not have: "
                "build the cube from a catalog that has them"
            )
        flat = {name: np.asarray(values[name]).ravel() for name in self.variables}
        n = flat[self.variables[0]].shape[0]
        X = np.empty((n, self.n_columns), dtype=np.float32)
        for j, name in enumerate(self.continuous):
            X[:, j] = flat[name]
        unseen = np.zeros(n, dtype=bool)
        j = len(self.continuous)
        for feature in self.categorical:
            raw = flat[feature.variable]
            absent = ~np.isfinite(raw) if raw.dtype.kind == "f" else np.zeros(n, dtype=bool)
            codes = np.where(absent, CATEGORICAL_NODATA, raw).astype(np.int64)
            absent |= codes == CATEGORICAL_NODATA
            known = np.zeros(n, dtype=bool)
            for code in feature.codes:
                is_code = codes == code
                X[:, j] = is_code
                known |= is_code
                j += 1
            X[absent, :] = np.nan
            unseen |= ~known & ~absent
        return X, unseen

    def to_json(self) -> dict[str, Any]:
        return {
            "continuous": list(self.continuous),
            "categorical": [
                {"variable": c.variable, "codes": list(c.codes), "names": list(c.names)}
                for c in self.categorical
            ],
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> FeatureSpec:
        try:
            return cls(
                continuous=tuple(str(name) for name in doc["continuous"]),
                categorical=tuple(
                    CategoricalFeature(
                        str(c["variable"]),
                        tuple(int(code) for code in c["codes"]),
                        tuple(str(name) for name in c["names"]),
                    )
                    for c in doc["categorical"]
                ),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"feature list is malformed ({exc!r}): rebuild the model") from exc
