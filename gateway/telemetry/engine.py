"""``engine_report``: GWE's shape, from the apps' snapshot, plus restarts."""

from __future__ import annotations

from typing import Any

from gateway.apps.snapshot import AppsSnapshot


def engine_report(apps: AppsSnapshot) -> dict[str, Any]:
    """``{"version": ..., "apps": [{"<program>": {version, status, uptime, exitstatus, ...}}]}``.

    GWE's fields (``version``, ``status``, ``uptime`` in whole seconds, ``exitstatus``) plus
    ``app``, ``pid`` and ``restarts``.
    """
    return {
        "version": apps.version,
        "apps": [{a.name: {"app": a.app, "version": a.version, "status": a.status, "uptime": round(a.uptime_s),
                           "exitstatus": a.exitstatus, "pid": a.pid, "restarts": a.restarts}}
                 for a in apps.apps],
    }
