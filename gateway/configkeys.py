"""Key paths of the configuration as its sections read them (``-`` as ``_``), and the value the
files wrote at one: shared by the configuration's checks and its warnings."""

from __future__ import annotations

from typing import Any, Mapping


def normal_key_path(path: tuple[str, ...]) -> tuple[str, ...]:
    """``path`` with each key as sections read it (``-`` as ``_``)."""
    return tuple(key.replace("-", "_") for key in path)


def written_at(data: Any, normal: tuple[str, ...]) -> Any:
    """The value at the (normal) key path ``normal`` of the parsed YAML ``data``; ``None``
    when there is none.

    :param data: the files' data, as written (mappings, lists and values).
    :param normal: a key path from :func:`normal_key_path`; a list's items are keyed by index.
    """
    for key in normal:
        if isinstance(data, Mapping):
            data = next((value for name, value in data.items() if normal_key_path((str(name),)) == (key,)), None)
        elif isinstance(data, list) and key.isdecimal() and int(key) < len(data):
            data = data[int(key)]
        else:
            return None
    return data
