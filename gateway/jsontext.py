"""Parsing JSON that comes from outside the code: whatever is wrong with it is a ValueError."""

from __future__ import annotations

import json
from typing import Any

#: The deepest nesting of objects and arrays that messages to the gateway may have (its
#: handlers recurse over what they take: ``copy.deepcopy`` and YAML's emitter run out of
#: stack a few hundred levels down, while ``json`` parses about a thousand).
MAX_NESTING = 100


def loads(data: str | bytes) -> Any:
    """``json.loads(data)``, with JSON nested deeper than Python's recursion limit refused
    as the :class:`ValueError` every other malformed text is (``json.loads`` raises
    :class:`RecursionError` for it), so a caller's ``except ValueError`` covers all bad input.

    :param data: the JSON text (bytes: UTF-8, UTF-16 or UTF-32, as ``json.loads`` detects).
    :raises ValueError: ``data`` is not valid JSON, not text, or nested too deeply.
    """
    try:
        return json.loads(data)
    except RecursionError:
        raise ValueError("JSON nested too deeply to parse") from None


def nesting(value: Any) -> int:
    """How deep objects and arrays nest in the parsed JSON ``value`` (a scalar: 0, ``{}``
    and ``[]``: 1, ``{"a": [1]}``: 2), counted without recursion: JSON that :func:`loads`
    takes may nest too deeply for the recursive code it is handed to (``copy.deepcopy``
    runs out of stack at a few hundred levels).

    :param value: what :func:`loads` returned.
    """
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, level)
        stack.extend((child, level + 1) for child in children)
    return deepest
