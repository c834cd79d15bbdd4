"""The shadows the cloud is behind on, on disk: ``shadows-behind.json`` beside ``things.json``.

A shadow request the journal refused leaves its shadow *behind* (:mod:`gateway.twin.catchup`):
the twin holds the change, the cloud does not, and the sync reads and corrects the shadow
later. The marks are written (atomically, off the reactor thread) whenever the set changes,
and read at the sync's start, so that a restart still corrects them: a shadow whose
``delete`` was refused is no longer in the twin, and only its mark says to delete it.

The file is ``{"shadows": {"<shadow>": {"thing": "<thing id>", "since": <seconds>}}}`` (the
classic shadow's name is ``""``); a reader ignores keys it does not know, so later versions
may add some.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.atomic import read_json, set_aside, write_json_atomically
from gateway.blocking import RunBlocking
from gateway.logthrottle import LogThrottle

#: The file's name, in the twin's directory.
BEHIND_FILE = "shadows-behind.json"
#: Seconds between two log lines of failed writes, at least.
WRITE_FAILURE_LOG_INTERVAL = 60.0


@dataclass(frozen=True)
class BehindMark:
    """A shadow the cloud is behind on.

    :param thing: the twin's thing the shadow is of.
    :param since: when a request of it was first refused since it was last up to date
        (seconds since the epoch).
    """

    thing: str
    since: float


def _marks(data: Any) -> dict[str, BehindMark]:
    """The marks in the file's JSON ``data``.

    :raises ValueError: ``data`` is no such file's.
    """
    shadows = data.get("shadows") if isinstance(data, dict) else None
    if not isinstance(shadows, dict):
        raise ValueError("not a shadows-behind file (no shadows)")
    marks = {}
    for shadow, mark in shadows.items():
        if (not isinstance(mark, dict) or not isinstance(mark.get("thing"), str)
                or type(mark.get("since")) not in (int, float)):
            raise ValueError(f"not a mark of a shadow behind: {shadow!r}: {mark!r}")
        marks[shadow] = BehindMark(mark["thing"], float(mark["since"]))
    return marks


class BehindFile:
    """Reads and writes the marks of one shadow sync.

    :param path: the file (``<state_dir>/twin/shadows-behind.json``).
    :param run_blocking: runs the file work off the reactor thread.
    :param steady: a clock that never steps (the log's throttle).
    """

    log = Logger()

    def __init__(self, path: Path, run_blocking: RunBlocking, steady: Callable[[], float]) -> None:
        self.path = path
        self.run_blocking = run_blocking
        self._writing = False
        #: the marks to write next (the last ones given, while not on disk), else ``None``
        self._unsaved: dict[str, BehindMark] | None = None
        self._failure_lines = LogThrottle(WRITE_FAILURE_LOG_INTERVAL, steady)

    def load(self) -> Deferred[dict[str, BehindMark]]:
        """The marks saved (none when there is no file). A file that cannot be used (not
        JSON, not such a file, unreadable) is logged and moved aside to
        ``shadows-behind.json.damaged``: the sync starts without those marks (as before they
        were kept), rather than not at all."""
        return self.run_blocking(self._read).addCallback(self._loaded)

    def _read(self) -> dict[str, BehindMark] | str:
        """Blocking: the saved marks, or what is wrong with the file (and where it went)."""
        try:
            data = read_json(self.path)
            return {} if data is None else _marks(data)
        except (OSError, ValueError) as exc:
            return f"{exc}; {set_aside(self.path)}"

    def _loaded(self, read: dict[str, BehindMark] | str) -> dict[str, BehindMark]:
        if isinstance(read, str):
            self.log.error("twin: unusable {path} ({problem}); the shadows the cloud was behind on are corrected"
                           " only as a connect's reads find them", path=str(self.path), problem=read)
            return {}
        return read

    def save(self, marks: dict[str, BehindMark] | None = None) -> None:
        """Write ``marks`` (a copy is taken), after the write under way if one is; without
        ``marks``, write again the last ones given if a write of them failed (else nothing).
        A failed write is logged (at most once a minute) and kept for the next call."""
        if marks is not None:
            self._unsaved = dict(marks)
        if self._unsaved is not None and not self._writing:
            self._write(self._unsaved)

    def _write(self, marks: dict[str, BehindMark]) -> None:
        self._writing = True
        data = {"shadows": {shadow: {"thing": mark.thing, "since": mark.since} for shadow, mark in marks.items()}}

        def done(result: object) -> None:
            self._writing = False
            if isinstance(result, Failure):
                count = self._failure_lines.note()
                if count is not None:
                    self.log.error("twin: writing {path} failed ({count} since the last such line; logged at most"
                                   " once a minute): {error}; written again with the next change or catch-up",
                                   path=str(self.path), count=count, error=result.getErrorMessage())
                return
            if self._unsaved is marks:
                self._unsaved = None
                self._failure_lines.reset()
            else:  # changed while it was written
                self.save()

        self.run_blocking(write_json_atomically, self.path, data).addBoth(done)
