"""Published versions: immutable folders of maps, and a ``current`` link swapped atomically.

Layout of a publication directory::

    published/
      versions/<version>/     COGs, quicklook PNGs, STAC item of one prediction run
      current -> versions/<version>

A new version is written in full beside the others, then ``current`` is replaced by a new
symbolic link in one ``rename`` (atomic on POSIX), so a reader that resolves ``current`` once
sees the old complete version or the new one, never a mix. Old versions stay until
:func:`prune` is asked to remove them.
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

from tpgrid.errors import OutputExistsError
from tpgrid.outputs import STAC_ITEM, PublishReport, open_prediction, publish, published_run

log = logging.getLogger(__name__)

CURRENT = "current"
VERSIONS = "versions"


@dataclass(frozen=True)
class Publication:
    """What :func:`publish_version` did: the version now current, and whether it is new."""

    version: str
    directory: Path
    run_id: str
    new: bool
    reused: tuple[str, ...] = ()  # elements whose files were linked from the previous version


def current_version(root: str | Path) -> Path | None:
    """The folder ``current`` points to (resolved once: read everything from it), or None."""
    link = Path(root) / CURRENT
    if not link.is_symlink():
        return None
    return link.resolve()


def versions(root: str | Path) -> list[Path]:
    """Every published version, oldest first (names start with their UTC publication time)."""
    folder = Path(root) / VERSIONS
    return sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []


def publish_version(
    prediction: str | Path,
    root: str | Path,
    *,
    before_current: Callable[[Path], None] | None = None,
) -> Publication:
    """Publish the prediction run at ``prediction`` as a new version under ``root`` and make it
    current; if the current version already holds this run, do nothing.

    ``before_current(version_dir)`` may add files (e.g. the report) to the new version before
    it becomes current. ``root`` must be a publication directory (or not exist): anything else
    there is refused.
    """
    root = Path(root)
    _check_root(root)
    _, run = open_prediction(prediction)
    run_id = str(run["run_id"])
    current = current_version(root)
    if current is not None and published_run(current) == run_id:
        log.info("%s already publishes run %s", root, run_id[:12])
        return Publication(current.name, current, run_id, new=False)
    # Microseconds: two publications within one second (fast when files are reused) must
    # still get distinct names, in the order they were made.
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    directory = root / VERSIONS / f"{stamp}-{run_id[:12]}"
    # Elements whose maps did not change keep their files: linked from the current version.
    report: PublishReport = publish(prediction, directory, previous=current)
    try:
        if before_current is not None:
            before_current(report.directory)
    except BaseException:
        shutil.rmtree(report.directory, ignore_errors=True)
        raise
    _point_current(root, report.directory)
    log.info("%s now publishes %s", root / CURRENT, directory.name)
    return Publication(directory.name, directory, run_id, new=True, reused=report.reused)


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
    if (root / CURRENT).exists() and not (root / CURRENT / STAC_ITEM).is_file():
        raise OutputExistsError(
            f"{root / CURRENT} has no {STAC_ITEM}: it is not a tpgrid publication; choose "
            "another directory"
        )
