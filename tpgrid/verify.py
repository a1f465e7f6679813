"""``tpgrid verify``: every store, model and published version of a working directory checked
against what was recorded when it was written.

The cube and the prediction record each chunk file's size and SHA-256 in their group
attributes, a model its forest's hash in ``model.json``, and a published version each file's
``file:size`` and ``file:checksum`` in its STAC item. Nothing is recomputed here: only stored
bytes are read and compared, so a check costs one read of the working directory.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tpgrid.artifact import verify_models
from tpgrid.config import WorkdirLayout
from tpgrid.cube import verify_cube
from tpgrid.errors import StorageError, TpgridError
from tpgrid.integrity import Damage
from tpgrid.predict import verify_prediction
from tpgrid.publication import CURRENT, current_version, verify_version, versions


@dataclass(frozen=True)
class Checked:
    """One store, model directory or published version, and what was found wrong with it."""

    what: str
    path: Path
    damage: tuple[Damage, ...]

    @property
    def intact(self) -> bool:
        return not self.damage


def verify_workdir(workdir: str | Path) -> list[Checked]:
    """Check everything a pipeline wrote into ``workdir``; what is absent is not checked."""
    layout = WorkdirLayout(Path(workdir))
    if not layout.workdir.is_dir():
        raise StorageError(
            f"{layout.workdir} is not a directory: give a pipeline's working directory "
            "(the 'workdir' of its YAML)"
        )
    stores: list[tuple[str, Path, Callable[[Path], list[Damage]]]] = [
        ("cube", layout.cube, verify_cube),
        ("models", layout.models, verify_models),
        ("prediction", layout.prediction, verify_prediction),
    ]
    checked = [
        Checked(what, path, tuple(verify(path))) for what, path, verify in stores if path.exists()
    ]
    checked += [
        Checked("version", version, tuple(verify_version(version)))
        for version in versions(layout.published)
    ]
    link = layout.published / CURRENT
    if link.is_symlink() and current_version(layout.published) not in versions(layout.published):
        missing = Damage(link, f"points at {link.readlink()}, which is not a complete version")
        checked.append(Checked("current", link, (missing,)))
    if not checked:
        raise TpgridError(
            f"{layout.workdir} holds no tpgrid outputs (cube.zarr, models/, prediction.zarr, "
            "published/versions/): give a pipeline's working directory"
        )
    return checked
