"""Publishing the maps of a run: COGs, quicklooks and the STAC item in one directory.

The directory is assembled beside its final path and swapped in when complete; the COGs are
written one Dask task each, then the quicklooks. With an earlier publication of the same
product, every file made from what it would be made from now (equal :func:`file_digests`: a
COG from its layer, a quicklook from the layers it draws) is hard-linked from it once
checked against its STAC item, so only the layers that changed are rendered again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import rasterio

from tpgrid.errors import OutputExistsError
from tpgrid.grid import TargetGrid
from tpgrid.integrity import Damage, FileRecord, check_readable, file_record
from tpgrid.outputs.cog import write_cog
from tpgrid.outputs.layers import open_prediction, run_layers, variable_name
from tpgrid.outputs.names import STAC_ITEM, cog_name, element_files, quicklook_name
from tpgrid.outputs.quicklook import quicklook_layers, write_quicklook
from tpgrid.outputs.stac import (
    ITEM_DIGESTS,
    MapFiles,
    asset_records,
    published_run,
    read_item,
    write_item,
)
from tpgrid.store import link_file, staging_path, swap_in
from tpgrid.tasks import Progress, task_runner

log = logging.getLogger(__name__)

#: Part of every file digest: a change in how files are made invalidates earlier ones.
FORMAT_VERSION = "tpgrid-publication/5"


@dataclass(frozen=True)
class PublishReport:
    """Where :func:`publish` put the run's files; ``up_to_date`` when they were already there."""

    directory: Path
    cogs: tuple[Path, ...]
    quicklooks: tuple[Path, ...]
    stac_item: Path
    up_to_date: bool
    reused: tuple[str, ...] = ()  # elements all of whose files were linked from a previous one
    damaged: tuple[Damage, ...] = ()  # files of the previous publication rendered afresh


def publish(
    prediction: str | Path,
    directory: str | Path,
    *,
    overwrite: bool = False,
    previous: str | Path | None = None,
) -> PublishReport:
    """Write COGs, quicklook PNGs and a STAC item of the run at ``prediction`` into ``directory``.

    A directory already holding this run is left as it is; one holding anything else is only
    replaced when ``overwrite``. COGs are written by the current Dask client, if any. With
    ``previous`` (an earlier publication of the same product), the files of every element whose
    maps are byte-identical to those published there are hard-linked from it, not written again,
    once each has been checked against the size and checksum its STAC item records.
    """
    prediction, directory = Path(prediction), Path(directory)
    _, run = open_prediction(prediction)
    elements = list(run["models"])
    if published_run(directory) == run["run_id"]:
        log.info("%s already holds run %s: nothing to publish", directory, run["run_id"][:12])
        return _report(directory, elements, run_layers(run), up_to_date=True)
    if directory.exists() and not overwrite:
        raise OutputExistsError(
            f"{directory} exists and does not hold run {run['run_id'][:12]}: choose another "
            "directory or pass --overwrite to replace it"
        )
    staging = staging_path(directory)
    staging.mkdir(parents=True)
    try:
        maps = write_maps(prediction, staging, previous=previous)
        write_item(maps)
        swap_in(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return _report(
        directory,
        elements,
        run_layers(run),
        up_to_date=False,
        reused=maps.reused,
        damaged=maps.damaged,
    )


def write_maps(
    prediction: str | Path,
    directory: str | Path,
    *,
    previous: str | Path | None = None,
    progress: Progress | None = None,
) -> MapFiles:
    """Write the COGs and quicklooks of the run at ``prediction`` into the existing, empty
    ``directory`` (no STAC item: :func:`write_item` writes it, last).

    With ``previous``, a file whose :func:`file_digests` entry is unchanged is hard-linked from
    there if it matches the size and checksum recorded in its STAC item; a file that does not
    is rendered afresh and listed in ``damaged``. Only the rest is rendered, as tasks on the
    current Dask client's workers: COGs, then the quicklooks drawn from them.
    ``progress("maps" | "quicklooks", done, total)`` is called as files are written.
    """
    prediction, directory = Path(prediction), Path(directory)
    ds, run = open_prediction(prediction)
    elements = tuple(run["models"])
    grid = TargetGrid.from_record(run["grid"], f"prediction {prediction}")
    digests = {
        name: digest
        for element in elements
        for name, digest in file_digests(prediction, run, element).items()
    }
    linked: dict[str, FileRecord] = {}
    damaged: list[Damage] = []
    if previous is not None:
        linked, damaged = _link_unchanged(Path(previous), directory, digests)
    layers = run_layers(run)
    cogs = [(e, layer) for e in elements for layer in layers if cog_name(e, layer) not in linked]
    drawn = [e for e in elements if quicklook_name(e) not in linked]
    rendered: dict[str, FileRecord] = {}
    if cogs or drawn:  # else no runner: a publication that renders nothing needs no cluster
        rendered = _render(prediction, run, directory, grid, cogs, drawn, progress)
    with rasterio.open(directory / cog_name(elements[0], layers[0])) as cog:
        cog_shape = (cog.height, cog.width)
    reused = tuple(e for e in elements if all(n in linked for n in element_files(e, layers)))
    if linked:
        log.info(
            "%s: %d of %d files linked from %s", directory, len(linked), len(digests), previous
        )
    return MapFiles(
        directory,
        ds.attrs,
        run,
        grid,
        elements,
        digests,
        cog_shape,
        linked,
        rendered,
        reused,
        tuple(damaged),
    )


def _render(
    prediction: Path,
    run: Mapping[str, Any],
    directory: Path,
    grid: TargetGrid,
    cogs: Sequence[tuple[str, str]],
    quicklooks: Sequence[str],
    progress: Progress | None,
) -> dict[str, FileRecord]:
    """Write ``cogs`` ((element, layer) pairs), then the ``quicklooks`` of those elements, as
    tasks on the current Dask client (on one thread without: matplotlib is not thread-safe);
    the record of each file written."""
    layers = run_layers(run)
    levels = {
        element: float(model["interval"]["level"])
        for element, model in run["models"].items()
        if model.get("interval") is not None
    }
    with task_runner(local_threads=1) as runner:
        written = [
            runner.submit(
                _recorded,
                write_cog,
                prediction / variable_name(e, layer),
                directory / cog_name(e, layer),
                grid,
            )
            for e, layer in cogs
        ]
        records = runner.gather(written, _stage(progress, "maps"))
        # After every COG: a quicklook is drawn from its element's COGs.
        drawn = [
            runner.submit(_recorded, write_quicklook, directory, e, layers, levels.get(e))
            for e in quicklooks
        ]
        records += runner.gather(drawn, _stage(progress, "quicklooks"))
    return dict(records)


def _recorded(write: Callable[..., Path], *args: Any) -> tuple[str, FileRecord]:
    """Run ``write(*args)`` and hash the file it wrote, in the task that wrote it (the STAC item
    records every file's SHA-256: hashed where it was written, in parallel, and once)."""
    path = write(*args)
    return path.name, file_record(path)


def _link_unchanged(
    previous: Path, directory: Path, digests: Mapping[str, str]
) -> tuple[dict[str, FileRecord], list[Damage]]:
    """Hard-link into ``directory`` every file of the publication at ``previous`` made from
    what its file would be made from now (equal ``digests``), each only if it matches its
    record there; the linked files' records, and the files that did not match."""
    try:
        item = read_item(previous)
        published: dict[str, str] = dict(item["properties"].get(ITEM_DIGESTS, {}))
        records = asset_records(item)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        log.warning("%s: no readable STAC item (%s): every file is rendered afresh", previous, exc)
        return {}, [Damage(previous / STAC_ITEM, f"missing or unreadable: {exc}")]
    candidates = {
        name: record
        for name, digest in digests.items()
        # No record: nothing to check it against (published without checksums).
        if published.get(name) == digest and (record := records.get(name)) is not None
    }
    # ~300 MB to hash for the full plateau's maps: hashlib releases the GIL, so threads share
    # it out.
    with ThreadPoolExecutor(_CHECK_THREADS) as pool:
        found = dict(
            zip(
                candidates,
                pool.map(lambda n: check_readable(previous / n, candidates[n]), candidates),
                strict=True,
            )
        )
    linked: dict[str, FileRecord] = {}
    damaged: list[Damage] = []
    for name, record in candidates.items():
        damage = found[name]
        if damage is not None:
            log.warning("%s: rendered afresh", damage)
            damaged.append(damage)
            continue
        link_file(previous / name, directory / name)
        linked[name] = record
    return linked, damaged


#: Threads hashing the previous publication's files.
_CHECK_THREADS = 4


def _stage(progress: Progress | None, stage: str) -> Callable[[int, int], None] | None:
    if progress is None:
        return None
    return lambda done, total: progress(stage, done, total)


def file_digests(prediction: Path, run: Mapping[str, Any], element: str) -> dict[str, str]:
    """SHA-256 of what each published file of ``element`` is made from, by file name: a COG
    from its layer's stored metadata and chunk files and the run's grid, the quicklook from
    the layers it draws. Equal digests mean byte-identical files, so a file whose digest is
    unchanged is linked from the previous publication, and only the rest rendered."""
    grid = json.dumps(run["grid"], sort_keys=True).encode()
    names = run_layers(run)
    layers = {}
    for layer in names:
        digest = hashlib.sha256(FORMAT_VERSION.encode() + b"\0" + grid)
        array = prediction / variable_name(element, layer)
        for path in sorted(p for p in array.rglob("*") if p.is_file()):
            digest.update(b"\0" + str(path.relative_to(prediction)).encode() + b"\0")
            digest.update(path.read_bytes())
        layers[layer] = digest.hexdigest()
    digests = {cog_name(element, layer): layers[layer] for layer in names}
    drawn_from = [FORMAT_VERSION, quicklook_name(element)]
    drawn_from += [layers[layer] for layer in quicklook_layers(names)]
    digests[quicklook_name(element)] = hashlib.sha256("\0".join(drawn_from).encode()).hexdigest()
    return digests


def _report(
    directory: Path,
    elements: Sequence[str],
    layers: Sequence[str],
    up_to_date: bool,
    reused: Sequence[str] = (),
    damaged: Sequence[Damage] = (),
) -> PublishReport:
    return PublishReport(
        directory=directory,
        reused=tuple(sorted(reused)),
        damaged=tuple(damaged),
        cogs=tuple(directory / cog_name(e, layer) for e in elements for layer in layers),
        quicklooks=tuple(directory / quicklook_name(e) for e in elements),
        stac_item=directory / STAC_ITEM,
        up_to_date=up_to_date,
    )
