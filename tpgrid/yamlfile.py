"""Reading YAML config files (grid, catalog, fit settings, cluster specs, pipelines) into
validated objects; every mistake becomes a :class:`ConfigError` naming the file and the key."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import ValidationError

from tpgrid.errors import ConfigError, describe_validation

T = TypeVar("T")


def read_mapping(path: str | Path, what: str, hint: str) -> dict[str, Any]:
    """The mapping in the YAML file ``path`` (empty file: ``{}``). ``what`` names the kind of
    file in messages ("grid file"); ``hint`` says what to do when it does not exist."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} {path} does not exist: {hint}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path} must be a mapping of keys to values")
    return data


def validated(validate: Callable[[Any], T], data: Any, source: str) -> T:
    """``validate(data)`` (a pydantic ``model_validate`` or ``validate_python``), with a
    validation error turned into a ConfigError listing each bad key of ``source``."""
    try:
        return validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source} is not valid:\n{describe_validation(exc)}") from exc
