"""Whether a persisted record's fields hold what its dataclass says they hold: a record
damaged from outside (a field of another type) is refused as unreadable, never half used."""

from __future__ import annotations

import dataclasses
import enum
import math
import types
import typing
from typing import Any

from gateway import jsontext


def check_fields(cls: type, value: Any, path: str = "") -> None:
    """Check the fields ``value`` (a record's persisted form) gives for the dataclass ``cls``
    against their annotations: ``str``, ``int`` (not a boolean), ``float`` (any number but a
    boolean), ``bool``, an enum (one of its values), ``X | None``, ``dict[str, X]``,
    ``list[X]`` and nested dataclasses (their persisted mappings); ``Any`` takes anything. A
    field it lacks is left to the dataclass (its default, or a ``TypeError``); an unknown one
    too.

    :param cls: the record's dataclass.
    :param value: its persisted form.
    :param path: where ``value`` is in the record, for the error (``files.0.``).
    :raises ValueError: naming the first field that holds something else.
    """
    if not isinstance(value, dict):
        raise ValueError(f"{path.rstrip('.') or 'the record'}: an object is required, not {jsontext.given(value)}")
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if field.name in value:
            _check(hints[field.name], value[field.name], f"{path}{field.name}")


def _check(tp: Any, value: Any, path: str) -> None:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return
        inner = [a for a in args if a is not type(None)]
        if len(inner) != 1:  # (one type or None is what records hold)
            raise NotImplementedError(f"{path}: no check for {tp!r}")
        _check(inner[0], value, path)
        return
    if dataclasses.is_dataclass(tp):
        check_fields(tp, value, f"{path}.")  # type: ignore[arg-type]
        return
    if origin is list:
        _require(isinstance(value, list), "a list", value, path)
        for i, item in enumerate(value):
            _check(args[0], item, f"{path}.{i}")
        return
    if origin is dict:
        _require(isinstance(value, dict), "an object", value, path)
        for key, item in value.items():
            _check(args[1], item, f"{path}.{key}")
        return
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        _require(value in [m.value for m in tp], f"one of {', '.join(repr(m.value) for m in tp)}", value, path)
    elif tp is bool:
        _require(isinstance(value, bool), "a boolean", value, path)
    elif tp is int:
        _require(type(value) is int, "a whole number", value, path)
    elif tp is float:  # (finite: a NaN or an infinity read leniently from a damaged file is no time)
        _require(isinstance(value, (int, float)) and not isinstance(value, bool)
                 and (type(value) is int or math.isfinite(value)), "a finite number", value, path)
    elif tp is str:
        _require(isinstance(value, str), "text", value, path)
    else:  # (a programming error, not a damaged record: it must not set records aside)
        raise NotImplementedError(f"{path}: no check for {tp!r}")


def _require(ok: bool, what: str, value: Any, path: str) -> None:
    if not ok:
        raise ValueError(f"{path}: {what} is required, not {jsontext.given(value)}")
