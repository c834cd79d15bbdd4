"""Snapshots and results into JSON-ready values (dataclasses, enums, paths, tuples)."""

from __future__ import annotations

import dataclasses
import enum
from pathlib import PurePath
from typing import Any, Mapping


def to_jsonable(obj: Any) -> Any:
    """``obj`` as plain dicts, lists, strings and numbers, as :func:`json.dumps` takes them.

    Dataclasses become dicts of their fields, enums their values, paths strings, tuples,
    lists and sets lists, mappings dicts with string keys.

    :param obj: a snapshot, a result or a plain value.
    """
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, enum.Enum):
        return to_jsonable(obj.value)
    if isinstance(obj, PurePath):
        return str(obj)
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, bytes):
        return obj.decode("utf-8", "replace")
    return obj
