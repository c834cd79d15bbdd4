"""The twin's things in memory and on disk: one JSON file, replaced atomically on every change.

Changes are applied in memory at once and written by a coalescing writer: while one write
is running, later changes wait and go together in the next. A change is acknowledged
(response, event, shadow sync) only once a write that holds it is durable.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from twisted.internet.defer import Deferred, succeed
from twisted.python.failure import Failure

from gateway.atomic import read_json, write_atomically

#: ``(function, *args) -> Deferred`` running blocking file I/O off the reactor thread.
RunBlocking = Callable[..., "Deferred[Any]"]


class TwinStore:
    """Things by id, each with its revision, persisted to ``path``.

    :param path: the JSON file (``<state_dir>/twin/things.json``).
    :param run_blocking: runs the file writes (a thread pool in the gateway).
    """

    def __init__(self, path: Path, run_blocking: RunBlocking) -> None:
        self.path = path
        self.run_blocking = run_blocking
        self.things: dict[str, dict[str, Any]] = {}
        self.revisions: dict[str, int] = {}
        self._writing = False
        self._waiting: list[Deferred[None]] = []
        #: whether the last write failed: changes in memory that are not on disk yet
        self._unsaved = False

    def load(self) -> Deferred[None]:
        """Read the file (nothing yet: no things).

        :raises ValueError: (in the Deferred) for a file that is not the twin's.
        """
        return self.run_blocking(read_json, self.path).addCallback(self._loaded)

    def _loaded(self, data: Any) -> None:
        if data is None:
            return
        if (not isinstance(data, dict) or not isinstance(data.get("things"), dict)
                or not isinstance(data.get("revisions"), dict)):
            raise ValueError(f"{self.path}: not a twin file (no things and revisions)")
        self.things = data["things"]
        self.revisions = {key: int(value) for key, value in data["revisions"].items()}

    def bump(self, thing_id: str) -> int:
        """The thing's next revision (counted on past deletes too, so events stay ordered)."""
        revision = self.revisions.get(thing_id, 0) + 1
        self.revisions[thing_id] = revision
        return revision

    def save(self) -> Deferred[None]:
        """Write everything as it is now; fires once that is durable."""
        d: Deferred[None] = Deferred()
        self._waiting.append(d)
        if not self._writing:
            self._write()
        return d

    def flushed(self) -> Deferred[None]:
        """Fires once every change made so far is durable (at once when none is pending;
        after a failed write, once a new write holds them)."""
        if not self._writing and not self._waiting and not self._unsaved:
            return succeed(None)
        return self.save()

    def _write(self) -> None:
        self._writing = True
        waiters, self._waiting = self._waiting, []
        data = json.dumps({"things": self.things, "revisions": self.revisions}, sort_keys=True).encode()

        def done(result: Any) -> None:
            self._writing = False
            self._unsaved = isinstance(result, Failure)
            for d in waiters:
                if isinstance(result, Failure):
                    d.errback(result)
                else:
                    d.callback(None)
            if self._waiting:
                self._write()

        self.run_blocking(write_atomically, self.path, data).addBoth(done)
