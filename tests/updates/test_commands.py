"""Update requests from local topics and from cloud commands reach the service; cloud ones are answered."""

from __future__ import annotations

import json
from typing import Any, Callable

from twisted.trial.unittest import SynchronousTestCase

from gateway.broker.bus import BusMessage
from gateway.mqtt.topics import matches
from gateway.updates.commands import UpdateCommands


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

    def test_local_request_in_a_ditto_envelope_handed_over_as_it_came(self) -> None:
        """Kanto's own install message, in the Ditto envelope its backends send (topic
        .../things/live/messages/install, path /features/SoftwareUpdatable/inbox/messages/install),
        is taken on the local topic too, as on the cloud's: handed over as it came, the service
        takes its value (it parsed each request twice, once here to take the envelope off)."""
        envelope = {"topic": "acme/gw-1/things/live/messages/install",
                    "path": "/features/SoftwareUpdatable/inbox/messages/install", "value": {"correlationId": "d"}}
        self.bus.deliver("edge/gateway/updates/install", json.dumps(envelope).encode())
        self.assertEqual(self.handler.calls, [("install", json.dumps(envelope).encode())])
        self.assertEqual(self.bus.published, [])

    def test_cloud_command_handed_over_and_answered(self) -> None:
        """A cloud command (handed over by the dispatcher) in a Ditto envelope goes to the
        handler as it came; it is answered 204."""
        envelope = {"topic": "ns/gw-1/things/live/messages/download",
                    "path": "/features/SoftwareUpdatable/inbox/messages/download", "value": {"correlationId": "c"}}
        self.assertEqual(self.commands.answer("download", json.dumps(envelope).encode()), (204, {}))
        self.assertEqual(self.handler.calls, [("download", json.dumps(envelope).encode())])

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

