"""Checks that an object offers every method of a typing.Protocol with the same parameters."""

from __future__ import annotations

import inspect
from typing import Any


def missing(obj: Any, protocol: type) -> list[str]:
    """The protocol's methods ``obj`` lacks or takes with other parameter names."""
    problems = []
    for name, member in vars(protocol).items():
        if name.startswith("_") or not callable(member):
            continue
        mine = getattr(obj, name, None)
        if mine is None:
            problems.append(f"{name}: missing")
            continue
        wanted = list(inspect.signature(member).parameters)[1:]
        if list(inspect.signature(mine).parameters) != wanted:
            problems.append(f"{name}: takes {list(inspect.signature(mine).parameters)}, not {wanted}")
    return problems
