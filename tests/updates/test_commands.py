"""Update requests from local topics and from cloud commands reach the service; cloud ones are answered."""

from __future__ import annotations

import json
from typing import Any, Callable

from twisted.trial.unittest import SynchronousTestCase

from gateway.broker.bus import BusMessage
from gateway.mqtt.topics import matches
from gateway.payloadlimits import REQUEST_BYTES
from gateway.updates.commands import UpdateCommands, unwrap


class FakeBus:
    """Subscriptions matched like the broker's; publishes recorded."""

    def __init__(self) -> None:
        self.subscriptions: list[tuple[str, Callable[[BusMessage], Any]]] = []
        self.published: list[tuple[str, bytes, int, bool]] = []
        #: The topics published with ``reserved=True`` (the journal's reserve may take them).
        self.reserved: list[str] = []

    def subscribe(self, topic_filter: str, callback: Callable[[BusMessage], Any]) -> Callable[[], None]:
        entry = (topic_filter, callback)
        self.subscriptions.append(entry)
        return lambda: self.subscriptions.remove(entry)

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False, reserved: bool = False) -> None:
        self.published.append((topic, payload, qos, retain))
        if reserved:
            self.reserved.append(topic)

    def deliver(self, topic: str, payload: bytes, retain: bool = False) -> None:
        for topic_filter, callback in list(self.subscriptions):
            if matches(topic_filter, topic):
                callback(BusMessage(topic, payload, 1, retain))


class FakeHandler:
    """Refuses requests without a correlationId, like the service."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, bytes]] = []

    def handle_command(self, command: str, payload: bytes) -> str | None:
        self.calls.append((command, payload))
        return None if b"correlationId" in payload else "correlationId: a non-empty string is required"


class UpdateCommandsTests(SynchronousTestCase):
    """Local topics, and the answers to the cloud commands the dispatcher hands over."""

    def setUp(self) -> None:
        self.bus, self.handler = FakeBus(), FakeHandler()
        self.commands = UpdateCommands(self.handler, self.bus)
        self.commands.startService()

    def test_local_request(self) -> None:
        """edge/gateway/updates/install goes to the handler as it is, with no reply."""
        self.bus.deliver("edge/gateway/updates/install", b'{"correlationId": "a"}')
        self.assertEqual(self.handler.calls, [("install", b'{"correlationId": "a"}')])
        self.assertEqual(self.bus.published, [])

    def test_local_request_in_a_ditto_envelope_unwrapped(self) -> None:
        """Kanto's own install message, in the Ditto envelope its backends send (topic
        .../things/live/messages/install, path /features/SoftwareUpdatable/inbox/messages/install),
        is taken on the local topic too, as on the cloud's: the handler gets its value. It
        was handed over whole and refused for want of a top-level correlationId."""
        value = {"correlationId": "demo-id-123", "weight": 0, "metadata": {}, "forced": True,
                 "softwareModules": [{"softwareModule": {"name": "install-hello", "version": "1.0.0"},
                                      "artifacts": [{"checksums": {"SHA256": "ab" * 32},
                                                     "download": {"HTTPS": {"url": "https://h/install.sh"}},
                                                     "filename": "install.sh", "size": 544}],
                                      "metaData": {}}]}
        envelope = {"topic": "acme/gw-1/things/live/messages/install",
                    "headers": {"content-type": "application/json", "correlation-id": "demo-id-123"},
                    "path": "/features/SoftwareUpdatable/inbox/messages/install", "value": value}
        self.bus.deliver("edge/gateway/updates/install", json.dumps(envelope).encode())
        [(name, payload)] = self.handler.calls
        self.assertEqual((name, json.loads(payload)), ("install", value))
        self.assertEqual(self.bus.published, [])

    def test_cloud_command_unwrapped_and_answered(self) -> None:
        """A cloud command (handed over by the dispatcher) in a Ditto envelope is unwrapped;
        it is answered 204."""
        envelope = {"topic": "ns/gw-1/things/live/messages/download",
                    "path": "/features/SoftwareUpdatable/inbox/messages/download", "value": {"correlationId": "c"}}
        self.assertEqual(self.commands.answer("download", json.dumps(envelope).encode()), (204, {}))
        self.assertEqual(self.handler.calls, [("download", b'{"correlationId": "c"}')])

    def test_refused_cloud_command_says_why(self) -> None:
        """A refused command is answered 400 with the handler's reason."""
        status, body = self.commands.answer("cancel", b"{}")
        self.assertEqual(status, 400)
        self.assertIn("correlationId", body["error"])

    def test_cloud_command_topics_are_left_to_the_dispatcher(self) -> None:
        """Only the local topics are subscribed: cloud commands, to this device or another,
        reach the update service through the one dispatcher (which answers them)."""
        self.assertEqual(sorted(topic for topic, _ in self.bus.subscriptions),
                         ["edge/gateway/updates/cancel", "edge/gateway/updates/download",
                          "edge/gateway/updates/install"])
        self.bus.deliver("command//gw-1/req/1/install", b'{"correlationId": "x"}')
        self.assertEqual((self.handler.calls, self.bus.published), ([], []))

    def test_stop_unsubscribes(self) -> None:
        """Once stopped, nothing reaches the handler."""
        self.commands.stopService()
        self.bus.deliver("edge/gateway/updates/install", b'{"correlationId": "a"}')
        self.assertEqual(self.handler.calls, [])

    def test_unwrap(self) -> None:
        """Bare messages and non-JSON pass through; only envelopes are unwrapped."""
        self.assertEqual(unwrap(b'{"correlationId": "a"}'), b'{"correlationId": "a"}')
        self.assertEqual(unwrap(b"not json"), b"not json")
        self.assertEqual(unwrap(b"[" * 100000), b"[" * 100000)  # nested too deeply: not JSON either
        self.assertEqual(unwrap(b'{"path": "/x", "value": [1]}'), b"[1]")
        # (one larger than a request may be is not parsed: the handler refuses it by its size)
        oversized = b'{"path": "/x", "value": [1]}'.ljust(REQUEST_BYTES + 1)
        self.assertEqual(unwrap(oversized), oversized)
        self.assertEqual(unwrap(oversized[:-1]), b"[1]")
