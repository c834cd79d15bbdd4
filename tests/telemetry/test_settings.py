"""The telemetry section's own checks, reported like every config error."""

from __future__ import annotations

from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from gateway import config as gateway_config
from gateway.commands.settings import CommandsSettings
from gateway.errors import ConfigError
from gateway.links.settings import AWS_ROUTES, KANTO_ROUTES
from gateway.mqtt.topics import matches
from gateway.telemetry.settings import REPORTS, TelemetrySettings


class SettingsTests(SynchronousTestCase):
    def load(self, text: str) -> ConfigError:
        path = Path(self.mktemp())
        path.write_text(text)
        return self.assertRaises(ConfigError, gateway_config.load, path)

    def test_bad_metrics_endpoint_and_unknown_key(self) -> None:
        """An endpoint with no port and an unknown key are named with their file and path."""
        error = self.load("telemetry:\n  metrics_endpoint: 'tcp:notaport'\n  colour: red\n")
        text = "\n".join(error.errors)
        self.assertIn("telemetry.colour: unknown key", text)
        self.assertIn("telemetry.metrics_endpoint: 'tcp:notaport': the port must be from 0 to 65535, not 'notaport'", text)

    def test_report_topics_are_topic_names(self) -> None:
        """Reports go out on <topic_prefix>/<name> and answers on error_topic, requests come on
        request_topic: wildcards or an empty level are refused at load, each at its key, as is
        one topic for requests and errors."""
        error = self.load("telemetry:\n  topic_prefix: 'edge/+/reports'\n  request_topic: 'edge/#'\n"
                          "  error_topic: ''\n")
        text = "\n".join(error.errors)
        for key in ("topic_prefix", "request_topic", "error_topic"):
            self.assertIn(f"telemetry.{key}: not a valid topic name", text)
        error = self.load("telemetry:\n  request_topic: a/b\n  error_topic: a/b\n")
        self.assertIn("telemetry.error_topic: must differ from request_topic", "\n".join(error.errors))
        error = self.load("telemetry:\n  topic_prefix: r\n  request_topic: r/device_info\n  error_topic: r/engine_report\n")
        self.assertEqual([line.split(": ", 1)[1] for line in error.errors], [
            "telemetry.request_topic: 'r/device_info' is where a report is published"
            " (topic_prefix/<report>): each report would be taken for a request or an answer",
            "telemetry.error_topic: 'r/engine_report' is where a report is published"
            " (topic_prefix/<report>): each report would be taken for a request or an answer"])

    def test_request_topic_clients_can_publish_to(self) -> None:
        """A ``$`` request topic is refused at load: the broker drops every client's PUBLISH to
        a ``$`` topic (counted in ``dollar_drops``), so the gateway waited for requests that
        could never arrive and said nothing."""
        error = self.load("telemetry:\n  request_topic: '$SYS/gateway/request'\n")
        self.assertEqual([line.split(": ", 1)[1] for line in error.errors], [
            "telemetry.request_topic: '$SYS/gateway/request' is a $ topic: the broker drops what clients publish"
            " there, so no request would ever arrive"])

    def test_defaults_and_off(self) -> None:
        """No section: the defaults (9883 on 127.0.0.1); an empty endpoint turns /metrics off."""
        path = Path(self.mktemp())
        path.write_text("telemetry:\n  metrics_endpoint: ''\n  usage_report_interval: 0\n")
        settings = gateway_config.load(path).telemetry
        self.assertEqual((settings.metrics_endpoint, settings.usage_report_interval), ("", 0.0))
        path.write_text("{}\n")
        defaults = gateway_config.load(path).telemetry
        self.assertEqual((defaults.metrics_endpoint, defaults.device_info_interval, defaults.engine_report_min_interval),
                         ("tcp:9883:interface=127.0.0.1", 3600.0, 10.0))


class DefaultRoutesTests(SynchronousTestCase):
    """The links' default routes take the reports and the configuration change reports
    upstream on their default topics only (docs/telemetry.md, docs/commands.md): a changed
    ``topic_prefix`` or ``report_topic`` needs a route of its own."""

    def test_default_topics_only(self) -> None:
        """Each default report topic and the default report_topic match a route of Kanto's
        and of AWS's defaults; the same reports under another prefix match none."""
        prefix = TelemetrySettings().topic_prefix
        defaults = [f"{prefix}/{name}" for name in REPORTS] + [CommandsSettings().report_topic]
        moved = [f"site/reports/{name}" for name in REPORTS] + ["site/config/lastChange"]
        for routes in (KANTO_ROUTES, AWS_ROUTES):
            self.assertEqual([t for t in defaults if not any(matches(r.filter, t) for r in routes)], [])
            self.assertEqual([t for t in moved if any(matches(r.filter, t) for r in routes)], [])
