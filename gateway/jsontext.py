"""Parsing JSON that comes from outside the code: whatever is wrong with it is a ValueError."""

from __future__ import annotations

import json
from typing import Any


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
