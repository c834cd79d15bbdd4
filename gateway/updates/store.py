"""Where update operations are persisted: one JSON file per operation, written atomically."""

from __future__ import annotations

import hashlib
from pathlib import Path

from twisted.logger import Logger

from gateway.atomic import read_json, write_json_atomically
from gateway.updates.operation import Operation


class OperationStore:
    """Persists operations under ``directory`` (blocking calls: run them off the reactor).

    :param directory: the operations directory; created when missing.
    """

    log = Logger()

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path_for(self, correlation_id: str) -> Path:
        """The file of one operation (named by a hash: correlation ids are not file names).

        :param correlation_id: the operation's id.
        """
        return self.directory / (hashlib.sha256(correlation_id.encode()).hexdigest()[:32] + ".json")

    def save(self, operation: Operation) -> None:
        """Persist ``operation`` atomically and durably.

        :param operation: the operation in its new state.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        write_json_atomically(self.path_for(operation.correlation_id), operation.to_json())

    def load_all(self) -> list[Operation]:
        """Every persisted operation; unreadable files are logged and skipped."""
        operations = []
        for path in sorted(self.directory.glob("*.json")):
            try:
                operations.append(Operation.from_json(read_json(path)))
            except (ValueError, KeyError, TypeError) as error:
                self.log.error("skipping unreadable operation {path}: {error}", path=str(path), error=error)
        return operations
