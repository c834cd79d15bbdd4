"""GatewayService.replace_children: the tree restarted with new services, in order."""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.root import GatewayService


class Recorded(Service):
    """Records its start and stop in a shared list; its start can wait or fail."""

    def __init__(self, name: str, events: list[str], fail: bool = False) -> None:
        self.setName(name)
        self.events = events
        self.fail = fail
        self.stopping: Deferred[None] | None = None

    def startService(self) -> None:
        self.events.append(f"start {self.name}")
        if self.fail:
            raise RuntimeError(f"{self.name} cannot start")
        super().startService()

    def stopService(self) -> Any:
        super().stopService()
        self.events.append(f"stop {self.name}")
        self.stopping = Deferred()
        return self.stopping


class ReplaceChildrenTests(SynchronousTestCase):
    """Old children stop in reverse order (each waited for), new ones start in order; kept ones run on."""

    def setUp(self) -> None:
        self.events: list[str] = []
        self.root = GatewayService(Clock(), 4.0)
        self.kept = Recorded("state", self.events)
        self.kept.setServiceParent(self.root)
        for name in ("journal", "links"):
            Recorded(name, self.events).setServiceParent(self.root)
        self.root.startService()
        self.events.clear()

    def build(self, *names: str, failing: str = "") -> None:
        for name in names:
            Recorded(name, self.events, fail=name == failing).setServiceParent(self.root)

    def finish_stops(self) -> None:
        for child in list(self.root):
            if isinstance(child, Recorded) and child.stopping is not None and not child.stopping.called:
                child.stopping.callback(None)

    def test_stop_in_reverse_then_start_in_order(self) -> None:
        """Each old child stops only after the one after it has; the new ones start in order."""
        old_links = self.root.getServiceNamed("links")
        d = self.root.replace_children([self.kept], lambda: self.build("journal", "links"))
        self.assertEqual(self.events, ["stop links"])  # journal waits for links to be stopped
        old_links.stopping.callback(None)
        self.root.namedServices["journal"].stopping.callback(None)
        self.assertEqual(self.successResultOf(d), ("journal", "links"))
        self.assertEqual(self.events, ["stop links", "stop journal", "start journal", "start links"])
        self.assertIsNot(self.root.getServiceNamed("links"), old_links)
        self.assertTrue(self.kept.running)
        self.assertEqual([c.name for c in self.root], ["state", "journal", "links"])

    def test_start_failure_stops_the_new_ones_and_fails(self) -> None:
        """A new child that cannot start: those started before it are stopped, the Deferred fails."""
        old = [c for c in self.root if c is not self.kept]
        d = self.root.replace_children([self.kept], lambda: self.build("journal", "links", failing="links"))
        for child in reversed(old):
            child.stopping.callback(None)
        self.finish_stops()
        self.failureResultOf(d, RuntimeError)
        self.assertEqual(self.events[-2:], ["start links", "stop journal"])
        self.assertTrue(self.kept.running)
