"""Following an app's log file as a chunked HTTP response (``tail -f`` over the admin API)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Generator

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.apps.logs import FileIdentity, backup_path, file_identity, identity_of, open_log

log = Logger()

#: Runs a blocking callable off the reactor thread.
Blocking = Callable[[Callable[[], Any]], Deferred[Any]]

#: Most bytes read from the file at a time (a look reads on until it has caught up).
CHUNK = 64 * 1024
#: Bytes before its offset a follower keeps, to see that its file was truncated and written
#: again past that offset (a log with no backups).
SEEN = 64
#: Most files one read goes through: a follower behind by that many rotations catches up
#: over several reads.
FILES_A_READ = 8


def read_from(path: Path, offset: int, identity: FileIdentity | None = None,
              limit: int = CHUNK, seen: bytes = b"") -> tuple[bytes, int, FileIdentity | None]:
    """Read what was appended to ``path`` after ``offset``, at most ``limit`` bytes (blocking).

    :param identity: the file ``offset`` is in (None: the one at ``path`` now).
    :param seen: the last bytes read before ``offset`` in that file (:func:`seen_before`): when
        they are no longer there, the file was truncated and written again past ``offset`` (a
        log with no backups), and is read from its start.
    :return: the bytes, the new offset and the file it is in. When another file is at
        ``path`` now (the log rotated), the rest of the old one is read from the backup it is
        now (``path.1``, or ``path.2`` ... when it rotated again since), then, in the same
        read, each file rotated after it and the one at ``path`` from their starts; when it is
        in none (rotated past the backups kept, or deleted), the one at ``path`` from its
        start. A file that shrank (truncated) is read again from its start. ``(b"", 0,
        None)`` when there is no file.
    """
    data = b""
    for _ in range(FILES_A_READ):
        got = _read_at(path, offset, limit - len(data), identity, seen)
        seen = b""  # (of the first file only)
        if got is not None:
            return data + got[0], got[1], got[2]
        if identity is None:
            break
        index = _backup_index(path, identity)
        if index is None:  # (gone: what it got after the last read is lost)
            identity, offset = None, 0
            continue
        rest = _read_at(backup_path(path, index), offset, limit - len(data), identity)
        if rest is None:
            continue  # (rotated again meanwhile: looked for anew)
        data, offset = data + rest[0], rest[1]
        if offset < rest[3]:
            break  # (the limit: the next read goes on in it)
        newer = _rotated_after(path, identity)
        if newer is None:  # (none yet: the program has not written since the rotation)
            break
        identity, offset = newer, 0
    return data, offset, identity


def _backup_index(path: Path, identity: FileIdentity) -> int | None:
    """Which of the rotated files of ``path`` (``path.1``, ``path.2`` ...) ``identity`` is;
    None when it is none of them. One number missing is looked past: a rotation under way
    renames ``path.1`` to ``path.2`` before ``path`` to ``path.1``."""
    index, missing = 1, 0
    while missing < 2:
        found = file_identity(backup_path(path, index))
        if found == identity:
            return index
        missing = missing + 1 if found is None else 0
        index += 1
    return None


def _rotated_after(path: Path, identity: FileIdentity) -> FileIdentity | None:
    """The file the log ``path`` went on in after the rotated file ``identity`` (the one a
    number below it, ``path`` itself below ``path.1``); None when there is none yet (nothing
    written since the rotation), or ``identity`` is no longer among the backups. The two are
    looked at again when a rotation came between the two looks."""
    for _ in range(FILES_A_READ):
        index = _backup_index(path, identity)
        if index is None:
            return None
        newer = file_identity(backup_path(path, index - 1))
        if file_identity(backup_path(path, index)) == identity:
            return newer
    return None


def seen_before(data: bytes, offset: int) -> bytes:
    """What :func:`read_from` takes as ``seen`` after ``data`` was read, ending at ``offset``:
    its last :data:`SEEN` bytes, of the file it ends in only (its last ``offset`` bytes are in
    that file; those before them, in files rotated before it)."""
    return data[len(data) - min(len(data), offset):][-SEEN:]


def _read_at(path: Path, offset: int, limit: int, identity: FileIdentity | None,
             seen: bytes = b"") -> tuple[bytes, int, FileIdentity, int] | None:
    """At most ``limit`` bytes of ``path`` from ``offset`` on (from its start when it is
    shorter, or ``seen`` is not what it holds before ``offset``), the offset after them, the
    file's identity and its size; None when no file is there, or another than ``identity``."""
    try:
        with open_log(path) as handle:
            info = os.fstat(handle.fileno())
            if identity is not None and identity_of(info) != identity:
                return None
            if seen and len(seen) <= offset <= info.st_size:
                handle.seek(offset - len(seen))
                if handle.read(len(seen)) != seen:
                    offset = 0
            if info.st_size < offset:
                offset = 0
            handle.seek(offset)
            data = handle.read(min(limit, info.st_size - offset))
    except FileNotFoundError:
        return None
    return data, offset + len(data), identity_of(info), info.st_size


@implementer(IPushProducer)
class LogFollower:
    """Writes what a log file grows by into an HTTP request until the client goes away.

    It is the request's producer: while the connection's send buffer is full (a client that
    does not read), it reads and writes nothing, and goes on from where it stopped once the
    buffer drains; nothing is held in memory for a client that stopped reading.

    :param request: the twisted.web request (answered with headers before :meth:`start`).
    :param finished: the request's ``notifyFinish()``, asked for before anything was waited
        on: one asked for after the client has gone never fires.
    :param path: the log file.
    :param offset: where to start (the file's size when the tail was read).
    :param clock: schedules the polls.
    :param blocking: runs the file reads off the reactor thread.
    :param interval: seconds between polls.
    :param on_done: called once the follower has stopped.
    :param identity: the file ``offset`` is in (:func:`~gateway.apps.logs.tail_to_end`; None:
        the one at ``path`` at the first look): when the log rotates, the rest of it is read
        from its backup first.
    :param seen: the bytes before ``offset`` in that file (:func:`seen_before` of the tail).
    """

    def __init__(self, request: Any, finished: Deferred[None], path: Path, offset: int, clock: IReactorTime,
                 blocking: Blocking, interval: float, on_done: Callable[["LogFollower"], None],
                 identity: FileIdentity | None = None, seen: bytes = b"") -> None:
        self.request = request
        self.path = path
        self.offset = offset
        self._identity = identity
        self._seen = seen
        self._blocking = blocking
        self._on_done = on_done
        self._loop = LoopingCall(self._poll)
        self._loop.clock = clock
        self._interval = interval
        self._stopped = False
        self._paused = False
        self._reading = False
        finished.addBoth(lambda _: self._end(finish=False))

    @property
    def stopped(self) -> bool:
        """Whether it has stopped: the client went away (possibly before it began) or :meth:`stop`."""
        return self._stopped

    def start(self) -> None:
        """Start polling the file."""
        self.request.registerProducer(self, True)
        self._loop.start(self._interval, now=False).addErrback(self._failed)

    def stop(self) -> None:
        """Stop following and end the response (the gateway is stopping)."""
        self._end(finish=True)

    def pauseProducing(self) -> None:
        """The client's send buffer is full: read nothing more until it drains."""
        self._paused = True

    def resumeProducing(self) -> None:
        """The send buffer drained: reading goes on at once from where it stopped (a follower
        behind a program that writes fast waits for no poll: its rotations would take the
        lines not read yet)."""
        self._paused = False
        if self._loop.running:
            self._read_on().addErrback(self._failed)

    def stopProducing(self) -> None:
        """The connection is going: stop following."""
        self._end(finish=False)

    def _poll(self) -> Deferred[None]:
        return self._read_on()

    @inlineCallbacks
    def _read_on(self) -> Generator[Deferred[Any], Any, None]:
        # A full read leaves more to read: read on at once (a program that writes more than a
        # read a poll would leave it behind for good), until it is caught up or the client's
        # send buffer is full. One read at a time: a poll while a resume reads waits for none.
        if self._reading:
            return
        self._reading = True
        try:
            while not self._paused and not self._stopped:
                before, identity = self.offset, self._identity
                data, self.offset, self._identity = yield self._blocking(
                    lambda: read_from(self.path, before, identity, seen=self._seen))
                read_on = identity is not None and self._identity == identity and self.offset - before == len(data)
                self._seen = seen_before(self._seen + data if read_on else data, self.offset)
                if data and not self._stopped:
                    self.request.write(data)
                if len(data) < CHUNK:
                    return
        finally:
            self._reading = False

    def _failed(self, failure: Failure) -> None:
        # The response ends: a follower that no longer reads would hold its client for ever.
        log.failure("admin API: following {path} failed; its response ends", failure, path=str(self.path))
        self._end(finish=True)

    def _end(self, finish: bool) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self._loop.running:
            self._loop.stop()
        if finish and not self.request.finished:
            self.request.unregisterProducer()
            self.request.finish()
        self._on_done(self)
