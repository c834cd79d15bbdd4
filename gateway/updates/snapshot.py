"""The update operations' read-side snapshot: status and download progress of each.

Taken by :meth:`gateway.updates.service.UpdateService.snapshot`; reports, ``/metrics`` and
the admin API read these, never the service's fields.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModuleSnapshot:
    """One software module of an operation.

    :param name: its name.
    :param version: its version.
    :param target: ``app``, ``script`` or ``gateway``.
    """

    name: str
    version: str
    target: str


@dataclass(frozen=True)
class OperationSnapshot:
    """One update operation the service knows (finished ones too: they are kept on disk).

    :param correlation_id: the backend's id.
    :param action: ``download`` or ``install``.
    :param status: Kanto's status name (``STARTED``, ``DOWNLOADING``, ... ``FINISHED_SUCCESS``).
    :param message: the status's detail.
    :param modules: its software modules.
    :param installed: modules installed so far.
    :param active: whether it is being worked on now.
    :param received_bytes: artifact bytes downloaded so far (this run of the gateway).
    :param total_bytes: the artifacts' total size, or ``None`` while some size is unknown.
    :param progress_percent: ``received_bytes`` of ``total_bytes`` in percent, or ``None``.
    """

    correlation_id: str
    action: str
    status: str
    message: str
    modules: tuple[ModuleSnapshot, ...]
    installed: int
    active: bool
    received_bytes: int
    total_bytes: int | None
    progress_percent: int | None


@dataclass(frozen=True)
class UpdatesSnapshot:
    """Every update operation the service knows.

    :param operations: the operations, in the order they were received, oldest first (across
        restarts: :attr:`~gateway.updates.operation.Operation.received`).
    """

    operations: tuple[OperationSnapshot, ...]
