"""JSON documents addressed by Ditto paths: get, set, merge (RFC 7396), delete, diff, and
merge patches composed."""

from __future__ import annotations

import copy
from typing import Any

from gateway.shown import shown_repr

#: Marks "nothing there" (``None`` is JSON null, a value).
MISSING: Any = object()


class PathError(ValueError):
    """A path that cannot be applied to the document (a level under a non-object)."""


def split_path(path: str) -> list[str]:
    """``"/features/f/properties/x"`` -> ``["features", "f", "properties", "x"]``; ``"/"`` -> ``[]``.

    :raises PathError: for a path not starting with ``/`` or with an empty level.
    """
    if not path.startswith("/"):
        raise PathError(f"path {shown_repr(path)} must start with '/'")
    levels = [level for level in path.split("/")[1:]]
    if levels == [""]:
        return []
    if path.endswith("/") and len(levels) > 1:
        levels = levels[:-1]
    if any(level == "" for level in levels):
        raise PathError(f"path {shown_repr(path)} has an empty level")
    return levels


def get(document: Any, levels: list[str]) -> Any:
    """The value at ``levels`` (:data:`MISSING` when absent)."""
    node = document
    for level in levels:
        if not isinstance(node, dict) or level not in node:
            return MISSING
        node = node[level]
    return node


def put(document: dict[str, Any], levels: list[str], value: Any) -> bool:
    """Set the value at ``levels``, creating objects on the way.

    :return: whether it was created (``False``: replaced).
    :raises PathError: when a level on the way is not an object.
    """
    if not levels:
        raise PathError("cannot replace the document itself here")
    node = document
    for level in levels[:-1]:
        child = node.setdefault(level, {})
        if not isinstance(child, dict):
            raise PathError(f"{shown_repr(level)} is not an object")
        node = child
    created = levels[-1] not in node
    node[levels[-1]] = copy.deepcopy(value)
    return created


def remove(document: dict[str, Any], levels: list[str]) -> bool:
    """Remove the value at ``levels``; whether there was one."""
    if not levels:
        raise PathError("cannot delete the document itself here")
    parent = get(document, levels[:-1])
    if not isinstance(parent, dict) or levels[-1] not in parent:
        return False
    del parent[levels[-1]]
    return True


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396: ``patch`` applied to ``target`` (a new value; null members delete)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def compose(first: Any, second: Any) -> Any:
    """One merge patch doing what ``first`` then ``second`` do, to any document (RFC 7396
    composition: later wins, nested objects are composed, a ``null`` stays a ``null`` so that
    it still deletes); :data:`MISSING` when no patch does (an object set where ``first`` set
    a scalar or ``null``: applied after it, the object replaces whatever was there, while in
    one patch it would be merged into it).
    """
    if not isinstance(second, dict):
        return copy.deepcopy(second)
    if not isinstance(first, dict):
        return MISSING
    result = dict(first)
    for key, value in second.items():
        if key in first:
            value = compose(first[key], value)
            if value is MISSING:
                return MISSING
        else:
            value = copy.deepcopy(value)
        result[key] = value
    return result


def diff(old: Any, new: Any) -> Any:
    """The merge patch that turns ``old`` into ``new`` (``MISSING`` when they are equal).

    Removed members become null, so applying the patch with RFC 7396 (as the AWS shadow
    service does for ``reported``) gives ``new``.
    """
    if old == new:
        return MISSING
    if not isinstance(old, dict) or not isinstance(new, dict):
        return copy.deepcopy(new)
    patch: dict[str, Any] = {}
    for key in old.keys() - new.keys():
        patch[key] = None
    for key, value in new.items():
        change = diff(old.get(key, MISSING), value)
        if change is not MISSING:
            patch[key] = change
    return patch


def depth(value: Any) -> int:
    """Levels of nested objects (``{}`` and scalars: 0; ``{"a": 1}``: 1)."""
    if isinstance(value, dict):
        return 1 + max((depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return max((depth(v) for v in value), default=0)
    return 0
