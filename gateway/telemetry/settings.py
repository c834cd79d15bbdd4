"""The ``telemetry:`` section: report intervals and topics, the metrics endpoint."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


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

    def __post_init__(self) -> None:
        """Refuse a metrics endpoint Twisted cannot parse, and report topics that clash.

        :raises ValueError: naming the key.
        """
        if self.metrics_endpoint:
            from twisted.internet.endpoints import serverFromString

            try:
                serverFromString(object(), self.metrics_endpoint)  # parsed only: endpoints keep the reactor
            except (ValueError, TypeError, KeyError) as exc:
                raise ValueError(f"metrics_endpoint: not a Twisted server endpoint: {self.metrics_endpoint!r} "
                                 f"({exc})") from None
        if self.request_topic == self.error_topic:
            raise ValueError("request_topic and error_topic must differ")
