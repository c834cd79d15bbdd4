"""The telemetry service on a fake clock and bus: intervals, requests, errors, throttling."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, fail, maybeDeferred
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from gateway.apps.snapshot import AppSnapshot
from gateway.journal.errors import RecordTooLargeError, StreamFullError
from gateway.payloadlimits import REQUEST_BYTES
from gateway.telemetry.errors import ReportNotPublished, ReportTooLarge, UnknownReport
from gateway.telemetry.service import TelemetryService
from gateway.telemetry.settings import TelemetrySettings
from tests.logevents import assert_one_line_then_summary
from tests.steppingclock import SteppingClock
from tests.telemetry.fakes import FakeBus, FakeReadSide


def inline(f: Any, *args: Any) -> Any:
    return maybeDeferred(f, *args)


class TelemetryServiceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = SteppingClock()
        self.clock.advance(1000)
        self.bus = FakeBus()
        self.readside = FakeReadSide()
        self.observers: list[Any] = []

    def start(self, **settings: Any) -> TelemetryService:
        service = TelemetryService(TelemetrySettings(metrics_endpoint="", **settings), self.readside,  # type: ignore[arg-type]
                                   self.bus, self.clock, Path(self.mktemp()).parent, ("acme", "gw-7"),
                                   app_observers=self.observers, run_blocking=inline)
        Path(service.state_dir).mkdir(parents=True, exist_ok=True)
        self.successResultOf(service.startService())
        self.addCleanup(service.stopService)
        return service

    def reports(self) -> list[tuple[str, dict[str, Any]]]:
        return [(topic.rsplit("/", 1)[-1], json.loads(payload)) for topic, payload, _, _ in self.bus.published
                if topic.startswith("edge/gateway/reports/") and not topic.endswith("/error")]

    def test_intervals(self) -> None:
        """device_info and engine_report go out at start; usage_report after 5 min; device_info
        and engine_report again hourly; all retained at QoS 1 on edge/gateway/reports/<name>."""
        self.start()
        self.assertEqual([name for name, _ in self.reports()], ["device_info", "engine_report"])
        self.assertTrue(all((qos, retain) == (1, True) for _, _, qos, retain in self.bus.published))
        self.clock.advance(300)
        self.assertEqual([name for name, _ in self.reports()][2:], ["usage_report"])
        for _ in range(11):
            self.clock.advance(300)
        names = [name for name, _ in self.reports()]
        self.assertEqual(names.count("usage_report"), 12)
        self.assertEqual(names.count("device_info"), 2)
        self.assertEqual(names.count("engine_report"), 2)

    def test_envelope_and_engine_report(self) -> None:
        """Every report names itself, the time and the device, and carries an errors list;
        engine_report has GWE's shape plus restarts."""
        self.start()
        [body] = [b for name, b in self.reports() if name == "engine_report"]
        self.assertEqual((body["report"], body["timestamp"], body["device_id"], body["tenant_id"], body["errors"]),
                         ("engine_report", 1000.0, "gw-7", "acme", []))
        self.assertEqual(body["apps"], [{"web": {"app": "web", "version": "1.0", "status": "RUNNING", "uptime": 30,
                                                 "exitstatus": None, "pid": 123, "restarts": 2}}])

    def test_engine_report_says_why_a_program_failed(self) -> None:
        """A program that backs off or is FATAL has its ``error`` in the report (a running one
        keeps GWE's shape): the reason was only in the gateway's log."""
        self.readside.programs = [AppSnapshot("web", "web", "1.0", "FATAL", None, 0.0, 127, 3,
                                              error="exited with 127 before 1s"),
                                  AppSnapshot("db", "db", "1.0", "RUNNING", 7, 5.0, None, 0)]
        self.start()
        [body] = [b for name, b in self.reports() if name == "engine_report"]
        self.assertEqual(body["apps"], [
            {"web": {"app": "web", "version": "1.0", "status": "FATAL", "uptime": 0, "exitstatus": 127, "pid": None,
                     "restarts": 3, "error": "exited with 127 before 1s"}},
            {"db": {"app": "db", "version": "1.0", "status": "RUNNING", "uptime": 5, "exitstatus": None, "pid": 7,
                    "restarts": 0}}])

    def test_request_topic(self) -> None:
        """A report's name (plain or as JSON) on the request topic builds and publishes it now."""
        service = self.start()
        self.bus.published.clear()
        self.bus.receive("edge/gateway/reports/request", b"usage_report\n")
        self.bus.receive("edge/gateway/reports/request", b'{"report": "engine_report"}')
        self.assertEqual([name for name, _ in self.reports()], ["usage_report", "engine_report"])
        self.assertEqual(set(service.last_reports()), {"device_info", "engine_report", "usage_report"})

    def test_unknown_report_is_answered_on_the_error_topic(self) -> None:
        """An unknown name gets a clear error on edge/gateway/reports/error, not retained, and
        nothing else happens; request_report raises UnknownReport."""
        service = self.start()
        self.bus.published.clear()
        self.bus.receive("edge/gateway/reports/request", b"bogus")
        [(topic, payload, qos, retain)] = self.bus.published
        self.assertEqual((topic, qos, retain), ("edge/gateway/reports/error", 1, False))
        answer = json.loads(payload)
        self.assertEqual(answer["error"],
                         "unknown report 'bogus' (known: device_info, usage_report, engine_report)")
        self.assertEqual(answer["request"], "bogus")
        error = self.assertRaises(UnknownReport, service.request_report, "bogus")
        self.assertIn("bogus", str(error))
        self.assertEqual(service.report_names(), ("device_info", "usage_report", "engine_report"))
        self.bus.published.clear()
        self.bus.receive("edge/gateway/reports/request", b"[" * 5000)  # raised RecursionError in the bus
        [(topic, payload, qos, retain)] = self.bus.published
        self.assertEqual(topic, "edge/gateway/reports/error")

    def test_a_json_request_whose_report_is_no_string(self) -> None:
        """``{"report": 5}`` or ``{"report": null}`` is answered naming the value sent, not a
        string it never was (``unknown report '5'``, ``unknown report 'None'``)."""
        self.start()
        for payload, named in ((b'{"report": 5}', "5"), (b'{"report": null}', "None"),
                               (b'{"report": ["usage_report"]}', "['usage_report']")):
            self.bus.published.clear()
            self.bus.receive("edge/gateway/reports/request", payload)
            [(topic, answer, _, _)] = self.bus.published
            self.assertEqual((topic, json.loads(answer)["error"]), (
                "edge/gateway/reports/error",
                f"unknown report {named} (known: device_info, usage_report, engine_report)"))

    def test_a_request_that_is_not_rfc_8259_json_is_refused(self) -> None:
        """docs/telemetry.md: ``{"report": "bogus", "report": "usage_report"}`` built the report
        named last, silently, and ``{"report": NaN}`` was ``unknown report nan``: JSON that RFC
        8259 does not allow is answered ``the request is not valid JSON: ...``, as the admin API
        refuses it; no report is built."""
        self.start()
        for payload, why in ((b'{"report": "bogus", "report": "usage_report"}', "key 'report' given twice"),
                             (b'{"report": NaN}', "NaN is not JSON"), (b'{"report": "usage_report", "x": 1e400}',
                                                                     "the number 1e400 is too large")):
            self.bus.published.clear()
            self.bus.receive("edge/gateway/reports/request", payload)
            [(topic, answer, _, _)] = self.bus.published
            self.assertEqual(topic, "edge/gateway/reports/error")
            self.assertIn(f"the request is not valid JSON: {why}", json.loads(answer)["error"])
            self.assertEqual(json.loads(answer)["request"], payload.decode())

    def test_a_json_request_without_report_names_what_was_sent(self) -> None:
        """docs/telemetry.md: ``{"name": "engine_report"}`` (the remote ``report`` command's
        shape, docs/commands.md) sent to the request topic was answered ``unknown report ''``,
        naming neither what was sent nor how to ask: the answer repeats the request, says a JSON
        request names its report in ``report`` and lists the known ones; no report is built."""
        self.start()
        for payload in (b'{"name": "engine_report"}', b"{}"):
            self.bus.published.clear()
            self.bus.receive("edge/gateway/reports/request", payload)
            [(topic, answer, _, _)] = self.bus.published
            self.assertEqual((topic, json.loads(answer)["error"]), (
                "edge/gateway/reports/error",
                f'no report named: {payload.decode()} has no "report" (a JSON request is {{"report": "<name>"}};'
                " known: device_info, usage_report, engine_report)"))
            self.assertEqual(json.loads(answer)["request"], payload.decode())

    def test_an_error_answer_the_journal_refuses_is_one_line(self) -> None:
        """A bad request whose answer on the error topic the journal refuses (a route takes it
        to a full stream) is said in a warning; the subscriber failed instead, a traceback for
        every bad request a local client sent."""
        self.start()
        self.patch(self.bus, "publish", lambda *a, **k: fail(StreamFullError("link-c", "max-bytes")))
        with capturedLogs() as events:
            result = self.bus.receive("edge/gateway/reports/request", b"bogus")
        self.assertIsNone(self.successResultOf(result))
        lines = [formatEvent(e) for e in events]
        self.assertIn("report request refused: unknown report 'bogus' (known: device_info, usage_report,"
                      " engine_report); its answer on edge/gateway/reports/error not published: journal stream"
                      " 'link-c' is full (max-bytes); append rejected", lines)

    def test_a_burst_of_bad_requests_is_one_line_then_one_summary(self) -> None:
        """docs/telemetry.md: a local client sending bad report requests in a loop wrote a
        warning for each (1,000 requests, 1,000 lines). The first is logged at once, then at
        most one line per 10 s saying how many were refused since; each is still answered."""
        self.start()
        self.bus.published.clear()

        def burst(requests: int) -> list[str]:
            with capturedLogs() as events:
                for _ in range(requests):
                    self.bus.receive("edge/gateway/reports/request", b"bogus")
            return [formatEvent(e) for e in events if "report request refused" in e.get("log_format", "")]

        line = ("report request refused: unknown report 'bogus' (known: device_info, usage_report, engine_report)"
                " ({count} refused since the last such line; logged at most once every 10 s while they go on)")
        assert_one_line_then_summary(self, burst, line, self.clock)
        self.assertEqual(len(self.bus.published), 1002)  # every one answered

    def test_a_huge_request_is_not_sent_back_whole(self) -> None:
        """A request of a megabyte (under the broker's 1 MiB packet limit) is answered with its
        first 100 characters and its length, in the error and as ``request``, and logged so:
        the answer was twice the request, and the log line as long."""
        self.start()
        self.bus.published.clear()
        with capturedLogs() as events:
            self.bus.receive("edge/gateway/reports/request", b"x" * 1_000_000)
        [(_, payload, _, _)] = self.bus.published
        self.assertLess(len(payload), 1000)
        answer = json.loads(payload)
        self.assertEqual(answer["request"], "x" * 100 + "... (1000000 characters)")
        self.assertEqual(answer["error"], "unknown report '" + "x" * 100 + "... (1000000 characters)'"
                         " (known: device_info, usage_report, engine_report)")
        self.assertLess(max(len(formatEvent(event)) for event in events), 1000)

    def test_a_request_over_the_request_limit_is_refused_unread(self) -> None:
        """A request of REQUEST_BYTES (a name and spaces) is taken; one byte more is refused by
        its size, on the error topic, quoting its start and its length in bytes."""
        self.start()
        self.bus.published.clear()
        self.bus.receive("edge/gateway/reports/request", b"device_info".ljust(REQUEST_BYTES))
        self.assertEqual([name for name, _ in self.reports()], ["device_info"])
        self.bus.published.clear()
        self.bus.receive("edge/gateway/reports/request", b"device_info".ljust(REQUEST_BYTES + 1))
        [(topic, payload, _, _)] = self.bus.published
        answer = json.loads(payload)
        self.assertEqual(topic, "edge/gateway/reports/error")
        self.assertEqual(answer["error"], f"the message is {REQUEST_BYTES + 1} bytes, more than the"
                                          f" {REQUEST_BYTES} bytes a request may have")
        self.assertEqual(answer["request"], f"device_info... ({REQUEST_BYTES + 1} bytes)")

    def test_engine_report_on_app_changes_at_most_every_10_s(self) -> None:
        """App state changes schedule one engine_report, no sooner than 10 s after the last."""
        self.start()
        self.assertEqual(len(self.observers), 1)
        count = lambda: [n for n, _ in self.reports()].count("engine_report")  # noqa: E731
        self.assertEqual(count(), 1)  # at start
        for _ in range(3):
            self.observers[0](object())
            self.clock.advance(1)
        self.assertEqual(count(), 1)
        self.clock.advance(7)
        self.assertEqual(count(), 2)  # 10 s after the first, once for three changes
        self.clock.advance(60)
        self.observers[0](object())
        self.clock.advance(0)
        self.assertEqual(count(), 3)  # long after the last: at once

    def test_a_step_back_of_the_wall_clock_does_not_hold_the_engine_report(self) -> None:
        """NTP steps the clock back an hour: an app's change still gets its engine_report
        within engine_report_min_interval (it waited for the hour)."""
        self.start()
        count = lambda: [n for n, _ in self.reports()].count("engine_report")  # noqa: E731
        self.clock.step(-3600.0)
        self.observers[0](object())
        self.clock.advance(10)
        self.assertEqual(count(), 2)

    def test_usage_report_period_across_a_step_of_the_wall_clock(self) -> None:
        """docs/telemetry.md: period, the time the report covers. NTP steps the clock of a
        gateway booted at 1970 forward by 56 years between two reports 300 s apart: start and
        end are the times of day the clock said, seconds the 300 s it lasted (it was 56 years)."""
        self.start(usage_report_interval=300)
        self.clock.advance(100)
        self.clock.step(56 * 365 * 86400.0)
        self.clock.advance(200)
        [body] = [b for name, b in self.reports() if name == "usage_report"]
        self.assertEqual(body["period"], {"start": 1000.0, "end": 1300.0 + 56 * 365 * 86400.0, "seconds": 300.0})

    def test_usage_report_since_last(self) -> None:
        """usage_report gives each link's counters since start and since the last report, and
        interface counters since boot and since the last report; per-app bytes say why not.
        The first report's "since last" covers the time since the gateway started, so for a
        link it is all it did, what it sent before the telemetry service started included."""
        service = self.start()
        self.readside.acked, self.readside.bytes_up = 15, 1600
        body = self.successResultOf(service.request_report("usage_report"))
        self.assertEqual(body["links"]["cloud"]["since_start"], {"bytes_up": 1600, "bytes_down": 300,
                                                                 "sent": 16, "acked": 15})
        self.assertEqual(body["links"]["cloud"]["since_last"], body["links"]["cloud"]["since_start"])
        self.assertEqual(body["period"]["start"], 1000.0)
        self.assertTrue(body["interfaces"])
        for counters in body["interfaces"].values():
            self.assertTrue(all(v >= 0 for v in counters["since_last"].values()))
        self.assertEqual(body["apps"]["supported"], False)
        self.assertIn("app_accounting", body["apps"]["reason"])
        self.readside.acked = 16
        again = self.successResultOf(service.request_report("usage_report"))
        self.assertEqual(again["links"]["cloud"]["since_last"]["acked"], 1)
        self.assertEqual(again["period"]["start"], body["period"]["end"])

    def test_a_failing_fact_is_named_in_errors(self) -> None:
        """device_info with a psutil call failing still goes out, with what it has and the error."""
        import psutil

        def broken() -> Any:
            raise OSError(5, "Input/output error")

        self.patch(psutil, "virtual_memory", broken)
        self.start()
        [body] = [b for name, b in self.reports() if name == "device_info"]
        self.assertIsNone(body["memory"])
        self.assertEqual(body["errors"], ["memory: OSError: [Errno 5] Input/output error"])
        self.assertTrue(body["filesystems"])
        self.assertEqual(service_reports_incomplete(self), 1)

    def test_a_failing_snapshot_is_named_in_errors_and_the_reports_go_on(self) -> None:
        """A snapshot that raises leaves its section empty and is named in errors: each report
        still goes out (docs/telemetry.md: never skipped), and the periodic ones keep coming."""
        def broken() -> Any:
            raise RuntimeError("snapshot failed")

        self.patch(self.readside, "links", broken)
        self.patch(self.readside, "apps", broken)
        self.start(usage_report_interval=60)
        self.clock.advance(60)
        self.clock.advance(60)
        reports = dict(self.reports())
        self.assertEqual([name for name, _ in self.reports()],
                         ["device_info", "engine_report", "usage_report", "usage_report"])
        self.assertEqual((reports["usage_report"]["links"], reports["usage_report"]["errors"]),
                         ({}, ["links: RuntimeError: snapshot failed"]))
        self.assertEqual((reports["engine_report"]["apps"], reports["engine_report"]["errors"]),
                         ([], ["apps: RuntimeError: snapshot failed"]))
        self.assertEqual(reports["device_info"]["certificates"], [])
        self.assertIn("certificates: RuntimeError: snapshot failed", reports["device_info"]["errors"])


    def test_callers_joining_one_build_each_get_the_report(self) -> None:
        """Requests for a report whose build is under way share that build, and each gets the
        report (or its failure) whatever an earlier caller did with its own result. They were
        chained after the first caller's callbacks: a second remote ``report`` command got the
        first one's reply instead of the body (a 500, ``'NoneType' object is not iterable``),
        and a request joining a periodic build got None where the build had failed."""
        service = self.start()
        held: list[Any] = []

        def publish(topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> Any:
            held.append(Deferred())
            return held[-1]

        self.patch(self.bus, "publish", publish)
        first = service.request_report("usage_report").addCallback(lambda body: ("reply", body["report"]))
        second = service.request_report("usage_report")
        self.assertEqual(len(held), 1, "one build, one publish")
        held.pop().callback(None)
        self.assertEqual(self.successResultOf(first), ("reply", "usage_report"))
        self.assertEqual(self.successResultOf(second)["report"], "usage_report")
        self.clock.advance(300)  # the periodic usage_report is built; a request joins it
        joined = service.request_report("usage_report")
        held.pop().errback(StreamFullError("link-cloud", "max-bytes"))
        self.failureResultOf(joined, ReportNotPublished)
        self.assertEqual(held, [])
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_reports_not_published_are_logged_once_per_interval(self) -> None:
        """While a stream refuses every report (full under reject-new, a cloud down for hours)
        the first refusal is a warning, then at most one every 10 minutes with their count,
        and the first after a report published again at once: each refused report was a
        warning (a real gateway installing an app wrote 'report engine_report not published:
        ...' every 10 s)."""
        service = self.start()
        refusing = [True]
        publish = self.bus.publish

        def refused(topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> Any:
            if refusing[0]:
                return fail(StreamFullError("link-cloud", "max-bytes"))
            return publish(topic, payload, qos, retain)

        self.patch(self.bus, "publish", refused)
        with capturedLogs() as events:
            for _ in range(4):  # 20 minutes
                for _ in range(4):
                    self.bus.receive("edge/gateway/reports/request", b"engine_report")
                self.clock.advance(300)  # and the periodic usage_report
        lines = [formatEvent(e) for e in events if "not published" in e.get("log_format", "")]
        self.assertEqual(len(lines), 3, lines)  # at 0, 600 and 1200 s
        self.assertEqual(lines[0], "report engine_report not published: journal stream 'link-cloud' is full"
                                   " (max-bytes); append rejected ("
                                   "logged at most once every 10 minutes until one is)")
        self.assertIn("(9 reports not published since the last such line", lines[1])
        refusing[0] = False
        self.successResultOf(service.request_report("device_info"))
        refusing[0] = True
        with capturedLogs() as events:
            self.bus.receive("edge/gateway/reports/request", b"engine_report")
        self.assertEqual(len([e for e in events if "not published" in e.get("log_format", "")]), 1)

    def test_a_report_the_journal_refuses_is_not_counted_published(self) -> None:
        """A report the bus refuses (a stream full under reject-new) fails request_report with
        the reason; it was answered with the body and counted published. The periodic and the
        MQTT-requested builds log a warning (no traceback) and go on."""
        service = self.start()
        published = dict(service.published)

        def refused(topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> Any:
            return fail(StreamFullError("link-cloud", "max-bytes"))

        self.patch(self.bus, "publish", refused)
        failure = self.failureResultOf(service.request_report("usage_report"), ReportNotPublished)
        self.assertEqual(failure.getErrorMessage(), "report usage_report was built but not published: journal"
                                                    " stream 'link-cloud' is full (max-bytes); append rejected")
        self.assertEqual(service.last_reports()["usage_report"]["report"], "usage_report")
        self.bus.receive("edge/gateway/reports/request", b"device_info")
        self.clock.advance(3600)  # device_info and engine_report, periodic
        self.assertEqual(service.published, published)
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_a_report_no_stream_can_ever_hold_fails_as_too_large(self) -> None:
        """A report larger than a stream's ``max_bytes`` fails request_report with
        ReportTooLarge (a ReportNotPublished), so the ``report`` command answers 413, not 500:
        sending it again never helps, unlike a full stream's refusal."""
        service = self.start()

        def refused(topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> Any:
            return fail(RecordTooLargeError("link-cloud", 5000, 4096))

        self.patch(self.bus, "publish", refused)
        failure = self.failureResultOf(service.request_report("usage_report"), ReportTooLarge)
        self.assertEqual(failure.getErrorMessage(), "report usage_report was built but not published: journal"
                                                    " stream 'link-cloud' refused the append (max-bytes): a record"
                                                    " of 5000 bytes is larger than max_bytes (4096 bytes)")


def service_reports_incomplete(test: TelemetryServiceTests) -> int:
    return sum(1 for name, body in test.reports() if body["errors"])
