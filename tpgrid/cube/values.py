"""The per-chunk checks of a layer's values against its catalog entry.

A layer's class codes and valid range are only known to be right once its pixels are read, so
each chunk is checked as it is computed, before it is hashed or written; a bad value raises a
:class:`~tpgrid.errors.LayerValueError` that says which layer, what was found and what to fix.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from tpgrid.errors import LayerValueError
from tpgrid.sources import CATEGORICAL_NODATA, Layer


def value_check(name: str, location: str, layer: Layer) -> Callable[[npt.NDArray[Any]], None]:
    """A per-chunk check of values against the catalog entry, raising LayerValueError."""
    if layer.kind == "categorical":
        assert layer.classes is not None
        allowed = np.array(sorted({*layer.classes, CATEGORICAL_NODATA}), dtype="uint8")

        def check_classes(block: npt.NDArray[Any]) -> None:
            if block.dtype.kind == "f":
                fractional = block[~np.isfinite(block) | (block != np.round(block))]
                if fractional.size:
                    found = ", ".join(f"{v:g}" for v in np.unique(fractional)[:5])
                    raise LayerValueError(
                        f"layer {name!r} is categorical but {location} holds values that "
                        f"are not whole class codes (e.g. {found}): write the codes as "
                        "integers (e.g. gdal_translate -ot Byte), set 'nodata' if they mean no "
                        "data, or make the layer 'continuous' in the catalog"
                    )
            unknown = np.setdiff1d(np.unique(block), allowed)
            if unknown.size:
                raise LayerValueError(
                    f"layer {name!r} has class codes {unknown.tolist()} that are not in its "
                    f"class table {sorted(layer.classes or {})}: add them under 'classes' in the "
                    "catalog, or set 'nodata' if they mean no data"
                )

        return check_classes
    if layer.valid_range is None:
        return lambda block: None
    low, high = layer.valid_range

    def check_range(block: npt.NDArray[Any]) -> None:
        outside = (block < low) | (block > high)
        if outside.any():
            found = block[outside]
            raise LayerValueError(
                f"layer {name!r} has {outside.sum()} pixel(s) outside its valid_range "
                f"[{low}, {high}] (found {found.min():g}..{found.max():g}): fix the source, its "
                "'nodata' value, or the layer's valid_range in the catalog"
            )

    return check_range


def checked_cast(
    block: npt.NDArray[Any], check: Callable[[npt.NDArray[Any]], None], dtype: np.dtype[Any]
) -> npt.NDArray[Any]:
    """A block checked, then cast to ``dtype`` (for class codes stored as floats)."""
    check(block)
    return block.astype(dtype)
