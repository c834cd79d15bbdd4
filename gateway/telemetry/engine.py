"""``engine_report``: GWE's shape, from the apps' snapshot, plus restarts."""

from __future__ import annotations

from typing import Any

from gateway.apps.snapshot import AppSnapshot, AppsSnapshot


def engine_report(apps: AppsSnapshot) -> dict[str, Any]:
    """``{"version": ..., "apps": [{"<program>": {version, status, uptime, exitstatus, ...}}]}``.

    GWE's fields (``version``, ``status``, ``uptime`` in whole seconds, ``exitstatus``) plus
    ``app``, ``pid`` and ``restarts``; a container also has ``kind``, ``image``, ``image_digest`` and
    ``error`` (why it is FATAL or backing off; "" when nothing failed); a process has ``error``
    only while it says why (GWE's shape otherwise).
    """
    return {
        "version": apps.version,
        "apps": [{a.name: {"app": a.app, "version": a.version, "status": a.status, "uptime": a.uptime_s,
                           "exitstatus": a.exitstatus, "pid": a.pid, "restarts": a.restarts,
                           **_extra(a)}}
                 for a in apps.apps],
    }


def _extra(app: AppSnapshot) -> dict[str, Any]:
    """A container app's extra fields, ``kind``, ``image``, ``image_digest`` and ``error``; a
    process's ``error`` when it has one."""
    if app.kind != "container":
        return {"error": app.error} if app.error else {}
    return {"kind": "container", "image": app.image, "image_digest": app.image_digest, "error": app.error}
