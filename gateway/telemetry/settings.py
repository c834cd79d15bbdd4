"""The ``telemetry:`` section: report intervals and topics, the metrics endpoint."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Literal

from gateway.endpointstrings import server_endpoint_problem
from gateway.mqtt.topics import unreachable_request_topic, valid_topic

#: The reports the gateway makes, in the order they are listed, each published on
#: ``<topic_prefix>/<name>``.
REPORTS = ("device_info", "usage_report", "engine_report")


@dataclass(frozen=True)
class TelemetrySettings:
    """When reports are built and where they and the metrics go.

    An interval of 0 turns that periodic report off (it is still built on request).
    """

    device_info_interval: float = field(default=3600.0, metadata={
        "min": 0.0, "doc": "seconds between device_info reports (also sent at start; 0: start and request only)"})
    usage_report_interval: float = field(default=300.0, metadata={
        "min": 0.0, "doc": "seconds between usage_report reports (0: on request only)"})
    engine_report_interval: float = field(default=3600.0, metadata={
        "min": 0.0, "doc": "seconds between engine_report reports besides those on app state changes"})
    engine_report_min_interval: float = field(default=10.0, metadata={
        "min": 0.0, "doc": "engine_report on app state changes at most this often (seconds)"})
    topic_prefix: str = field(default="edge/gateway/reports", metadata={
        "doc": "reports are published retained on <topic_prefix>/<name>"})
    request_topic: str = field(default="edge/gateway/reports/request", metadata={
        "doc": "local topic: a report's name as payload builds and publishes it now"})
    error_topic: str = field(default="edge/gateway/reports/error", metadata={
        "doc": "local topic: answers to bad requests"})
    metrics_endpoint: str = field(default="tcp:9883:interface=127.0.0.1", metadata={
        "doc": "Twisted server endpoint serving /metrics (empty: no metrics endpoint)"})
    app_accounting: Literal["auto", "off"] = field(default="auto", metadata={
        "doc": "bytes per hosted app through cgroup v2 + nftables where the kernel allows it"})

    def config_problems(self) -> Iterator[tuple[tuple[str, ...], str]]:
        """A metrics endpoint Twisted cannot parse; report topics that are not topic names
        (``<topic_prefix>/<name>`` included) or that clash; a request topic no client can
        publish to (``$``) (``gateway.config.ChecksItself``)."""
        problem = server_endpoint_problem(self.metrics_endpoint) if self.metrics_endpoint else None
        if problem:
            yield ("metrics_endpoint",), problem
        for key, topic in (("topic_prefix", f"{self.topic_prefix}/report"), ("request_topic", self.request_topic),
                           ("error_topic", self.error_topic)):
            if not valid_topic(topic):
                yield (key,), f"not a valid topic name: {getattr(self, key)!r}"
        unreachable = unreachable_request_topic(self.request_topic)
        if unreachable:
            yield ("request_topic",), unreachable
        if self.request_topic == self.error_topic:
            yield ("error_topic",), "must differ from request_topic"
        report_topics = {f"{self.topic_prefix}/{name}" for name in REPORTS}
        for key in ("request_topic", "error_topic"):
            if getattr(self, key) in report_topics:
                yield (key,), (f"{getattr(self, key)!r} is where a report is published (topic_prefix/<report>): "
                               "each report would be taken for a request or an answer")
