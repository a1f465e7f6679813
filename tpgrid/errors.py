"""Every failure a user can cause or fix ends in one of these.

Each message names the file, layer or column at fault and says what to do about it; the CLI
prints the message without a traceback and exits with ``exit_code``.
"""

from __future__ import annotations

import errno

from pydantic import ValidationError


class TpgridError(Exception):
    """Base of all user-facing tpgrid errors."""

    exit_code = 2


class ConfigError(TpgridError):
    """A YAML file (catalog, grid, pipeline) with unknown keys, wrong types or bad values."""


class GridError(TpgridError):
    """A grid that cannot be built, or a location that does not fall on it."""


class SourceError(TpgridError):
    """A covariate source that is missing, unreadable, has no CRS or misses the grid."""


class LayerValueError(TpgridError):
    """A covariate whose values break its catalog entry (valid range, class table)."""


class CubeError(TpgridError):
    """A cube that is missing, incomplete, or does not match what is asked of it."""


class ArtifactError(TpgridError):
    """A model artifact that is missing, incomplete, damaged or of another format."""


class OutputExistsError(TpgridError):
    """An output already exists and overwriting it was not asked for."""


class FeatureMismatchError(TpgridError):
    """A model whose feature variables are missing from the cube or mean something else there."""


class ChunkingError(CubeError):
    """A cube variable whose shape or chunking does not match the cube's grid."""


class PredictionError(TpgridError):
    """A prediction output that is missing or incomplete."""


class ClusterError(TpgridError):
    """A scheduler that cannot be reached or a cluster that cannot be started."""


class StorageError(TpgridError):
    """A file or directory that cannot be written or read: read-only, full, in the way, …"""

    @staticmethod
    def covers(exc: OSError) -> bool:
        """Whether ``exc`` is about a file or directory (not, say, a lost connection)."""
        if isinstance(exc, ConnectionError | TimeoutError):
            return False
        return exc.filename is not None or exc.errno in _STORAGE_CAUSES

    @classmethod
    def from_os_error(cls, exc: OSError, path: object = None) -> StorageError:
        """The error for ``exc``: its path (``path`` if the error names none), the cause in
        words and the fix."""
        where = exc.filename if exc.filename is not None else path
        if exc.filename2 is not None:
            where = f"{where} → {exc.filename2}"
        cause, fix = _STORAGE_CAUSES.get(
            exc.errno or 0,
            (
                (exc.strerror or str(exc) or type(exc).__name__).lower(),
                "check the path and its file system",
            ),
        )
        return cls(f"{where}: {cause}: {fix}" if where is not None else f"{cause}: {fix}")


#: errno → (the cause in words, what to do about it).
_STORAGE_CAUSES = {
    errno.EROFS: (
        "read-only file system",
        "choose a directory on a writable file system, or remount it read-write",
    ),
    errno.EACCES: (
        "permission denied",
        "give this user write access to it, or choose another directory",
    ),
    errno.EPERM: (
        "operation not permitted",
        "give this user write access to it, or choose another directory",
    ),
    errno.ENOSPC: (
        "no space left on device",
        "free space on that file system (or choose one with more), then run the command again",
    ),
    errno.EDQUOT: (
        "disk quota exceeded",
        "free space within your quota (or raise it), then run the command again",
    ),
    errno.ENOTDIR: (
        "not a directory (a file is in the way)",
        "move that file away, or choose another directory",
    ),
    errno.EEXIST: (
        "a file is in the way",
        "move it away, or choose another directory",
    ),
    errno.EISDIR: ("it is a directory", "move it away, or choose another path"),
    errno.ENOENT: (
        "no such file or directory",
        "check the path; a file may have been removed while the command ran",
    ),
    errno.EIO: ("input/output error", "check the disk or the network mount"),
    errno.EMFILE: ("too many open files", "raise the limit (ulimit -n) and run again"),
    errno.ENAMETOOLONG: ("file name too long", "choose a shorter path"),
}


class SiteTableError(TpgridError):
    """A site table that is missing, malformed, or cannot train a model for an element."""


class FitError(TpgridError):
    """A model fit that cannot produce anything (e.g. every element has too few sites)."""


class AnalysisError(TpgridError):
    """An analysis the data cannot support: too few sites, classes or values for it."""


class EngineMismatchError(TpgridError):
    """A benchmarked engine whose predictions differ from scikit-learn's: it is not timed."""


class BenchmarkError(TpgridError):
    """A benchmark that cannot run as asked: a baseline that is not an executable, a timed
    command that failed."""


def describe_validation(exc: ValidationError) -> str:
    """One line per pydantic error: the dotted key and what is wrong with it."""
    lines = []
    for err in exc.errors():
        where = ".".join(str(part) for part in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            what = "unknown key: remove it or check its spelling"
        else:
            what = err["msg"]
        lines.append(f"  {where}: {what}")
    return "\n".join(lines)


class WorkdirBusyError(TpgridError):
    """A working directory whose lock another tpgrid process holds (see tpgrid.lock)."""
