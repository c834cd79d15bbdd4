"""The journal service: owns the I/O thread and the streams under the journal directory."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, FirstError, gatherResults, succeed
from twisted.internet.interfaces import IReactorThreads, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.clockstep import BootClock
from gateway.errors import JournalError
from gateway.journal.cursors import check_name
from gateway.statelock import LOCK_FILE
from gateway.journal.dropping import drop_directory, is_aside
from gateway.journal.errors import JournalClosedError, StreamInUseError, UnknownStreamError
from gateway.filelayer import FileLayer, OSFiles
from gateway.journal.iothread import IOThread, Runner
from gateway.journal.settings import JournalSettings
from gateway.journal.losses import LossEntry
from gateway.journal.snapshot import DroppedStream, JournalSnapshot, streams_ledger_failing, streams_refusing
from gateway.journal.stream import SLOW_WRITE_S, Stream
from gateway.shown import shown_repr
from gateway.stateaccess import StateAccessError, is_permission_error, refusal


def _free_of_each(files: FileLayer, directories: list[str]) -> list[int | None]:
    """The free space of each directory's filesystem (None where it cannot be measured);
    blocking: run on the journal's I/O thread."""
    frees: list[int | None] = []
    for directory in directories:
        try:
            frees.append(files.free_bytes(directory))
        except OSError:
            frees.append(None)
    return frees


class JournalService(Service):
    """The disk journal: named streams of records, durable before acknowledged.

    ``startService`` opens (recovers) every stream found on disk and every stream
    named in the settings; :meth:`stream` returns one by name, creating it when
    needed. All file work runs on one dedicated thread (not the reactor thread and
    not the reactor's shared thread pool), so a slow fsync never blocks the reactor
    or treq/DNS. ``stopService`` writes and fsyncs everything pending first.

    :param settings: the ``journal`` section of the configuration.
    :param state_dir: the gateway's state directory; the journal lives in
        ``settings.directory`` under it (unless that path is absolute).
    :param reactor: the reactor (its clock drives timers and latencies).
    :param files: the file layer (tests pass a simulated one).
    :param run: runs blocking jobs; by default on the service's own one-thread pool (which
        times each write: the streams' group commit adapts to a slow disk, see
        :data:`~gateway.journal.stream.SLOW_WRITE_S`; a test's runner has no such times).
    :param loop: the asyncio loop under ``reactor`` (``tap.py`` creates it), if any: its
        ``call_soon`` ends a turn's appends and its ``call_soon_threadsafe`` delivers the
        I/O thread's results, both cheaper than the reactor's portable calls used without it.
    :param in_use: the streams the configuration uses, each with what uses it in words
        (``the link 'cloud'``): the others may be dropped (:meth:`drop`); ``None``: every
        stream is in use.
    :param boot: the clock of this boot, for the streams (which records a step of the wall
        clock moves: :class:`~gateway.journal.stream.Stream`); None: not known.
    """

    log = Logger()

    def __init__(self, settings: JournalSettings, state_dir: Path, reactor: Any,
                 files: FileLayer | None = None, run: Runner | None = None,
                 loop: asyncio.AbstractEventLoop | None = None, in_use: Mapping[str, str] | None = None,
                 boot: BootClock | None = None) -> None:
        self.setName("journal")
        self.boot = boot
        self.settings = settings
        self.directory = str(Path(state_dir) / settings.directory)
        self.reactor: IReactorTime = reactor
        self.files = files if files is not None else OSFiles()
        self.loop = loop
        self._io: IOThread | None = None
        self._run = run
        self._streams: dict[str, Stream] = {}
        self._opening: dict[str, Deferred[None]] = {}
        self._checker: LoopingCall | None = None
        self.in_use = dict(in_use) if in_use is not None else None
        self._dropping: set[str] = set()
        self._dropped: list[DroppedStream] = []

    def run(self, f: Any, *args: Any) -> Deferred[Any]:
        """Run blocking ``f(*args)`` on the journal's I/O thread."""
        if self._run is not None:
            return self._run(f, *args)
        if self._io is None:
            raise JournalClosedError("the journal is not running")
        return self._io.run(f, *args)

    def startService(self) -> Deferred[None]:
        """Start the I/O thread, recover every stream, start the retention checks."""
        super().startService()
        if self._run is None:
            reactor: IReactorThreads = self.reactor  # type: ignore[assignment]
            self._io = IOThread(reactor, "gateway-journal-io", self.loop)
            self._io.start()
        try:
            self.files.makedirs(self.directory)
        except OSError as exc:
            raise JournalError(f"the journal directory cannot be made: {exc}") from exc
        names = set(self.settings.streams)
        for entry in self.files.listdir(self.directory):
            if entry == LOCK_FILE:  # (the gateway's lock, in a journal directory outside the state directory)
                continue
            if is_aside(entry):  # (a drop a kill cut short: the stream was gone already)
                self.run(self.files.remove_tree, os.path.join(self.directory, entry)).addCallbacks(
                    lambda _, e=entry: self.log.info("journal: removed {entry}, left by a drop cut short", entry=e),
                    lambda f, e=entry: self.log.error("journal: removing {entry}, left by a drop cut short, failed:"
                                                      " {error}", entry=e, error=f.value))
                continue
            try:
                names.add(check_name(entry))
            except ValueError:
                self.log.warn("journal: ignoring {entry!r} in {directory}", entry=entry, directory=self.directory)
        for name in sorted(names):
            self.stream(name)
        self._checker = LoopingCall(self._check_limits)
        self._checker.clock = self.reactor
        self._checker.start(self.settings.retention_check_s, now=False)
        ds = list(self._opening.values())
        d = gatherResults(ds, consumeErrors=True).addCallback(lambda _: None)
        return d.addErrback(lambda f: f.value.subFailure if f.check(FirstError) else f)

    def stream(self, name: str) -> Stream:
        """The stream called ``name``, created (and opened in the background) if new.

        Appends made before it finished opening are queued and keep their order.

        :raises ValueError: ``name`` is not a valid stream name.
        :raises JournalClosedError: the service is not running.
        """
        s = self._streams.get(name)
        if s is not None:
            return s
        if not self.running:
            raise JournalClosedError("the journal is not running")
        loop = self.loop
        s = Stream(check_name(name), os.path.join(self.directory, name), self.settings.for_stream(name),
                   self.files, self.run, self.reactor, soon=loop.call_soon if loop is not None else None,
                   slow_write_s=SLOW_WRITE_S if self._run is None else 0.0, boot=self.boot)
        self._streams[name] = s
        d = s.open()
        d.addErrback(self._open_failed, name)
        self._opening[name] = d
        return s

    def _open_failed(self, failure: Failure, name: str) -> Failure:
        if failure.check(OSError, StateAccessError):  # (a file of the stream that cannot be read: no bug, no traceback)
            why = failure.value
            if is_permission_error(why) and why.filename:  # (told with its owner, its mode and what to do)
                why = refusal(Path(why.filename))
            error = JournalError(f"journal stream {name} cannot be opened: {why}")
            self.log.error("{error}", error=str(error))
            return Failure(error)
        self.log.failure("journal stream {stream} failed to open", failure, stream=name)
        return failure

    def uses(self, name: str) -> bool:
        """Whether the configuration uses stream ``name`` (see ``in_use``)."""
        return self.in_use is None or name in self.in_use

    def drop(self, name: str, force: bool = False) -> Deferred[DroppedStream]:
        """Delete stream ``name``, which the configuration no longer uses (its link was removed
        or renamed), and everything it keeps: segments, cursors, loss ledger.

        The stream is closed first (what is pending written, its cursors saved), then its
        directory is renamed aside and deleted on the I/O thread (:mod:`gateway.journal.dropping`).

        :param force: drop it even though its cursors have not acknowledged every record:
            those are counted lost (reason ``dropped``) and logged.
        :returns: (a Deferred of) what was dropped, once its directory is gone.
        :raises UnknownStreamError: no such stream (or one being dropped).
        :raises StreamInUseError: the configuration uses it.
        :raises StreamNotDrainedError: (as the Deferred's failure) it holds records not
            acknowledged and ``force`` is false; nothing changed.
        :raises JournalClosedError: the service is not running.
        """
        stream = self._streams.get(name)
        if stream is None or name in self._dropping:
            raise UnknownStreamError(f"no journal stream {shown_repr(name)}")
        if self.uses(name):
            raise StreamInUseError(name, self.in_use[name] if self.in_use is not None else
                                   "this journal was given no list of the streams it uses")
        if not self.running:
            raise JournalClosedError("the journal is not running")
        self._dropping.add(name)
        d = stream.close_to_drop(force)
        d.addCallback(self._delete_directory, stream)
        return d.addBoth(self._drop_ended, name)

    def _delete_directory(self, lost: LossEntry | None, stream: Stream) -> Deferred[DroppedStream]:
        dropped = DroppedStream(stream.name, lost.records if lost else 0, lost.bytes if lost else 0,
                                self.reactor.seconds())
        d = self.run(drop_directory, self.files, stream.directory)

        def gone(_: object) -> DroppedStream:
            del self._streams[stream.name]
            self._opening.pop(stream.name, None)
            self._dropped.append(dropped)
            self.log.info("journal {stream}: dropped; {directory} removed", stream=stream.name,
                          directory=stream.directory)
            return dropped

        def failed(failure: Failure) -> Failure:
            # (closed: it takes nothing more; what is left of it opens again at the next start, or
            # is deleted then when it was renamed aside already)
            error = JournalError(f"journal {stream.name}: removing {stream.directory} failed: {failure.value}")
            self.log.error("{error}", error=str(error))
            return Failure(error)

        return d.addCallbacks(gone, failed)

    def _drop_ended(self, result: Any, name: str) -> Any:
        self._dropping.discard(name)
        return result

    def streams(self) -> dict[str, Stream]:
        """Every stream by name."""
        return dict(self._streams)

    def snapshot(self) -> JournalSnapshot:
        """Every stream's :class:`~gateway.journal.snapshot.StreamSnapshot`, by name, and whether
        one refuses appends or fails to write its loss ledger (no I/O)."""
        streams = tuple(s.snapshot() if self.uses(n) else replace(s.snapshot(), in_use=False)
                        for n, s in sorted(self._streams.items()))
        return JournalSnapshot(self.directory, streams, streams_refusing(streams), streams_ledger_failing(streams),
                               tuple(self._dropped))

    def _check_limits(self) -> Deferred[None]:
        """Measure every stream's free disk in one job on the I/O thread (one hand-off, not
        one per stream), then enforce each stream's limits with its measurement (a stream
        whose measurement failed waits for the next check, as it always did)."""
        streams = list(self._streams.values())
        d = self.run(_free_of_each, self.files, [s.directory for s in streams])
        d.addCallback(self._enforce, streams)
        return d.addErrback(lambda _: None)  # (a failure would stop the LoopingCall)

    @staticmethod
    def _enforce(frees: list[int | None], streams: list[Stream]) -> None:
        for stream, free in zip(streams, frees):
            if free is not None:
                stream.free_measured(free)
                stream.enforce_limits()

    @staticmethod
    def _close(_: object, stream: Stream) -> Deferred[None]:
        return stream.close()

    def stopService(self) -> Deferred[None]:
        """Write and fsync everything pending, persist cursors, stop the I/O thread."""
        super().stopService()
        if self._checker is not None and self._checker.running:
            self._checker.stop()
        ds = [self._opening[n].addCallback(self._close, s) for n, s in self._streams.items()]
        return gatherResults(ds, consumeErrors=True).addBoth(self._close_files)

    def _close_files(self, result: Any) -> Deferred[None]:
        d = self.run(self.files.close_all) if (self._io or self._run) else succeed(None)

        def stop_thread(_: Any) -> Any:
            io, self._io = self._io, None
            if io is None:
                return result
            return io.stop().addCallback(lambda _: result)

        return d.addBoth(stop_thread).addCallback(lambda _: None)
