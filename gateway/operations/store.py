"""Where long-running operations are persisted: one JSON file per record, written atomically."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.logger import Logger

from gateway.atomic import read_json, remove_durably, remove_quietly, set_aside, temporary_of, write_json_atomically
from gateway.filelayer import makedirs_durably
from gateway.stateaccess import is_permission_error, refusal


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
        # Saves run in the thread pool, two of one record at once (an upload's files started
        # together): one at a time, or the second removes the temp file the first renames.
        self._writing = threading.Lock()

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
        with self._writing:  # (the record as it is when this save's turn comes)
            makedirs_durably(str(self.directory))  # (a power cut must not take it with the record)
            write_json_atomically(self.path_for(record.correlation_id), record.to_json(), 0o600)

    def remove(self, correlation_id: str) -> None:
        """Forget one record (absent is fine), durably: a power cut must not bring back the
        record of an operation whose end the disk refused (:func:`record_end_late`), which the
        next start would resume although the cloud was told it had ended.

        :param correlation_id: the record's id.
        :raises OSError: when it cannot be removed, or its directory not fsynced.
        """
        remove_durably(self.path_for(correlation_id))

    def load_all(self) -> list[R]:
        """Every persisted record. A file that holds none (unreadable, a directory or a loop of
        symbolic links in its place, not JSON, not of a record's shape, or a record whose id is
        not the one its file is named for) is logged as an error and moved aside to
        ``<name>.damaged``: the service starts without it, and never reads it again. A directory
        that cannot be listed (a file in its place, or its parent's) is logged as an error and
        left as it is: the service starts without the records, which the next start that can
        list them reads. The temporary file of a save a crash cut short (``.<name>.json.tmp``)
        is removed: a record forgotten since is never written again, and nothing else would.

        :raises StateAccessError: when the gateway's user may not list the directory, or read
            or move a record (:func:`~gateway.atomic.set_aside`): nothing is set aside."""
        try:
            entries = [entry.name for entry in os.scandir(self.directory)]
        except FileNotFoundError:
            return []  # (never written to: the first start)
        except OSError as error:
            if is_permission_error(error):
                raise refusal(self.directory) from error
            # (said aloud: the unfinished operations are not resumed, and nothing else would tell)
            self.log.error("cannot list the operations in {directory} ({error}): starting without them;"
                           " they are read at the next start that can list them",
                           directory=str(self.directory), error=error.strerror or str(error))
            return []
        for name in entries:
            if (temporary_of(name) or "").endswith(".json"):
                remove_quietly(self.directory / name)  # (one it cannot remove is written over by that record's next save)
        records = []
        for path in (self.directory / name for name in sorted(name for name in entries if name.endswith(".json"))):
            try:
                record = self.from_json(read_json(path))
                if not isinstance(record.correlation_id, str) or self.path_for(record.correlation_id) != path:
                    raise ValueError("not the record of the correlation id its file is named for")
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
                why = f"it has no {error.args[0]!r}" if isinstance(error, KeyError) and error.args else (
                    str(error) or type(error).__name__)
                self.log.error("skipping unreadable operation {path}: {error}; {kept}", path=str(path),
                               error=why, kept=set_aside(path))
                continue
            records.append(record)
        return records


@inlineCallbacks
def record_end_late(store: RecordStore[Any], run_blocking: Callable[..., Deferred[Any]], record: Record,
                    log: Logger, what: str) -> Any:
    """The last try for a record whose end the disk refused (full, read-only), once what the
    operation held on the disk is gone: its end written if the disk takes it now, else its
    record (of a step before) removed, so that the next start does not resume an operation
    the cloud was told had ended. One the disk refuses to remove too (read-only) is logged as
    a warning: the next start resumes it. Never fails.

    :param store: the records' store.
    :param run_blocking: runs the blocking writes: ``run_blocking(f, *args) -> Deferred``.
    :param record: the ended record.
    :param log: the service's logger, for the warning.
    :param what: what a record is of, for the warning (``upload``).
    :return: (a Deferred firing with) whether the end was written.
    """
    try:
        yield run_blocking(store.save, record)
        return True
    except OSError:
        pass
    try:
        yield run_blocking(store.remove, record.correlation_id)
    except OSError as error:
        log.warn("{what} {id}: its record can be neither written nor removed ({error}): the next start resumes it",
                 what=what, id=record.correlation_id, error=error)
    return False


class StaleRecords:
    """Removes the records of ended operations a service forgets (off the reactor). A record
    the disk refuses to remove (read-only) is logged once, as a warning, and tried again at
    the next removal.

    :param store: the records' store.
    :param run_blocking: runs the blocking removals: ``run_blocking(f, *args) -> Deferred``.
    :param what: what a record is of, for the warning (``finished upload``).
    :param when: when the removal is tried again, for the warning (``the next upload ends``).
    """

    def __init__(self, store: RecordStore[Any], run_blocking: Callable[..., Deferred[Any]], what: str,
                 when: str) -> None:
        self.store = store
        self.run_blocking = run_blocking
        self._warning = f"cannot remove {{path}}, the record of {what} {{id}} ({{error}}): tried again when {when}"
        #: forgotten records the disk refused to remove, by id.
        self._unremoved: set[str] = set()

    @inlineCallbacks
    def remove(self, stale: list[str], log: Logger) -> Any:
        """Remove the records of ``stale`` (ids) and of those refused before; never fails.

        :param stale: the ids of the records to remove.
        :param log: the service's logger, for the warnings.
        """
        for correlation_id in stale + sorted(self._unremoved - set(stale)):
            try:
                yield self.run_blocking(self.store.remove, correlation_id)
            except OSError as error:
                if correlation_id not in self._unremoved:
                    self._unremoved.add(correlation_id)
                    log.warn(self._warning, path=str(self.store.path_for(correlation_id)), id=correlation_id,
                                  error=error.strerror or error)
            else:
                self._unremoved.discard(correlation_id)
