"""Build and update the covariate cube: one Zarr v3 group, every layer on the target grid.

Each catalog layer is reprojected lazily onto the grid (odc-geo ``xr_reproject``), checked
against its catalog entry chunk by chunk, hashed, and written chunk by chunk, so memory is
bounded by the chunk size, not the map. Slope, northness and eastness are derived from the
projected DEM. A ``valid`` variable marks pixels inside the area of interest where every
layer has data.

Updates are incremental and safe:

* a layer whose source fingerprint (catalog entry + file content) is unchanged is carried over
  without being read; a changed layer is recomputed, and only chunks whose content hash
  changed are written (the others are hard-linked from the previous cube);
* the new cube is assembled beside the old one and swapped in only when complete, so a failed
  build leaves any previous cube untouched;
* nothing is carried over on trust: every chunk file's size and SHA-256 are recorded when it
  is written (``tpgrid:chunk_files``) and checked before it is linked into the next cube. A
  damaged chunk (missing, changed, or a file where none was written) is recomputed from its
  source, the rest stays carried over; a cube without records is rebuilt.

Per-chunk content hashes live in the group attributes (``tpgrid:chunk_hashes``); they are what
later stages key incremental work on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import numpy.typing as npt
import xarray as xr
import zarr
from dask.base import compute
from dask.delayed import delayed
from odc.geo.xr import xr_reproject

from tpgrid import __version__
from tpgrid.errors import CubeError, LayerValueError, OutputExistsError
from tpgrid.grid import ChunkWindow, GridSpec, TargetGrid, chunk_key
from tpgrid.integrity import Damage, FileRecord, check_file
from tpgrid.sources import (
    CATEGORICAL_NODATA,
    Catalog,
    Layer,
    check_overlap,
    choose_resampling,
    cube_dtype,
    cube_fill_value,
    fingerprint,
    open_layer,
)
from tpgrid.store import (
    ATTR_CHUNK_FILES,
    ATTR_COMPLETE,
    ChunkFiles,
    VariableLayout,
    check_variable,
    chunk_locator,
    create_layout,
    finish,
    link_file,
    read_attrs,
    records_from_json,
    records_to_json,
    remove_leftovers,
    staging_path,
    stored_record,
    swap_in,
    verify_group,
)
from tpgrid.tasks import Progress, gather
from tpgrid.terrain import terrain_layers

log = logging.getLogger(__name__)

VALID = "valid"
ATTR_GRID = "tpgrid:grid"
ATTR_HASHES = "tpgrid:chunk_hashes"
ATTR_FINGERPRINTS = "tpgrid:fingerprints"
ATTR_FEATURES = "tpgrid:features"

ChunkKey = str  # "i.j", the block index of a chunk


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


@dataclass(frozen=True)
class _Variable:
    """One cube variable to (re)build: its lazy data on the grid and its attributes."""

    name: str
    data: da.Array
    attrs: dict[str, Any]
    fill_value: float
    fingerprint: str
    check: Callable[[npt.NDArray[Any]], None] = field(default=lambda block: None)


def chunk_hash(block: npt.NDArray[Any]) -> str:
    """Content hash of one decoded chunk: dtype, shape and bytes."""
    digest = hashlib.sha256(f"{block.dtype.str}{block.shape}".encode())
    digest.update(np.ascontiguousarray(block).tobytes())
    return digest.hexdigest()[:32]


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
    ``progress(layer, done, total)`` is called as chunks finish.
    """
    path = Path(path)
    previous = _previous_cube(path, grid, overwrite)
    repaired = [
        _said(Damage(p, "left by an interrupted build; removed")) for p in remove_leftovers(path)
    ]
    old_hashes: dict[str, dict[ChunkKey, str]] = previous.get(ATTR_HASHES, {})
    old_prints: dict[str, str] = previous.get(ATTR_FINGERPRINTS, {})
    old_files = _previous_records(path, previous, repaired)

    variables = _plan_variables(catalog, grid)
    staging = staging_path(path)
    try:
        _create_layout(staging, grid, variables)
        updates: list[LayerUpdate] = []
        hashes: dict[str, dict[ChunkKey, str]] = {}
        files: dict[str, ChunkFiles] = {}
        for var in variables:
            carried = (
                var.fingerprint == old_prints.get(var.name)
                and var.name in old_hashes
                and var.name in old_files
            )
            if carried:
                hashes[var.name] = dict(old_hashes[var.name])
                files[var.name] = dict(old_files[var.name])
                damaged = _carry_over(
                    path, staging, var.name, old_hashes[var.name], old_files[var.name]
                )
                if not damaged:
                    updates.append(LayerUpdate(var.name, "unchanged", 0, len(hashes[var.name])))
                    log.info("%s: unchanged source, carried over", var.name)
                    continue
                # Only the damaged chunks are recomputed from the (unchanged) source.
                new_hashes, new_files, written, _ = _write_variable(
                    staging, path, var, {}, {}, progress, only=set(damaged)
                )
                hashes[var.name].update(new_hashes)
                files[var.name].update(new_files)
                repaired += [_said(_recomputed(damage)) for damage in damaged.values()]
                updates.append(
                    LayerUpdate(var.name, "repaired", written, len(hashes[var.name]), len(damaged))
                )
                continue
            hashes[var.name], files[var.name], written, damage = _write_variable(
                staging,
                path,
                var,
                old_hashes.get(var.name, {}),
                old_files.get(var.name, {}),
                progress,
            )
            repaired += [_said(_recomputed(d)) for d in damage]
            updates.append(_update(var.name, old_hashes, hashes[var.name], written, len(damage)))

        valid = _valid_variable(staging, grid, variables, hashes)
        hashes[VALID], files[VALID], written, damage = _write_variable(
            staging, path, valid, old_hashes.get(VALID, {}), old_files.get(VALID, {}), progress
        )
        repaired += [_said(_recomputed(d)) for d in damage]
        updates.append(_update(VALID, old_hashes, hashes[VALID], written, len(damage)))
        _finish(staging, grid, variables, hashes, files)
        swap_in(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return CubeReport(path=path, layers=tuple(updates), shape=grid.shape, repaired=tuple(repaired))


def verify_cube(path: str | Path) -> list[Damage]:
    """Every chunk file of every variable of the cube at ``path`` checked against its record
    (missing, changed, or a file where none was written), and a cube not marked complete.
    Reads the records and the files only: nothing is decoded, no Dask."""
    return verify_group(Path(path), "cube")


def plan_cube(catalog: Catalog, grid: TargetGrid, path: str | Path) -> dict[str, str]:
    """What :func:`build_cube` would do to each catalog layer, without reading any raster:
    ``new`` (no cube, or a cube of another grid), ``changed`` (the source's fingerprint
    differs: its chunks are recomputed and rewritten where their content changed),
    ``damaged`` (unchanged source, but chunk files that do not match their records, or no
    records to check them against: those chunks are recomputed) or ``unchanged``. Derived
    terrain layers follow their DEM; they and ``valid`` are listed, as ``damaged``, only when
    their own chunk files are."""
    attrs = read_attrs(Path(path)) or {}
    same_grid = attrs.get(ATTR_COMPLETE) and attrs.get(ATTR_GRID) == grid.spec.model_dump(
        mode="json"
    )
    old_prints: dict[str, str] = attrs.get(ATTR_FINGERPRINTS, {}) if same_grid else {}
    records = (records_from_json(attrs) or {}) if same_grid else {}
    plan = {}
    for name in catalog.layers:
        if name not in old_prints:
            plan[name] = "new"
        elif fingerprint(catalog, name) != old_prints[name]:
            plan[name] = "changed"
        elif name not in records or check_variable(Path(path), name, records[name]):
            plan[name] = "damaged"
        else:
            plan[name] = "unchanged"
    # A run repairs them anyway when a layer changes; the check matters when nothing does.
    derived = [name for name in records if name not in catalog.layers]
    for name in derived if all(what == "unchanged" for what in plan.values()) else ():
        if check_variable(Path(path), name, records[name]):
            plan[name] = "damaged"
    return plan


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


def open_cube(path: str | Path) -> xr.Dataset:
    """Open a complete cube lazily; raise :class:`CubeError` if it is missing or incomplete."""
    path = Path(path)
    attrs = read_attrs(path)
    if attrs is None or not attrs.get(ATTR_COMPLETE):
        raise CubeError(f"{path} is not a complete tpgrid cube: build it with `tpgrid cube`")
    # decode_coords="all" keeps the CF grid mapping (spatial_ref) a coordinate, not a variable.
    cube: xr.Dataset = xr.open_zarr(path, consolidated=True, zarr_format=3, decode_coords="all")
    return cube


def cube_grid(path: str | Path) -> TargetGrid:
    """The grid a cube was built on."""
    attrs = read_attrs(Path(path))
    if attrs is None:
        raise CubeError(f"{path} is not a tpgrid cube: build it with `tpgrid cube`")
    return TargetGrid.from_spec(GridSpec.model_validate(attrs[ATTR_GRID]))


def chunk_hashes(path: str | Path) -> dict[str, dict[ChunkKey, str]]:
    """Per variable, per chunk ``"i.j"``, the content hash recorded when it was written."""
    attrs = read_attrs(Path(path))
    if attrs is None:
        raise CubeError(f"{path} is not a tpgrid cube: build it with `tpgrid cube`")
    hashes: dict[str, dict[ChunkKey, str]] = attrs[ATTR_HASHES]
    return hashes


def read_window(cube: Path, name: str, window: ChunkWindow) -> npt.NDArray[Any]:
    """One grid chunk of cube variable ``name``, read straight from its Zarr array."""
    return np.asarray(
        zarr.open_array(cube / name, mode="r", zarr_format=3)[window.rows, window.cols]
    )


# --- planning ----------------------------------------------------------------------------


def open_sources(catalog: Catalog, grid: TargetGrid) -> dict[str, xr.DataArray]:
    """Open every catalog layer lazily and check that it covers the grid, reading no pixels:
    a missing file, a raster without CRS or one off the grid fails here, in seconds."""
    sources = {}
    for name in catalog.layers:
        sources[name] = open_layer(catalog, name)
        check_overlap(name, sources[name], grid)
    return sources


def _plan_variables(catalog: Catalog, grid: TargetGrid) -> list[_Variable]:
    """Open every layer lazily and describe every cube variable, failing before any write."""
    variables: list[_Variable] = []
    for name, source in open_sources(catalog, grid).items():
        layer = catalog.layers[name]
        resampling = choose_resampling(layer, source, grid)
        check = _value_check(name, catalog.location(name), layer)
        # Class codes stored as floats are reprojected as they are and cast once checked to be
        # whole numbers: a cast during the reprojection fails on 1.5 with a bare TypeError.
        cast_later = layer.kind == "categorical" and source.dtype.kind == "f"
        on_grid = xr_reproject(
            source,
            grid.geobox,
            resampling=resampling,
            dtype=source.dtype if cast_later else cube_dtype(layer),
            dst_nodata=cube_fill_value(layer),
        )
        data = on_grid.data.rechunk(grid.chunks)
        if cast_later:
            data = data.map_blocks(_checked_cast, check, cube_dtype(layer), dtype=cube_dtype(layer))
        attrs = _layer_attrs(name, layer, resampling)
        variables.append(
            _Variable(
                name,
                data,
                attrs,
                cube_fill_value(layer),
                fingerprint(catalog, name),
                check,
            )
        )
    if catalog.terrain is not None:
        dem = next(var for var in variables if var.name == catalog.terrain.dem)
        widths, height = grid.pixel_size_m()
        for name, data in terrain_layers(dem.data, widths, height).items():
            variables.append(
                _Variable(
                    name, data, _terrain_attrs(name, dem.name), np.nan, "terrain:" + dem.fingerprint
                )
            )
    return variables


def _value_check(name: str, location: str, layer: Layer) -> Callable[[npt.NDArray[Any]], None]:
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


def _checked_cast(
    block: npt.NDArray[Any], check: Callable[[npt.NDArray[Any]], None], dtype: np.dtype[Any]
) -> npt.NDArray[Any]:
    check(block)
    return block.astype(dtype)


def _layer_attrs(name: str, layer: Layer, resampling: str) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        "long_name": layer.description or name,
        "units": layer.units,
        "tpgrid:kind": layer.kind,
        "tpgrid:group": layer.group,
        "tpgrid:resampling": resampling,
        "grid_mapping": "spatial_ref",
    }
    if layer.valid_range is not None:
        attrs["valid_range"] = list(layer.valid_range)
    if layer.classes is not None:
        codes = sorted(layer.classes)
        attrs["flag_values"] = codes
        attrs["flag_meanings"] = " ".join(layer.classes[c].replace(" ", "_") for c in codes)
        attrs["tpgrid:classes"] = {str(c): layer.classes[c] for c in codes}
    return attrs


def _terrain_attrs(name: str, dem: str) -> dict[str, Any]:
    described = {
        "slope": ("slope (Horn 1981) of the projected DEM", "degree"),
        "northness": ("cosine of aspect (downslope direction, clockwise from north)", "1"),
        "eastness": ("sine of aspect (downslope direction, clockwise from north)", "1"),
    }
    long_name, units = described[name]
    return {
        "long_name": long_name,
        "units": units,
        "tpgrid:kind": "continuous",
        "tpgrid:group": "topography",
        "tpgrid:derived_from": dem,
        "grid_mapping": "spatial_ref",
    }


# --- writing -----------------------------------------------------------------------------


def _create_layout(staging: Path, grid: TargetGrid, variables: Iterable[_Variable]) -> None:
    """Write coordinates, grid mapping and empty variable metadata (no data chunks)."""
    layouts = {
        var.name: VariableLayout(str(var.data.dtype), var.fill_value, var.attrs)
        for var in variables
    }
    layouts[VALID] = VariableLayout(
        "uint8",
        0,
        {
            "long_name": "pixel inside the area of interest with every covariate present",
            "flag_values": [0, 1],
            "flag_meanings": "invalid valid",
        },
    )
    create_layout(staging, grid, layouts)


def _write_variable(
    staging: Path,
    previous: Path,
    var: _Variable,
    old_hashes: dict[ChunkKey, str],
    old_files: ChunkFiles,
    progress: Progress | None,
    only: set[ChunkKey] | None = None,
) -> tuple[dict[ChunkKey, str], ChunkFiles, int, list[Damage]]:
    """Compute, check, hash and store every chunk of one variable (or those in ``only``).

    A chunk whose content hash is that of ``previous``, and whose file there matches its
    record, is hard-linked from it; every other chunk is written. Returns hashes, file records,
    the number of chunks written and the damaged files of ``previous`` written afresh.
    """
    blocks = var.data.to_delayed()
    indices = [(i, j) for i in range(blocks.shape[0]) for j in range(blocks.shape[1])]
    tasks = [
        delayed(_store_chunk)(
            blocks[i, j],
            staging,
            previous,
            var.name,
            (i, j),
            var.check,
            _old(chunk_key((i, j)), old_hashes, old_files),
        )
        for i, j in indices
        if only is None or chunk_key((i, j)) in only
    ]
    results = _compute_with_progress(tasks, var.name, progress)
    hashes = {key: digest for key, digest, _, _, _ in results}
    files = {key: record for key, _, _, record, _ in results}
    damaged = [damage for *_, damage in results if damage is not None]
    written = sum(written for _, _, written, _, _ in results)
    return dict(sorted(hashes.items())), dict(sorted(files.items())), written, damaged


def _old(
    key: ChunkKey, old_hashes: dict[ChunkKey, str], old_files: ChunkFiles
) -> tuple[str, FileRecord | None] | None:
    """A chunk's hash and file record in the previous cube; None when either is unknown (then
    it cannot be verified, so it is written, not linked)."""
    if key not in old_hashes or key not in old_files:
        return None
    return old_hashes[key], old_files[key]


def _store_chunk(
    block: npt.NDArray[Any],
    staging: Path,
    previous: Path,
    name: str,
    index: tuple[int, int],
    check: Callable[[npt.NDArray[Any]], None],
    old: tuple[str, FileRecord | None] | None,
) -> tuple[ChunkKey, str, bool, FileRecord | None, Damage | None]:
    """Store one chunk: (key, content hash, written?, file record, damage found in previous)."""
    check(block)
    digest = chunk_hash(block)
    array = zarr.open_array(staging / name, mode="r+", zarr_format=3)
    relative = array.metadata.encode_chunk_key(index)
    i, j = index
    damage = None
    if old is not None and digest == old[0]:
        source = previous / name / relative
        damage = check_file(source, old[1])
        if damage is None:
            if old[1] is not None:  # else a fill-value chunk: no file to link
                link_file(source, staging / name / relative)
            return chunk_key(index), digest, False, old[1], None
    rows, cols = array.chunks
    array[i * rows : i * rows + block.shape[0], j * cols : j * cols + block.shape[1]] = block
    return chunk_key(index), digest, True, stored_record(staging / name / relative), damage


def _compute_with_progress(tasks: list[Any], name: str, progress: Progress | None) -> list[Any]:
    """Compute delayed tasks on the current scheduler; report chunks done as they finish."""
    try:
        from distributed import get_client

        client = get_client()
    except (ImportError, ValueError):
        results = list(compute(*tasks))
        if progress:
            progress(name, len(tasks), len(tasks))
        return results
    report = (lambda done, total: progress(name, done, total)) if progress else None
    return gather(client.compute(tasks), report)


def _valid_variable(
    staging: Path,
    grid: TargetGrid,
    variables: list[_Variable],
    hashes: dict[str, dict[ChunkKey, str]],
) -> _Variable:
    """``valid`` = inside the area of interest and no layer missing, from the staged layers."""
    valid = grid.mask()
    for var in variables:
        stored = da.from_zarr(zarr.open_array(staging / var.name, mode="r", zarr_format=3))
        stored = stored.rechunk(grid.chunks)
        present = stored != CATEGORICAL_NODATA if stored.dtype == np.uint8 else ~da.isnan(stored)
        valid = valid & present
    inputs = json.dumps({name: hashes[name] for name in sorted(hashes)} | {"mask": grid.spec.mask})
    return _Variable(
        VALID, valid.astype("uint8"), {}, 0, hashlib.sha256(inputs.encode()).hexdigest()
    )


def _finish(
    staging: Path,
    grid: TargetGrid,
    variables: list[_Variable],
    hashes: dict[str, dict[ChunkKey, str]],
    files: dict[str, ChunkFiles],
) -> None:
    """Record hashes, file records, fingerprints and grid, mark complete, consolidate."""
    finish(
        staging,
        {
            ATTR_GRID: grid.spec.model_dump(mode="json"),
            ATTR_HASHES: hashes,
            ATTR_CHUNK_FILES: records_to_json(files),
            ATTR_FINGERPRINTS: {var.name: var.fingerprint for var in variables},
            ATTR_FEATURES: [var.name for var in variables],
            "tpgrid:version": __version__,
            "Conventions": "CF-1.10",
        },
    )


# --- carrying over and swapping ------------------------------------------------------------


def _previous_cube(path: Path, grid: TargetGrid, overwrite: bool) -> dict[str, Any]:
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


def _carry_over(
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


def _previous_records(
    path: Path, previous: dict[str, Any], repaired: list[Damage]
) -> dict[str, ChunkFiles]:
    """The chunk file records of the cube to update; {} (nothing can be carried over) when it
    has none, which is said once."""
    if not previous:
        return {}
    records = records_from_json(previous)
    if records is None:
        repaired.append(
            _said(
                Damage(
                    path,
                    "no chunk file records (built by an older tpgrid), so nothing in it can be "
                    "verified: every chunk recomputed",
                )
            )
        )
        return {}
    return records


def _recomputed(damage: Damage) -> Damage:
    return Damage(damage.path, f"{damage.problem}; recomputed from its source")


def _said(damage: Damage) -> Damage:
    log.warning("%s", damage)
    return damage
