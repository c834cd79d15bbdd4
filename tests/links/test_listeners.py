"""An MQTT link whose status listener or extension raises (a bug in it) logs that and goes
on: the connection it just accepted stays, the reconnects go on, the status is told."""

from __future__ import annotations

from typing import Any

from twisted.internet import error
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import Logger, capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from gateway.journal.record import Record
from gateway.links.listeners import ListenerCalls
from gateway.links.mqtt import MQTTLink
from gateway.links.settings import LinkSettings
from tests.links.memory import MemoryStream
from tests.links.test_service import accepted_silently

CONNACK = b"\x20\x02\x00\x00"


class Broken:
    """A listener, or an extension, with a bug: every call raises (after noting it)."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def __call__(self, *args: Any) -> None:
        self.calls.append(args)
        raise RuntimeError("a bug in the listener")

    def link_connected(self, protocol: Any) -> None:
        self(protocol)

    def link_disconnected(self) -> None:
        self()

    def cloud_message(self, publish: Any) -> bool:
        return False


class ListenerFailureTests(SynchronousTestCase):
    """The calls a link makes to what it was handed, from a connection's own handling."""

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.stream = MemoryStream("link-cloud")
        self.statuses: list[tuple[bool, str]] = []

    def start(self, on_status: Any) -> MQTTLink:
        link = MQTTLink("cloud", LinkSettings(loss_topic=None), self.stream, self.reactor, ("t", "gw1"),
                        lambda *args: None, on_status, retry_policy=lambda attempt: 1.0)
        self.successResultOf(link.start())
        self.addCleanup(link.stop)
        return link

    def noted(self, name: str, connected: bool, cause: str) -> None:
        self.statuses.append((connected, cause))

    def lines(self, events: list[Any]) -> list[str]:
        return [str(formatEvent(e)) for e in events]

    def test_a_failing_status_listener_keeps_the_accepted_connection(self) -> None:
        """A status listener that raises when the CONNACK comes is logged with its traceback;
        the connection stays and the stream goes up. Its error went out of the protocol's
        dataReceived: Twisted closed the connection the cloud had just accepted, for ever
        again at every reconnect."""
        self.stream.append(Record("telemetry/t/gw1/temp", b"21.5", 1))
        listener = Broken()
        self.start(listener)
        connection = accepted_silently(self.reactor.tcpClients[0][2])
        with capturedLogs() as events:
            connection.dataReceived(CONNACK)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertIn("link cloud: telling its status failed", self.lines(events))
        self.assertEqual(listener.calls, [("cloud", True, "")])
        self.assertFalse(connection.transport.disconnecting)
        self.assertIn(b"telemetry/t/gw1/temp", connection.transport.value())

    def test_a_failing_status_listener_on_a_failed_attempt_is_logged(self) -> None:
        """A status listener that raises on a failed connection attempt is logged; the link
        tries again after its backoff. Its error replaced the attempt's failure, which
        ClientService dropped without a word."""
        listener = Broken()
        self.addCleanup(self.flushLoggedErrors, RuntimeError)  # (after the stop, which ends the next attempt)
        link = self.start(listener)
        with capturedLogs() as events:
            self.reactor.tcpClients[0][2].clientConnectionFailed(None, Failure(error.ConnectionRefusedError()))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertIn("link cloud: telling its status failed", self.lines(events))
        self.assertIn("connection refused", listener.calls[0][2])
        self.assertIn("connection refused", link.last_error)
        self.reactor.advance(1.0)
        self.assertEqual(len(self.reactor.tcpClients), 2)

    def test_a_failing_extension_still_lets_the_status_be_told(self) -> None:
        """An extension (the twin's shadow sync) that raises when the link connects, or when
        its connection ends, is logged; the status is told either way. Raised on the way
        down, its error kept the status "connected" for a link that was not; on the way up,
        it closed the connection."""
        link = self.start(self.noted)
        extension = Broken()
        link.extensions.append(extension)
        connection = accepted_silently(self.reactor.tcpClients[0][2])
        with capturedLogs() as events:
            connection.dataReceived(CONNACK)
            connection.connectionLost(Failure(error.ConnectionDone()))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)
        self.assertEqual([line for line in self.lines(events) if "telling" in line],
                         ["link cloud: telling an extension that it connected failed",
                          "link cloud: telling an extension that it disconnected failed"])
        self.assertEqual(len(extension.calls), 2)
        self.assertEqual([connected for connected, _ in self.statuses], [True, False])
        self.assertFalse(link.is_connected)


class ThrottledFailureTests(SynchronousTestCase):
    """A callback that fails at every call is not a traceback per call."""

    def test_a_listener_failing_at_each_change_is_one_traceback_then_a_count_per_10_minutes(self) -> None:
        """The first failure of a callback is logged with its traceback; the ones after it in
        the next 10 minutes are counted, and one line without a traceback says how many; each
        callback on its own. Each failure was a traceback: a status listener with a bug wrote
        one at every status change of a flapping link."""
        clock = Clock()
        calls = ListenerCalls(Logger(), "cloud", clock.seconds)
        status, extension = Broken(), Broken()
        with capturedLogs() as events:
            for _ in range(5):
                calls.tell("its status", status, "cloud", False, "refused")
                clock.advance(60)
            calls.tell("an extension that it connected", extension.link_connected, None)
            clock.advance(300)  # 10 minutes and more since the first line
            calls.tell("its status", status, "cloud", True, "")
            calls.tell("its status", status, "cloud", False, "lost")
        lines = [str(formatEvent(e)) for e in events]
        self.assertEqual(lines, ["link cloud: telling its status failed",
                                 "link cloud: telling an extension that it connected failed",
                                 "link cloud: telling its status failed again: RuntimeError('a bug in the listener')"
                                 " (5 times since the last such line; logged at most once every 10 minutes)"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)
        self.assertEqual(len(status.calls), 7)
