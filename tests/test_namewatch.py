"""Waiting for a file by its name: woken by its change through inotify, else after its time."""

from __future__ import annotations

from pathlib import Path

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from gateway.namewatch import NameWatch, inotify_maker
from tests.apps.realtime import wait_until


class InotifyTests(TestCase):
    """With inotify on the running reactor; the waits' clock never moves."""

    timeout = 10

    def setUp(self) -> None:
        self.dir = Path(self.mktemp())
        self.dir.mkdir()
        self.clock = Clock()
        self.watch = NameWatch(self.clock, self.dir / "result.json", inotify_maker(reactor))
        self.addCleanup(self.watch.close)

    @inlineCallbacks
    def test_the_change_of_the_name_wakes_the_wait(self) -> None:
        """A wait under way ends when the name is renamed in, another name leaving it waiting."""
        waiting = self.watch.wait(60.0)
        (self.dir / "other").write_text("x")
        (self.dir / "tmp").write_text("{}")
        (self.dir / "tmp").rename(self.dir / "result.json")
        yield wait_until(lambda: waiting.called, 5, what="the wake-up")
        self.assertEqual(self.clock.getDelayedCalls(), [])  # (its time limit cancelled)

    @inlineCallbacks
    def test_a_change_while_nobody_waits_wakes_the_next_wait(self) -> None:
        """A change between two waits (while the waiter looks at the file) is not missed."""
        probe = NameWatch(self.clock, self.dir / "result.json", inotify_maker(reactor))
        self.addCleanup(probe.close)
        probing = probe.wait(60.0)
        (self.dir / "result.json").write_text("{}")
        # (both watches' events are queued by the write, and read in the same turn of the reactor)
        yield wait_until(lambda: probing.called, 5, what="the probe's wake-up")
        self.successResultOf(self.watch.wait(60.0))
        self.assertNoResult(self.watch.wait(60.0))


class UnwatchedTests(SynchronousTestCase):
    """Without inotify (a fake reactor, a folder that is gone) a wait lasts its time."""

    def test_a_fake_reactor_gets_no_inotify(self) -> None:
        self.assertIsNone(inotify_maker(Clock()))

    def test_without_a_watch_the_wait_lasts_its_time(self) -> None:
        """No inotify, or a folder it cannot watch (not there): each wait ends after its time."""
        clock = Clock()
        for notifier in (None, inotify_maker(reactor)):
            watch = NameWatch(clock, Path(self.mktemp()) / "result.json", notifier)
            waiting = watch.wait(1.0)
            clock.advance(0.9)
            self.assertNoResult(waiting)
            clock.advance(0.1)
            self.successResultOf(waiting)
            watch.close()
