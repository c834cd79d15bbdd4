"""``/metrics``: the gateway's own health for Prometheus, read from the snapshots at scrape time.

:class:`GatewayCollector` is a prometheus-client custom collector: it keeps no counters of
its own; every value comes from a snapshot taken when Prometheus scrapes. The page is
served in Prometheus' text format or in OpenMetrics, as the client's ``Accept`` header asks
(:func:`render_metrics`), on a Twisted endpoint
(:func:`gateway.telemetry.metricspage.listen_metrics`).
"""

from __future__ import annotations

import re
from typing import Any, Iterator

from prometheus_client.core import (CollectorRegistry, CounterMetricFamily, GaugeMetricFamily,
                                    HistogramMetricFamily, Metric, SummaryMetricFamily)
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector
from twisted.logger import Logger

from gateway.certinfo import DAY
from gateway.journal.stats import HistogramSnapshot
from gateway.readside import ReadSide

log = Logger()

#: A ``version`` an ``Accept`` header may name for prometheus-client: numbers and dots (it
#: compares the parts as integers, and fails with a TypeError on any other part, or on a
#: number of more digits than Python converts: 4300).
_VERSION = re.compile(r"[0-9]{1,1000}(?:\.[0-9]{1,1000})*")


def _gauge(name: str, doc: str, labels: list[str] | None = None) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=labels or [])


def _counter(name: str, doc: str, labels: list[str] | None = None) -> CounterMetricFamily:
    # prometheus-client appends _total to a counter's samples (and wants the name without it)
    return CounterMetricFamily(name.removesuffix("_total"), doc, labels=labels or [])


def _buckets(histogram: HistogramSnapshot) -> list[tuple[str, float]]:
    # prometheus-client's buckets: (upper bound, cumulative count), ending with +Inf's
    buckets: list[tuple[str, float]] = [(repr(bound), count)
                                        for bound, count in zip(histogram.bounds, histogram.cumulative)]
    buckets.append(("+Inf", histogram.cumulative[-1]))
    return buckets


class GatewayCollector(Collector):
    """Every gateway metric, built from the read side's snapshots on each scrape.

    :param readside: the services' snapshots.
    :param telemetry: the telemetry service (its report counters), or ``None``.
    """

    def __init__(self, readside: ReadSide, telemetry: Any = None) -> None:
        self.readside = readside
        self.telemetry = telemetry

    def collect(self) -> Iterator[Metric]:
        """The metrics now; a snapshot that fails is logged and its metrics left out."""
        for part in (self._gateway, self._broker, self._journal, self._links, self._certificates, self._apps,
                     self._updates, self._ingest, self._twin, self._fleet, self._reports):
            try:
                yield from part()
            except Exception:  # one broken snapshot must not take the whole page down
                log.failure("metrics: {part} failed", part=part.__name__)

    def _gateway(self) -> Iterator[Metric]:
        status = self.readside.status()
        info = _gauge("gateway_info", "The gateway's version (always 1)", ["version"])
        info.add_metric([status.version], 1)
        yield info
        yield GaugeMetricFamily("gateway_start_time_seconds", "When the gateway started (Unix time)",
                                value=status.started_at)
        yield GaugeMetricFamily("gateway_reactor_lag_seconds",
                                "Seconds the reactor ran a timer late at worst in the last minute or two",
                                value=status.reactor_lag_s)
        unclean = _counter("gateway_unclean_stops_total",
                           "Runs on this state directory that ended without a clean stop (kept across restarts)")
        unclean.add_metric([], status.previous_stop.unclean_stops)
        yield unclean
        up = _gauge("gateway_service_up", "Whether a service of the tree is running", ["service"])
        degraded = _gauge("gateway_service_degraded",
                          "Whether a started service is kept from its job (its status error)", ["service"])
        for service in status.services:
            up.add_metric([service.name], 1 if service.running else 0)
            degraded.add_metric([service.name], 1 if service.running and service.error else 0)
        yield up
        yield degraded

    def _broker(self) -> Iterator[Metric]:
        b = self.readside.broker()
        for name, doc, value in (
                ("gateway_broker_up", "Whether the local broker is running", 1 if b.running else 0),
                ("gateway_broker_connections", "Open client connections", b.connections),
                ("gateway_broker_sessions", "Known sessions (connected and persistent offline)", b.sessions),
                ("gateway_broker_offline_sessions", "Persistent sessions whose clients are offline",
                 b.offline_sessions),
                ("gateway_broker_subscriptions", "Subscriptions held: every session's topic filters", b.subscriptions),
                ("gateway_broker_retained_messages", "Retained messages held", b.retained),
                ("gateway_broker_retained_bytes", "Bytes of the retained messages held: topics and payloads",
                 b.retained_bytes),
                ("gateway_broker_persistent_queued_bytes",
                 "What the persistent sessions' queues hold, as max_queued_bytes_total counts it", b.queued_total)):
            yield GaugeMetricFamily(name, doc, value=value)
        if b.checkpoint_save_s is not None and b.checkpoint_bytes is not None:  # (once one is saved)
            yield GaugeMetricFamily("gateway_broker_checkpoint_seconds",
                                    "The last checkpoint save: hand-over to its thread to durable",
                                    value=b.checkpoint_save_s)
            yield GaugeMetricFamily("gateway_broker_checkpoint_bytes", "The last checkpoint saved: its size",
                                    value=b.checkpoint_bytes)
        received = _counter("gateway_broker_messages_received_total",
                            "PUBLISHes received from clients (a QoS 2 one sent again before PUBREL: once)", ["qos"])
        sent = _counter("gateway_broker_messages_sent_total", "PUBLISHes sent to clients (each delivery once)",
                        ["qos"])
        for qos in range(3):
            received.add_metric([str(qos)], b.messages_in[qos])
            sent.add_metric([str(qos)], b.messages_out[qos])
        yield received
        yield sent
        for name, doc, value in (
                ("gateway_broker_payload_received_bytes_total", "Payload bytes received from clients",
                 b.payload_bytes_in),
                ("gateway_broker_payload_sent_bytes_total", "Payload bytes sent to clients", b.payload_bytes_out),
                ("gateway_broker_messages_resent_total", "Deliveries sent again with DUP after a reconnect",
                 b.messages_resent),
                ("gateway_broker_protocol_violations_total", "Connections closed for breaking MQTT", b.violations),
                ("gateway_broker_queue_dropped_messages_total",
                 "Messages dropped: a session's queue was full, or the persistent ones held max_queued_bytes_total",
                 b.queue_drops),
                ("gateway_broker_queue_total_dropped_messages_total",
                 "Messages dropped: the persistent sessions' queues held max_queued_bytes_total",
                 b.queue_drops_over_total),
                ("gateway_broker_sessions_expired_total",
                 "Offline persistent sessions ended by persistent_client_expiration", b.sessions_expired),
                ("gateway_broker_sessions_evicted_total",
                 "Offline persistent sessions ended by max_offline_sessions", b.sessions_evicted),
                ("gateway_broker_dollar_dropped_messages_total", "Client publishes to $ topics (dropped)",
                 b.dollar_drops),
                ("gateway_broker_persist_failures_total",
                 "Journal appends that failed (connection closed unacknowledged)", b.persist_failures),
                ("gateway_broker_durable_holds_total",
                 "Times reading from a client stopped: too many of its PUBLISHes waited (the disk, topic plugins)",
                 b.durable_holds),
                ("gateway_broker_topics_too_deep_total",
                 "Connections closed for a PUBLISH or will topic over max_topic_levels", b.topics_too_deep),
                ("gateway_broker_filters_too_deep_total", "SUBSCRIBE filters refused: over max_topic_levels",
                 b.filters_too_deep),
                ("gateway_broker_subscriptions_refused_total",
                 "New SUBSCRIBE filters refused: the session held max_subscriptions", b.subscriptions_refused),
                ("gateway_broker_retained_dropped_at_start_total",
                 "Saved retained messages the start dropped: over max_retained_messages or max_retained_bytes",
                 b.retained_dropped_at_start)):
            family = _counter(name, doc)
            family.add_metric([], value)
            yield family
        not_retained = _counter("gateway_broker_retained_refused_total",
                                "Retained PUBLISHes delivered and not retained: past the limit named", ["limit"])
        not_retained.add_metric(["max_retained_messages"], b.retained_over_messages)
        not_retained.add_metric(["max_retained_bytes"], b.retained_over_bytes)
        yield not_retained
        by_qos = _counter("gateway_broker_queue_dropped_messages_by_qos_total",
                          "Messages dropped (a full queue, max_queued_bytes_total), by their QoS as queued",
                          ["qos"])
        for qos in range(3):
            by_qos.add_metric([str(qos)], b.queue_drops_by_qos[qos])
        yield by_qos
        dropping = _counter("gateway_broker_client_queue_dropped_messages_total",
                            "Messages dropped from a client's queue: full, or max_queued_bytes_total"
                            " (the clients that dropped most)",
                            ["client_id", "qos"])
        for client in b.dropping_clients:
            dropping.add_metric([client.client_id, "0"], client.dropped_qos0)
            dropping.add_metric([client.client_id, "1-2"], client.dropped_qos12)
        yield dropping
        capped = _counter("gateway_broker_client_subscriptions_refused_total",
                          "New filters refused to a client by max_subscriptions (the clients refused most)",
                          ["client_id"])
        for capped_client in b.capped_clients:
            capped.add_metric([capped_client.client_id], capped_client.refused)
        yield capped
        connections = _gauge("gateway_broker_listener_connections", "Open connections per listener", ["listener"])
        read = _counter("gateway_broker_listener_received_bytes_total", "Bytes read from clients per listener",
                        ["listener"])
        written = _counter("gateway_broker_listener_sent_bytes_total",
                           "Bytes written to clients per listener (every packet, resends too)", ["listener"])
        refused = _counter("gateway_broker_listener_origins_refused_total",
                           "WebSocket handshakes refused for their Origin per listener", ["listener"])
        for listener in b.listeners:
            connections.add_metric([listener.name], listener.connections)
            read.add_metric([listener.name], listener.bytes_received)
            written.add_metric([listener.name], listener.bytes_sent)
            refused.add_metric([listener.name], listener.origins_refused)
        yield connections
        yield read
        yield written
        yield refused

    def _journal(self) -> Iterator[Metric]:
        journal = self.readside.journal()
        streams = journal.streams
        gauges = {
            "records": _gauge("gateway_journal_records", "Records retained", ["stream"]),
            "bytes": _gauge("gateway_journal_bytes", "Bytes on disk and pending", ["stream"]),
            "segments": _gauge("gateway_journal_segments", "Segment files", ["stream"]),
            "free_bytes": _gauge("gateway_journal_free_bytes", "Free bytes on the journal's filesystem", ["stream"]),
            "oldest_age_s": _gauge("gateway_journal_oldest_age_seconds", "Age of the oldest retained record",
                                   ["stream"]),
            "oldest_unacked_age_s": _gauge("gateway_journal_oldest_unacked_age_seconds",
                                           "Age of the oldest record a cursor has not acknowledged", ["stream"]),
        }
        appends = _counter("gateway_journal_appends_total", "Appends acknowledged", ["stream"])
        latency = SummaryMetricFamily("gateway_journal_append_latency_seconds",
                                      "Append to acknowledgement (durable under sync)", labels=["stream"])
        fsync = HistogramMetricFamily("gateway_journal_fsync_seconds", "One batch's write and fsync",
                                      labels=["stream"])
        cursor_save = HistogramMetricFamily("gateway_journal_cursor_save_seconds",
                                            "One cursor save: hand-over to the I/O thread to durable",
                                            labels=["stream"])
        unacked = _gauge("gateway_journal_cursor_unacked_records", "Records a cursor has not acknowledged",
                         ["stream", "cursor"])
        lost = _counter("gateway_journal_lost_records_total", "Records lost, by reason", ["stream", "reason"])
        refusing = _gauge("gateway_journal_refusing_appends", "Whether the stream refuses appends now", ["stream"])
        refusing_since = _gauge("gateway_journal_refusing_since_seconds",
                                "Since when the stream refuses appends (Unix time), and why", ["stream", "reason"])
        refused = _counter("gateway_journal_refused_appends_total", "Appends the stream refused", ["stream"])
        ledger = _gauge("gateway_journal_ledger_save_failing",
                        "Whether the writes of the stream's loss ledger fail now (a full disk)", ["stream"])
        for s in streams:
            for field, family in gauges.items():
                family.add_metric([s.name], getattr(s, field))
            appends.add_metric([s.name], s.appends)
            latency.add_metric([s.name], s.append_latency.count, s.append_latency.sum_s)
            fsync.add_metric([s.name], _buckets(s.fsync_latency), s.fsync_latency.sum)
            cursor_save.add_metric([s.name], _buckets(s.cursor_save_latency), s.cursor_save_latency.sum)
            for cursor in s.cursors:
                unacked.add_metric([s.name, cursor.name], cursor.unacked)
            for loss in s.losses:
                lost.add_metric([s.name, loss.reason], loss.records)
            refusing.add_metric([s.name], 0 if s.refusing is None else 1)
            if s.refusing is not None:
                refusing_since.add_metric([s.name, s.refusing.reason], s.refusing.since)
            refused.add_metric([s.name], s.refused_appends)
            ledger.add_metric([s.name], 0 if s.ledger_failing is None else 1)
        dropped: dict[str, int] = {}  # (a stream dropped with records not acknowledged: its loss stays counted)
        for gone in journal.dropped:
            if gone.lost:
                dropped[gone.name] = dropped.get(gone.name, 0) + gone.lost
        for name, records in dropped.items():
            lost.add_metric([name, "dropped"], records)
        yield from gauges.values()
        yield from (appends, latency, fsync, cursor_save, unacked, lost, refusing, refusing_since, refused, ledger)

    def _links(self) -> Iterator[Metric]:
        links = self.readside.links().links
        up = _gauge("gateway_link_up", "Whether the link is connected", ["link"])
        since = _gauge("gateway_link_connected_since_seconds", "When the current connection began (Unix time)",
                       ["link"])
        gauges = [
            ("in_flight", _gauge("gateway_link_in_flight_messages", "Publishes sent, not yet acknowledged", ["link"])),
            ("backlog", _gauge("gateway_link_backlog_records", "Records the cloud has not acknowledged", ["link"])),
            ("drain_rate", _gauge("gateway_link_drain_records_per_second",
                                  "Records acknowledged per second over the last 10 s", ["link"])),
        ]
        counters = [
            ("connects", _counter("gateway_link_connects_total", "Connections the cloud accepted", ["link"])),
            ("reconnects", _counter("gateway_link_reconnects_total", "Accepted connections after the first",
                                    ["link"])),
            ("sent", _counter("gateway_link_sent_messages_total", "Publishes sent", ["link"])),
            ("acked", _counter("gateway_link_acked_messages_total", "Publishes the cloud acknowledged", ["link"])),
            ("resent", _counter("gateway_link_resent_messages_total", "Publishes sent again after a reconnect",
                                ["link"])),
            ("bytes_up", _counter("gateway_link_sent_bytes_total", "Bytes sent to the cloud (MQTT before"
                                  " TLS; an HTTP link's: its requests' bodies)", ["link"])),
            ("bytes_down", _counter("gateway_link_received_bytes_total", "Bytes received from the cloud (MQTT"
                                    " before TLS; an HTTP link's: its answers' bodies)", ["link"])),
        ]
        unsaved = _gauge("gateway_link_cursor_save_failing",
                         "Whether the saves of the link's cursor fail now (a full disk)", ["link"])
        taken_over = _gauge("gateway_link_session_taken_over",
                            "Whether another client probably takes the link's session over (the same client id)",
                            ["link"])
        for link in links:
            up.add_metric([link.name], 1 if link.state == "connected" else 0)
            if link.connected_since is not None:
                since.add_metric([link.name], link.connected_since)
            for field, family in gauges + counters:
                family.add_metric([link.name], getattr(link, field))
            unsaved.add_metric([link.name], 0 if link.cursor_failing is None else 1)
            taken_over.add_metric([link.name], 0 if link.taken_over is None else 1)
        yield up
        yield since
        yield unsaved
        yield taken_over
        for _, family in gauges + counters:
            yield family

    def _certificates(self) -> Iterator[Metric]:
        certificates = self.readside.broker().certificates + tuple(
            c for link in self.readside.links().links for c in link.certificates)
        left = _gauge("gateway_certificate_expiry_seconds",
                      "Seconds until a TLS certificate the gateway uses expires (negative: expired)",
                      ["role", "path", "subject"])
        readable = _gauge("gateway_certificate_readable", "Whether a certificate file could be read",
                          ["role", "path"])
        for c in certificates:
            readable.add_metric([c.role, c.path], 0 if c.not_after is None else 1)
            if c.days_left is not None:
                left.add_metric([c.role, c.path, c.subject], round(c.days_left * DAY))
        yield left
        yield readable

    def _apps(self) -> Iterator[Metric]:
        apps = self.readside.apps().apps
        running = _gauge("gateway_app_running", "Whether a hosted program is RUNNING", ["program", "app"])
        state = _gauge("gateway_app_state", "A hosted program's supervisord state (1 for the current one)",
                       ["program", "app", "state"])
        uptime = _gauge("gateway_app_uptime_seconds", "Seconds since the program started", ["program", "app"])
        restarts = _counter("gateway_app_restarts_total", "Automatic restarts", ["program", "app"])
        for a in apps:
            running.add_metric([a.name, a.app], 1 if a.status == "RUNNING" else 0)
            state.add_metric([a.name, a.app, a.status], 1)
            uptime.add_metric([a.name, a.app], a.uptime_s)
            restarts.add_metric([a.name, a.app], a.restarts)
        yield from (running, state, uptime, restarts)

    def _updates(self) -> Iterator[Metric]:
        operations = self.readside.updates().operations
        by_status = _gauge("gateway_update_operations", "Update operations known, by status", ["status"])
        counts: dict[str, int] = {}
        for op in operations:
            counts[op.status] = counts.get(op.status, 0) + 1
        for status, n in sorted(counts.items()):
            by_status.add_metric([status], n)
        received = _gauge("gateway_update_download_received_bytes", "Bytes downloaded by an active operation",
                          ["correlation_id"])
        for op in operations:
            if op.active:
                received.add_metric([op.correlation_id], op.received_bytes)
        yield by_status
        yield received

    def _ingest(self) -> Iterator[Metric]:
        i = self.readside.ingest()
        if i is None:
            return
        yield GaugeMetricFamily("gateway_ingest_listening", "Whether the local HTTP ingest's endpoint is bound",
                                value=1 if i.listening else 0)
        for name, doc, value in (
                ("gateway_ingest_writes", "Ingest write and record requests answered 204", i.writes),
                ("gateway_ingest_values", "Values stored by ingest writes", i.values),
                ("gateway_ingest_unrouted_values", "Ingest values no link routes (kept as last values only)",
                 i.unrouted),
                ("gateway_ingest_refused_requests", "Ingest requests answered 503 (the journal refused)", i.refused),
                ("gateway_ingest_bad_requests", "Ingest requests answered 4xx", i.bad)):
            yield CounterMetricFamily(name, doc, value=value)
        yield GaugeMetricFamily("gateway_ingest_aliases", "Last values the ingest holds for reads", value=i.aliases)
        yield GaugeMetricFamily("gateway_ingest_long_polls", "Ingest long-polls waiting now", value=i.waiting)
        yield GaugeMetricFamily("gateway_ingest_devices", "Devices activated locally through the ingest (at most"
                                " ingest.max_devices)", value=i.devices)

    def _twin(self) -> Iterator[Metric]:
        t = self.readside.twin()
        if t is None:
            return
        yield GaugeMetricFamily("gateway_twin_things", "Things the local twin holds (the gateway's and its children)",
                                value=t.things)
        yield GaugeMetricFamily("gateway_twin_revision", "The revision of the gateway's thing", value=t.revision)
        yield CounterMetricFamily("gateway_twin_things_refused", "Commands refused: they would pass twin.max_things",
                                  value=t.things_refused)
        if t.save_s is not None and t.save_bytes is not None:  # (once one is written)
            yield GaugeMetricFamily("gateway_twin_save_seconds",
                                    "The last write of things.json: hand-over to its thread to durable", value=t.save_s)
            yield GaugeMetricFamily("gateway_twin_save_bytes", "The last things.json written: its size",
                                    value=t.save_bytes)
        if t.sync is None:
            return
        sync = t.sync
        yield GaugeMetricFamily("gateway_twin_shadow_connected", "Whether the shadow sync's link is connected",
                                value=1 if sync.connected else 0)
        yield GaugeMetricFamily("gateway_twin_shadow_pending_requests",
                                "Shadow requests read from the stream and not yet answered", value=sync.pending)
        yield GaugeMetricFamily("gateway_twin_shadow_inflight_requests", "Shadow requests awaiting an answer now",
                                value=sync.inflight)
        yield CounterMetricFamily("gateway_twin_shadow_refused_requests", "Shadow requests the cloud refused for good",
                                  value=sync.refused)
        yield GaugeMetricFamily("gateway_twin_shadows_behind",
                                "Shadows the cloud is behind on (a request of theirs the journal refused)",
                                value=sync.behind)

    def _fleet(self) -> Iterator[Metric]:
        f = self.readside.fleet()
        if f is None:
            return
        yield CounterMetricFamily("gateway_fleet_polls", "Polls of the fleet's DDI server tried (failed ones too)",
                                  value=f.polls)
        yield CounterMetricFamily("gateway_fleet_poll_failures", "Polls of the fleet's DDI server that failed",
                                  value=f.failures)
        yield GaugeMetricFamily("gateway_fleet_poll_failures_in_row", "Fleet polls failed since the last good one",
                                value=f.failures_in_row)
        if f.last_success_at is not None:  # (once a poll went well)
            yield GaugeMetricFamily("gateway_fleet_last_success_timestamp_seconds",
                                    "When a fleet poll last went well (Unix time)", value=f.last_success_at)
        yield GaugeMetricFamily("gateway_fleet_held", "Whether the fleet server's Retry-After holds requests back",
                                value=1 if f.held_until is not None else 0)
        yield GaugeMetricFamily("gateway_fleet_feedback_waiting", "Fleet feedback messages not yet taken by the server",
                                value=f.feedback_waiting)
        yield GaugeMetricFamily("gateway_fleet_feedback_oldest_age_seconds",
                                "Seconds the oldest fleet feedback waiting has waited (0: none waits)",
                                value=f.feedback_oldest_age_s or 0.0)
        yield CounterMetricFamily("gateway_fleet_feedback_dropped",
                                  "Fleet feedback messages the server refused for good, dropped",
                                  value=f.feedback_dropped)

    def _reports(self) -> Iterator[Metric]:
        if self.telemetry is None:
            return
        published = _counter("gateway_reports_published_total", "Reports built and published", ["report"])
        incomplete = _counter("gateway_reports_incomplete_total", "Reports published with errors", ["report"])
        for name, n in self.telemetry.published.items():
            published.add_metric([name], n)
            incomplete.add_metric([name], self.telemetry.incomplete[name])
        yield published
        yield incomplete


def make_registry(readside: ReadSide, telemetry: Any = None) -> CollectorRegistry:
    """A registry with the gateway's collector and prometheus-client's process collector."""
    from prometheus_client import ProcessCollector

    registry = CollectorRegistry(auto_describe=False)
    registry.register(GatewayCollector(readside, telemetry))
    ProcessCollector(registry=registry)
    return registry


def render_metrics(accept_header: str, registry: CollectorRegistry) -> tuple[bytes, str]:
    """The page for a client's ``Accept`` header: ``(body, content type)`` (OpenMetrics when
    it asks for ``application/openmetrics-text``, else the Prometheus text format)."""
    encoder, content_type = choose_encoder(_numeric_versions(accept_header or ""))
    return encoder(registry), content_type


def _numeric_versions(accept_header: str) -> str:
    """``accept_header`` without the media ranges whose ``version`` is not numbers and dots
    (``version=abc``), which prometheus-client's ``choose_encoder`` fails on: a scraper's
    header is the scraper's mistake, and such a range is "anything else" (text 0.0.4).

    :param accept_header: the client's ``Accept`` header.
    """
    kept = []
    for media_range in accept_header.split(","):
        # (as prometheus-client reads it: the first ``version=`` parameter, the value as written)
        versions = [value for key, sep, value in (token.strip().partition("=") for token in media_range.split(";"))
                    if sep and key == "version"]
        if not versions or not versions[0] or _VERSION.fullmatch(versions[0]):
            kept.append(media_range)
    return ",".join(kept)
