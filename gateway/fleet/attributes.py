"""The gateway's attributes for hawkBit's ``configData``: flat string keys and values."""

from __future__ import annotations

import platform
import socket
from pathlib import Path
from typing import Any, Callable

from gateway import __version__


def _os_release() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return platform.system()


def gateway_attributes(device_id: str, apps: Callable[[], Any] | None = None) -> Callable[[], dict[str, str]]:
    """A function returning the attributes now: gateway version, a device_info summary
    (hostname, OS, machine, Python) and the hosted apps (``name version`` each), from the apps
    service's snapshot (cheap; no I/O but the OS name, read once).

    :param device_id: this gateway's device id.
    :param apps: the apps service's ``snapshot``, or None.
    """
    fixed = {"device_id": device_id, "gateway_version": __version__, "hostname": socket.gethostname(),
             "os": _os_release(), "machine": platform.machine(), "python": platform.python_version()}

    def attributes() -> dict[str, str]:
        values = dict(fixed)
        if apps is not None:
            hosted = sorted({f"{a.app} {a.version}" for a in apps().apps if a.version != "config"})
            values["apps"] = ", ".join(hosted) or "none"
        return values

    return attributes
