"""Published versions: immutable folders of maps, and a ``current`` link swapped atomically.

Layout of a publication directory::

    published/
      versions/<version>/     COGs, quicklook PNGs, report/, STAC item of one prediction run
      versions/.<version>.partial-<hex>/    a version being assembled (hidden)
      current -> versions/<version>

A version is assembled in full in a hidden staging folder: maps, then the report, then the STAC
item, which lists every file as an asset with its size and SHA-256 (STAC file extension). The
folder is then renamed to its final name and ``current`` replaced by a new symbolic link in one
``rename`` (atomic on POSIX), so a reader that resolves ``current`` once sees the old complete
version or the new one, never a mix. A version folder is complete iff it holds its item: only
those are versions. A staging folder left by a killed run is removed by the next publication.
Old versions stay until :func:`prune` is asked to remove them.

Publishing assumes one publisher per directory at a time (a pipeline run holds its lock).
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tpgrid.errors import OutputExistsError
from tpgrid.integrity import Damage
from tpgrid.outputs import (
    STAC_ITEM,
    asset_records,
    check_readable,
    open_prediction,
    published_run,
    read_item,
    write_item,
    write_maps,
)
from tpgrid.store import link_file

log = logging.getLogger(__name__)

CURRENT = "current"
VERSIONS = "versions"
#: The report's folder inside a version.
REPORT_DIR = "report"
REPORT_HTML = f"{REPORT_DIR}/report.html"
#: Marks a version's staging folder: ``.<version>.partial-<8 hex>``.
PARTIAL = ".partial-"

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class Publication:
    """What :func:`publish_version` did: the version now current, and whether it is new."""

    version: str
    directory: Path
    run_id: str
    new: bool
    reused: tuple[str, ...] = ()  # elements whose files were linked from the previous version
    damaged: tuple[Damage, ...] = ()  # files of the previous version found damaged: re-rendered
    removed: tuple[str, ...] = ()  # unfinished versions of killed runs, removed first


def current_version(root: str | Path) -> Path | None:
    """The folder ``current`` points to (resolved once: read everything from it), or None."""
    link = Path(root) / CURRENT
    if not link.is_symlink():
        return None
    return link.resolve()


def versions(root: str | Path) -> list[Path]:
    """Every complete published version, oldest first (names start with their UTC publication
    time); never a hidden staging folder, nor a folder without its STAC item."""
    folder = Path(root) / VERSIONS
    if not folder.is_dir():
        return []
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_dir() and not p.name.startswith(".") and (p / STAC_ITEM).is_file()
    )


def publish_version(
    prediction: str | Path,
    root: str | Path,
    *,
    report: Callable[[Path], object] | None = None,
    progress: Progress | None = None,
) -> Publication:
    """Publish the prediction run at ``prediction`` as a new version under ``root`` and make it
    current; if the current version already holds this run and every file of it matches its
    checksum, do nothing.

    ``report(folder)`` writes the report into ``folder`` (which does not exist yet) inside the
    new version, before its STAC item; the report's files become assets of the item. Files of
    unchanged elements are linked from the current version after a check against its item; a
    damaged one is rendered afresh. When the current version holds this run but a file of it
    is damaged, a new version is published (damaged files rendered again, the rest linked) and
    made current. ``root`` must be a publication directory (or not exist): anything else there
    is refused.
    """
    root = Path(root)
    _check_root(root)
    removed = _remove_unfinished(root)
    _, run = open_prediction(prediction)
    run_id = str(run["run_id"])
    current = current_version(root)
    repair: list[Damage] = []
    if current is not None and published_run(current) == run_id:
        repair = verify_version(current)
        if not repair:
            log.info("%s already publishes run %s", root, run_id[:12])
            return Publication(current.name, current, run_id, new=False, removed=removed)
        log.warning(
            "%s publishes run %s but %d file(s) are damaged, publishing it again: %s",
            current,
            run_id[:12],
            len(repair),
            "; ".join(map(str, repair)),
        )
    # Microseconds: two publications within one second (fast when files are reused) must
    # still get distinct names, in the order they were made.
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    name = f"{stamp}-{run_id[:12]}"
    directory = root / VERSIONS / name
    staging = root / VERSIONS / f".{name}{PARTIAL}{uuid.uuid4().hex[:8]}"
    staging.mkdir(parents=True)
    try:
        maps = write_maps(prediction, staging, previous=current, progress=progress)
        assets: dict[str, dict[str, Any]] = {}
        if report is not None:
            # Repairing a version of this run: its report still holds, if it is intact.
            keep = current is not None and bool(repair)
            keep = keep and not any(_in_report(damage.path, current) for damage in repair)
            if not (keep and _link_report(current, staging)):
                report(staging / REPORT_DIR)
            assets = _report_assets(staging)
        links = [_report_link()] if REPORT_HTML in assets else []
        # Written last: a version folder holding its item is complete.
        write_item(maps, assets, links)
        staging.rename(directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _point_current(root, directory)
    log.info("%s now publishes %s", root / CURRENT, directory.name)
    return Publication(
        directory.name,
        directory,
        run_id,
        new=True,
        reused=maps.reused,
        damaged=(*repair, *(d for d in maps.damaged if d not in repair)),
        removed=removed,
    )


def verify_version(directory: str | Path) -> list[Damage]:
    """Every asset of the version's STAC item checked against the size and checksum the item
    records; a missing or unreadable item, or an asset without a checksum, is damage too."""
    directory = Path(directory)
    try:
        records = asset_records(read_item(directory))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        return [Damage(directory / STAC_ITEM, f"missing or unreadable: {exc}")]
    damage = []
    for name, record in records.items():
        path = directory / name
        if not path.resolve().is_relative_to(directory.resolve()):
            damage.append(Damage(path, "outside the version's folder"))
        elif record is None:
            damage.append(Damage(path, "no file:size and file:checksum in the STAC item"))
        elif (found := check_readable(path, record)) is not None:
            damage.append(found)
    return damage


def prune(root: str | Path, keep: int) -> list[Path]:
    """Remove all but the newest ``keep`` versions (never the current one); returns removed."""
    if keep < 1:
        raise ValueError("keep at least one version")
    root = Path(root)
    current = current_version(root)
    removed = []
    for version in versions(root)[:-keep]:
        if version == current:
            continue
        shutil.rmtree(version)
        removed.append(version)
    return removed


def _remove_unfinished(root: Path) -> tuple[str, ...]:
    """Remove the staging folders of versions whose publication was killed; their names."""
    folder = root / VERSIONS
    if not folder.is_dir():
        return ()
    removed = []
    for path in sorted(folder.iterdir()):
        # Staging folders of this module, and of `tpgrid.outputs.publish` (older layouts).
        if path.name.startswith(".") and path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
            if not path.exists():
                removed.append(path.name)
    if removed:
        log.warning(
            "%s: removed %d unfinished version(s) left by killed runs: %s",
            folder,
            len(removed),
            ", ".join(removed),
        )
    return tuple(removed)


def _in_report(path: Path, version: Path | None) -> bool:
    return version is not None and path.is_relative_to(version / REPORT_DIR)


def _link_report(previous: Path | None, staging: Path) -> bool:
    """Link the report of ``previous`` (checked by the caller) into ``staging``; False when
    it has none."""
    if previous is None:
        return False
    names = [n for n in asset_records(read_item(previous)) if n.startswith(f"{REPORT_DIR}/")]
    if REPORT_HTML not in names:
        return False
    for name in names:
        link_file(previous / name, staging / name)
    return True


def _report_assets(directory: Path) -> dict[str, dict[str, Any]]:
    """Every file of the report in ``directory`` as a STAC asset (keyed by its path)."""
    assets: dict[str, dict[str, Any]] = {}
    folder = directory / REPORT_DIR
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        name = path.relative_to(directory).as_posix()
        if name == REPORT_HTML:
            asset = {"type": "text/html", "roles": ["metadata"], "title": "Science report"}
        elif path.suffix == ".png":
            asset = {"type": "image/png", "roles": ["overview"], "title": f"report {path.stem}"}
        elif path.suffix == ".json":
            asset = {"type": "application/json", "roles": ["metadata"]}
        else:  # applicability layers' chunks
            asset = {"type": "application/octet-stream", "roles": ["metadata"]}
        assets[name] = {"href": f"./{name}", **asset}
    return assets


def _report_link() -> dict[str, str]:
    return {
        "rel": "describedby",
        "href": f"./{REPORT_HTML}",
        "type": "text/html",
        "title": "Science report: analyses, model checks, applicability, uncertainty",
    }


def _point_current(root: Path, directory: Path) -> None:
    link = root / CURRENT
    temporary = root / f".{CURRENT}-{uuid.uuid4().hex[:8]}"
    temporary.symlink_to(directory.relative_to(root), target_is_directory=True)
    os.replace(temporary, link)


def _check_root(root: Path) -> None:
    if not root.exists():
        return
    stray = [
        p.name
        for p in root.iterdir()
        if p.name not in (CURRENT, VERSIONS) and not p.name.startswith(".")
    ]
    if stray:
        raise OutputExistsError(
            f"{root} holds {stray}, so it is not a tpgrid publication directory: choose "
            f"another one (a publication holds only '{VERSIONS}/' and '{CURRENT}')"
        )
    link = root / CURRENT
    # `current` must be ours: a link into versions/ (whose item may be damaged: repaired).
    if link.exists() and not (
        link.is_symlink() and link.resolve().parent == (root / VERSIONS).resolve()
    ):
        raise OutputExistsError(
            f"{link} is not a link to a version in {root / VERSIONS}: it is not a tpgrid "
            "publication; choose another directory"
        )
