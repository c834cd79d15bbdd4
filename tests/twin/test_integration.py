"""The twin in the real service tree: an MQTT app sends Ditto commands and gets events and
responses; what the twin acknowledged is there after the tree restarts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from gateway import config as gateway_config
from gateway.tree import build_service
from tests.mqttclient import TestClient
from tests.ports import free_port


def gateway_yaml(work: Path, broker: int) -> Path:
    path = work / "gateway.yaml"
    path.write_text(
        f"gateway:\n  state_dir: {work / 'state'}\n  tenant_id: acme\n  device_id: gw1\n"
        f"broker:\n  listeners:\n    default:\n      endpoint: 'tcp:{broker}:interface=127.0.0.1'\n"
        "  plugins:\n    amqtt.plugins.authentication.AnonymousAuthPlugin: {allow_anonymous: true}\n"
        "ingest:\n  enabled: false\ntelemetry:\n  metrics_endpoint: ''\n")
    return path


def modify(path: str, value: Any, thing: str = "acme/gw1", correlation: str = "c1") -> bytes:
    return json.dumps({"topic": f"{thing}/things/twin/commands/modify", "path": path, "value": value,
                       "headers": {"correlation-id": correlation, "response-required": True}}).encode()


@inlineCallbacks
def twin_app(test: TestCase, port: int) -> Any:
    """An MQTT app on the gateway's broker at ``port``, subscribed to the gateway thing's answers
    (``command///req/#``); stopped at the test's cleanup."""
    app = TestClient(reactor)
    test.addCleanup(app.stop)
    test.assertEqual((yield app.connect(port)), 0)
    yield app.subscribe("command///req/#", 1)
    return app


class TwinIntegrationTests(TestCase):
    """A paho client against the gateway's own broker."""

    timeout = 60

    @inlineCallbacks
    def start(self, config: Path) -> Any:
        root = build_service(gateway_config.load(config), reactor)
        yield root.startService()
        return root

    def client(self, port: int) -> Any:
        return twin_app(self, port)

    @inlineCallbacks
    def test_ditto_commands_over_mqtt_and_restart(self) -> None:
        """modify on `e` -> `created` event and `modify-response` (201); after a restart of the
        tree a retrieve on `event/...` answers the value."""
        work = Path(self.mktemp()).resolve()
        work.mkdir()
        port = free_port()
        config = gateway_yaml(work, port)
        root = yield self.start(config)
        try:
            app = yield self.client(port)
            yield app.publish("e", modify("/features/meter/properties/kwh", 12.5), qos=1)
            event = yield app.next_message()
            response = yield app.next_message()
            self.assertEqual(event.topic, "command///req//created")
            self.assertEqual(json.loads(event.payload)["value"], 12.5)
            self.assertEqual(response.topic, "command///req//modify-response")
            self.assertEqual(json.loads(response.payload)["status"], 201)
            app.stop()
        finally:
            yield root.stopService()
        root = yield self.start(config)
        try:
            app = yield self.client(port)
            yield app.publish("event/acme/gw1", json.dumps({
                "topic": "acme/gw1/things/twin/commands/retrieve", "path": "/features/meter",
                "headers": {"correlation-id": "c2"}}).encode(), qos=1)
            response = yield app.next_message()
            self.assertEqual(response.topic, "command///req//retrieve-response")
            self.assertEqual(json.loads(response.payload)["value"], {"properties": {"kwh": 12.5}})
        finally:
            yield root.stopService()

    @inlineCallbacks
    def test_a_command_over_1_mib_is_refused_413_where_the_broker_takes_it(self) -> None:
        """docs/twin.md: a twin command over 1 MiB is answered 413 things:command.toolarge, which
        only a broker whose max_packet_size was raised lets through (under the default 1 MiB the
        broker closes the sender's connection first; the docs did not say so)."""
        work = Path(self.mktemp()).resolve()
        work.mkdir()
        port = free_port()
        config = gateway_yaml(work, port)
        config.write_text(config.read_text().replace("broker:\n", "broker:\n  max_packet_size: 2097152\n"))
        root = yield self.start(config)
        try:
            app = yield self.client(port)
            yield app.publish("e", modify("/attributes/big", "x" * (1100 * 1024)), qos=1)
            answer = yield app.next_message()
            self.assertEqual(answer.topic, "command///req//errors-response")
            self.assertEqual((json.loads(answer.payload)["status"], json.loads(answer.payload)["value"]["error"]),
                             (413, "things:command.toolarge"))
        finally:
            yield root.stopService()
