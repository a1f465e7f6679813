"""The JSON normaliser: what json.dumps(allow_nan=False) accepts, and nothing lost."""

from __future__ import annotations

import json

import numpy as np

from tpgrid.jsonable import plain


def test_numpy_scalars_tuples_and_keys_become_plain_json() -> None:
    value = {1: (np.float32(0.5), np.int64(3)), "b": [np.bool_(True), "x"], "c": {2.0: None}}
    assert plain(value) == {"1": [0.5, 3], "b": [True, "x"], "c": {"2.0": None}}
    assert type(plain(np.int64(3))) is int


def test_nan_and_infinities_are_null() -> None:
    value = [float("nan"), np.float64("inf"), -np.inf, 1.5]
    assert plain(value) == [None, None, None, 1.5]
    json.dumps(plain({"x": value}), allow_nan=False)  # raises on any NaN left
