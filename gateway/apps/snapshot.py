"""The hosted apps' read-side snapshot: every program's engine_report data plus restarts.

Taken by :meth:`gateway.apps.service.AppsService.snapshot`; reports, ``/metrics`` and the
admin API read these, never the supervisor's fields.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AppSnapshot:
    """One supervised program.

    :param name: the program (unique in the gateway).
    :param app: the app it belongs to.
    :param version: the app's version (``config`` for programs from the gateway's config).
    :param status: supervisord's state name: ``STOPPED``, ``STARTING``, ``RUNNING``,
        ``BACKOFF``, ``STOPPING``, ``EXITED`` or ``FATAL``.
    :param pid: its process id while it runs.
    :param uptime_s: whole seconds since it started, to the nearest (0 when not running).
    :param exitstatus: how it last exited, or ``None``.
    :param restarts: automatic restarts since the apps service started (from zero after a
        configuration change).
    :param kind: ``process`` (a hosted program) or ``container``.
    :param image: for a container: its image reference.
    :param image_digest: for a container: its image's manifest digest.
    :param error: why it is FATAL or backing off: for a process, why its last start failed (an
        exit before ``startsecs``, a spawn refused); for a container, a pull or start the
        runtime refused (its words) too; "" when nothing failed.
    """

    name: str
    app: str
    version: str
    status: str
    pid: int | None
    uptime_s: int
    exitstatus: int | None
    restarts: int
    kind: str = "process"
    image: str | None = None
    image_digest: str | None = None
    error: str = ""


@dataclass(frozen=True)
class AppsSnapshot:
    """Every supervised program: the hosted programs in name order, then the containers in name order.

    :param version: the gateway's version (GWE's engine_report carries it).
    :param apps: the programs.
    """

    version: str
    apps: tuple[AppSnapshot, ...]
