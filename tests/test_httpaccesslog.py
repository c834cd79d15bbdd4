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
from gateway.httpaccesslog import log_routine_reads
from gateway.ingest.site import QuietSite
from gateway.telemetry.metricspage import MetricsFactory
from tests.logevents import capture_log_events


class Answered:
    """A request as the access log sees it once answered: its method, status and words.

    :param method: the request's method.
    :param code: the status it was answered with.
    :param words: what the test's access line says of it.
    """

    def __init__(self, method: bytes, code: int, words: str) -> None:
        self.method, self.code, self.words = method, code, words

    def __str__(self) -> str:
        return self.words


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
        site.log(Answered(b"POST", 200, "POST /apps/a/start"))
        self.assertEqual([formatEvent(e) for e in events if e.get("log_namespace") == "twisted.python.log"],
                         [f"{datetimeToLogString(1_700_000_061.5)} POST /apps/a/start"])

    def test_routine_reads_are_no_line_but_at_debug(self) -> None:
        """Every admin API request was an info line: ``gatewayctl`` and a Prometheus scraping
        ``/metrics`` poll it, and the log filled with their reads. A GET or HEAD answered below
        400 is no line, unless ``gateway.log_level: debug`` (then a debug line); a change (any
        other method) and an error stay info lines (admin.md)."""
        site = factories(Clock())["admin"]
        events = capture_log_events(self)
        requests = [Answered(b"GET", 200, "GET /status"), Answered(b"HEAD", 304, "HEAD /"),
                    Answered(b"GET", 401, "GET /status 401"), Answered(b"GET", 404, "GET /apps/x 404"),
                    Answered(b"POST", 200, "POST /config/apply"), Answered(b"DELETE", 409, "DELETE /journal/x")]
        for request in requests:
            site.log(request)
        self.addCleanup(log_routine_reads, False)
        log_routine_reads(True)
        site.log(requests[0])
        lines = [(e["log_level"].name, formatEvent(e).split("] ", 1)[1]) for e in events
                 if e.get("log_namespace") in ("twisted.python.log", "gateway.httpaccesslog")]
        self.assertEqual(lines, [("info", "GET /status 401"), ("info", "GET /apps/x 404"),
                                 ("info", "POST /config/apply"), ("info", "DELETE /journal/x"),
                                 ("debug", "GET /status")])

    def test_no_access_log_logs_nothing(self) -> None:
        """The ingest and /metrics log no line per request (an app writing every second, a
        scraper every few seconds, would fill the log)."""
        clock = Clock()
        events = capture_log_events(self)
        for name in ("ingest", "metrics"):
            factory = factories(clock)[name]
            factory.doStart()
            factory.log(Answered(b"POST", 500, "POST /x"))
        self.assertEqual([e for e in events if e.get("log_namespace") == "twisted.python.log"], [])

    def test_a_configuration_change_of_log_level_applies(self) -> None:
        """``gateway.log_level: debug``, set by a configuration change (the process settings
        it takes), logs routine reads from then on; back to ``info``, it stops (configuration.md)."""
        from pathlib import Path
        from types import SimpleNamespace

        from gateway import config, logbridge
        from gateway.tree import use_process_settings

        self.addCleanup(log_routine_reads, False)
        self.addCleanup(logbridge.install, "info")
        site = factories(Clock())["admin"]
        events = capture_log_events(self)
        for level in ("debug", "info"):
            path = Path(self.mktemp())
            path.write_text(f"gateway:\n  log_level: {level}\n")
            use_process_settings(SimpleNamespace(), config.load(path))  # type: ignore[arg-type]
            site.log(Answered(b"GET", 200, f"GET /status at {level}"))
        self.assertEqual([formatEvent(e).split("] ", 1)[1] for e in events
                          if e.get("log_namespace") == "gateway.httpaccesslog"], ["GET /status at debug"])

