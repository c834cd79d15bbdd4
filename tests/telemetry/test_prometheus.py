"""A real Prometheus scrapes the running gateway's /metrics; promtool accepts the page."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from gateway import config as gateway_config
from gateway.tree import build_service
from tests.mqttclient import TestClient
from tests.ports import free_port
from tests.telemetry.prometheus import PROMETHEUS, Prometheus


class PrometheusScrapeTests(TestCase):
    """The gateway as a Prometheus target."""

    timeout = 120

    def setUp(self) -> None:
        if not Path(PROMETHEUS).exists():
            raise self.skipTest("prometheus is not installed (Debian package prometheus; make test-deps)")
        self.http = HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))

    @inlineCallbacks
    def test_scraped_metric_moves_with_traffic(self) -> Any:
        """Prometheus (scrape interval 1 s) sees the target up, and the broker's QoS 1 message
        counter it queries rises after a client publishes; promtool accepts the served page."""
        work = Path(self.mktemp()).resolve()
        mqtt_port, metrics_port = free_port(), free_port()
        path = work / "gateway.yaml"
        work.mkdir(parents=True)
        path.write_text(
            f"gateway:\n  state_dir: {work / 'state'}\n"
            f"broker:\n  listeners:\n    default:\n      endpoint: 'tcp:{mqtt_port}:interface=127.0.0.1'\n"
            "  plugins:\n    amqtt.plugins.authentication.AnonymousAuthPlugin: {allow_anonymous: true}\n"
            f"ingest:\n  endpoint: 'tcp:{free_port()}:interface=127.0.0.1'\n"
            f"telemetry:\n  metrics_endpoint: 'tcp:{metrics_port}:interface=127.0.0.1'\n")
        root = build_service(gateway_config.load(path), reactor)
        yield root.startService()
        self.addCleanup(root.stopService)

        response = yield self.http.get(f"http://127.0.0.1:{metrics_port}/metrics")
        page = yield response.content()
        promtool = shutil.which("promtool")
        if promtool is not None:
            result = subprocess.run([promtool, "check", "metrics"], input=page, capture_output=True, timeout=60)
            self.assertEqual((result.returncode, result.stdout + result.stderr), (0, b""))

        prometheus = Prometheus(reactor, work / "prometheus", free_port(), f"127.0.0.1:{metrics_port}", self.http)
        prometheus.start()
        self.addCleanup(prometheus.stop)

        @inlineCallbacks
        def target_up() -> Any:
            data = yield prometheus.api("targets")
            return [t for t in data["activeTargets"] if t["health"] == "up"]

        [target] = yield prometheus.wait_until(target_up, 60, "the gateway target up")
        self.assertEqual(target["scrapeUrl"], f"http://127.0.0.1:{metrics_port}/metrics")
        query = 'gateway_broker_messages_received_total{qos="1"}'

        @inlineCallbacks
        def value() -> Any:
            data = yield prometheus.api("query", query=query)
            return [float(r["value"][1]) for r in data["result"]]

        [before] = yield prometheus.wait_until(value, 30, f"{query} in Prometheus")
        client = TestClient(reactor)
        self.addCleanup(client.stop)
        yield client.connect(mqtt_port)
        for i in range(3):
            yield client.publish("sensors/room", b"%d" % i, 1)

        @inlineCallbacks
        def moved() -> Any:
            values = yield value()
            return values and values[0] >= before + 3

        yield prometheus.wait_until(moved, 30, f"{query} rising by 3 from {before}")
