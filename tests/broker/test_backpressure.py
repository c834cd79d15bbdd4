"""Back-pressure over real sockets: a publisher held back for a lagging subscriber is let go on every path.

A subscriber that does not acknowledge fills its window and then its queue; past the
queue's high-water mark the broker stops reading from the publishers that feed it. These
tests take the lagging subscriber away in every way there is (session takeover with and
without CleanSession, disconnect, UNSUBSCRIBE) and check with real clients (paho-mqtt)
that the publisher is acknowledged again and an unrelated subscriber gets every message,
as with mosquitto. They also check that a held publisher is not closed by the keep-alive
while the broker is not reading from it.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.internet.task import deferLater

from tests.broker import packets
from tests.broker.harness import ANONYMOUS, eventually, port_of, start_broker
from tests.broker.test_delivery import DeliveryTestCase
from tests.mqttclient import TestClient

#: A window of 5 and a queue of 28: the publisher is held once 5 + 14 messages wait for the lagger,
#: before paho's own window of 20 unacknowledged publishes stops it; and the queue has room for
#: all that may reach it while no connection owns the session during a takeover (none dropped).
SECTION = {"listeners": {"default": {"endpoint": "tcp:0:interface=127.0.0.1"}}, "plugins": ANONYMOUS,
           "max_queued_messages": 28, "max_inflight_messages": 5}
PERSISTENT = 0x00  # CONNECT flags: CleanSession=0
FIRST = 30  # messages published before the lagger goes: enough to be held back
AFTER = 50  # messages published after it went (the count)


def held_connections(service: Any) -> list[Any]:
    """Connections the broker is not reading from."""
    return [connection for factory in service.factories.values() for connection in factory.connections
            if connection.reading_paused]


class HeldPublisherReleaseTests(DeliveryTestCase):
    """Whatever holds a publisher back lets it go when the lagging subscriber goes away."""

    timeout = 60

    def paho(self, service: Any, **kwargs: Any) -> Any:
        client = TestClient(reactor, **kwargs)
        self.addCleanup(client.stop)
        return client

    @inlineCallbacks
    def held_publisher(self, lagger_flags: int = 0x02):
        """A lagging raw subscriber, a paho bystander on the same topics, a paho publisher held back."""
        service = yield start_broker(self, reactor, SECTION)
        lagger = yield self.subscribed(service, "lagger", ("bp/#", 1), auto_ack=False, flags=lagger_flags)
        bystander = self.paho(service)
        self.assertEqual((yield bystander.connect(port_of(service))), 0)
        yield bystander.subscribe("bp/#", 1)
        publisher = self.paho(service)
        self.assertEqual((yield publisher.connect(port_of(service))), 0)
        acks = [publisher.publish("bp/t", b"%d" % i, 1) for i in range(FIRST)]
        yield eventually(reactor, lambda: held_connections(service))
        return service, lagger, bystander, publisher, acks

    @inlineCallbacks
    def received(self, client: Any, count: int):
        """The payloads of the next ``count`` messages ``client`` gets."""
        payloads = []
        for _ in range(count):
            payloads.append((yield client.next_message()).payload)
        return payloads

    @inlineCallbacks
    def assert_flowing(self, service: Any, bystander: Any, publisher: Any, acks: list[Any]):
        """Every publish is acknowledged and the bystander gets every message, in order."""
        yield gatherResults(acks)
        got = yield self.received(bystander, FIRST)
        self.assertEqual(got, [b"%d" % i for i in range(FIRST)])
        yield gatherResults([publisher.publish("bp/t", b"after %d" % i, 1) for i in range(AFTER)])
        got = yield self.received(bystander, AFTER)
        self.assertEqual(got, [b"after %d" % i for i in range(AFTER)])
        self.assertEqual(held_connections(service), [])
        self.assertEqual(service.broker.messages_dropped, 0)
        self.assertEqual([len(session_outbox.blocked) for session_outbox in outboxes(service)],
                         [0] * len(outboxes(service)))

    @inlineCallbacks
    def test_takeover_with_clean_session_releases_publisher(self):
        """A new client taking the lagger's id with CleanSession=1 closes the lagger and frees the publisher."""
        service, lagger, bystander, publisher, acks = yield self.held_publisher()
        newcomer = yield self.client(service, "lagger")
        self.assertEqual(newcomer.others[0], (0x20, b"\x00\x00"))
        yield lagger.lost.addTimeout(10, reactor)  # [MQTT-3.1.4-2] the existing client is disconnected
        yield self.assert_flowing(service, bystander, publisher, acks)

    @inlineCallbacks
    def test_takeover_clearing_persistent_session_releases_publisher(self):
        """A CleanSession=1 takeover of a persistent session clears it, and frees the publisher."""
        service, lagger, bystander, publisher, acks = yield self.held_publisher(lagger_flags=PERSISTENT)
        yield self.client(service, "lagger")
        yield lagger.lost.addTimeout(10, reactor)
        yield self.assert_flowing(service, bystander, publisher, acks)

    @inlineCallbacks
    def test_takeover_keeping_session_releases_publisher(self):
        """A CleanSession=0 takeover that reads its queue frees the publisher (and gets every message)."""
        service, lagger, bystander, publisher, acks = yield self.held_publisher(lagger_flags=PERSISTENT)
        newcomer = yield self.client(service, "lagger", flags=PERSISTENT)
        yield lagger.lost.addTimeout(10, reactor)
        yield self.assert_flowing(service, bystander, publisher, acks)
        yield newcomer.until(lambda: len({p[1] for p in newcomer.publishes}) >= FIRST + AFTER, reactor)

    @inlineCallbacks
    def test_subscriber_disconnect_releases_publisher(self):
        """The lagger dropping its connection frees the publisher."""
        service, lagger, bystander, publisher, acks = yield self.held_publisher()
        lagger.transport.abortConnection()
        yield self.assert_flowing(service, bystander, publisher, acks)

    @inlineCallbacks
    def test_unsubscribe_releases_publisher(self):
        """The lagger unsubscribing (still connected, still not acknowledging) frees the publisher."""
        service, lagger, bystander, publisher, acks = yield self.held_publisher()
        lagger.transport.write(packets.unsubscribe("bp/#", packet_id=9))
        yield lagger.until(lambda: any(first == 0xB0 for first, _ in lagger.others), reactor)
        yield self.assert_flowing(service, bystander, publisher, acks)
        self.assertFalse(lagger.lost.called)

    @inlineCallbacks
    def test_publisher_taken_over_is_forgotten(self):
        """A held publisher whose id connects again (a client reconnecting) leaves the lagger's queue.

        The broker does not read a held connection, so it cannot see it close; a reconnect
        with the same id takes it over, and nothing of the old connection stays held.
        """
        service, lagger, bystander, publisher, acks = yield self.held_publisher()
        for ack in acks:  # the old connection's unacknowledged publishes are paho's to resend
            ack.addErrback(lambda _: None)
            ack.cancel()
        client_id = publisher.client._client_id.decode()
        again = yield self.client(service, client_id)
        self.assertEqual(again.others[0], (0x20, b"\x00\x00"))
        yield eventually(reactor, lambda: not held_connections(service))
        self.assertEqual([outbox.blocked for outbox in outboxes(service)], [{}] * len(outboxes(service)))
        again.transport.write(packets.publish("elsewhere", b"not held", qos=1, packet_id=1))
        yield again.until(lambda: len(again.others) >= 2, reactor)
        self.assertEqual(again.others[1], (0x40, b"\x00\x01"))


def outboxes(service: Any) -> list[Any]:
    """The queue of every session the broker knows."""
    broker = service.broker
    return [broker.outbox_for(session) for session, _ in broker._sessions.values()]


class HeldPublisherKeepAliveTests(DeliveryTestCase):
    """A publisher the broker stopped reading from is not closed for silence [MQTT-3.1.2-24]."""

    timeout = 60

    @inlineCallbacks
    def test_held_publisher_survives_its_keep_alive(self):
        """PINGREQs the broker does not read do not count as silence; the keep-alive starts over on release."""
        service = yield start_broker(self, reactor, SECTION)
        lagger = yield self.subscribed(service, "lagger", ("bp/#", 1), auto_ack=False)
        publisher = yield self.client(service, "publisher", keep_alive=1)
        publisher.transport.write(b"".join(packets.publish("bp/t", b"%d" % i, qos=1, packet_id=i + 1)
                                           for i in range(FIRST)))
        yield eventually(reactor, lambda: held_connections(service))
        for _ in range(6):  # 3 s: twice 1.5 times the keep-alive, pinging as a live client does
            publisher.transport.write(packets.PINGREQ)
            yield deferLater(reactor, 0.5, lambda: None)
        self.assertFalse(publisher.lost.called, "held publisher was closed for silence")
        lagger.transport.abortConnection()
        yield publisher.until(lambda: sum(first == 0x40 for first, _ in publisher.others) == FIRST, reactor)
        yield publisher.until(lambda: any(first == 0xD0 for first, _ in publisher.others), reactor)
        self.assertFalse(publisher.lost.called)
