"""Reading container descriptions from mappings and files (update artifacts, persisted state)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from gateway import jsontext, yamlfile
from gateway.config import ErrorList, build_dataclass
from gateway.containers.description import ContainerDescription
from gateway.containers.errors import DescriptionError


def from_mapping(data: Any, where: str = "description") -> ContainerDescription:
    """Build and check a description; every problem is named in one error.

    :param data: the parsed JSON or YAML.
    :param where: names the source in the error.
    :raises DescriptionError: listing every unknown key, wrong type and missing value.
    """
    errors = ErrorList()
    if not isinstance(data, dict):
        raise DescriptionError(f"{where}: must be a mapping, not {jsontext.given(data)}")
    description = build_dataclass(ContainerDescription, data, (), errors)  # runs config_problems() too
    lines = [line.split(": ", 1)[1] for line in errors.lines]
    if lines:
        raise DescriptionError(f"{where}: " + "; ".join(lines))
    return description


def read_description(path: Path) -> ContainerDescription:
    """Read a ``.json``, ``.yaml`` or ``.yml`` description file (blocking).

    :raises DescriptionError: for an unreadable, unparsable or invalid file.
    """
    try:
        text = path.read_text(encoding="utf-8")
        data = jsontext.loads(text) if path.suffix == ".json" else yamlfile.load(text)
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as exc:
        raise DescriptionError(f"{path.name}: not a readable description: {exc}") from exc
    return from_mapping(data, path.name)
