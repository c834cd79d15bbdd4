"""The gateway's HTTP servers wake nobody while idle: no timer for their access log's date
(gateway.httpaccesslog, on the admin API's, the ingest's and the metrics' factories)."""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.logger import formatEvent
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http import datetimeToLogString
from twisted.web.resource import Resource

from gateway.closingsite import ClosingSite
from gateway.ingest.site import QuietSite
from gateway.telemetry.metricspage import MetricsFactory
from tests.logevents import capture_log_events


def factories(clock: Clock) -> dict[str, Any]:
    """Each kind of HTTP factory the gateway listens with, on ``clock``."""
    admin = ClosingSite(Resource(), lambda date, request: f"{date} {request}", reactor=clock)
    ingest = QuietSite(Resource(), 65536, 30.0)
    ingest.reactor = clock
    metrics = MetricsFactory(lambda accept: (b"", "text/plain"), clock)
    return {"admin": admin, "ingest": ingest, "metrics": metrics}


class IdleFactoryTests(SynchronousTestCase):
    """A listening HTTP server with no request has no timer running."""

    def test_a_started_factory_schedules_nothing(self) -> None:
        """Started (listening), no factory has a timer: twisted.web's refreshed its access log's
        date every second until stopped, a wake-up a second of an idle gateway for /metrics
        from the start and for the admin API and the ingest from their first request."""
        clock = Clock()
        for name, factory in factories(clock).items():
            factory.doStart()
            self.assertEqual(clock.getDelayedCalls(), [], name)
            clock.advance(5)
            self.assertEqual(clock.getDelayedCalls(), [], name)
            factory.doStop()

    def test_a_line_is_dated_when_written(self) -> None:
        """An access log line (the admin API's) carries the time it is written, to the second,
        and goes to the log as twisted.web's lines do."""
        clock = Clock()
        clock.advance(1_700_000_000.5)
        site = factories(clock)["admin"]
        site.doStart()
        events = capture_log_events(self)
        clock.advance(61)
        site.log("GET /status")
        self.assertEqual([formatEvent(e) for e in events if e.get("log_namespace") == "twisted.python.log"],
                         [f"{datetimeToLogString(1_700_000_061.5)} GET /status"])

    def test_no_access_log_logs_nothing(self) -> None:
        """The ingest and /metrics log no line per request (an app writing every second, a
        scraper every few seconds, would fill the log)."""
        clock = Clock()
        events = capture_log_events(self)
        for name in ("ingest", "metrics"):
            factory = factories(clock)[name]
            factory.doStart()
            factory.log("GET /x")
        self.assertEqual([e for e in events if e.get("log_namespace") == "twisted.python.log"], [])
