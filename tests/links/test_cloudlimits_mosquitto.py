"""A real mosquitto that closes the connection on a packet over its ``max_packet_size`` as the cloud:
the link's ``max_publish_bytes`` set to match keeps one big message from stalling the link; unset,
the link says in its log which message the cloud keeps closing the connection on."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase

from gateway.links.settings import LinkSettings, RouteSettings
from tests.broker.harness import port_of
from tests.links.memory import start_links
from tests.links.mosquitto import Mosquitto
from tests.mqttclient import TestClient
from tests.ports import free_port

#: mosquitto's max_packet_size, and the link's max_publish_bytes.
LIMIT = 1000


class OverTheCloudLimitTests(TestCase):
    """small, big, small from a local client: both small ones reach the cloud, in order, on the
    same connection; the loss report counts the big one."""

    timeout = 60

    @inlineCallbacks
    def start(self, max_publish_bytes: int) -> Any:
        """The cloud (a mosquitto with ``max_packet_size`` LIMIT and a subscriber to ``cloud/#``),
        the broker with a link ``cloud`` to it and a connected local client: fires with
        ``(subscriber, links service, broker, local client)``."""
        cloud = Mosquitto(reactor, Path(self.mktemp()), free_port(), options=(f"max_packet_size {LIMIT}",))
        self.addCleanup(cloud.stop)
        yield cloud.start()
        subscriber = TestClient(reactor, client_id="cloud-sub")
        yield subscriber.connect(cloud.port)
        self.addCleanup(subscriber.stop)
        yield subscriber.subscribe("cloud/#", 1)

        link = LinkSettings(endpoint=f"tcp:host=127.0.0.1:port={cloud.port}", downlink=(), keepalive=5,
                            routes=(RouteSettings("telemetry/#", "cloud/{device}/{#}"),),
                            loss_topic="cloud/{device}/losses", max_publish_bytes=max_publish_bytes)
        links, broker, device = yield start_links(self, reactor, {"cloud": link})
        return subscriber, links, broker, device

    @inlineCallbacks
    def test_without_the_setting_the_log_names_the_message(self) -> None:
        """max_publish_bytes unset: the big message is sent on every connection and mosquitto
        closes each; after 3 connections a warning names its seq and size and the settings."""
        warned: Deferred[str] = Deferred()

        def observe(event: dict[str, Any]) -> None:
            text = formatEvent(event)
            if event.get("log_level") == LogLevel.warn and "connections in a row ended" in text and not warned.called:
                warned.callback(text)
        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        subscriber, links, broker, device = yield self.start(0)
        for payload in (b"small 1", b"B" * 5000, b"small 2"):
            yield device.publish("telemetry/room1", payload, qos=1)
        message = yield subscriber.next_message(timeout=20)
        self.assertEqual(message.payload, b"small 1")
        line = yield warned
        self.assertTrue(line.startswith("link cloud: 3 connections in a row ended with seq 2 on cloud/gw1/room1"
                                        " (5000 bytes of payload) sent and not acknowledged"), line)

    @inlineCallbacks
    def test_big_message_skipped_link_stays_up(self) -> None:
        subscriber, links, broker, device = yield self.start(LIMIT)
        local = TestClient(reactor, client_id="local-sub")  # a local subscriber still gets the big one
        yield local.connect(port_of(broker))
        self.addCleanup(local.stop)
        yield local.subscribe("telemetry/#", 1)

        for payload in (b"small 1", b"B" * 5000, b"small 2"):
            yield device.publish("telemetry/room1", payload, qos=1)
        received = []
        for _ in range(2):
            message = yield subscriber.next_message(timeout=20)
            received.append((message.topic, message.payload))
        self.assertEqual(received, [("cloud/gw1/room1", b"small 1"), ("cloud/gw1/room1", b"small 2")])
        local_payloads = []
        for _ in range(3):
            message = yield local.next_message(timeout=20)
            local_payloads.append(len(message.payload))
        self.assertEqual(local_payloads, [7, 5000, 7])

        cloud_link = links.links["cloud"]
        cloud_link.check_losses()  # (as it does every 30 s while connected)
        message = yield subscriber.next_message(timeout=20)
        self.assertEqual(message.topic, "cloud/gw1/losses")
        report: dict[str, Any] = json.loads(message.payload)
        self.assertEqual(report["totals"], {"over-cloud-limit": 1})
        self.assertEqual([(e["reason"], e["records"]) for e in report["entries"]], [("over-cloud-limit", 1)])
        self.assertEqual((cloud_link.is_connected, cloud_link.connects), (True, 1))
