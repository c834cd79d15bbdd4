"""The metrics page: every family from the snapshots, both formats, promtool's check, the endpoint."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from gateway import __version__
from gateway.degraded import Degraded
from gateway.links.snapshot import LinksSnapshot
from gateway.lastrun import PreviousStop
from gateway.readside import GatewayStatus, ServiceState
from gateway.telemetry.errors import TelemetryError
from gateway.telemetry.metrics import make_registry, render_metrics
from gateway.telemetry.metricsservice import MetricsService
from gateway.telemetry.service import TelemetryService
from gateway.telemetry.settings import TelemetrySettings
from tests.fleet.samples import FAILING_FLEET
from tests.journal.helpers import refusing_journal
from tests.ports import free_port
from tests.telemetry.fakes import FakeBus, FakeReadSide, fsync_histogram

PROMTOOL = shutil.which("promtool")


def samples(body: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


class RenderTests(SynchronousTestCase):
    """The collector turns each snapshot into metrics named the Prometheus way."""

    def setUp(self) -> None:
        self.readside = FakeReadSide()
        self.registry = make_registry(self.readside)  # type: ignore[arg-type]

    def test_a_dropped_streams_loss_stays_counted(self) -> None:
        """A stream the operator dropped with records not acknowledged keeps its
        ``dropped`` loss in ``gateway_journal_lost_records_total`` (its own snapshot is gone)."""
        from gateway.journal.snapshot import DroppedStream
        journal = self.readside.journal()
        dropped = (DroppedStream("link-old", 2, 100, 1.0), DroppedStream("link-old", 3, 90, 2.0),
                   DroppedStream("link-empty", 0, 0, 3.0))
        self.patch(self.readside, "journal", lambda: dataclasses.replace(journal, dropped=dropped))
        got = samples(render_metrics("", self.registry)[0])
        self.assertEqual(got[("gateway_journal_lost_records_total", (("reason", "dropped"), ("stream", "link-old")))],
                         5)
        self.assertNotIn(("gateway_journal_lost_records_total", (("reason", "dropped"), ("stream", "link-empty"))),
                         got)

    def test_a_certificate_while_the_clock_is_not_set(self) -> None:
        """A certificate whose days left are unknown because the gateway's clock is not set yet
        (1970, before NTP) is readable (1), with no expiry gauge (not decades ahead); an
        unreadable one is 0."""
        from gateway.certinfo import CertificateSnapshot

        broker = self.readside.broker()
        certificates = (CertificateSnapshot("broker listener tls", "/etc/gateway/server.pem", "CN=gw", 2e9, None),
                        CertificateSnapshot("broker listener cafile", "/etc/gateway/ca.pem", "", None, None, "gone"))
        self.patch(self.readside, "broker", lambda: dataclasses.replace(broker, certificates=certificates))
        got = samples(render_metrics("", self.registry)[0])
        self.assertEqual(got[("gateway_certificate_readable", (("path", "/etc/gateway/server.pem"),
                                                               ("role", "broker listener tls")))], 1)
        self.assertEqual(got[("gateway_certificate_readable", (("path", "/etc/gateway/ca.pem"),
                                                               ("role", "broker listener cafile")))], 0)
        self.assertFalse([key for key in got if key[0] == "gateway_certificate_expiry_seconds"
                          and ("path", "/etc/gateway/server.pem") in key[1]])

    def test_text_format_values(self) -> None:
        """Values come straight from the snapshots: counters end in _total, units in names."""
        body, content_type = render_metrics("", self.registry)
        self.assertTrue(content_type.startswith("text/plain; version=0.0.4"), content_type)
        got = samples(body)
        self.assertEqual(got[("gateway_broker_messages_received_total", (("qos", "1"),))], 6)
        self.assertEqual(got[("gateway_broker_connections", ())], 2)
        self.assertEqual(got[("gateway_broker_messages_resent_total", ())], 3)
        self.assertEqual(got[("gateway_broker_listener_sent_bytes_total", (("listener", "default"),))], 7000)
        self.assertEqual(got[("gateway_broker_listener_origins_refused_total", (("listener", "default"),))], 4)
        self.assertEqual(got[("gateway_journal_oldest_unacked_age_seconds", (("stream", "link-cloud"),))], 12.5)
        self.assertEqual(got[("gateway_journal_fsync_seconds_bucket", (("le", "0.005"), ("stream", "link-cloud")))], 3)
        self.assertEqual(got[("gateway_journal_fsync_seconds_bucket", (("le", "+Inf"), ("stream", "link-cloud")))], 4)
        self.assertEqual(got[("gateway_journal_fsync_seconds_count", (("stream", "link-cloud"),))], 4)
        self.assertEqual(got[("gateway_journal_lost_records_total", (("reason", "max-age"),
                                                                     ("stream", "link-cloud")))], 3)
        self.assertEqual(got[("gateway_link_acked_messages_total", (("link", "cloud"),))], 10)
        self.assertEqual(got[("gateway_link_reconnects_total", (("link", "cloud"),))], 1)
        self.assertEqual(got[("gateway_link_sent_bytes_total", (("link", "cloud"),))], 1000)
        self.assertEqual(got[("gateway_certificate_expiry_seconds", (
            ("path", "/etc/gateway/client.pem"), ("role", "link cloud client"), ("subject", "CN=device-1")))],
            42.5 * 86400)
        self.assertEqual(got[("gateway_app_restarts_total", (("app", "web"), ("program", "web")))], 2)
        self.assertEqual(got[("gateway_app_state", (("app", "web"), ("program", "web"), ("state", "RUNNING")))], 1)
        self.assertEqual(got[("gateway_update_operations", (("status", "DOWNLOADING"),))], 1)
        self.assertEqual(got[("gateway_service_up", (("service", "broker"),))], 1)
        self.assertIn(("process_resident_memory_bytes", ()), got)

    def test_ingest_and_twin(self) -> None:
        """The ingest's and the twin's snapshots become metrics (the shadows the cloud is behind
        on too: the page had nothing of them); a tree without them (the twin off) has none of
        theirs, and the rest of the page stays."""
        got = samples(render_metrics("", self.registry)[0])
        self.assertEqual(got[("gateway_ingest_listening", ())], 1)
        self.assertEqual(got[("gateway_ingest_writes_total", ())], 7)
        self.assertEqual(got[("gateway_ingest_values_total", ())], 9)
        self.assertEqual(got[("gateway_ingest_unrouted_values_total", ())], 2)
        self.assertEqual(got[("gateway_ingest_refused_requests_total", ())], 1)
        self.assertEqual(got[("gateway_ingest_bad_requests_total", ())], 3)
        self.assertEqual(got[("gateway_ingest_aliases", ())], 4)
        self.assertEqual(got[("gateway_ingest_long_polls", ())], 1)
        self.assertEqual(got[("gateway_ingest_devices", ())], 0)
        self.assertEqual(got[("gateway_twin_things", ())], 3)
        self.assertEqual(got[("gateway_twin_revision", ())], 12)
        self.assertEqual(got[("gateway_twin_things_refused_total", ())], 4)
        self.assertEqual(got[("gateway_twin_shadow_connected", ())], 1)
        self.assertEqual(got[("gateway_twin_shadow_pending_requests", ())], 2)
        self.assertEqual(got[("gateway_twin_shadow_inflight_requests", ())], 1)
        self.assertEqual(got[("gateway_twin_shadow_refused_requests_total", ())], 0)
        self.assertEqual(got[("gateway_twin_shadows_behind", ())], 2)
        self.readside.ingest_snapshot = None
        self.readside.twin_snapshot = None
        got = samples(render_metrics("", self.registry)[0])
        self.assertEqual([key for key in got if key[0].startswith(("gateway_ingest", "gateway_twin"))], [])
        self.assertIn(("gateway_broker_connections", ()), got)

    def test_the_fleet(self) -> None:
        """The fleet channel's polls, failures, last success, Retry-After hold, feedback
        waiting and feedback dropped are metrics (the page had nothing of the fleet); none while the fleet is off,
        and no last success before one."""
        got = samples(render_metrics("", self.registry)[0])
        self.assertEqual([key for key in got if key[0].startswith("gateway_fleet")], [])
        self.readside.fleet_snapshot = FAILING_FLEET
        got = samples(render_metrics("", self.registry)[0])
        self.assertEqual({key[0]: value for key, value in got.items() if key[0].startswith("gateway_fleet")}, {
            "gateway_fleet_polls_total": 12, "gateway_fleet_poll_failures_total": 3,
            "gateway_fleet_poll_failures_in_row": 2, "gateway_fleet_last_success_timestamp_seconds": 1796626500.0,
            "gateway_fleet_held": 1, "gateway_fleet_feedback_waiting": 2,
            "gateway_fleet_feedback_oldest_age_seconds": 303.0, "gateway_fleet_feedback_dropped_total": 1})
        self.readside.fleet_snapshot = dataclasses.replace(FAILING_FLEET, last_success_at=None, held_until=None,
                                                           feedback_waiting=0, feedback_oldest_age_s=None)
        got = samples(render_metrics("", self.registry)[0])
        self.assertNotIn(("gateway_fleet_last_success_timestamp_seconds", ()), got)
        self.assertEqual((got[("gateway_fleet_held", ())], got[("gateway_fleet_feedback_oldest_age_seconds", ())]),
                         (0, 0))

    def test_a_stream_refusing_appends(self) -> None:
        """A journal stream that a full disk makes refuse appends: 1 in
        gateway_journal_refusing_appends, since when (and why) in
        gateway_journal_refusing_since_seconds, its refusals counted, and its service degraded;
        the page had nothing of it (every service up, nothing refused)."""
        clock = Clock()
        clock.advance(1796211823)
        journal = refusing_journal(clock)
        self.readside.journal = journal.snapshot  # type: ignore[method-assign]
        self.readside.status = lambda: GatewayStatus(  # type: ignore[method-assign]
            __version__, 1000.0, 60, 4321, (ServiceState("journal", True, "min-free-disk: ..."),
                                              ServiceState("broker", True)))
        got = samples(render_metrics("", self.registry)[0])
        cloud, state = (("stream", "link-cloud"),), (("stream", "broker-state"),)
        self.assertEqual((got[("gateway_journal_refusing_appends", cloud)],
                          got[("gateway_journal_refusing_appends", state)]), (1, 0))
        self.assertEqual(got[("gateway_journal_refusing_since_seconds", (("reason", "min-free-disk"),) + cloud)],
                         1796211823)
        self.assertEqual([key for key in got if key[0] == "gateway_journal_refusing_since_seconds"],
                         [("gateway_journal_refusing_since_seconds", (("reason", "min-free-disk"),) + cloud)])
        self.assertEqual((got[("gateway_journal_refused_appends_total", cloud)],
                          got[("gateway_journal_refused_appends_total", state)]), (2, 0))
        self.assertEqual((got[("gateway_service_degraded", (("service", "journal"),))],
                          got[("gateway_service_degraded", (("service", "broker"),))]), (1, 0))

    def test_the_reactors_lag(self) -> None:
        """gateway_reactor_lag_seconds: how late the reactor ran a timer at worst lately."""
        self.readside.status = lambda: GatewayStatus(  # type: ignore[method-assign]
            __version__, 1000.0, 60, 4321, (ServiceState("broker", True),), reactor_lag_s=5.4)
        got = samples(render_metrics("", self.registry)[0])
        self.assertEqual(got[("gateway_reactor_lag_seconds", ())], 5.4)

    def test_unclean_stops(self) -> None:
        """gateway_unclean_stops_total: the runs on the state directory that ended without a
        clean stop, as the state directory's record counts them (across restarts)."""
        self.readside.status = lambda: GatewayStatus(  # type: ignore[method-assign]
            __version__, 1000.0, 60, 4321, (), previous_stop=PreviousStop("unclean", 900.0, 4000, 10.0, "killed", 3))
        got = samples(render_metrics("", self.registry)[0])
        self.assertEqual(got[("gateway_unclean_stops_total", ())], 3)

    def test_a_link_whose_cursor_is_not_saved_or_whose_session_is_taken_over(self) -> None:
        """A link whose cursor saves fail (a full disk) is 1 in gateway_link_cursor_save_failing,
        one whose session another client keeps taking over 1 in gateway_link_session_taken_over,
        and the links service degraded; the page had nothing of either (the link up, its
        counters going on)."""
        failing = Degraded("cursor-not-saved", "[Errno 28] No space left on device", 1796211823.0, 4)
        well = self.readside.links().links[0]
        self.readside.links = lambda: LinksSnapshot((  # type: ignore[method-assign]
            dataclasses.replace(well, cursor_failing=failing),
            dataclasses.replace(well, name="backup", taken_over=dataclasses.replace(
                failing, reason="session-taken-over", error="another client ..."))), failing)
        self.readside.status = lambda: GatewayStatus(  # type: ignore[method-assign]
            __version__, 1000.0, 60, 4321, (ServiceState("links", True, "cursor-not-saved: ..."),))
        got = samples(render_metrics("", self.registry)[0])
        cloud, backup = (("link", "cloud"),), (("link", "backup"),)
        self.assertEqual((got[("gateway_link_cursor_save_failing", cloud)],
                          got[("gateway_link_cursor_save_failing", backup)]), (1, 0))
        self.assertEqual((got[("gateway_link_session_taken_over", cloud)],
                          got[("gateway_link_session_taken_over", backup)]), (0, 1))
        self.assertEqual(got[("gateway_service_degraded", (("service", "links"),))], 1)

    def test_a_stream_whose_loss_ledger_is_not_written(self) -> None:
        """A journal stream whose loss ledger the disk refuses is 1 in
        gateway_journal_ledger_save_failing, the others 0; the page had nothing of it."""
        well = self.readside.journal()
        stream = well.streams[0]
        failing = Degraded("ledger-not-saved", "[Errno 28] No space left on device", 1796211823.0, 2)
        self.readside.journal = lambda: dataclasses.replace(well, streams=(  # type: ignore[method-assign]
            dataclasses.replace(stream, ledger_failing=failing), dataclasses.replace(stream, name="other")))
        got = samples(render_metrics("", self.registry)[0])
        self.assertEqual((got[("gateway_journal_ledger_save_failing", (("stream", stream.name),))],
                          got[("gateway_journal_ledger_save_failing", (("stream", "other"),))]), (1, 0))

    def test_a_streams_cursor_saves(self) -> None:
        """The stream's cursor save times are gateway_journal_cursor_save_seconds, a histogram
        with the fsync's buckets: the page said how long a batch's fsync took, not a save."""
        well = self.readside.journal()
        self.readside.journal = lambda: dataclasses.replace(well, streams=(  # type: ignore[method-assign]
            dataclasses.replace(well.streams[0], cursor_save_latency=fsync_histogram()),))
        got = samples(render_metrics("", self.registry)[0])
        stream = ("stream", "link-cloud")
        self.assertEqual(got[("gateway_journal_cursor_save_seconds_bucket", (("le", "0.005"), stream))], 3)
        self.assertEqual(got[("gateway_journal_cursor_save_seconds_bucket", (("le", "+Inf"), stream))], 4)
        self.assertEqual(got[("gateway_journal_cursor_save_seconds_count", (stream,))], 4)
        self.assertAlmostEqual(got[("gateway_journal_cursor_save_seconds_sum", (stream,))], 0.2064)

    def test_the_brokers_last_checkpoint(self) -> None:
        """The broker's last checkpoint save is gateway_broker_checkpoint_seconds and its size
        gateway_broker_checkpoint_bytes, both absent before the first save."""
        got = samples(render_metrics("", self.registry)[0])
        self.assertNotIn(("gateway_broker_checkpoint_seconds", ()), got)
        self.assertNotIn(("gateway_broker_checkpoint_bytes", ()), got)
        broker = self.readside.broker()
        self.readside.broker = lambda: dataclasses.replace(  # type: ignore[method-assign]
            broker, checkpoint_save_s=1.75, checkpoint_bytes=278_000_000)
        got = samples(render_metrics("", self.registry)[0])
        self.assertEqual((got[("gateway_broker_checkpoint_seconds", ())], got[("gateway_broker_checkpoint_bytes", ())]),
                         (1.75, 278_000_000))

    def test_the_brokers_retained_bounds(self) -> None:
        """The retained messages' bytes are a gauge; the retained PUBLISHes not retained are a
        counter by the limit that refused them; the saved ones the start dropped, a counter."""
        broker = self.readside.broker()
        self.readside.broker = lambda: dataclasses.replace(  # type: ignore[method-assign]
            broker, retained_bytes=16_000_086, retained_over_messages=3, retained_over_bytes=5,
            retained_dropped_at_start=102)
        got = samples(render_metrics("", self.registry)[0])
        self.assertEqual(got[("gateway_broker_retained_bytes", ())], 16_000_086)
        self.assertEqual(got[("gateway_broker_retained_refused_total", (("limit", "max_retained_messages"),))], 3)
        self.assertEqual(got[("gateway_broker_retained_refused_total", (("limit", "max_retained_bytes"),))], 5)
        self.assertEqual(got[("gateway_broker_retained_dropped_at_start_total", ())], 102)

    def test_the_queue_drop_counters_help_names_the_total_bound(self) -> None:
        """The HELP of the queue drop counters (every drop, by QoS, by client) says they count
        the drops for ``max_queued_bytes_total`` too, as they do: a scrape's reader is not told
        "a session's queue was full" of a drop made for the persistent sessions' total."""
        helps = {family.name: family.documentation
                 for family in text_string_to_metric_families(render_metrics("", self.registry)[0].decode())}
        for name in ("gateway_broker_queue_dropped_messages", "gateway_broker_queue_dropped_messages_by_qos",
                     "gateway_broker_client_queue_dropped_messages"):
            self.assertIn("max_queued_bytes_total", helps[name], name)

    def test_the_twins_last_write(self) -> None:
        """The twin's last things.json write is gateway_twin_save_seconds and its size
        gateway_twin_save_bytes, both absent before the first write."""
        got = samples(render_metrics("", self.registry)[0])
        self.assertNotIn(("gateway_twin_save_seconds", ()), got)
        twin = self.readside.twin_snapshot
        assert twin is not None
        self.readside.twin_snapshot = dataclasses.replace(twin, save_s=0.125, save_bytes=5120)
        got = samples(render_metrics("", self.registry)[0])
        self.assertEqual((got[("gateway_twin_save_seconds", ())], got[("gateway_twin_save_bytes", ())]), (0.125, 5120))

    def test_values_are_read_at_scrape_time(self) -> None:
        """Nothing is cached: a moved counter shows on the next scrape."""
        before = samples(render_metrics("", self.registry)[0])
        self.readside.acked = 99
        after = samples(render_metrics("", self.registry)[0])
        key = ("gateway_link_acked_messages_total", (("link", "cloud"),))
        self.assertEqual((before[key], after[key]), (10, 99))

    def test_openmetrics_by_content_negotiation(self) -> None:
        """Accept: application/openmetrics-text gets OpenMetrics (ending in # EOF)."""
        body, content_type = render_metrics("application/openmetrics-text; version=1.0.0; charset=utf-8",
                                            self.registry)
        self.assertTrue(content_type.startswith("application/openmetrics-text"), content_type)
        self.assertTrue(body.endswith(b"# EOF\n"))
        self.assertIn(b"gateway_link_acked_messages_total{link=\"cloud\"} 10", body)

    def test_which_accept_header_gets_which_format(self) -> None:
        """As docs/telemetry.md says: OpenMetrics 1.0.0 without a version and for Prometheus'
        own header; an OpenMetrics version before 1.0.0, or any other type, gets text 0.0.4."""
        prometheus = ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
                      "text/plain;version=0.0.4;q=0.5,*/*;q=0.1")
        for accept, wanted in (
                ("application/openmetrics-text", "application/openmetrics-text; version=1.0.0;"),
                (prometheus, "application/openmetrics-text; version=1.0.0;"),
                ("application/openmetrics-text; version=0.0.1", "text/plain; version=0.0.4;"),
                ("text/plain; version=1.0.0", "text/plain; version=1.0.0;"),
                ("application/json", "text/plain; version=0.0.4;"),
                ("", "text/plain; version=0.0.4;")):
            body, content_type = render_metrics(accept, self.registry)
            self.assertTrue(content_type.startswith(wanted), (accept, content_type))
            self.assertEqual(body.endswith(b"# EOF\n"), "openmetrics" in wanted, accept)

    def test_a_version_that_is_no_number_is_anything_else(self) -> None:
        """An Accept header whose version is not numbers and dots (prometheus-client failed on
        it with a TypeError: a 500 for the scraper's typo) gets the text format 0.0.4, and the
        header's other media ranges still count."""
        for accept, wanted in (
                ("application/openmetrics-text; version=abc", "text/plain; version=0.0.4;"),
                ("application/openmetrics-text; version=1.x", "text/plain; version=0.0.4;"),
                ("application/openmetrics-text; version=" + "9" * 5000, "text/plain; version=0.0.4;"),
                ("text/plain; version=one", "text/plain; version=0.0.4;"),
                ("application/openmetrics-text; version=1.0.0.x, application/openmetrics-text; version=1.0.0",
                 "application/openmetrics-text; version=1.0.0;"),
                ("application/openmetrics-text; version=2.0.0", "application/openmetrics-text; version=2.0.0;")):
            body, content_type = render_metrics(accept, self.registry)
            self.assertTrue(content_type.startswith(wanted), (accept, content_type))
            self.assertEqual(body.endswith(b"# EOF\n"), "openmetrics" in wanted, accept)

    def test_promtool_accepts_the_page(self) -> None:
        """promtool check metrics finds no problem (names, units, help)."""
        if PROMTOOL is None:
            raise self.skipTest("promtool is not installed (Debian package prometheus; make test-deps)")
        body, _ = render_metrics("", self.registry)
        result = subprocess.run([PROMTOOL, "check", "metrics"], input=body, capture_output=True, timeout=60)
        self.assertEqual((result.returncode, result.stdout + result.stderr), (0, b""))

    def test_a_broken_snapshot_leaves_the_rest(self) -> None:
        """A snapshot that raises drops its own metrics only."""
        def broken() -> Any:
            raise RuntimeError("boom")

        self.readside.updates = broken  # type: ignore[method-assign]
        got = samples(render_metrics("", self.registry)[0])
        self.assertNotIn(("gateway_update_operations", (("status", "DOWNLOADING"),)), got)
        self.assertIn(("gateway_broker_connections", ()), got)
        self.flushLoggedErrors(RuntimeError)


class MetricsRequestTests(SynchronousTestCase):
    """The metrics endpoint's requests, over an in-memory connection."""

    def test_a_body_is_dropped_as_it_comes(self) -> None:
        """A POST's body is never kept or parsed (405 all the same): a 200 MB form body was
        parsed whole into args on the reactor thread before the 405, stalling the gateway."""
        from twisted.internet.testing import StringTransport

        from gateway.telemetry.metricspage import MetricsFactory

        requests: list[Any] = []
        factory = MetricsFactory(lambda accept: (b"page\n", "text/plain"))
        channel = factory.buildProtocol(None)
        channel.requestFactory = type("Spy", (channel.requestFactory,), {
            "process": lambda self: (requests.append((self.content.seek(0, 2), len(self.args))),
                                     factory.request_class.process(self))[1]})
        transport = StringTransport()
        channel.makeConnection(transport)
        channel.dataReceived(b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded"
                             b"\r\nContent-Length: 400000\r\n\r\n")
        for _ in range(100):
            channel.dataReceived(b"a=1&" * 1000)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 405 "), transport.value()[:60])
        self.assertEqual(requests, [(0, 0)])  # (body bytes held, form fields parsed)
        transport.clear()
        channel.dataReceived(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 200 "))
        self.assertTrue(transport.value().endswith(b"page\n"))
        channel.connectionLost(None)


    def test_a_cross_site_browser_request_is_403(self) -> None:
        """A page the operator opened could read the metrics through the browser: a request
        whose Origin is not the endpoint's own, or that says Sec-Fetch-Site: cross-site or
        same-site, is 403 saying why, the page not rendered; a scraper's (no Origin), or one of
        the endpoint's own origin, is served."""
        from twisted.internet.task import Clock
        from twisted.internet.testing import StringTransport

        from gateway.telemetry.metricspage import MetricsFactory

        rendered: list[str] = []
        factory = MetricsFactory(lambda accept: (rendered.append(accept), (b"page\n", "text/plain"))[1], Clock())
        channel = factory.buildProtocol(None)
        transport = StringTransport()
        channel.makeConnection(transport)

        def get(*headers: bytes) -> bytes:
            transport.clear()
            channel.dataReceived(b"\r\n".join((b"GET /metrics HTTP/1.1", b"Host: 127.0.0.1:9883") + headers)
                                 + b"\r\n\r\n")
            return transport.value()

        answer = get(b"Origin: http://evil.example")
        self.assertTrue(answer.startswith(b"HTTP/1.1 403 "), answer[:60])
        self.assertTrue(answer.endswith(b"\r\n\r\ncross-site browser requests are refused: Origin http://evil.example"
                                        b" is not this listener's (http://127.0.0.1:9883)\n"), answer)
        self.assertTrue(get(b"Sec-Fetch-Site: same-site").startswith(b"HTTP/1.1 403 "))
        self.assertEqual(rendered, [])
        self.assertTrue(get().startswith(b"HTTP/1.1 200 "))
        self.assertTrue(get(b"Origin: http://127.0.0.1:9883", b"Sec-Fetch-Site: same-origin").startswith(b"HTTP/1.1 200 "))
        self.assertEqual(len(rendered), 2)
        channel.connectionLost(None)


class EndpointTests(TestCase):
    """/metrics on the configured Twisted endpoint: the ``metrics`` service, serving the
    telemetry service's page."""

    def service(self, endpoint: str) -> MetricsService:
        telemetry = TelemetryService(TelemetrySettings(metrics_endpoint=endpoint, device_info_interval=0,
                                                       engine_report_interval=0, usage_report_interval=0),
                                     FakeReadSide(), FakeBus(), reactor, Path(self.mktemp()),  # type: ignore[arg-type]
                                     run_blocking=lambda f, *a: __import__("twisted.internet.defer").internet.defer
                                     .maybeDeferred(f, *a))
        return MetricsService(endpoint, telemetry.render_metrics, reactor)

    @inlineCallbacks
    def test_served_with_content_negotiation(self) -> Any:
        """GET /metrics answers the text format, or OpenMetrics when asked; other paths 404,
        other methods than GET and HEAD 405."""
        from treq.client import HTTPClient
        from twisted.web.client import Agent, HTTPConnectionPool

        treq = HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))

        port = free_port()
        service = self.service(f"tcp:{port}:interface=127.0.0.1")
        yield service.startService()
        self.addCleanup(service.stopService)
        response = yield treq.get(f"http://127.0.0.1:{port}/metrics")
        body = yield response.content()
        self.assertEqual(response.code, 200)
        self.assertIn(b"gateway_broker_connections 2.0", body)
        response = yield treq.get(f"http://127.0.0.1:{port}/metrics",
                                  headers={"Accept": "application/openmetrics-text"})
        body = yield response.content()
        self.assertTrue(response.headers.getRawHeaders("content-type")[0].startswith("application/openmetrics-text"))
        self.assertTrue(body.endswith(b"# EOF\n"))
        response = yield treq.get(f"http://127.0.0.1:{port}/other")
        yield response.content()
        self.assertEqual(response.code, 404)
        response = yield treq.post(f"http://127.0.0.1:{port}/metrics", data=b"x")
        yield response.content()
        self.assertEqual((response.code, response.headers.getRawHeaders("allow")), (405, ["GET, HEAD"]))
        response = yield treq.head(f"http://127.0.0.1:{port}/metrics")
        body = yield response.content()
        self.assertEqual((response.code, body), (200, b""))

    @inlineCallbacks
    def test_bind_failure_fails_the_start(self) -> Any:
        """A port that is taken fails startService with the endpoint and the reason."""
        from twisted.web.resource import Resource
        from twisted.web.server import Site

        taken = reactor.listenTCP(0, Site(Resource()), interface="127.0.0.1")
        self.addCleanup(taken.stopListening)
        endpoint = f"tcp:{taken.getHost().port}:interface=127.0.0.1"
        service = self.service(endpoint)
        error = yield self.assertFailure(service.startService(), TelemetryError)
        self.assertIn(f"metrics endpoint {endpoint}: cannot listen", str(error))
        self.assertIn("Address already in use", str(error))
        service.running = False
