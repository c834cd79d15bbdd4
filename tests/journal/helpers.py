"""Shared test fixtures: runners standing in for the I/O thread, stream builders."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import Clock

from gateway.clockstep import BootClock
from gateway.filelayer import FileLayer
from gateway.journal.record import Record
from gateway.journal.service import JournalService
from gateway.journal.settings import JournalSettings, StreamSettings
from gateway.journal.stream import Stream
from tests.journal.powercut import PowerCutFiles

DIR = "/j/s"


def run_now(f: Callable[..., Any], *args: Any) -> Deferred[Any]:
    """Run a job synchronously (the I/O thread, collapsed)."""
    return maybeDeferred(f, *args)


class ManualRunner:
    """Queue jobs; the test runs them one by one with :meth:`step`."""

    def __init__(self) -> None:
        self.jobs: list[tuple[Callable[..., Any], tuple[Any, ...], Deferred[Any]]] = []

    def __call__(self, f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.jobs.append((f, args, d))
        return d

    def step(self) -> bool:
        """Run the oldest queued job; False when none is queued."""
        if not self.jobs:
            return False
        f, args, d = self.jobs.pop(0)
        maybeDeferred(f, *args).chainDeferred(d)
        return True

    def drain(self) -> None:
        """Run jobs until none is left (including those the jobs queue)."""
        while self.step():
            pass


def record(i: int, size: int = 32, received: float = 0.0) -> Record:
    """A record whose payload names ``i``."""
    return Record(f"t/{i:07d}", (b"%08d" % i).ljust(size, b"."), 1, False, received)


def open_stream(files: FileLayer, settings: StreamSettings | None = None, clock: Clock | None = None,
                run: Callable[..., Deferred[Any]] = run_now, directory: str = DIR,
                boot: BootClock | None = None) -> Stream:
    """A :class:`Stream` opened synchronously (``run`` must be synchronous)."""
    stream = Stream("s", directory, settings or StreamSettings(), files, run, clock or Clock(), boot=boot)
    stream.open()
    return stream


def appended(stream: Stream, rec: Record) -> Deferred[int]:
    """Append ``rec`` and end the reactor turn, so the stream writes it (appends made in
    one turn share a batch, written when the turn ends)."""
    d = stream.append(rec)
    stream.clock.advance(0)  # type: ignore[attr-defined]
    return d


def read_all(stream: Stream, cursor: str = "all") -> list[Record]:
    """Every record ``cursor`` has not read yet (synchronous runner only)."""
    stream.cursor(cursor)
    out: list[Record] = []
    while True:
        got: list[list[Record]] = []
        stream.read(cursor, 500).addCallback(got.append)
        if not got or not got[0]:
            return out
        out.extend(got[0])


def refusing_journal(clock: Clock) -> JournalService:
    """A started :class:`~gateway.journal.service.JournalService` (simulated files, jobs run
    at once) whose stream ``link-cloud`` has had two appends refused by a full disk, the first
    at ``clock``'s time then (its snapshot's ``refusing``), and whose ``broker-state`` takes
    appends."""
    files = PowerCutFiles()
    journal = JournalService(JournalSettings(defaults=StreamSettings(min_free_bytes=0)), Path("/state"), clock,
                             files=files, run=run_now)
    journal.startService()
    journal.stream("broker-state")
    cloud = journal.stream("link-cloud")
    files.capacity = files.used()  # full
    for i in (1, 2):
        appended(cloud, record(i)).addErrback(lambda _: None)
    return journal
