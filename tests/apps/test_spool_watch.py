"""The spool is looked at when inotify says a package arrived, and on the clock only when needed
(a fake inotify and a fake clock; the real inotify on a temporary folder at the end)."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any, Callable, Generator

from twisted.internet import reactor as global_reactor
from twisted.internet.defer import Deferred, inlineCallbacks, maybeDeferred, succeed
from twisted.internet.inotify import (IN_CLOSE_WRITE, IN_CREATE, IN_DELETE_SELF, IN_MOVED_TO, INotify,
                                      INotifyError)
from twisted.internet.task import Clock, deferLater
from twisted.logger import formatEvent
from twisted.python.filepath import FilePath
from twisted.python.runtime import platform
from twisted.trial.unittest import SynchronousTestCase, TestCase

from gateway.apps.operations import InstallResult
from gateway.apps.spool import RECHECK_AFTER, WRITER_QUIET, SpoolWatcher
from tests.apps.realtime import wait_until
from tests.apps.test_spool import refuse_looks
from tests.logevents import capture_log_events

INSTALLED = InstallResult(True, "installed", "p", "1", None, "p 1 installed")


def inline(work: Callable[[], Any]) -> Deferred[Any]:
    """Run blocking work at once (the tests own the file system)."""
    return maybeDeferred(work)


class FakeNotifier:
    """Stands for `INotify`: records the watch; the test reports events through `event`."""

    def __init__(self, refuse: Exception | None = None) -> None:
        self.refuse = refuse
        self.watched: list[tuple[FilePath[Any], int]] = []
        self.callbacks: list[Callable[[object, FilePath[bytes], int], None]] = []
        self.closed = False

    def watch(self, path: FilePath[Any], mask: int, callbacks: list[Any]) -> int:
        if self.refuse is not None:
            raise self.refuse
        self.watched.append((path, mask))
        self.callbacks = callbacks
        return 1

    def startReading(self) -> None:
        pass

    def loseConnection(self) -> None:
        self.closed = True

    def event(self, path: Path, mask: int) -> None:
        for callback in self.callbacks:
            callback(None, FilePath(os.fsencode(str(path))), mask)


class SpoolWatchTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.incoming = Path(self.mktemp())
        self.incoming.mkdir()  # (as the apps service makes it before it starts the watcher)
        self.clock = Clock()
        self.calls: list[str] = []
        self.notifiers: list[FakeNotifier] = []
        self.refuse: Exception | None = None

    def watcher(self) -> SpoolWatcher:
        def record(archive: Path) -> Deferred[InstallResult]:
            self.calls.append(archive.name)
            return succeed(INSTALLED)

        def notifier() -> Any:
            self.notifiers.append(FakeNotifier(self.refuse))
            return self.notifiers[-1]

        spool = SpoolWatcher(self.incoming, record, self.clock, inline, 1.0, notifier)
        spool.start()
        self.addCleanup(spool.stop)
        return spool

    def test_a_renamed_package_is_installed_when_it_arrives(self) -> None:
        """Watched, the spool is looked at once at start (what arrived while the gateway was
        down), then when a package is renamed into it: on the clock only once, RECHECK_AFTER
        the last event."""
        (self.incoming / "early.v1.tar.gz").write_bytes(b"x")
        self.watcher()
        self.assertEqual(self.calls, ["early.v1.tar.gz"])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        (self.incoming / ".p.part").write_bytes(b"x")
        self.notifiers[0].event(self.incoming / ".p.part", IN_CLOSE_WRITE)
        self.assertEqual(self.calls, ["early.v1.tar.gz"], "a temporary name is not looked at")
        os.replace(self.incoming / ".p.part", self.incoming / "p.v1.tar.gz")
        self.notifiers[0].event(self.incoming / "p.v1.tar.gz", IN_MOVED_TO)
        self.assertEqual(self.calls, ["early.v1.tar.gz", "p.v1.tar.gz"])
        self.assertTrue((self.incoming / "done" / "p.v1.tar.gz").exists())
        self.assertEqual([call.getTime() for call in self.clock.getDelayedCalls()], [RECHECK_AFTER])
        self.clock.advance(RECHECK_AFTER)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_file_still_being_written_is_not_taken_early(self) -> None:
        """A package written under its final name (cp, scp) is created empty: it is taken
        once it is closed, not when it is created."""
        self.watcher()
        archive = self.incoming / "p.v1.tar.gz"
        archive.write_bytes(b"half")
        self.notifiers[0].event(archive, IN_CREATE)
        self.assertEqual(self.calls, [])
        self.notifiers[0].event(archive, IN_CLOSE_WRITE)
        self.assertEqual(self.calls, ["p.v1.tar.gz"])

    def test_a_file_being_written_is_left_by_a_look_for_another_package(self) -> None:
        """A package still being written under its final name (cp) is left alone by a look
        that another package's arrival makes meanwhile, and taken once it is closed (it was
        taken half written: refused as not a readable tar archive, moved to failed/, the copy
        going on into the file there)."""
        self.watcher()
        slow = self.incoming / "slow.v1.tar.gz"
        slow.write_bytes(b"half")
        self.notifiers[0].event(slow, IN_CREATE)
        (self.incoming / "other.v1.tar.gz").write_bytes(b"x")
        self.notifiers[0].event(self.incoming / "other.v1.tar.gz", IN_MOVED_TO)
        self.assertEqual(self.calls, ["other.v1.tar.gz"])
        self.assertTrue(slow.exists())
        self.notifiers[0].event(slow, IN_CLOSE_WRITE)
        self.assertEqual(self.calls, ["other.v1.tar.gz", "slow.v1.tar.gz"])

    def test_a_package_whose_event_was_lost_is_taken_by_a_look_after_the_burst(self) -> None:
        """inotify's queue overflowed (the reactor held up while thousands of names were made):
        Twisted drops IN_Q_OVERFLOW and the events after it are lost, here a package's
        IN_MOVED_TO after a burst of temporary names. Any event in the folder brings one more
        look RECHECK_AFTER seconds later, which takes the package; then no timer is left (an
        idle spool has none)."""
        self.watcher()
        (self.incoming / ".a.part").write_bytes(b"x")
        self.notifiers[0].event(self.incoming / ".a.part", IN_CLOSE_WRITE)
        (self.incoming / "p.v1.tar.gz").write_bytes(b"x")  # (its IN_MOVED_TO lost)
        self.assertEqual(self.calls, [])
        self.clock.advance(RECHECK_AFTER)
        self.assertEqual(self.calls, ["p.v1.tar.gz"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_file_whose_close_was_lost_is_taken_once_it_stops_changing(self) -> None:
        """A package created under its final name whose IN_CLOSE_WRITE was lost (an overflowed
        queue) is looked at every RECHECK_AFTER seconds while it is left: taken once it has
        not changed for WRITER_QUIET seconds, not while it still grows. One removed is
        forgotten (no more looks)."""
        self.watcher()
        archive = self.incoming / "p.v1.tar.gz"
        archive.write_bytes(b"h")
        self.notifiers[0].event(archive, IN_CREATE)  # (its close lost)
        gone = self.incoming / "gone.v1.tar.gz"
        gone.write_bytes(b"h")
        self.notifiers[0].event(gone, IN_CREATE)
        gone.unlink()
        for size in range(2, int(WRITER_QUIET / RECHECK_AFTER) + 2):
            archive.write_bytes(b"h" * size)  # (still written to)
            self.clock.advance(RECHECK_AFTER)
        self.assertEqual(self.calls, [])
        self.clock.advance(WRITER_QUIET)
        self.assertEqual(self.calls, ["p.v1.tar.gz"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_what_is_created_whole_is_looked_at(self) -> None:
        """A hard link to a package written elsewhere, or a symbolic link (refused), is only
        created: that alone makes a look."""
        self.watcher()
        elsewhere = Path(self.mktemp())
        elsewhere.write_bytes(b"x")
        os.link(elsewhere, self.incoming / "p.v1.tar.gz")
        self.notifiers[0].event(self.incoming / "p.v1.tar.gz", IN_CREATE)
        self.assertEqual(self.calls, ["p.v1.tar.gz"])
        (self.incoming / "l.v1.tar.gz").symlink_to(elsewhere.absolute())
        self.notifiers[0].event(self.incoming / "l.v1.tar.gz", IN_CREATE)
        self.assertTrue((self.incoming / "failed" / "l.v1.tar.gz").is_symlink())

    def test_an_arrival_during_a_look_makes_another_look(self) -> None:
        """A package that arrives while a look is installing is looked at once that look ends."""
        pending: list[Deferred[InstallResult]] = []

        def slow(archive: Path) -> Deferred[InstallResult]:
            self.calls.append(archive.name)
            pending.append(Deferred())
            return pending[-1]

        def notifier() -> Any:
            return self.notifiers[-1]

        self.notifiers.append(FakeNotifier())
        spool = SpoolWatcher(self.incoming, slow, self.clock, inline, 1.0, notifier)
        spool.start()
        self.addCleanup(spool.stop)
        (self.incoming / "a.v1.tar.gz").write_bytes(b"x")
        self.notifiers[0].event(self.incoming / "a.v1.tar.gz", IN_CLOSE_WRITE)
        (self.incoming / "b.v1.tar.gz").write_bytes(b"x")
        self.notifiers[0].event(self.incoming / "b.v1.tar.gz", IN_CLOSE_WRITE)
        self.assertEqual(self.calls, ["a.v1.tar.gz"])
        pending[0].callback(INSTALLED)
        self.assertEqual(self.calls, ["a.v1.tar.gz", "b.v1.tar.gz"])
        pending[1].callback(INSTALLED)

    def test_a_watch_refused_falls_back_to_the_clock(self) -> None:
        """When the folder cannot be watched (fs.inotify.max_user_watches reached: ENOSPC),
        that is logged once and the folder is looked at every interval."""
        events = capture_log_events(self)
        self.refuse = INotifyError(errno.ENOSPC, "No space left on device")
        self.watcher()
        (self.incoming / "p.v1.tar.gz").write_bytes(b"x")
        self.clock.advance(1.0)
        self.clock.advance(1.0)
        self.assertEqual(self.calls, ["p.v1.tar.gz"])
        self.assertEqual([n.closed for n in self.notifiers], [True, True, True])
        said = [formatEvent(e) for e in events if e.get("log_namespace") == "gateway.apps.spool"
                and "watch" in formatEvent(e)]
        self.assertEqual(len(said), 1, said)
        self.assertIn("looked at every 1 s", said[0])

    def test_a_lost_watch_falls_back_to_the_clock_until_watched_again(self) -> None:
        """The folder removed (IN_DELETE_SELF) ends the watch: logged once, looked at every
        interval, watched again at the first look that can, then no look on the clock."""
        events = capture_log_events(self)
        self.watcher()
        self.refuse = INotifyError(errno.ENOENT, "No such file or directory")
        self.notifiers[0].event(self.incoming, IN_DELETE_SELF)
        self.assertTrue(self.notifiers[0].closed)
        self.clock.advance(1.0)
        self.clock.advance(1.0)
        self.refuse = None
        self.clock.advance(1.0)
        self.assertFalse(self.notifiers[-1].closed)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        said = [formatEvent(e) for e in events if e.get("log_namespace") == "gateway.apps.spool"]
        self.assertEqual(len([s for s in said if "no longer watched" in s]), 1, said)
        self.assertEqual(len([s for s in said if s.endswith("is watched again")]), 1, said)
        self.assertEqual(len([s for s in said if "cannot watch" in s]), 0, "logged once, as lost")

    def test_a_look_refused_is_tried_again_on_the_clock(self) -> None:
        """Watched, a look the system refuses (EMFILE) is still tried again every interval
        until one works; then the clock is left alone."""
        out_of_fds = refuse_looks(self)
        self.watcher()
        (self.incoming / "p.v1.tar.gz").write_bytes(b"x")
        self.clock.advance(1.0)
        self.assertEqual(self.calls, [])
        out_of_fds[0] = False
        self.clock.advance(1.0)
        self.assertEqual(self.calls, ["p.v1.tar.gz"])
        self.assertEqual(self.clock.getDelayedCalls(), [])


class RealINotifyTests(TestCase):
    """The real inotify on a temporary folder, with the reactor (Linux only)."""

    if not platform.supportsINotify():
        skip = "inotify is Linux's"

    timeout = 10

    def test_a_package_copied_then_renamed_is_installed_at_once(self) -> Deferred[None]:
        """A package written under a temporary name and renamed is installed at once, with the
        interval far away; one written under its final name, once it is closed."""
        incoming = Path(self.mktemp())
        installed: Deferred[list[str]] = Deferred()
        names: list[str] = []

        def install(archive: Path) -> Deferred[InstallResult]:
            names.append(archive.name)
            if len(names) == 2:
                installed.callback(names)
            return succeed(INSTALLED)

        incoming.mkdir()
        spool = SpoolWatcher(incoming, install, global_reactor, inline, 300.0,
                             lambda: INotify(global_reactor))
        spool.start()
        self.addCleanup(spool.stop)

        def drop() -> None:
            (incoming / ".a.part").write_bytes(b"x")
            os.replace(incoming / ".a.part", incoming / "a.v1.tar.gz")
            with open(incoming / "b.v1.tar.gz", "wb") as out:
                out.write(b"x")
        deferLater(global_reactor, 0.05, drop)

        def check(got: list[str]) -> None:
            self.assertEqual(got, ["a.v1.tar.gz", "b.v1.tar.gz"])
        return installed.addCallback(check)

    @inlineCallbacks
    def test_a_file_in_the_folders_place_is_not_watched(self) -> Generator[Any, Any, None]:
        """incoming/ replaced by a file: the spool is not watched (a watch on the file would
        report no package, and 'watched again' would be a lie) but looked at every interval,
        so a folder made again is found even while the file, removed, is still held open
        (its watch then ends only at its close)."""
        events = capture_log_events(self)
        incoming = Path(self.mktemp())
        names: list[str] = []

        def install(archive: Path) -> Deferred[InstallResult]:
            names.append(archive.name)
            return succeed(INSTALLED)

        incoming.mkdir()
        spool = SpoolWatcher(incoming, install, global_reactor, inline, 0.1, lambda: INotify(global_reactor))
        spool.start()
        self.addCleanup(spool.stop)
        incoming.rmdir()
        held = open(incoming, "w")
        self.addCleanup(held.close)
        said = lambda text: [e for e in events if text in formatEvent(e)]  # noqa: E731
        yield wait_until(lambda: said("no longer watched"), 5, what="the lost watch seen")
        os.unlink(incoming)
        incoming.mkdir()
        (incoming / "p.v1.tar.gz").write_bytes(b"x")
        yield wait_until(lambda: names, 5, what="the package taken")
        self.assertEqual([formatEvent(e) for e in said("is watched again")],
                         [f"apps: the spool {incoming} is watched again"], "not while a file was there")
