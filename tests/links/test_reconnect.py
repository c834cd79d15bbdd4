"""The fleet-safe reconnect schedule: what ClientService cannot count, counted."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.links.reconnect import ReconnectPolicy


def policy(clock: Clock, **kwargs: float) -> ReconnectPolicy:
    """A policy whose jitter always draws the top of the window (1 s doubling, cap 120 s)."""
    return ReconnectPolicy(clock, 1.0, 2.0, 120.0, uniform=lambda low, high: high, **kwargs)  # type: ignore[arg-type]


class ReconnectPolicyTests(SynchronousTestCase):
    """ClientService resets its count at every TCP connection; the policy keeps the rest."""

    def test_plain_network_failures_use_the_backoff(self) -> None:
        """Failed TCP connects (ClientService's count) give the full-jitter window."""
        p = policy(Clock())
        self.assertEqual([p(n) for n in (1, 2, 3, 8)], [2.0, 4.0, 8.0, 120.0])

    def test_connection_dropping_soon_after_connack_counts_as_a_failure(self) -> None:
        """A connection lost 5 s after CONNACK grows the window; one that lasted stable_after resets it."""
        clock = Clock()
        p = policy(clock, stable_after=60.0)
        for expected in (4.0, 8.0, 16.0):
            p.connect_sent()
            p.accepted()
            clock.advance(5)
            p.lost()
            self.assertEqual(p(1), expected)  # ClientService says attempt 1 each time
        p.connect_sent()
        p.accepted()
        clock.advance(60)
        p.lost()
        self.assertEqual(p(1), 2.0)

    def test_server_unavailable_backs_off_longer(self) -> None:
        """CONNACK 3 skips a step more than another refusal (5: not authorized)."""
        clock = Clock()
        unavailable, refused = policy(clock), policy(clock)
        unavailable.refused(3)
        refused.refused(5)
        self.assertEqual((unavailable(1), refused(1)), (8.0, 4.0))

    def test_at_most_one_connect_per_interval(self) -> None:
        """However small the drawn delay, the next CONNECT comes min_interval after the last."""
        clock = Clock()
        p = ReconnectPolicy(clock, 1.0, 2.0, 120.0, min_interval=1.0, uniform=lambda low, high: 0.0)
        clock.advance(10)
        p.connect_sent()
        clock.advance(0.25)
        self.assertEqual(p(1), 0.75)
        clock.advance(2)
        self.assertEqual(p(1), 0.0)


class LinkWiringTests(SynchronousTestCase):
    """MQTTLink tells its policy of CONNECTs, CONNACKs, refusals and drops."""

    def test_link_reports_refusals_and_early_drops(self) -> None:
        """A CONNACK 3 refusal and a drop soon after CONNACK both grow the link's backoff."""
        from twisted.internet.testing import MemoryReactorClock, StringTransport

        from gateway.links.mqtt import MQTTLink
        from gateway.links.settings import LinkSettings
        from tests.links.memory import MemoryStream

        reactor = MemoryReactorClock()
        link = MQTTLink("cloud", LinkSettings(loss_topic=None), MemoryStream(), reactor, ("t", "d"),
                        lambda *a: None, lambda *a: None)
        assert link.reconnect is not None
        link.stream.cursor(link.forwarder.cursor)
        link.reconnect.backoff = lambda attempt: float(attempt)
        refused = link.buildProtocol(None)
        refused.makeConnection(StringTransport())
        self.assertEqual(link.reconnect.last_connect, 0.0)
        refused.dataReceived(b"\x20\x02\x00\x03")
        link.disconnected(refused, refused.cause)
        self.assertEqual(link.reconnect.failures, 2)
        reactor.advance(5)
        accepted = link.buildProtocol(None)
        accepted.makeConnection(StringTransport())
        accepted.dataReceived(b"\x20\x02\x00\x00")
        self.assertTrue(link.is_connected)
        reactor.advance(3)
        accepted.connectionLost()
        self.assertEqual(link.reconnect.failures, 3)
        self.assertEqual(link.reconnect(1), 4.0)  # ClientService's attempt 1, plus 3 it did not see
