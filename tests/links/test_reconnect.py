"""The fleet-safe reconnect schedule: what ClientService cannot count, counted."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.links.reconnect import ReconnectPolicy
from tests.steppingclock import SteppingClock


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

    def test_refusal_after_failed_connects_keeps_their_count(self) -> None:
        """Failed TCP connects before a refused CONNECT still count: ClientService restarts its
        count at the TCP connection, the policy does not (a broker back after an outage that
        refuses does not shrink the window to its start)."""
        clock = Clock()
        p = policy(clock, stable_after=60.0)
        p.connect_sent()
        p.accepted()
        clock.advance(600)
        p.lost()  # a stable connection ends: the broker went away
        self.assertEqual([p(n) for n in (1, 2, 3)], [2.0, 4.0, 8.0])  # the loss, two failed connects
        p.connect_sent()  # it is back: TCP connects, ClientService's count is 0 again
        p.refused(5)
        self.assertEqual(p.failures, 3)
        self.assertEqual(p(1), 16.0)  # not 4.0: the window doubles from where it was

    def test_retries_on_a_fixed_cadence_once_at_the_cap(self) -> None:
        """At the cap the first delay is drawn, then every retry comes one cap after the last
        slot, whatever the answer took; below the cap every delay is drawn."""
        clock = Clock()
        p = ReconnectPolicy(clock, 1.0, 2.0, 10.0, uniform=lambda low, high: 0.3 * high)
        self.assertEqual([p(n) for n in (1, 2)], [0.6, 1.2])
        self.assertIsNone(p.slot)
        delays = []
        for attempt in (4, 5, 6, 7):
            delay = p(attempt)
            delays.append(round(delay, 6))
            clock.advance(delay + 0.25)  # the attempt, then its failure a quarter second later
        self.assertEqual(delays, [3.0, 9.75, 9.75, 9.75])
        self.assertEqual(clock.seconds() % 10.0, 3.25)

    def test_a_stable_connection_ends_the_cadence(self) -> None:
        """Only a connection that lasted stable_after forgets the slot; an early drop keeps it."""
        clock = Clock()
        p = ReconnectPolicy(clock, 1.0, 2.0, 10.0, stable_after=60.0, uniform=lambda low, high: 0.5 * high)
        self.assertEqual(p(6), 5.0)
        clock.advance(5)
        p.connect_sent()
        p.accepted()
        clock.advance(2)
        p.lost()  # early: a failure, still on the cadence
        self.assertEqual(p(1), 8.0)
        clock.advance(8)
        p.connect_sent()
        p.accepted()
        clock.advance(60)
        p.lost()
        self.assertIsNone(p.slot)
        self.assertEqual(p(1), 1.0)

    def test_without_cadence_every_retry_is_drawn(self) -> None:
        """``cadence=False`` is plain full jitter: a fresh draw from the whole cap each time."""
        draws = iter([0.1, 0.9, 0.2])
        p = ReconnectPolicy(Clock(), 1.0, 2.0, 10.0, uniform=lambda low, high: next(draws) * high, cadence=False)
        self.assertEqual([round(p(n), 6) for n in (6, 7, 8)], [1.0, 9.0, 2.0])

    def test_server_unavailable_at_the_cap_waits_a_whole_cap(self) -> None:
        """A CONNACK 3 at the cap: the next CONNECT comes one cap after the refused one."""
        clock = Clock()
        p = ReconnectPolicy(clock, 1.0, 2.0, 10.0, uniform=lambda low, high: 0.0)
        clock.advance(p(6) + 1.0)
        clock.advance(p(7))
        p.connect_sent()
        p.refused(3)
        clock.advance(0.05)
        self.assertAlmostEqual(p(1), 9.95)

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


    def test_a_step_back_of_the_wall_clock_does_not_hold_the_reconnect(self) -> None:
        """NTP steps the clock back an hour: the next CONNECT is not held for that hour, by
        min_interval (the last CONNECT looked an hour ahead) or by the cap's cadence (its
        slot did); and a connection that lasted minutes is not an early drop."""
        clock = SteppingClock()
        p = ReconnectPolicy(clock, 1.0, 2.0, 10.0, stable_after=60.0, uniform=lambda low, high: 0.5 * high)
        self.assertEqual(p(6), 5.0)  # at the cap: on the cadence
        clock.advance(5)
        p.connect_sent()
        clock.step(-3600.0)
        self.assertEqual(p(1), 10.0)
        clock.advance(10)
        p.connect_sent()
        p.accepted()
        clock.step(-3600.0)
        clock.advance(120)
        p.lost()
        self.assertEqual(p(1), 1.0)  # a stable connection: the count starts again

    def test_a_step_forward_is_not_a_stable_connection(self) -> None:
        """NTP steps the clock forward by years: a connection dropped 5 s after CONNACK is
        still an early drop, not one that lasted."""
        clock = SteppingClock()
        p = policy(clock, stable_after=60.0)
        p.connect_sent()
        p.accepted()
        clock.step(56 * 365 * 86400.0)
        clock.advance(5)
        p.lost()
        self.assertEqual(p(1), 4.0)


class LinkWiringTests(SynchronousTestCase):
    """MQTTLink tells its policy of CONNECTs, CONNACKs, refusals and drops."""

    def test_link_reports_refusals_and_early_drops(self) -> None:
        """Failed connects before a CONNACK 3 refusal, the refusal and a drop soon after CONNACK all grow the backoff."""
        from twisted.internet.testing import MemoryReactorClock, StringTransport

        from gateway.links.mqtt import MQTTLink
        from gateway.links.settings import LinkSettings
        from tests.links.memory import MemoryStream

        reactor = MemoryReactorClock()
        link = MQTTLink("cloud", LinkSettings(loss_topic=None), MemoryStream(), reactor, ("t", "d"),
                        lambda *a: None, lambda *a: None)
        assert link.reconnect is not None
        link.stream.cursor(link.forwarder.cursor)
        link.reconnect.uniform = lambda low, high: high
        link.reconnect(1)  # two failed TCP connects (ClientService's count) before the broker answers
        link.reconnect(2)
        refused = link.buildProtocol(None)
        refused.makeConnection(StringTransport())
        self.assertEqual(link.reconnect.last_connect, 0.0)
        refused.dataReceived(b"\x20\x02\x00\x03")
        link.disconnected(refused, refused.cause)
        self.assertEqual(link.reconnect.failures, 3)
        reactor.advance(5)
        accepted = link.buildProtocol(None)
        accepted.makeConnection(StringTransport())
        accepted.dataReceived(b"\x20\x02\x00\x00")
        self.assertTrue(link.is_connected)
        reactor.advance(3)
        accepted.connectionLost()
        self.assertEqual(link.reconnect.failures, 4)
        self.assertEqual(link.reconnect(1), 25.0)  # ClientService's attempt 1 plus 4 it did not see: the cap

    def test_connections_that_end_before_an_accepting_connack_count(self) -> None:
        """A connection the server closes before CONNACK, one it sends a malformed packet on,
        and one without a CONNACK within connect_timeout each count as a failed attempt, so
        the window grows as for refusals: they counted as nothing, and ClientService starts
        its own count again at every TCP connection, so a server that accepts TCP and closes
        (a load balancer without a healthy backend) got the link back every second or two."""
        from twisted.internet.testing import MemoryReactorClock, StringTransport
        from twisted.python.failure import Failure

        from gateway.links.mqtt import MQTTLink
        from gateway.links.settings import LinkSettings
        from tests.links.memory import MemoryStream

        reactor = MemoryReactorClock()
        link = MQTTLink("cloud", LinkSettings(loss_topic=None, connect_timeout=5.0), MemoryStream(), reactor,
                        ("t", "d"), lambda *a: None, lambda *a: None)
        assert link.reconnect is not None
        link.reconnect.uniform = lambda low, high: high
        closed, malformed, silent = (link.buildProtocol(None) for _ in range(3))
        for protocol in (closed, malformed, silent):
            protocol.makeConnection(StringTransport())
        closed.connectionLost(Failure(ConnectionError("closed")))
        malformed.dataReceived(b"\xf0\x00")
        malformed.connectionLost(Failure(ConnectionError("aborted")))
        reactor.advance(5)
        silent.connectionLost(Failure(ConnectionError("aborted")))
        self.assertEqual(link.reconnect.failures, 3)
        self.assertEqual(link.reconnect(1), 16.0)  # ClientService's attempt 1 and those 3: 1 x 2^4
