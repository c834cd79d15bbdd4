"""The shadows the cloud is behind on, on disk: ``shadows-behind.json`` and ``shadows-behind.log``
beside ``things.json``.

A shadow request the journal refused leaves its shadow *behind* (:mod:`gateway.twin.catchup`):
the twin holds the change, the cloud does not, and the sync reads and corrects the shadow
later. The marks are read at the sync's start, so that a restart still corrects them: a
shadow whose ``delete`` was refused is no longer in the twin, and only its mark says to
delete it.

Each change of a mark (made, dropped) is appended to the log (:mod:`gateway.twin.behindlog`)
and fsynced, off the reactor thread, the changes made meanwhile in one write: a mark costs
its own record's bytes, not the whole set's. When the log holds more than
:data:`COMPACT_FACTOR` records per mark (and at least :data:`COMPACT_MIN_RECORDS`), the marks
are written whole to the snapshot, ``shadows-behind.json`` (atomically), and the log emptied.
The marks are the snapshot's, then the log's changes in turn. The sync's stop compacts too
(:meth:`BehindFile.compact`): after a clean stop the snapshot holds every mark, which is what a
gateway older than the log reads (a rollback started on this state directory).

The snapshot is ``{"shadows": {"<shadow>": {"thing": "<thing id>", "since": <seconds>}}}`` (the
classic shadow's name is ``""``), as the whole file was before the log; a reader ignores keys
it does not know, so later versions may add some.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.atomic import read_json, set_aside, write_json_atomically
from gateway.blocking import RunBlocking
from gateway.logthrottle import LogThrottle, since_last_line
from gateway.twin import behindlog
from gateway.twin.behindlog import BehindMark, Replayed, valid_mark

#: The snapshot's name, in the twin's directory.
BEHIND_FILE = "shadows-behind.json"
#: Seconds between two log lines of failed writes, at least.
WRITE_FAILURE_LOG_INTERVAL = 60.0
#: The log is compacted into the snapshot once it holds more than this many records per
#: mark...
COMPACT_FACTOR = 2
#: ... and more than this many records.
COMPACT_MIN_RECORDS = 1000


def _marks(data: Any) -> dict[str, BehindMark]:
    """The marks in the snapshot's JSON ``data``.

    :raises ValueError: ``data`` is no such file's.
    """
    shadows = data.get("shadows") if isinstance(data, dict) else None
    if not isinstance(shadows, dict):
        raise ValueError("not a shadows-behind file (no shadows)")
    marks = {}
    for shadow, mark in shadows.items():
        if not valid_mark(mark):
            raise ValueError(f"not a mark of a shadow behind: {shadow!r}: {mark!r}")
        marks[shadow] = BehindMark(mark["thing"], float(mark["since"]))
    return marks


def _snapshot(marks: Mapping[str, BehindMark]) -> dict[str, Any]:
    """The snapshot's JSON of ``marks``."""
    return {"shadows": {shadow: {"thing": mark.thing, "since": mark.since} for shadow, mark in marks.items()}}


def _append_then_compact(snapshot_path: Path, log_path: Path, data: bytes, size: int,
                         snapshot: dict[str, Any] | None) -> tuple[int, str | None]:
    """Blocking: append ``data`` to the log (whose whole records end at ``size``); then, with a
    ``snapshot``, write it and empty the log (the log's last record of each shadow is the
    snapshot's state then, so a crash between the two leaves them agreeing). Returns the log's
    size and why the compaction failed (the records are durable all the same)."""
    size = behindlog.append(log_path, data, size)
    if snapshot is None:
        return size, None
    try:
        write_json_atomically(snapshot_path, snapshot)
        behindlog.empty(log_path)
    except OSError as exc:
        return size, str(exc)
    return 0, None


class BehindFile:
    """Reads and writes the marks of one shadow sync.

    :param path: the snapshot (``<state_dir>/twin/shadows-behind.json``; the log is beside it).
    :param run_blocking: runs the file work off the reactor thread.
    :param steady: a clock that never steps (the log's throttle).
    """

    log = Logger()

    def __init__(self, path: Path, run_blocking: RunBlocking, steady: Callable[[], float]) -> None:
        self.path = path
        self.log_path = path.with_name(behindlog.LOG_FILE)
        self.run_blocking = run_blocking
        self._marks: Mapping[str, BehindMark] = {}
        #: the shadows whose mark changed since the last write that worked (in order)
        self._pending: dict[str, None] = {}
        self._waiting: list[Deferred[None]] = []  # for the pending changes to be written
        self._writing: list[Deferred[None]] | None = None  # while a write runs: waiting for it
        self._size: int | None = None  # the log's whole records' bytes (None: not read yet)
        self._compact = False  # whether the next write compacts, whatever the log's length
        self._records = 0  # ... and how many they are
        self._failure_lines = LogThrottle(WRITE_FAILURE_LOG_INTERVAL, steady)

    def load(self) -> Deferred[dict[str, BehindMark]]:
        """The marks saved (none when there are no files). A snapshot or log that cannot be
        used (the snapshot not JSON, not such a file; either unreadable) is logged and moved
        aside to ``<name>.damaged``: the sync starts without those marks (as before they were
        kept), rather than not at all. A torn last record of the log (a crash while it was
        appended) is ignored, and cut off at the next append."""
        return self.run_blocking(self._read).addCallback(self._loaded)

    def _read(self) -> tuple[dict[str, BehindMark], Replayed | None, list[tuple[Path, str]]]:
        """Blocking: the saved marks, what the log held (``None``: it was set aside), and what
        is wrong with the files (and where they went)."""
        problems: list[tuple[Path, str]] = []
        marks: dict[str, BehindMark] = {}
        try:
            data = read_json(self.path)
            marks = {} if data is None else _marks(data)
        except (OSError, ValueError) as exc:
            problems.append((self.path, f"{exc}; {set_aside(self.path)}"))
        try:
            return marks, behindlog.replay(behindlog.read(self.log_path), marks), problems
        except OSError as exc:
            problems.append((self.log_path, f"{exc}; {set_aside(self.log_path)}"))
            return marks, None, problems

    def _loaded(self, read: tuple[dict[str, BehindMark], Replayed | None, list[tuple[Path, str]]]
                ) -> dict[str, BehindMark]:
        marks, replayed, problems = read
        for path, problem in problems:
            self.log.error("twin: unusable {path} ({problem}); the shadows the cloud was behind on are corrected"
                           " only as a connect's reads find them", path=str(path), problem=problem)
        if replayed is not None and replayed.ignored:
            self.log.warn("twin: {path}: the last {count} bytes are no whole record (a write cut by a crash or a"
                          " power cut); ignored", path=str(self.log_path), count=replayed.ignored)
        self._size, self._records = (0, 0) if replayed is None else (replayed.size, replayed.records)
        return marks

    def changed(self, shadow: str, marks: Mapping[str, BehindMark]) -> Deferred[None]:
        """Write ``shadow``'s state in ``marks`` (the sync's marks: marked or not), after the
        write under way if one is; fires once it is durable, or its write failed (logged, at
        most once a minute, and written again with the next call)."""
        self._marks = marks
        self._pending[shadow] = None
        return self.save()

    def save(self) -> Deferred[None]:
        """Write the changes not written yet (those of a write that failed), if any; fires once
        every change given so far is written, or its write failed."""
        if not self._pending and not self._compact:
            if self._writing is None:
                return succeed(None)
            waiter: Deferred[None] = Deferred()
            self._writing.append(waiter)
            return waiter
        waiter = Deferred()
        self._waiting.append(waiter)
        if self._writing is None and self._size is not None:
            self._write(self._size)
        return waiter

    def compact(self) -> Deferred[None]:
        """Write the marks whole to the snapshot and empty the log (after the write under way,
        with the changes not written yet), unless the log is empty already; fires once done, or
        failed (logged). At the sync's stop: an older gateway, which reads the snapshot alone,
        then has every mark (not those marked after, nor those of a crash: still in the log)."""
        if self._size is None:  # (never read: the files stay as they are)
            return succeed(None)
        if self._records or self._pending or self._writing is not None:
            self._compact = True
        return self.save()

    def _write(self, size: int) -> None:
        shadows, self._pending = list(self._pending), {}
        self._writing, self._waiting = self._waiting, []
        data = b"".join(behindlog.encode(shadow, self._marks.get(shadow)) for shadow in shadows)
        records = self._records + len(shadows)
        compact = self._compact or records > max(COMPACT_MIN_RECORDS, COMPACT_FACTOR * len(self._marks))
        self._compact = False
        snapshot = _snapshot(self._marks) if compact else None

        def done(result: tuple[int, str | None] | Failure) -> None:
            waiting, self._writing = self._writing or [], None
            if isinstance(result, Failure):  # (no write until the next call: nothing waits for it)
                for shadow in shadows:
                    self._pending.setdefault(shadow, None)
                waiting, self._waiting = waiting + self._waiting, []
                self._compact = self._compact or snapshot is not None
                self._failed(self.log_path, result.getErrorMessage())
            else:
                self._size, problem = result
                self._records = records if self._size else 0
                if problem is not None:
                    self._failed(self.path, problem)
                elif not self._pending:
                    self._failure_lines.reset()
                if self._pending or self._compact:  # changed (or compacted) while it was written
                    self._write(self._size)
            for waiter in waiting:
                waiter.callback(None)

        self.run_blocking(_append_then_compact, self.path, self.log_path, data, size, snapshot).addBoth(done)

    def _failed(self, path: Path, error: str) -> None:
        count = self._failure_lines.note()
        if count is not None:
            self.log.error("twin: writing {path} failed ({since}): {error}; written again with the next change or"
                           " catch-up", path=str(path), error=error,
                           since=since_last_line(count, "", "logged at most once a minute"))
