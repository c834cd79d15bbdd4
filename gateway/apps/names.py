"""App and program names: one safe path component each (they become directory names)."""

from __future__ import annotations

import re

from gateway.apps.errors import ManifestError

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$")

__all__ = ["NAME", "check_name"]


def check_name(kind: str, value: str) -> str:
    """Return ``value`` when it is a safe app name or version (one path component).

    :raises ManifestError: when it is not.
    """
    if not NAME.match(value) or value in (".", ".."):
        raise ManifestError(f"bad {kind} {value!r}: letters, digits and _.+- only")
    return value
