"""Where long-running operations are persisted: one JSON file per record, written atomically."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from twisted.logger import Logger

from gateway.atomic import read_json, write_json_atomically


class Record(Protocol):
    """What the store keeps: a record with an id and a JSON form."""

    correlation_id: str

    def to_json(self) -> dict[str, Any]:
        """The persisted form."""


R = TypeVar("R", bound=Record)


class RecordStore(Generic[R]):
    """Persists records under ``directory`` (blocking calls: run them off the reactor).

    :param directory: the records' directory; created when missing.
    :param from_json: rebuilds a record from its persisted form.
    """

    log = Logger()

    def __init__(self, directory: Path, from_json: Callable[[dict[str, Any]], R]) -> None:
        self.directory = directory
        self.from_json = from_json

    def path_for(self, correlation_id: str) -> Path:
        """The file of one record (named by a hash: correlation ids are not file names).

        :param correlation_id: the record's id.
        """
        return self.directory / (hashlib.sha256(correlation_id.encode()).hexdigest()[:32] + ".json")

    def save(self, record: R) -> None:
        """Persist ``record`` atomically and durably, readable by the gateway's user alone: a
        record may hold credentials (an upload's ``start`` options: a SAS, AWS keys).

        :param record: the record in its new state.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        write_json_atomically(self.path_for(record.correlation_id), record.to_json(), 0o600)

    def remove(self, correlation_id: str) -> None:
        """Forget one record (absent is fine).

        :param correlation_id: the record's id.
        """
        self.path_for(correlation_id).unlink(missing_ok=True)

    def load_all(self) -> list[R]:
        """Every persisted record; unreadable files are logged and skipped."""
        records = []
        for path in sorted(self.directory.glob("*.json")):
            try:
                records.append(self.from_json(read_json(path)))
            except (ValueError, KeyError, TypeError) as error:
                self.log.error("skipping unreadable operation {path}: {error}", path=str(path), error=error)
        return records
