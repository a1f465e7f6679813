"""Published versions: immutable folders of maps, and a ``current`` link swapped atomically.

Layout of a publication directory::

    published/
      versions/<version>/     COGs, quicklook PNGs, report/, STAC item of one prediction run
      versions/.<version>.partial-<hex>/    a version being assembled (hidden)
      current -> versions/<version>

A version is assembled in full in a hidden staging folder: maps, then the report, then the STAC
item, which lists the maps, the report's page and summary, and the report's ``SHA256SUMS`` as
assets with their size and SHA-256 (STAC file extension). ``SHA256SUMS`` (the format of
``sha256sum``) lists every file of the report (figures, the applicability layers' chunks),
so the item stays small and ``cd report && sha256sum -c SHA256SUMS`` checks the report. The
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
import re
import shutil
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from tpgrid.errors import OutputExistsError
from tpgrid.integrity import Damage, FileRecord, check_readable, file_record
from tpgrid.outputs import (
    STAC_ITEM,
    asset_records,
    open_prediction,
    published_run,
    read_item,
    write_item,
    write_maps,
)
from tpgrid.store import link_file
from tpgrid.tasks import Progress

log = logging.getLogger(__name__)

CURRENT = "current"
VERSIONS = "versions"
#: The report's folder inside a version.
REPORT_DIR = "report"
REPORT_HTML = f"{REPORT_DIR}/report.html"
REPORT_JSON = f"{REPORT_DIR}/report.json"
#: The report's checksum manifest (``sha256sum``'s format): every report file not an asset.
MANIFEST = "SHA256SUMS"
REPORT_MANIFEST = f"{REPORT_DIR}/{MANIFEST}"
#: Report files that are assets of the item themselves, not lines of the manifest.
_REPORT_ASSETS = (REPORT_HTML, REPORT_JSON, REPORT_MANIFEST)
#: A line of ``sha256sum`` output: hash, then two spaces (text mode) or `` *`` (binary mode).
_MANIFEST_LINE = re.compile(r"([0-9a-f]{64}) [ *](.+)")
#: Marks a version's staging folder: ``.<version>.partial-<8 hex>``.
PARTIAL = ".partial-"


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
    new version, before its STAC item; its page and summary become assets of the item, and
    every file of it a line of its ``SHA256SUMS``, an asset too. Files of unchanged elements
    are linked from the current version after a check against its item; a damaged one is
    rendered afresh. When the current version holds this run but a file of it is damaged, a
    new version is published (damaged files rendered again, the rest linked, the report too
    when all of it is intact) and made current. ``root`` must be a publication directory (or
    not exist): anything else there is refused.
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
            # Repairing a version of this run: its report still holds, if all of it is intact.
            if not (repair and _link_report(current, staging)):
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
    records, and every file the report's ``SHA256SUMS`` lists against its SHA-256 there; a
    missing or unreadable item, an asset without a checksum, a malformed ``SHA256SUMS``, or a
    file of the report listed in neither, is damage too."""
    directory = Path(directory)
    try:
        records = asset_records(read_item(directory))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        return [Damage(directory / STAC_ITEM, f"missing or unreadable: {exc}")]
    damage = _check_assets(directory, records)
    # A damaged manifest cannot say which of the files it lists are intact: it alone is named.
    if not any(found.path == directory / REPORT_MANIFEST for found in damage):
        damage.extend(_check_report(directory, records))
    return damage


def write_manifest(folder: Path) -> Path:
    """Write ``folder/SHA256SUMS`` as ``sha256sum`` does: ``<sha256>  <path>`` for every file
    under ``folder`` but itself (paths relative to ``folder``, sorted)."""
    files = {p.relative_to(folder).as_posix(): p for p in folder.rglob("*") if p.is_file()}
    lines = []
    for name in sorted(files.keys() - {MANIFEST}):
        if "\n" in name or "\\" in name:  # sha256sum would escape these; ours never hold them
            raise ValueError(f"{files[name]}: no name with a newline or backslash in {MANIFEST}")
        lines.append(f"{file_record(files[name]).sha256}  {name}\n")
    path = folder / MANIFEST
    # A new file replaces the old: a manifest linked from the previous version is not rewritten.
    temporary = folder / f".{MANIFEST}-{uuid.uuid4().hex[:8]}"
    temporary.write_bytes("".join(lines).encode())
    os.replace(temporary, path)
    return path


def read_manifest(path: Path) -> dict[str, str]:
    """The SHA-256 (hex) of each file a ``SHA256SUMS`` lists, by its path relative to the
    manifest's folder; ValueError naming the first line that is not ``<sha256>  <path>`` with
    a plain relative path inside the folder, listed once (or that does not end)."""
    listed: dict[str, str] = {}
    text = path.read_bytes().decode()
    if text and not text.endswith("\n"):
        raise ValueError("the last line does not end with a newline")
    for number, line in enumerate(text.split("\n")[:-1], start=1):
        match = _MANIFEST_LINE.fullmatch(line)
        name = match.group(2) if match else ""
        parts = PurePosixPath(name).parts
        plain = bool(parts) and PurePosixPath(name).as_posix() == name and ".." not in parts
        if match is None or not plain or name.startswith("/") or "\\" in name:
            raise ValueError(f"line {number} is not '<sha256>  <relative path>': {line!r}")
        if name in listed:
            raise ValueError(f"line {number} lists {name} again")
        listed[name] = match.group(1)
    return listed


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


def _check_assets(directory: Path, records: Mapping[str, FileRecord | None]) -> list[Damage]:
    """Each asset's file (``records``, from the item) that does not match its record."""
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


def _check_report(directory: Path, records: Mapping[str, FileRecord | None]) -> list[Damage]:
    """Each file the report's ``SHA256SUMS`` lists that does not match its SHA-256 there, and
    each file under ``report/`` listed neither there nor in the item (``records``); a
    malformed manifest is damage. The manifest itself is an asset: checked with the others."""
    folder = directory / REPORT_DIR
    listed: dict[str, str] = {}
    if REPORT_MANIFEST in records:
        try:
            listed = read_manifest(folder / MANIFEST)
        except OSError as exc:
            return [Damage(folder / MANIFEST, f"unreadable: {exc.strerror or exc}")]
        except ValueError as exc:
            return [Damage(folder / MANIFEST, f"malformed: {exc}")]
    prefix = f"{REPORT_DIR}/"
    assets = {name[len(prefix) :] for name in records if name.startswith(prefix)}
    # The page and the summary are assets too, checked with their size: named once, from there.
    damage = [
        found
        for name, sha256 in listed.items()
        if name not in assets and (found := _check_listed(folder / name, sha256))
    ]
    known = {*listed, *assets}
    for path in sorted(folder.rglob("*") if folder.is_dir() else ()):
        if path.is_file() and path.relative_to(folder).as_posix() not in known:
            damage.append(Damage(path, f"listed neither in {MANIFEST} nor in the STAC item"))
    return damage


def _check_listed(path: Path, sha256: str) -> Damage | None:
    # SHA256SUMS records no size: the file's own stands in, so its content alone is compared.
    size = path.stat().st_size if path.is_file() else 0
    return check_readable(path, FileRecord(size, sha256))


def _link_report(previous: Path | None, staging: Path) -> bool:
    """Link the report of ``previous`` into ``staging`` if all of it is intact (its assets,
    every file its ``SHA256SUMS`` lists, nothing else); False when it is not, or has none."""
    if previous is None:
        return False
    try:
        records = asset_records(read_item(previous))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False
    report = {name: record for name, record in records.items() if name in _REPORT_ASSETS}
    if REPORT_HTML not in report:
        return False
    # A report is kept whole or written again: its page is never shown with another's figures.
    damage = _check_assets(previous, report) or _check_report(previous, records)
    if damage:
        log.info("%s: report not reused: %s", previous, "; ".join(map(str, damage)))
        return False
    # Checked: every file under report/ is an asset or listed, and intact.
    for path in (previous / REPORT_DIR).rglob("*"):
        if path.is_file():
            link_file(path, staging / path.relative_to(previous))
    return True


def _report_assets(directory: Path) -> dict[str, dict[str, Any]]:
    """The report in ``directory`` as STAC assets (keyed by path): its page, its summary, and
    the ``SHA256SUMS`` written here that lists every file of it, so that ``sha256sum -c``
    alone checks the whole report."""
    folder = directory / REPORT_DIR
    if not folder.is_dir():
        return {}
    write_manifest(folder)
    described = {
        REPORT_HTML: {"type": "text/html", "roles": ["metadata"], "title": "Science report"},
        REPORT_JSON: {
            "type": "application/json",
            "roles": ["metadata"],
            "title": "Science report: summary",
        },
        REPORT_MANIFEST: {
            "type": "text/plain",
            "roles": ["metadata"],
            "title": "SHA-256 of every other file of the report (cd report && sha256sum -c "
            f"{MANIFEST})",
        },
    }
    return {
        name: {"href": f"./{name}", **asset}
        for name, asset in described.items()
        if (directory / name).is_file()
    }


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
