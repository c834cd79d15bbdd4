"""StatusPublisher: statuses published retained at QoS 1, failures logged by kind."""

from __future__ import annotations

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.logger import LogLevel, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from gateway.errors import BrokerError
from gateway.journal.errors import StreamFullError
from gateway.operations.status import StatusPublisher
from tests.logevents import capture_log_events


class StatusPublisherTests(SynchronousTestCase):
    def test_publishes_sorted_json_retained_at_qos_1(self) -> None:
        """The status goes to its topic as sorted JSON, QoS 1, retained."""
        sent: list[tuple[str, bytes, int, bool]] = []

        def publish(topic: str, payload: bytes, qos: int, retain: bool) -> Deferred[None]:
            sent.append((topic, payload, qos, retain))
            return succeed(None)

        StatusPublisher(publish, "edge/x/status", "a status", Clock())({"b": 1, "a": 2})
        self.assertEqual(sent, [("edge/x/status", b'{"a": 2, "b": 1}', 1, True)])

    def test_a_full_journal_stream_is_a_warning_not_a_critical_traceback(self) -> None:
        """A journal stream that refuses the status (full under its limits: docs/journal.md,
        counted there as a loss) is a one-line warning naming what was not published and why;
        it was logged as critical, with a traceback, as a bug would be."""
        events = capture_log_events(self)
        StatusPublisher(lambda *args: fail(StreamFullError("link-cloud", "min-free-disk")),
                        "edge/x/status", "an upload status", Clock())({"a": 1})
        self.assertEqual([(e["log_level"], formatEvent(e)) for e in events],
                         [(LogLevel.warn, "an upload status not published: journal stream 'link-cloud' is full"
                                          " (min-free-disk); append rejected ("
                                          "logged at most once every 10 minutes until one is)")])

    def test_a_broker_that_is_not_running_is_a_warning_too(self) -> None:
        """A broker stopping (or that failed to start) refuses the status: the same throttled
        warning; it was a critical traceback per status."""
        events = capture_log_events(self)
        StatusPublisher(lambda *args: fail(BrokerError("the broker is not running")),
                        "edge/x/status", "an update status", Clock())({"a": 1})
        self.assertEqual([(e["log_level"], formatEvent(e)) for e in events],
                         [(LogLevel.warn, "an update status not published: the broker is not running ("
                                          "logged at most once every 10 minutes until one is)")])

    def test_anything_else_is_logged_with_its_traceback(self) -> None:
        """Another failure is a bug: logged as critical with its traceback."""
        events = capture_log_events(self)
        StatusPublisher(lambda *args: fail(KeyError("x")), "t", "a status", Clock())({"a": 1})
        self.assertEqual([e["log_level"] for e in events], [LogLevel.critical])
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)

    def test_statuses_refused_are_logged_once_per_interval(self) -> None:
        """While the journal refuses every status (a stream full for hours: a download's
        progress every few seconds) the first refusal is a warning, then at most one every 10
        minutes with their count, and the first after a status published again at once: each
        refused status was a warning."""
        clock = Clock()
        refusing = [True]

        def publish(topic: str, payload: bytes, qos: int, retain: bool) -> Deferred[None]:
            return fail(StreamFullError("link-cloud", "max-bytes")) if refusing[0] else succeed(None)

        send = StatusPublisher(publish, "edge/x/status", "an update status", clock)
        events = capture_log_events(self)
        for _ in range(240):  # 20 minutes, one every 5 s
            send({"progress": 1})
            clock.advance(5)
        lines = [formatEvent(e) for e in events]
        self.assertEqual(len(lines), 2, lines)  # at 0 and 600 s
        self.assertIn("append rejected (logged at most once every 10 minutes", lines[0])
        self.assertEqual(lines[1], "an update status not published: journal stream 'link-cloud' is full (max-bytes);"
                                   " append rejected (120 not published since the last such line; logged at most"
                                   " once every 10 minutes until one is)")
        refusing[0] = False
        send({"progress": 2})
        refusing[0] = True
        send({"progress": 3})
        self.assertEqual(len(events), 3)
