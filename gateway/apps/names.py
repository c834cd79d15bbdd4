"""App and program names: one safe path component each (they become directory names), and
program and container app names that name log files no other's log can have."""

from __future__ import annotations

import re

from gateway.apps.errors import ManifestError

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}\Z")  # (\Z: "$" takes a name before a trailing newline)

PODMAN_SERVICE = "podman-service"  # the podman service the gateway runs: its log is podman-service.log

__all__ = ["NAME", "PODMAN_SERVICE", "check_name", "check_program_name", "log_name_problem"]


def check_name(kind: str, value: str) -> str:
    """Return ``value`` when it is a safe app name or version (one path component).

    :raises ManifestError: when it is not.
    """
    if not NAME.match(value) or value in (".", ".."):
        raise ManifestError(f"bad {kind} {value!r}: letters, digits and _.+- only")
    return value


def log_name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a program or container app, or None: its logs are ``<name>.log``
    and ``<name>.err.log`` in ``<state>/logs/apps``, and must be no other's log file."""
    if name == PODMAN_SERVICE:
        return f"{name!r} is reserved: {name}.log is the podman service's log"
    if name.endswith(".err"):
        return f"{name!r} ends in .err: its log {name}.log is the stderr log of {name.removesuffix('.err')!r}"
    return None


def check_program_name(value: str) -> str:
    """Return ``value`` when it can name a program (see :func:`check_name` and
    :func:`log_name_problem`).

    :raises ManifestError: when it cannot.
    """
    check_name("program name", value)
    problem = log_name_problem(value)
    if problem is not None:
        raise ManifestError(f"bad program name: {problem}")
    return value
