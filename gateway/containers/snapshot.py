"""The containers service's read-side snapshot: whether it reaches podman.

Taken by :meth:`gateway.containers.service.ContainersService.snapshot`; the container apps
themselves are in the apps' snapshot (:mod:`gateway.apps.snapshot`).
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.degraded import Degraded


@dataclass(frozen=True)
class ContainersSnapshot:
    """The containers service now.

    :param runtime_failing: ``None`` while the service follows podman's event stream (podman
        answers); while it does not (podman's service down, its socket gone, the stream cut
        off and not open again yet): reason ``podman-unreachable``, the last failure's words
        (``podman does not answer: cannot connect to its socket: ...``, ``its event stream
        ended (...)``), since when, and the tries failed since.
    """

    runtime_failing: Degraded | None = None
