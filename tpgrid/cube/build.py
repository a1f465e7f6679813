"""Building or updating the cube: :func:`build_cube` and the report of what it did.

This is the orchestration: plan the variables, carry over what is unchanged, write what is
new, changed or damaged, derive ``valid``, and swap the complete cube in beside the old one
only at the end, so a failed build leaves any previous cube untouched. The work itself is done
by :mod:`~tpgrid.cube.variables`, :mod:`~tpgrid.cube.carry` and :mod:`~tpgrid.cube.write`.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr

from tpgrid.cube.carry import carry_over, previous_cube, previous_records, recomputed, said
from tpgrid.cube.plan import expected_fingerprints, verify_cube
from tpgrid.cube.read import ATTR_FINGERPRINTS, ATTR_HASHES, VALID, ChunkKey
from tpgrid.cube.variables import Variable, plan_variables
from tpgrid.cube.write import (
    Pending,
    create_cube_layout,
    finish_cube,
    staged_present,
    valid_variable,
    write_variables,
)
from tpgrid.errors import GridError
from tpgrid.grid import PLATEAU_MASK, TargetGrid
from tpgrid.integrity import Damage
from tpgrid.sources import Catalog
from tpgrid.store import ChunkFiles, remove_leftovers, staging_path, swap_in
from tpgrid.tasks import Progress

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LayerUpdate:
    """What a build did to one variable."""

    name: str
    action: str  # "new", "unchanged" (carried over unread), "updated" or "repaired"
    chunks_written: int
    chunks_total: int
    chunks_repaired: int = 0  # of those written: damaged in the previous cube, recomputed


@dataclass(frozen=True)
class CubeReport:
    """What :func:`build_cube` did; ``repaired``: what it found damaged (chunk files, leftovers
    of killed builds, a previous cube it could not verify) and recomputed or removed."""

    path: Path
    layers: tuple[LayerUpdate, ...]
    shape: tuple[int, int]
    repaired: tuple[Damage, ...] = ()

    @property
    def chunks_written(self) -> int:
        return sum(update.chunks_written for update in self.layers)


def build_cube(
    catalog: Catalog,
    grid: TargetGrid,
    path: str | Path,
    *,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> CubeReport:
    """Build the cube at ``path``, or update the cube already there.

    An existing cube built for the same grid is updated incrementally; one built for another
    grid (or a directory that is not a tpgrid cube) is only replaced when ``overwrite``.
    ``progress(layer, done, total)`` is called as chunks finish. A mask that misses the grid,
    and a cube with no valid pixel, are a :class:`GridError` (the first before anything is read).
    """
    path = Path(path)
    grid.check_mask()
    previous = previous_cube(path, grid, overwrite)
    repaired = [
        said(Damage(p, "left by an interrupted build; removed")) for p in remove_leftovers(path)
    ]
    old_hashes: dict[str, dict[ChunkKey, str]] = previous.get(ATTR_HASHES, {})
    old_prints: dict[str, str] = previous.get(ATTR_FINGERPRINTS, {})
    # A mask given as a file may change under the same name: only the full build sees that.
    fixed_mask = grid.spec.mask in (None, PLATEAU_MASK)
    prints = expected_fingerprints(catalog)
    unchanged = fixed_mask and old_prints and old_prints == prints
    if unchanged and not verify_cube(path):
        # Nothing to do, and every chunk file checked: no staging copy, no reading of sources.
        log.info("%s: every source unchanged and every chunk file intact", path)
        layers = [LayerUpdate(name, "unchanged", 0, len(old_hashes[name])) for name in old_hashes]
        return CubeReport(path, tuple(layers), grid.shape, tuple(repaired))
    old_files = previous_records(path, previous, repaired)

    variables = plan_variables(catalog, grid, prints)
    staging = staging_path(path)
    try:
        create_cube_layout(staging, grid, variables)
        hashes: dict[str, dict[ChunkKey, str]] = {}
        files: dict[str, ChunkFiles] = {}
        damaged: dict[str, dict[ChunkKey, Damage]] = {}
        pending: list[Pending] = []
        for var in variables:
            carried = (
                var.fingerprint == old_prints.get(var.name)
                and var.name in old_hashes
                and var.name in old_files
            )
            if not carried:
                pending.append(
                    Pending(var, old_hashes.get(var.name, {}), old_files.get(var.name, {}))
                )
                continue
            hashes[var.name] = dict(old_hashes[var.name])
            files[var.name] = dict(old_files[var.name])
            damaged[var.name] = carry_over(
                path, staging, var.name, old_hashes[var.name], old_files[var.name]
            )
            if damaged[var.name]:
                # Only the damaged chunks are recomputed from the (unchanged) source.
                pending.append(Pending(var, {}, {}, only=set(damaged[var.name])))
            else:
                log.info("%s: unchanged source, carried over", var.name)
        written = write_variables(staging, path, pending, progress)

        updates: list[LayerUpdate] = []
        for var in variables:
            if var.name not in written:
                updates.append(LayerUpdate(var.name, "unchanged", 0, len(hashes[var.name])))
            elif var.name in damaged:
                hashes[var.name].update(written[var.name].hashes)
                files[var.name].update(written[var.name].files)
                repaired += [said(recomputed(damage)) for damage in damaged[var.name].values()]
                updates.append(
                    LayerUpdate(
                        var.name,
                        "repaired",
                        written[var.name].written,
                        len(hashes[var.name]),
                        len(damaged[var.name]),
                    )
                )
            else:
                done = written[var.name]
                hashes[var.name], files[var.name] = done.hashes, done.files
                repaired += [said(recomputed(d)) for d in done.damaged]
                updates.append(
                    _update(var.name, old_hashes, done.hashes, done.written, len(done.damaged))
                )

        valid = valid_variable(staging, grid, variables, hashes)
        # valid's chunk depends only on the layers' chunks there and the mask: where none of
        # them changed, it is carried over (checked), not recomputed from every layer.
        same_layers = set(old_hashes) - {VALID} == {var.name for var in variables}
        kept: dict[ChunkKey, str] = {}
        if fixed_mask and same_layers and VALID in old_hashes and VALID in old_files:
            changed = {
                key
                for var in variables
                for key, digest in hashes[var.name].items()
                if old_hashes[var.name].get(key) != digest
            }
            kept = {k: h for k, h in old_hashes[VALID].items() if k not in changed}
            # A damaged one is recomputed below, and reported there.
            valid_damage = carry_over(path, staging, VALID, kept, old_files[VALID])
            kept = {k: h for k, h in kept.items() if k not in valid_damage}
        recompute = Pending(
            valid,
            old_hashes.get(VALID, {}),
            old_files.get(VALID, {}),
            only={window.key for window in grid.windows()} - set(kept) if kept else None,
        )
        done = write_variables(staging, path, [recompute], progress)[VALID]
        hashes[VALID] = dict(sorted((kept | done.hashes).items()))
        files[VALID] = dict(sorted(({k: old_files[VALID][k] for k in kept} | done.files).items()))
        repaired += [said(recomputed(d)) for d in done.damaged]
        updates.append(_update(VALID, old_hashes, hashes[VALID], done.written, len(done.damaged)))
        _check_some_valid(staging, grid, variables)
        finish_cube(staging, grid, variables, hashes, files)
        swap_in(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return CubeReport(path=path, layers=tuple(updates), shape=grid.shape, repaired=tuple(repaired))


def _check_some_valid(staging: Path, grid: TargetGrid, variables: list[Variable]) -> None:
    """Raise :class:`GridError` when no pixel of the staged cube is valid, naming why: the mask
    covers no pixel centre, or the layers that have no data inside it.

    Reads ``valid`` chunk by chunk and stops at the first valid pixel, which on a usable cube
    is within the first chunks; only a cube that fails reads all of it, and then the layers."""
    valid = zarr.open_array(staging / VALID, mode="r", zarr_format=3)
    if any(np.asarray(valid[w.rows, w.cols]).any() for w in grid.windows()):
        return
    inside = grid.mask()
    if not bool(inside.any().compute()):
        raise GridError(
            f"mask {grid.spec.mask!r} holds no pixel centre of the grid ({grid.describe()}): "
            "set 'mask' in the grid YAML to a polygon that covers the grid's pixels (or leave "
            "it out to keep every pixel), or lower 'resolution'"
        )
    empty = []
    for var in variables:
        if not bool((staged_present(staging, grid, var.name) & inside).any().compute()):
            empty.append(var.name)
    where = "the grid" if grid.spec.mask is None else f"mask {grid.spec.mask!r}"
    raise GridError(
        f"no pixel of the grid ({grid.describe()}) inside {where} has all covariates"
        + (f": {empty} have no data there" if empty else " at once")
        + ": point the catalog at rasters that cover the area, or set 'bbox'/'extent'/'like' "
        "and 'mask' in the grid YAML to the area the covariates cover"
    )


def _update(
    name: str,
    old_hashes: dict[str, dict[ChunkKey, str]],
    hashes: dict[ChunkKey, str],
    written: int,
    repaired: int,
) -> LayerUpdate:
    if name not in old_hashes:
        action = "new"
    else:
        action = "updated" if written > repaired else "repaired" if repaired else "unchanged"
    log.info("%s: %s, %d of %d chunks written", name, action, written, len(hashes))
    return LayerUpdate(name, action, written, len(hashes), repaired)
