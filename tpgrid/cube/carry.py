"""Carrying a previous cube over, and repairing what is damaged in it.

An update starts from the cube already at the path: it is used only if it is complete and
built for the same grid, and nothing in it is carried over on trust. Every chunk file is
checked against its record before it is hard-linked into the new cube; a damaged one is
returned to be recomputed from its source, and a cube without records is rebuilt. What is
found is logged as a warning and reported.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from tpgrid.cube.read import ATTR_GRID, ChunkKey
from tpgrid.errors import OutputExistsError
from tpgrid.grid import TargetGrid
from tpgrid.integrity import Damage, check_file
from tpgrid.store import (
    ATTR_COMPLETE,
    ChunkFiles,
    chunk_locator,
    link_file,
    read_attrs,
    records_from_json,
)

log = logging.getLogger(__name__)


def previous_cube(path: Path, grid: TargetGrid, overwrite: bool) -> dict[str, Any]:
    """Attributes of the cube to update, or {} when building from scratch."""
    if not path.exists():
        return {}
    attrs = read_attrs(path)
    same_grid = attrs is not None and attrs.get(ATTR_GRID) == grid.spec.model_dump(mode="json")
    if attrs is not None and attrs.get(ATTR_COMPLETE) and same_grid:
        return attrs
    if overwrite:
        return {}
    what = (
        "a cube built for another grid"
        if attrs is not None
        else "something that is not a complete tpgrid cube"
    )
    raise OutputExistsError(
        f"{path} holds {what}; choose another output path or pass --overwrite to replace it"
    )


def carry_over(
    previous: Path,
    staging: Path,
    name: str,
    hashes: dict[ChunkKey, str],
    records: ChunkFiles,
) -> dict[ChunkKey, Damage]:
    """Carry a variable's chunk files over by hard link (no copy, old cube untouched), each
    checked against its record first; the damaged ones are returned, not linked."""
    locate = chunk_locator(staging, name)
    damaged = {}
    for key in hashes:
        source = previous / name / locate(key)
        if key not in records:
            damaged[key] = Damage(source, "no record of this chunk file")
            continue
        damage = check_file(source, records[key])
        if damage is not None:
            damaged[key] = damage
        elif records[key] is not None:  # else a fill-value chunk: no file to link
            link_file(source, staging / name / locate(key))
    return damaged


def previous_records(
    path: Path, previous: dict[str, Any], repaired: list[Damage]
) -> dict[str, ChunkFiles]:
    """The chunk file records of the cube to update; {} (nothing can be carried over) when it
    has none, which is said once."""
    if not previous:
        return {}
    records = records_from_json(previous)
    if records is None:
        repaired.append(
            said(
                Damage(
                    path,
                    "no chunk file records (built by an older tpgrid), so nothing in it can be "
                    "verified: every chunk recomputed",
                )
            )
        )
        return {}
    return records


def recomputed(damage: Damage) -> Damage:
    """The damage, as reported once its chunk is recomputed."""
    return Damage(damage.path, f"{damage.problem}; recomputed from its source")


def said(damage: Damage) -> Damage:
    """The damage, logged as a warning."""
    log.warning("%s", damage)
    return damage
