"""The apps' status in the shape of GWE's ``engine_report``, for the telemetry service."""

from __future__ import annotations

from typing import Any

from gateway import __version__
from gateway.apps.process import ProgramStatus


def engine_report(statuses: list[ProgramStatus], version: str = __version__) -> dict[str, Any]:
    """``{"version": ..., "apps": [{"<program>": {version, status, uptime, exitstatus}}]}``.

    :param statuses: every program's status.
    :param version: the gateway's own version.
    """
    return {
        "version": version,
        "apps": [
            {
                s.name: {
                    "app": s.app,
                    "version": s.version,
                    "status": s.state.value,
                    "uptime": round(s.uptime),
                    "exitstatus": s.exitstatus,
                    "pid": s.pid,
                    "restarts": s.restarts,
                }
            }
            for s in statuses
        ],
    }
