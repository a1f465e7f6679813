"""Records of stored files, and checks of files against them.

Nothing a run carries over (a cube chunk, a prediction chunk, a model, a published file) is
trusted because of its name: its size and SHA-256 were recorded when it was written, and it is
checked against them before it is reused or reported as intact.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Read files in pieces of this size, so memory does not grow with the file.
_PIECE = 1 << 20


@dataclass(frozen=True)
class FileRecord:
    """What a file held when it was written: its size in bytes and its SHA-256 (hex)."""

    size: int
    sha256: str

    def to_json(self) -> list[Any]:
        return [self.size, self.sha256]

    @classmethod
    def from_json(cls, value: Any) -> FileRecord:
        size, sha256 = value
        return cls(int(size), str(sha256))

    @property
    def multihash(self) -> str:
        """The SHA-256 as a multihash (hex), the form of STAC's ``file:checksum``."""
        return "1220" + self.sha256


@dataclass(frozen=True)
class Damage:
    """A stored file that does not match its record: ``problem`` says how."""

    path: Path
    problem: str

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}"


def file_record(path: str | Path) -> FileRecord:
    """Size and SHA-256 of the file at ``path``."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as stream:
        while piece := stream.read(_PIECE):
            digest.update(piece)
    return FileRecord(Path(path).stat().st_size, digest.hexdigest())


def check_file(path: str | Path, recorded: FileRecord | None) -> Damage | None:
    """None when the file at ``path`` matches ``recorded``; else what is wrong with it.

    ``recorded`` None means no file was written there (e.g. a Zarr chunk equal to the fill
    value is never stored): a file found there is damage too.
    """
    path = Path(path)
    if recorded is None:
        return Damage(path, "a file is here where none was written") if path.exists() else None
    if not path.is_file():
        return Damage(path, "missing")
    size = path.stat().st_size
    if size != recorded.size:
        return Damage(path, f"{size} bytes, {recorded.size} when written")
    if file_record(path).sha256 != recorded.sha256:
        return Damage(path, "content differs from its SHA-256 recorded when written")
    return None


def check_readable(path: str | Path, record: FileRecord) -> Damage | None:
    """:func:`check_file`, with a file that cannot be read reported as damage too."""
    try:
        return check_file(path, record)
    except OSError as exc:
        return Damage(Path(path), f"unreadable: {exc.strerror or exc}")


def check_files(root: Path, records: Mapping[str, FileRecord | None]) -> list[Damage]:
    """Every file of ``records`` (paths relative to ``root``) that does not match its record."""
    found = (check_file(root / name, record) for name, record in records.items())
    return [damage for damage in found if damage is not None]
