"""Values as strict JSON: the one normaliser for every record, summary and item tpgrid writes."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np


def plain(value: Any) -> Any:
    """Plain JSON types all the way down: numpy scalars as Python ones, tuples as lists, keys as
    strings, and NaN and ±inf as null (JSON has no NaN; Python's json module would write a
    token other readers reject)."""
    if isinstance(value, Mapping):
        return {str(key): plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [plain(item) for item in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
