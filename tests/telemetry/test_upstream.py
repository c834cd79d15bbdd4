"""Reports through the whole tree: requested on the local topic, published retained, and
carried up a link to a real mosquitto as the gateway's telemetry; bad requests answered."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from gateway import config as gateway_config
from gateway.tree import build_service
from tests.links.mosquitto import Mosquitto
from tests.mqttclient import TestClient
from tests.ports import free_port


class ReportsUpstreamTests(TestCase):
    """The default routes take the reports to the cloud."""

    timeout = 60

    @inlineCallbacks
    def test_requested_report_reaches_the_cloud_and_bad_names_are_answered(self) -> Any:
        """usage_report requested on edge/gateway/reports/request reaches the cloud as
        telemetry/acme/gw-7/gateway/usage_report with the link's bytes; it is retained
        locally; an unknown name gets an error on edge/gateway/reports/error and nothing else."""
        work = Path(self.mktemp()).resolve()
        work.mkdir(parents=True)
        cloud = Mosquitto(reactor, work / "cloud", free_port())
        yield cloud.start()
        self.addCleanup(cloud.stop)
        port = free_port()
        path = work / "gateway.yaml"
        path.write_text(
            f"gateway:\n  state_dir: {work / 'state'}\n  device_id: gw-7\n  tenant_id: acme\n"
            f"broker:\n  listeners:\n    default:\n      endpoint: 'tcp:{port}:interface=127.0.0.1'\n"
            "  plugins:\n    amqtt.plugins.authentication.AnonymousAuthPlugin: {allow_anonymous: true}\n"
            f"links:\n  links:\n    cloud:\n      endpoint: 'tcp:host=127.0.0.1:port={cloud.port}'\n"
            "      backoff_initial: 0.1\n"
            "telemetry:\n  metrics_endpoint: ''\ningest:\n  enabled: false\n")
        root = build_service(gateway_config.load(path), reactor)
        yield root.startService()
        self.addCleanup(root.stopService)
        backend = TestClient(reactor)
        self.addCleanup(backend.stop)
        yield backend.connect(cloud.port)
        yield backend.subscribe("telemetry/acme/gw-7/gateway/usage_report", 1)
        for _ in range(100):
            if root.parts.links.links["cloud"].is_connected:
                break
            yield deferLater(reactor, 0.05, lambda: None)
        local = TestClient(reactor)
        self.addCleanup(local.stop)
        yield local.connect(port)
        yield local.subscribe("edge/gateway/reports/error", 1)
        yield local.publish("edge/gateway/reports/request", b"usage_report", 1)
        message = yield backend.next_message(30)
        report = json.loads(message.payload)
        self.assertEqual((report["report"], report["device_id"], report["tenant_id"]),
                         ("usage_report", "gw-7", "acme"))
        self.assertIn("cloud", report["links"])
        self.assertIn("lo", report["interfaces"])
        yield local.publish("edge/gateway/reports/request", b"bogus", 1)
        error = yield local.next_message(30)
        self.assertEqual(error.topic, "edge/gateway/reports/error")
        self.assertIn("unknown report 'bogus'", json.loads(error.payload)["error"])
        late = TestClient(reactor)
        self.addCleanup(late.stop)
        yield late.connect(port)
        yield late.subscribe("edge/gateway/reports/+", 1)
        retained = {}
        for _ in range(3):
            m = yield late.next_message(10)
            retained[m.topic] = json.loads(m.payload)["report"]
        self.assertEqual(retained, {f"edge/gateway/reports/{n}": n
                                    for n in ("device_info", "usage_report", "engine_report")})


class UsageAcrossAConfigChangeTests(TestCase):
    """A configuration change restarts the services, not the gateway."""

    timeout = 60

    @inlineCallbacks
    def test_the_next_usage_report_covers_the_time_since_the_previous_one(self) -> Any:
        """The first usage_report after a configuration change says what happened since the
        report before it (docs/telemetry.md: since_last and period), not since the change."""
        work = Path(self.mktemp()).resolve()
        work.mkdir(parents=True)
        sockets = Path(tempfile.mkdtemp(prefix="gw-test-"))  # (a socket's path has at most 107 bytes)
        self.addCleanup(shutil.rmtree, sockets, True)
        path = work / "gateway.yaml"
        path.write_text(
            f"gateway:\n  state_dir: {work / 'state'}\n"
            f"broker:\n  listeners:\n    default:\n      endpoint: 'unix:{sockets / 'mqtt.sock'}'\n"
            "telemetry:\n  metrics_endpoint: ''\ningest:\n  enabled: false\n")
        root = build_service(gateway_config.load(path), reactor)
        yield root.startService()
        self.addCleanup(root.stopService)
        before = yield root.parts.telemetry.request_report("usage_report")
        yield deferLater(reactor, 0.05, lambda: None)
        result = yield root.changer.apply({"telemetry.usage_report_interval": 600})
        self.assertTrue(result.applied, result.errors)
        after = yield root.parts.telemetry.request_report("usage_report")
        self.assertEqual(after["period"]["start"], before["period"]["end"])
