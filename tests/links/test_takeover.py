"""A link whose session another client keeps taking over (the same client id) says so."""

from __future__ import annotations

import dataclasses

from twisted.internet import error
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogLevel, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from gateway.degraded import Degraded
from gateway.links.mqtt import MQTTLink
from gateway.links.settings import LinkSettings
from gateway.links.takeover import TAKEOVER_LOG_INTERVAL
from tests.links.memory import MemoryStream
from tests.logevents import capture_log_events

CONNACK_ACCEPTED = b"\x20\x02\x00\x00"


class TakeoverCase(SynchronousTestCase):
    """A link on a memory reactor whose connections the test makes and ends (no tests of its own)."""

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.link = MQTTLink("cloud", LinkSettings(loss_topic=None, client_id="gw-{device}"), MemoryStream(),
                             self.reactor, ("t", "box"), lambda *a: None, lambda *a: None)
        self.link.stream.cursor(self.link.forwarder.cursor)
        self.events = capture_log_events(self)

    def connection(self, lasts: float, reason: Failure | None = None) -> None:
        """One connection accepted, then ended ``lasts`` seconds later (by the server, cleanly,
        unless ``reason`` says otherwise); then 25 s until the next attempt."""
        protocol = self.link.buildProtocol(None)
        protocol.makeConnection(StringTransport())
        protocol.dataReceived(CONNACK_ACCEPTED)
        self.assertTrue(self.link.is_connected)
        self.reactor.advance(lasts)
        protocol.connectionLost(reason or Failure(error.ConnectionDone()))
        self.reactor.advance(25)

    def warnings(self) -> list[str]:
        return [str(formatEvent(e)) for e in self.events if e["log_level"] >= LogLevel.warn]


class TakeoverTests(TakeoverCase):
    """Ten gateways installed alike (device_id ``gateway`` in every one) each took the cloud
    session over from another at every reconnect, for ever: each only logged ``link cloud
    connected`` and ``link cloud disconnected: connection to ... closed`` at info level,
    nothing saying why or what to do. A row of accepted connections the cloud closes soon
    after CONNACK is now a warning naming the client id and the remedy, throttled."""

    def test_a_session_taken_over_again_and_again_is_a_warning_naming_the_remedy(self) -> None:
        """The third connection in a row the cloud closes within stable_after of its CONNACK
        logs a warning with the link, the client id and what to do; more such closes log it
        again only after TAKEOVER_LOG_INTERVAL, with the count so far."""
        self.connection(3)
        self.connection(10)
        self.assertEqual(self.warnings(), [])
        self.connection(1)
        self.assertEqual(self.warnings(), [
            "link cloud: the cloud closed 3 connections in a row within 60 s of accepting them: another client is "
            "probably connecting with the same client id 'gw-box', each taking the session over from the other "
            "(two gateways with the same gateway.device_id?): give each gateway its own device_id, or the link its "
            "own client_id (links.md); if not, the cloud broker's log says why it closes them"])
        for _ in range(int(TAKEOVER_LOG_INTERVAL // 30)):
            self.connection(5)
        lines = self.warnings()
        self.assertEqual(len(lines), 2, lines)
        self.assertIn("the cloud closed 23 connections in a row", lines[1])

    def test_a_link_sharing_its_session_with_another_of_this_gateway_names_it(self) -> None:
        """A link that shares broker and client id with another link of this gateway names that
        link as the likely cause, in its warning and its status, not two gateways (it blamed them)."""
        self.link.takeovers.shares_with = ("backup",)
        for _ in range(3):
            self.connection(3)
        [line] = self.warnings()
        self.assertIn("each taking the session over from the other (this gateway's link backup connects to the "
                      "same broker with it): give each link its own client_id (links.md)", line)
        taken = self.link.takeovers.taken_over
        assert taken is not None
        self.assertIn("(this gateway's link backup connects to the same broker with it): give each link its own "
                      "client_id", taken.error)

    def test_a_lasting_connection_failed_attempt_or_reset_breaks_the_row(self) -> None:
        """Closes that are not a row of clean early closes say nothing: a connection that
        lasted stable_after, a failed attempt or a connection reset in between starts the
        count again (a cloud restarting, a flaky network)."""
        self.connection(3)
        self.connection(3)
        self.connection(61)
        self.connection(3)
        self.connection(3)
        self.link._connect_failed(Failure(error.ConnectionRefusedError()))
        self.connection(3)
        self.connection(3)
        self.connection(3, Failure(error.ConnectionLost("Connection reset by peer")))
        self.connection(3)
        self.connection(3)
        self.assertEqual([line for line in self.warnings() if "connections in a row" in line], [])

    def test_a_connection_the_gateway_closes_is_no_takeover(self) -> None:
        """The gateway's own closes (no PINGRESP in time, its stop) are not the cloud's."""
        for _ in range(4):
            protocol = self.link.buildProtocol(None)
            protocol.makeConnection(StringTransport())
            protocol.dataReceived(CONNACK_ACCEPTED)
            protocol.close("no PINGRESP from the cloud", abort=True)
            protocol.connectionLost(Failure(error.ConnectionDone()))
            self.reactor.advance(25)
        self.assertEqual(self.link.takeovers.in_row, 0)


class TakeoverStatusTests(TakeoverCase):
    """The takeover was only in the log: ``gatewayctl links`` and the status page showed the
    link flapping between connected and disconnected, ``last_error`` ``connection to ... closed``,
    and the log had a ``link cloud connected`` and a ``disconnected`` line every 25 s. The
    link's snapshot now says it (``taken_over``) from the warning on, until a connection lasts,
    and the connect and disconnect lines the warning stands for are left out meanwhile."""

    def test_the_snapshot_says_so_until_a_connection_lasts(self) -> None:
        """From the third early close in a row: reason, what to do, since the row's first close,
        the closes so far; ``last_error`` keeps its meaning; gone once a connection has lasted
        ``stable_after``, while it is still up."""
        began = self.reactor.seconds() + 3
        self.connection(3)
        self.connection(3)
        self.assertIsNone(self.link.snapshot().taken_over)
        self.connection(3)
        taken = self.link.snapshot().taken_over
        self.assertEqual(taken, Degraded(
            "session-taken-over", "the cloud closes each connection within 60 s of accepting it: another client is "
            "probably connecting with the same client id 'gw-box' (two gateways with the same gateway.device_id?): "
            "give each gateway its own device_id, or the link its own client_id", began, 3))
        self.assertEqual(self.link.snapshot().last_error, "connection to 127.0.0.1:1883 closed")  # (as before)
        self.connection(3)
        self.assertEqual(self.link.snapshot().taken_over, dataclasses.replace(taken, failures=4))
        protocol = self.link.buildProtocol(None)  # a connection that lasts: the other client is gone
        protocol.makeConnection(StringTransport())
        protocol.dataReceived(CONNACK_ACCEPTED)
        self.reactor.advance(59)
        self.assertIsNotNone(self.link.snapshot().taken_over)
        self.reactor.advance(1)
        self.assertIsNone(self.link.snapshot().taken_over)
        protocol.connectionLost(Failure(error.ConnectionDone()))
        self.assertIsNone(self.link.snapshot().taken_over)

    def test_its_end_is_one_info_line(self) -> None:
        """The takeovers' end is said once, when the status clears: at the moment a connection
        has lasted stable_after (not when it ends), or at a failed attempt. The status cleared
        without a word."""
        def ends() -> list[str]:
            return [str(formatEvent(e)) for e in self.events if "no longer taken over" in str(formatEvent(e))]

        for _ in range(4):
            self.connection(3)
        protocol = self.link.buildProtocol(None)  # a connection that lasts: the other client is gone
        protocol.makeConnection(StringTransport())
        protocol.dataReceived(CONNACK_ACCEPTED)
        self.reactor.advance(59)
        self.assertEqual(ends(), [])
        self.reactor.advance(1)
        self.assertEqual(ends(), ["link cloud: its session is no longer taken over: a connection has lasted 60 s"
                                  " (after 4 connections in a row the cloud closed within 60 s of accepting them)"])
        self.reactor.advance(100)
        protocol.connectionLost(Failure(error.ConnectionDone()))
        self.reactor.advance(25)
        for _ in range(3):
            self.connection(3)
        self.link._connect_failed(Failure(error.ConnectionRefusedError()))
        self.assertEqual(len(ends()), 2)
        self.assertEqual(ends()[1], "link cloud: its session is no longer taken over: a connection attempt failed"
                                    " (after 3 connections in a row the cloud closed within 60 s of accepting them)")
        self.assertEqual([e for e in self.events if "no longer" in str(formatEvent(e))
                          and e["log_level"] is not LogLevel.info], [])
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_a_failed_attempt_ends_it(self) -> None:
        """A failed attempt breaks the row (as for the warning): the snapshot says no more."""
        for _ in range(3):
            self.connection(3)
        self.assertIsNotNone(self.link.snapshot().taken_over)
        self.link._connect_failed(Failure(error.ConnectionRefusedError()))
        self.assertIsNone(self.link.snapshot().taken_over)

    def test_connect_and_disconnect_lines_are_left_out_while_it_holds(self) -> None:
        """20 connections taken over log the warning and no connect or disconnect line (they
        logged 40); once a connection lasted, its disconnect and the next ones are logged again."""
        def lines() -> list[str]:
            return [str(formatEvent(e)) for e in self.events
                    if str(formatEvent(e)).startswith(("link cloud connected", "link cloud disconnected"))]

        self.connection(3)
        self.connection(3)
        self.assertEqual(len(lines()), 4)
        for _ in range(20):
            self.connection(3)
        self.assertEqual(len(lines()), 5, lines())  # the third connection's connect line, before the warning
        self.assertEqual(len(self.warnings()), 1)
        self.connection(61)  # it lasted: its disconnect is logged, and the next connection's lines
        self.connection(3)
        self.assertEqual(len(lines()), 8, lines())
