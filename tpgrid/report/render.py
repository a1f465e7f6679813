"""Drawing a report's figures, or reusing the previous report's where nothing they are drawn
from changed.

Every figure has a key: the SHA-256 of exactly what it is drawn from (its kind, its data's
numbers, strings and arrays' bytes) and of what draws it (tpgrid's and matplotlib's versions,
the source of :mod:`tpgrid.report.figures`). A report records its figures' keys in
``figures.json``. Writing the next report, a figure whose key equals the one the previous
report recorded for it is linked from there, once the previous file matches the SHA-256 its
report's ``SHA256SUMS`` lists (and ``figures.json`` the one listed for it); every other figure
is drawn. Equal keys draw equal bytes (:mod:`~tpgrid.report.figures` writes no varying PNG
metadata), so a report written with reuse equals one written afresh, byte for byte.

Each figure is one task on the current Dask client (workers read the map layers, key the
data, link or draw, and write the PNG into the report's folder), or runs in this process when
there is no client.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from tpgrid import __version__
from tpgrid.integrity import file_record
from tpgrid.publication import MANIFEST, read_manifest
from tpgrid.report import figures
from tpgrid.report.figure_data import FigurePlan, load_figure_data
from tpgrid.report.settings import FIGURES_DIR
from tpgrid.store import link_file
from tpgrid.tasks import Progress, task_runner

log = logging.getLogger(__name__)

#: The figures' keys, in the report's folder: ``{"format", "figures": {name: key}}``.
KEYS_FILE = "figures.json"
_FORMAT = "tpgrid-report-figures/1"


@dataclass(frozen=True)
class PreviousFigure:
    """A figure of the previous report: its file, the key it was drawn with, and the SHA-256
    its report's ``SHA256SUMS`` lists for it."""

    path: Path
    key: str
    sha256: str


@dataclass(frozen=True)
class Rendered:
    """A figure of this report: its PNG, its key, and whether it was linked from the previous
    report rather than drawn."""

    path: Path
    key: str
    reused: bool


def render_figures(
    plans: Sequence[FigurePlan],
    directory: Path,
    previous: Mapping[str, PreviousFigure] | None = None,
    progress: Progress | None = None,
) -> list[Rendered]:
    """Every planned figure as ``directory/<name>``, in the plans' order: reused from
    ``previous`` (by name) where its key matches and the file is intact, drawn otherwise; one
    task per figure on the current Dask client (workers are otherwise idle while a report is
    written), or one after another here without a client. ``progress("figures", done,
    total)`` as figures finish."""
    previous = previous or {}
    with task_runner(local_threads=1) as runner:
        futures = [
            runner.submit(render_figure, plan, directory / plan.name, previous.get(plan.name))
            for plan in plans
        ]
        report = (lambda done, total: progress("figures", done, total)) if progress else None
        rendered: list[Rendered] = runner.gather(futures, report)
    return rendered


def render_figure(plan: FigurePlan, path: Path, previous: PreviousFigure | None) -> Rendered:
    """One figure (a task): its data read, keyed, then linked from ``previous`` if that was
    drawn with the same key and is intact, or drawn into ``path``."""
    data = load_figure_data(plan)
    key = figure_key(plan.kind, data)
    if previous is not None and previous.key == key and _intact(previous):
        _link_or_copy(previous.path, path)
        return Rendered(path, key, reused=True)
    figures.DRAW[plan.kind](data, path)
    return Rendered(path, key, reused=False)


def figure_key(kind: str, data: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of what a figure of ``kind`` is drawn from and of what draws it."""
    digest = hashlib.sha256()
    matplotlib = importlib.metadata.version("matplotlib")
    for part in (_FORMAT, __version__, matplotlib, _drawing_source(), kind):
        _feed(digest, part)
    _feed(digest, data)
    return digest.hexdigest()


def write_keys(folder: Path, rendered: Sequence[Rendered]) -> Path:
    """``folder/figures.json``: each figure's key by its file name, in the report's order."""
    path = folder / KEYS_FILE
    keys = {item.path.name: item.key for item in rendered}
    path.write_text(json.dumps({"format": _FORMAT, "figures": keys}, indent=2) + "\n")
    return path


def previous_figures(report: Path | None) -> dict[str, PreviousFigure]:
    """The figures of the report at ``report`` that may be reused, by file name: those its
    ``figures.json`` keys and its ``SHA256SUMS`` lists, when ``figures.json`` itself matches
    the SHA-256 listed for it. Empty (nothing reused, everything drawn) when there is no such
    report or its manifest or keys are missing, malformed or damaged."""
    if report is None:
        return {}
    try:
        listed = read_manifest(report / MANIFEST)
        recorded = listed.get(KEYS_FILE)
        if recorded is None or file_record(report / KEYS_FILE).sha256 != recorded:
            log.info("%s: figures not reused: %s missing, unlisted or damaged", report, KEYS_FILE)
            return {}
        stored = json.loads((report / KEYS_FILE).read_text())
        keys = stored["figures"] if stored.get("format") == _FORMAT else {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        log.info("%s: figures not reused: %s", report, exc)
        return {}
    found: dict[str, PreviousFigure] = {}
    for name, key in keys.items():
        sha256 = listed.get(f"{FIGURES_DIR}/{name}")
        if sha256 is not None and isinstance(key, str):
            found[name] = PreviousFigure(report / FIGURES_DIR / name, key, sha256)
    return found


def _intact(previous: PreviousFigure) -> bool:
    try:
        return file_record(previous.path).sha256 == previous.sha256
    except OSError:
        return False


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        link_file(source, target)
    except OSError:  # another file system: a copy holds the same bytes
        shutil.copyfile(source, target)


@cache
def _drawing_source() -> str:
    """SHA-256 of the drawing code: a changed figure function draws again."""
    return hashlib.sha256(Path(figures.__file__).read_bytes()).hexdigest()


def _feed(digest: Any, value: Any) -> None:
    """Add ``value`` to ``digest`` unambiguously: a type tag, lengths, and exact numbers (floats
    as hex, arrays as dtype, shape and bytes), mappings in their order (the drawing order)."""
    if value is None:
        digest.update(b"N")
    elif isinstance(value, bool):
        digest.update(b"T" if value else b"F")
    elif isinstance(value, int):
        _tagged(digest, b"I", str(value).encode())
    elif isinstance(value, float):
        _tagged(digest, b"R", value.hex().encode())
    elif isinstance(value, str):
        _tagged(digest, b"S", value.encode())
    elif isinstance(value, np.ndarray | np.generic):
        array = np.ascontiguousarray(value)
        if array.dtype.hasobject:
            raise TypeError("a figure's data holds an array of objects: only plain values")
        _tagged(digest, b"A", f"{array.dtype.str}{array.shape}".encode())
        _tagged(digest, b"", array.tobytes())
    elif isinstance(value, Mapping):
        _tagged(digest, b"M", str(len(value)).encode())
        for name, item in value.items():
            _feed(digest, str(name))
            _feed(digest, item)
    elif isinstance(value, list | tuple):
        _tagged(digest, b"L", str(len(value)).encode())
        for item in value:
            _feed(digest, item)
    else:
        raise TypeError(f"a figure's data holds a {type(value).__name__}: only plain values")


def _tagged(digest: Any, tag: bytes, payload: bytes) -> None:
    digest.update(tag + str(len(payload)).encode() + b":" + payload)
