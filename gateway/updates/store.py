"""Where update operations are persisted: the shared record store, holding :class:`Operation` s."""

from __future__ import annotations

from pathlib import Path

from gateway.operations.store import RecordStore
from gateway.updates.operation import Operation


class OperationStore(RecordStore[Operation]):
    """Persists update operations under ``directory`` (blocking calls: run them off the reactor).

    :param directory: the operations directory; created when missing.
    """

    def __init__(self, directory: Path) -> None:
        super().__init__(directory, Operation.from_json)
