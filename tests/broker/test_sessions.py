"""Persistent sessions (§3.1.2.4) over real sockets: subscriptions, queues, redelivery, restarts."""

from __future__ import annotations

import errno
import json
import os
import pwd
import tempfile
import tracemalloc
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from twisted.internet import reactor
from twisted.internet.address import IPv6Address
from twisted.internet.defer import inlineCallbacks, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from gateway.broker import checkpointreader, persistence
from gateway.broker.clientsession import PUBREC_SEEN
from gateway.broker.connection import MQTTListenerFactory
from gateway.broker.core import TAKEOVER_LOG_INTERVAL
from gateway.broker.outbox import QueuedMessage
from gateway.broker.persistence import BrokerStateError, BrokerStateStore
from gateway.broker.retainedlimits import RetainedBudget
from gateway.journal.record import Record
from gateway.mqtt import packets as mqtt_packets
from tests.broker import packets
from tests.broker.harness import ANONYMOUS, start_broker
from tests.broker.test_delivery import DeliveryTestCase
from tests.broker.test_durable_ack import attached, make_broker
from tests.logevents import capture_log_events

PERSISTENT = 0x00  # CONNECT flags: CleanSession=0
SESSION_PRESENT = (0x20, b"\x01\x00")
NEW_SESSION = (0x20, b"\x00\x00")


class SessionTests(DeliveryTestCase):
    """CleanSession=0 keeps a session for anonymous clients too."""

    @inlineCallbacks
    def offline_subscriber(self, service, client_id: str, topic_filter: str = "s/#"):
        """A persistent session subscribed at QoS 2 whose client has disconnected cleanly."""
        client = yield self.subscribed(service, client_id, (topic_filter, 2), flags=PERSISTENT)
        self.assertEqual(client.others[0], NEW_SESSION)
        client.transport.write(packets.DISCONNECT)
        yield client.lost.addTimeout(5, reactor)

    @inlineCallbacks
    def publish(self, service, *messages: bytes):
        publisher = yield self.client(service, "publisher")
        publisher.transport.write(b"".join(messages) + packets.PINGREQ)
        yield publisher.until(lambda: publisher.others[-1] == (0xD0, b""), reactor)

    @inlineCallbacks
    def test_3_1_2_4_session_kept_and_queued_messages_delivered(self):
        """[MQTT-3.1.2-4] [MQTT-3.1.3-5]: subscriptions persist, SessionPresent=1, QoS 1/2 messages queued."""
        service = yield start_broker(self, reactor)
        yield self.offline_subscriber(service, "keeper")
        yield self.publish(service, packets.publish("s/1", b"one", qos=1, packet_id=1),
                           packets.publish("s/0", b"zero"), packets.publish("s/2", b"two", qos=2, packet_id=2))
        back = yield self.client(service, "keeper", flags=PERSISTENT)
        self.assertEqual(back.others[0], SESSION_PRESENT)
        yield back.until(lambda: len(back.publishes) >= 2, reactor)
        self.assertEqual([(p[0], p[1], p[2]) for p in back.publishes], [("s/1", b"one", 1), ("s/2", b"two", 2)])
        back.transport.write(packets.publish("s/again", b"live", qos=1, packet_id=7))
        yield back.until(lambda: len(back.publishes) >= 3, reactor)  # the subscription is still there

    @inlineCallbacks
    def test_3_1_2_6_clean_session_starts_over(self):
        """[MQTT-3.1.2-6] CleanSession=1 discards the old session: SessionPresent=0, nothing queued."""
        service = yield start_broker(self, reactor)
        yield self.offline_subscriber(service, "forgetful")
        yield self.publish(service, packets.publish("s/1", b"one", qos=1, packet_id=1))
        back = yield self.client(service, "forgetful")
        self.assertEqual(back.others[0], NEW_SESSION)
        yield deferLater(reactor, 0.3, lambda: None)
        self.assertEqual(back.publishes, [])

    @inlineCallbacks
    def test_4_4_unacknowledged_redelivered_with_dup(self):
        """[MQTT-4.4.0-1] a QoS 1 message never acknowledged is resent on reconnect with DUP set."""
        service = yield start_broker(self, reactor)
        sub = yield self.subscribed(service, "forgetter", ("d/#", 1), flags=PERSISTENT, auto_ack=False)
        yield self.publish(service, packets.publish("d/x", b"ack me", qos=1, packet_id=4))
        yield sub.until(lambda: sub.publishes, reactor)
        first = sub.publishes[0]
        self.assertFalse(first[5])
        sub.transport.abortConnection()
        yield sub.lost
        back = yield self.client(service, "forgetter", flags=PERSISTENT)
        yield back.until(lambda: back.publishes, reactor)
        self.assertEqual(back.publishes[0], first[:5] + (True,))

    @inlineCallbacks
    def test_4_3_3_qos2_resent_after_reconnect_is_delivered_once(self):
        """§4.3.3, §3.1.2.4: a QoS 2 PUBLISH PUBREC'd to a persistent session whose connection then
        dropped, resent with DUP after CleanSession=0 reconnects, is PUBREC'd and not delivered
        again; PUBREL gets PUBCOMP. After a CleanSession=1 connect the same id is a new message."""
        service = yield start_broker(self, reactor)
        sub = yield self.subscribed(service, "sub", ("q2/#", 2))
        message = packets.publish("q2/x", b"once", qos=2, packet_id=9)
        pub = yield self.client(service, "pub", message, flags=PERSISTENT)
        yield pub.until(lambda: (0x50, b"\x00\x09") in pub.others, reactor)
        pub.transport.abortConnection()
        yield pub.lost
        back = yield self.client(service, "pub", packets.publish("q2/x", b"once", qos=2, packet_id=9, dup=True),
                                 flags=PERSISTENT)
        yield back.until(lambda: (0x50, b"\x00\x09") in back.others, reactor)
        back.transport.write(packets.ack(6, 9))
        yield back.until(lambda: (0x70, b"\x00\x09") in back.others, reactor)
        back.transport.abortConnection()
        yield back.lost
        fresh = yield self.client(service, "pub", message)
        yield fresh.until(lambda: (0x50, b"\x00\x09") in fresh.others, reactor)
        yield sub.until(lambda: len(sub.publishes) >= 2, reactor)
        yield deferLater(reactor, 0.1, lambda: None)
        self.assertEqual([p[:2] for p in sub.publishes], [("q2/x", b"once")] * 2)

    @inlineCallbacks
    def test_offline_queue_is_bounded_and_counts_drops(self):
        """Past max_queued_messages, new messages are dropped, counted and logged."""
        service = yield start_broker(self, reactor, {
            "listeners": {"default": {"endpoint": "tcp:0:interface=127.0.0.1"}}, "plugins": ANONYMOUS,
            "max_queued_messages": 3})
        yield self.offline_subscriber(service, "small")
        yield self.publish(service, *(packets.publish("s/t", b"%d" % i, qos=1, packet_id=i + 1) for i in range(5)))
        self.assertEqual(service.broker.messages_dropped, 2)
        back = yield self.client(service, "small", flags=PERSISTENT)
        yield back.until(lambda: len(back.publishes) >= 3, reactor)
        yield deferLater(reactor, 0.2, lambda: None)
        self.assertEqual([p[1] for p in back.publishes], [b"0", b"1", b"2"])

    @inlineCallbacks
    def test_sessions_and_retained_survive_restart(self):
        """Sessions (subscriptions, queued messages) and retained messages are restored from the state dir."""
        state_dir = Path(self.mktemp())
        section = {"listeners": {"default": {"endpoint": "tcp:0:interface=127.0.0.1"}}, "plugins": ANONYMOUS}
        service = yield start_broker(self, reactor, section, state_dir)
        yield self.offline_subscriber(service, "survivor")
        yield self.publish(service, packets.publish("s/q", b"queued", qos=1, packet_id=1),
                           packets.publish("keep/me", b"retained", qos=1, packet_id=2, retain=True))
        yield service.stopService()
        self.assertTrue((state_dir / "broker" / "state.json").exists())
        again = yield start_broker(self, reactor, section, state_dir)
        back = yield self.client(again, "survivor", flags=PERSISTENT)
        self.assertEqual(back.others[0], SESSION_PRESENT)
        yield back.until(lambda: back.publishes, reactor)
        self.assertEqual(back.publishes[0][:3], ("s/q", b"queued", 1))
        back.transport.write(packets.publish("s/live", b"still subscribed", qos=1, packet_id=3))
        yield back.until(lambda: len(back.publishes) >= 2, reactor)
        newcomer = yield self.subscribed(again, "newcomer", ("keep/#", 1))
        yield newcomer.until(lambda: newcomer.publishes, reactor)
        self.assertEqual(newcomer.publishes[0][:2], ("keep/me", b"retained"))


class TakeoverTests(DeliveryTestCase):
    """[MQTT-3.1.4-2] one connection per client id: the newer one."""

    @inlineCallbacks
    def test_3_1_4_2_every_takeover_closes_the_old_connection(self):
        """A CONNECT with a connected client's id closes the old connection, every time, with either CleanSession."""
        service = yield start_broker(self, reactor)
        previous = yield self.client(service, "twin", flags=PERSISTENT)
        for flags in (PERSISTENT, PERSISTENT, 0x02, PERSISTENT, 0x02):
            current = yield self.client(service, "twin", flags=flags)
            yield previous.lost.addTimeout(5, reactor)
            previous = current
        previous.transport.write(packets.subscribe(("tw/#", 1)))
        yield previous.until(lambda: len(previous.others) >= 2, reactor)
        publisher = yield self.client(service, "publisher")
        publisher.transport.write(packets.publish("tw/x", b"to the last one", qos=1, packet_id=1))
        yield previous.until(lambda: previous.publishes, reactor)
        self.assertEqual(previous.publishes[0][:2], ("tw/x", b"to the last one"))


    @inlineCallbacks
    def test_the_old_connection_is_closed_in_order(self):
        """The taken-over client reads the end of the stream, as from mosquitto, not a reset
        (which clients report as an error, and which loses what was still on its way to it)."""
        service = yield start_broker(self, reactor)
        old = yield self.client(service, "twin")
        yield self.client(service, "twin")
        yield old.lost.addTimeout(5, reactor)
        old.reason.trap(ConnectionDone)


class TakeoverLogTests(SynchronousTestCase):
    """What the log says of connections taken over: real broker, StringTransports, task.Clock."""

    def test_two_clients_sharing_a_client_id_are_a_line_a_minute(self) -> None:
        """A client taking its old connection over (back after a network blip) is one info
        line; two devices with one client id, each taking the other's connection over every
        second, are then one warning per TAKEOVER_LOG_INTERVAL with the count and what to do.
        Before, each takeover logged a line, for ever (seen on a real gateway: one a second)."""
        clock = Clock()
        broker = make_broker(self, clock)
        self.patch(broker.plugins, "authenticate", lambda view: succeed(True))
        factory = MQTTListenerFactory("default", broker, clock, 1 << 20, 10.0)
        events = capture_log_events(self)
        for _ in range(int(TAKEOVER_LOG_INTERVAL) * 2 + 2):  # the first takes nothing over
            connection = factory.buildProtocol(None)
            assert connection is not None
            transport = StringTransport()
            connection.makeConnection(transport)
            connection.dataReceived(packets.connect("twin"))
            clock.advance(1)
            self.assertEqual(transport.value(), mqtt_packets.connack(False, 0))
        lines = [(e["log_level"], str(formatEvent(e))) for e in events if "connected again" in formatEvent(e)]
        warning = ("client 'twin' connected again: closing its old connection (60 connections taken over since the "
                   "last such line; clients that share a client id take each other's connection over at every "
                   "reconnect: give each its own)")
        self.assertEqual(lines, [(LogLevel.info, "client 'twin' connected again: closing its old connection"),
                                 (LogLevel.warn, warning), (LogLevel.warn, warning)])


class RefusalLogTests(SynchronousTestCase):
    """What the log says of a refused CONNECT: real broker, StringTransports, task.Clock."""

    def test_a_refused_client_is_named_with_its_user_never_its_password(self) -> None:
        """The ``refusing client`` line names the CONNECT's user name when it has one (quoted,
        like the client id), and never its password; without one it is as before. It named
        the client id alone: a wrong password of one user among many devices said nothing of
        whose. An IPv6 client's address is in brackets, ``[::1]:54321`` (it was ``::1:54321``,
        which reads as the address ``::1:54321`` without a port)."""
        clock = Clock()
        broker = make_broker(self, clock)
        self.patch(broker.plugins, "authenticate", lambda view: succeed(False))
        factory = MQTTListenerFactory("default", broker, clock, 1 << 20, 10.0)
        events = capture_log_events(self)
        for connect, peer in ((packets.connect("dev1", flags=0xC2, username="alice", password=b"s3cret"), None),
                              (packets.connect("dev2"), None),
                              (packets.connect("dev3"), IPv6Address("TCP", "::1", 54321))):
            connection = factory.buildProtocol(None)
            assert connection is not None
            transport = StringTransport(peerAddress=peer)
            connection.makeConnection(transport)
            connection.dataReceived(connect)
            self.assertEqual(transport.value(), mqtt_packets.connack(False, 5))
            clock.advance(20)  # (past REFUSED_LOG_INTERVAL: each is a line)
        lines = [str(formatEvent(e)) for e in events if "refusing client" in formatEvent(e)]
        self.assertEqual([line.split(": not authorized")[0] for line in lines],
                         ["refusing client 'dev1' (user 'alice') from 192.168.1.1:54321",
                          "refusing client 'dev2' from 192.168.1.1:54321",
                          "refusing client 'dev3' from [::1]:54321"])
        self.assertFalse(any("s3cret" in line for line in lines))


class StateStoreTests(SynchronousTestCase):
    """The state file is written atomically and refused when it is not ours."""

    def test_a_large_state_is_written_in_pieces(self) -> None:
        """Saving does not hold a second copy of the whole state as text: what it allocates
        at once stays under half the file it writes (it was over twice as much: the
        payloads as base64, the JSON text and its bytes, all of them at once), and the
        file loads back whole."""
        sessions = [{"client_id": f"c{n}", "username": None, "offline_since": None, "subscriptions": [["a/#", 1]],
                     "queue": [[f"a/{m}", bytes([n % 256]) * 150, 1, False] for m in range(100)],
                     "inflight": [], "inflight_in": []}
                    for n in range(400)]
        state = {"sessions": sessions, "retained": [[f"r/{n}", b"v" * 100, 1] for n in range(5000)], "log_through": 7}
        store = BrokerStateStore(Path(self.mktemp()))
        tracemalloc.start()
        self.addCleanup(tracemalloc.stop)
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        store.save(state)
        peak = tracemalloc.get_traced_memory()[1] - before
        tracemalloc.stop()
        size = store.path.stat().st_size
        self.assertGreater(size, 8_000_000)
        self.assertLess(peak, size / 2)
        self.assertEqual(store.load(), {"format": 1, **state})

    def test_a_large_state_is_read_a_session_at_a_time(self) -> None:
        """Loading the checkpoint reads and builds one session at a time: at its peak it holds
        the state built so far and little more (under a tenth of the file here, one session's
        text being a hundredth), and its reads stay near one session. It held the file's text
        and the state parsed from it at once, about twice the file besides the payloads it
        decoded, on top of the gateway's own memory at start (a gateway that ran with 100 MiB
        queued in 175 MiB needed 318 MiB to start again)."""
        sessions = [{"client_id": f"c{n}", "username": None, "offline_since": None, "subscriptions": [["a/#", 1]],
                     "queue": [[f"a/{m}", bytes([n, m]) * 5_000, 1, False] for m in range(10)],
                     "inflight": [], "inflight_in": []}
                    for n in range(100)]
        store = BrokerStateStore(Path(self.mktemp()))
        store.save({"sessions": sessions, "retained": [], "log_through": 0})
        del sessions
        size = store.path.stat().st_size
        reads: list[int] = []
        opened = store.path.open

        class Counted(type(store.path)):  # type: ignore[misc]
            """The checkpoint's path, whose file notes each read's size."""

            def open(self, *args: Any, **kwargs: Any) -> Any:
                file = opened(*args, **kwargs)
                read = file.read
                file.read = lambda size=-1: reads.append(size) or read(size)
                return file

        store.path = Counted(store.path)
        tracemalloc.start()
        self.addCleanup(tracemalloc.stop)
        before = tracemalloc.get_traced_memory()[0]
        state = store.load()
        held, peak = (n - before for n in tracemalloc.get_traced_memory())
        tracemalloc.stop()
        self.assertEqual(len(state["sessions"]), 100)  # type: ignore[index]
        self.assertLess(peak - held, size / 10)  # twice the file before
        self.assertGreater(len(reads), 50)
        self.assertTrue(0 < max(reads) < size / 20, (max(reads), size))

    def test_a_message_queued_for_many_sessions_is_restored_once(self) -> None:
        """A message queued for several offline sessions (a topic many subscribe to) is one
        object again after a restart, as it was before, not one copy per session (restored
        queues took three times the memory of the live ones); its payload is decoded once."""
        broker = make_broker(self, Clock())
        message = QueuedMessage("fan/1", b"payload", 1, False)
        for n in range(3):
            broker.outbox_for(broker.create_offline_session(f"c{n}")).push(message)
        store = BrokerStateStore(Path(self.mktemp()))
        store.save(persistence.checkpoint_content(broker))
        decoded = []
        self.patch(checkpointreader, "_unb64", lambda text: decoded.append(text) or b"payload")
        again = make_broker(self, Clock())
        persistence.restore(again, store.load() or {})
        queued = [again.sessions[f"c{n}"].outbox.peek() for n in range(3)]  # type: ignore[union-attr]
        self.assertEqual(queued, [message] * 3)
        self.assertTrue(queued[0] is queued[1] is queued[2])
        self.assertEqual(len(decoded), 1)

    def test_a_message_queued_for_sessions_apart_is_one_payload_after_a_restart(self) -> None:
        """A message queued for two sessions with another between them in the checkpoint (which
        the load reads a session at a time, keeping only the session before's texts) still comes
        back as one payload object, not a copy per session."""
        broker = make_broker(self, Clock())
        shared, other = QueuedMessage("fan/1", b"p" * 1000, 1, False), QueuedMessage("o/1", b"q" * 1000, 1, False)
        for client_id, message in (("c0", shared), ("c1", other), ("c2", shared)):
            broker.outbox_for(broker.create_offline_session(client_id)).push(message)
        store = BrokerStateStore(Path(self.mktemp()))
        store.save(persistence.checkpoint_content(broker))
        state = store.load()
        assert state is not None
        payloads = [entry["queue"][0][1] for entry in state["sessions"]]
        self.assertEqual(payloads, [b"p" * 1000, b"q" * 1000, b"p" * 1000])
        self.assertIs(payloads[0], payloads[2])

    def test_the_checkpoint_copy_holds_the_queued_messages_themselves(self) -> None:
        """The copy of the state the reactor thread takes for a checkpoint lists each queue's
        messages (immutable) as they are, in arrival order: no new object per queued message
        (with a million queued, making them stalled the reactor for most of a second)."""
        broker = make_broker(self, Clock())
        outbox = broker.outbox_for(broker.create_offline_session("c"))
        messages = [QueuedMessage(f"a/{n}", b"x", n % 3, False) for n in range(10)]
        for message in messages:
            outbox.push(message)
        queue = persistence.checkpoint_content(broker)["sessions"][0]["queue"]
        self.assertEqual(queue, messages)
        self.assertTrue(all(saved is message for saved, message in zip(queue, messages)))

    def test_round_trip_and_bad_file(self) -> None:
        """What was saved loads back (binary payloads too); a foreign file is a clear BrokerStateError."""
        store = BrokerStateStore(Path(self.mktemp()))
        self.assertIsNone(store.load())
        state = {"sessions": [{"client_id": "c", "subscriptions": [["a/#", 1]], "queue": [["a/b", b"\xff\x00", 1, False]],
                               "inflight": [[7, "a/c", b"x", 2, True, True]], "inflight_in": [3]}],
                 "retained": [["r", b"\x01", 0]]}
        store.save(state)
        self.assertEqual(store.load(), {"format": 1, **state})
        self.assertEqual(sorted(p.name for p in store.directory.iterdir()), ["state.json"])
        store.path.write_text('{"format": 99}')
        self.assertRaises(BrokerStateError, store.load)
        store.path.write_text("[" * 5000)  # raised RecursionError, which the broker's start does not expect
        self.assertIn("nested too deeply", str(self.assertRaises(BrokerStateError, store.load)))

    def test_a_file_that_cannot_be_read_is_refused_saying_what_to_do(self) -> None:
        """A checkpoint the gateway cannot read (a directory in its place, a file in the place
        of broker/; unreadable by the gateway's user) stops the start saying what it holds and
        what to do, as a foreign file does; it said 'cannot read PATH: [Errno 21] Is a
        directory: 'PATH'' and no more."""
        store = BrokerStateStore(Path(self.mktemp()))
        store.path.mkdir(parents=True)
        self.assertEqual(str(self.assertRaises(BrokerStateError, store.load)),
                         f"cannot read {store.path}: Is a directory; it holds the broker's retained messages and"
                         " persistent sessions: make it a file the gateway's user may read, or move it away to"
                         " start without them")

    def test_a_symbolic_link_to_nothing_is_refused_not_taken_for_a_first_start(self) -> None:
        """A checkpoint that is a symbolic link to nothing stops the start as an unreadable one
        does: the broker started empty in silence, and its next save lost the sessions and
        retained messages the checkpoint held for good."""
        store = BrokerStateStore(Path(self.mktemp()))
        store.path.parent.mkdir(parents=True)
        store.path.symlink_to("gone.json")
        self.assertEqual(str(self.assertRaises(BrokerStateError, store.load)),
                         f"cannot read {store.path}: it is a symbolic link to 'gone.json', which does not exist;"
                         " it holds the broker's retained messages and persistent sessions: make it a file the"
                         " gateway's user may read, or move it away to start without them")

    def test_a_file_the_gateways_user_may_not_read_is_refused_as_every_state_file_is(self) -> None:
        """A checkpoint the gateway's user may not read (its own file of mode 0) stops the start
        with the line configuration.md promises for every such state file: its owner and mode
        and the chmod that sets it right. It said to move the file away, which starts the
        broker without its retained messages and persistent sessions, for a file that only
        needs its mode set."""
        store = BrokerStateStore(Path(self.mktemp()))
        store.path.parent.mkdir(parents=True)
        store.path.write_text("{}")
        store.path.chmod(0)
        denied = PermissionError(errno.EACCES, "Permission denied", str(store.path))

        class Unreadable(type(store.path)):  # type: ignore[misc]
            """The checkpoint's path, whose reading the system refuses (the tests run as root)."""

            def open(self, *args: object, **kwargs: object) -> Any:
                raise denied

        store.path = Unreadable(store.path)
        self.assertEqual(str(self.assertRaises(BrokerStateError, store.load)),
                         f"{store.path} (owner {pwd.getpwuid(os.geteuid()).pw_name}, mode 0000) may not be used by"
                         f" the gateway's user {pwd.getpwuid(os.geteuid()).pw_name}: chmod u+rw {store.path}"
                         " and start again")

    def test_a_file_of_the_wrong_shape_is_refused_saying_what_and_what_to_do(self) -> None:
        """JSON that is no checkpoint (a list, null, a number) or a checkpoint with a part of
        the wrong type (a retained topic that is a number or empty, a QoS of 9, a payload that is
        no base64, a session whose inflight_in is no list, a subscription that is no string, a
        queued message or an unacknowledged delivery to a topic with a wildcard or none) is a
        BrokerStateError naming the file
        and the part, and saying how to start without it. A list or null failed the start with
        "broker failed to start: 'list' object has no attribute 'get'", and a bad part inside
        was loaded as it was (a retained message under the topic 5), or failed half-way through
        the restore."""
        store = BrokerStateStore(Path(self.mktemp()))
        session = {"client_id": "c", "subscriptions": [], "queue": [], "inflight": [], "inflight_in": []}
        for content, part in (([], "not a JSON object"), (None, "not a JSON object"), (5, "not a JSON object"),
                              ({"format": 1, "sessions": [], "retained": [[5, "", 1]]},
                               "retained[0]: item 0 is not a topic name a client could have published to (not empty, no wildcard): 5"),
                              ({"format": 1, "sessions": [], "retained": [["a/b", "YQ==", 9]]},
                               "retained[0]: item 2 is not a QoS (0, 1 or 2): 9"),
                              ({"format": 1, "sessions": [], "retained": [["a/b", "!!!", 1]]}, "a payload is not base64: '!!!'"),
                              ({"format": 1, "sessions": [{**session, "inflight_in": 7}], "retained": []},
                               "sessions[0].inflight_in: not a list of packet ids"),
                              ({"format": 1, "sessions": [{**session, "client_id": 5}], "retained": []},
                               "sessions[0]: not a session"),
                              ({"format": 1, "sessions": [{**session, "subscriptions": [["#", 7]]}], "retained": []},
                               "sessions[0].subscriptions[0]: item 1 is not a QoS (0, 1 or 2): 7"),
                              ({"format": 1, "sessions": [{**session, "subscriptions": [[5, 1]]}],
                                "retained": []}, "sessions[0].subscriptions[0]: item 0 is not text: 5"),
                              ({"format": 1, "sessions": [{**session, "queue": [["a/b", "YQ==", 1, False], ["a/+", "YQ==", 1, False]]}],
                                "retained": []}, "sessions[0].queue[1]: item 0 is not a topic name a client could "
                                                 "have published to (not empty, no wildcard): 'a/+'"),
                              ({"format": 1, "sessions": [{**session, "inflight": [[7, "a/+", "YQ==", 1, False, False]]}],
                                "retained": []}, "sessions[0].inflight: an unacknowledged delivery to no topic name"),
                              ({"format": 1, "sessions": [{**session, "inflight": [[7, "", "YQ==", 1, False, False]]}],
                                "retained": []}, "sessions[0].inflight: "),
                              ({"format": 1, "sessions": [], "retained": [["a", "YQ==", 1], ["", "YQ==", 1]]},
                               "retained[1]: item 0 is not a topic name a client could have published to"),
                              ({"format": 1, "sessions": [], "retained": [["a/+", "YQ==", 1, 0]]},
                               "retained[0]: not a 3-item entry: ['a/+', 'YQ==', 1, 0]"),
                              ({"format": 1, "sessions": [], "retained": {}}, "retained: not a list"),
                              ({"format": 1, "sessions": [], "retained": [], "log_through": "x"}, "log_through: ")):
            store.directory.mkdir(exist_ok=True)
            store.path.write_text(json.dumps(content))
            error = str(self.assertRaises(BrokerStateError, store.load))
            self.assertTrue(error.startswith(f"{store.path} is not a broker state file ("), error)
            self.assertIn(part, error)
            self.assertTrue(error.endswith("; it holds the broker's retained messages and persistent sessions:"
                                           " move it away to start without them"), error)

    def test_a_delivery_awaiting_pubcomp_is_saved_and_loaded(self) -> None:
        """A persistent session's QoS 2 delivery its client has PUBREC'd (awaiting PUBCOMP) is saved
        as ``[id, "", "", 2, false, true]``, as this morning's gateway saved it too (the fixture
        below); that checkpoint loads and restores it, so the PUBREL is resent. It was refused
        as "not a broker state file" (an empty topic is no topic name): the gateway did not start
        on the state it had written itself."""
        broker = make_broker(self, Clock())
        broker.create_offline_session("c").inflight_out[9] = PUBREC_SEEN
        store = BrokerStateStore(Path(self.mktemp()))
        store.save(persistence.checkpoint_content(broker))
        again = make_broker(self, Clock())
        persistence.restore(again, store.load() or {})
        self.assertEqual(again.sessions["c"].inflight_out, {9: PUBREC_SEEN})
        store.path.write_text(json.dumps({
            "format": 1, "log_through": 3, "retained": [],
            "sessions": [{"client_id": "c", "username": None, "subscriptions": [["s/#", 2]], "queue": [],
                          "inflight": [[9, "", "", 2, False, True], [10, "s/1", "YQ==", 2, False, False]],
                          "inflight_in": []}]}))
        old = make_broker(self, Clock())
        persistence.restore(old, store.load() or {})
        self.assertEqual(old.sessions["c"].inflight_out,
                         {9: PUBREC_SEEN, 10: mqtt_packets.publish("s/1", b"a", 2, False, 10)})

    def test_a_subscription_to_no_valid_filter_is_dropped_not_the_checkpoint(self) -> None:
        """A checkpoint from a gateway before today's (format 1, written here by hand) whose
        session holds a subscription to no valid filter, ``a/#/b``, which an amqtt plugin's
        ``add_subscription`` could then add, loads: the sessions, their other subscriptions and
        queues and the retained messages come back, and that one subscription is dropped with a
        warning naming the client and the filter. The whole file was refused, so the new gateway
        did not start on the old one's state (moving the file away lost every session and
        retained message)."""
        store = BrokerStateStore(Path(self.mktemp()))
        store.directory.mkdir()
        store.path.write_text(json.dumps({
            "format": 1, "log_through": 0, "retained": [["r", "YQ==", 1]],
            "sessions": [{"client_id": "c", "username": None, "subscriptions": [["a/#/b", 1], ["ok/#", 1]],
                          "queue": [["ok/1", "cQ==", 1, False]], "inflight": [], "inflight_in": []}]}))
        broker = make_broker(self, Clock())
        with capturedLogs() as events:
            persistence.restore(broker, store.load() or {})
        self.assertEqual({f: list(e) for f, e in broker.subscriptions.items()}, {"ok/#": ["c"]})
        self.assertEqual([m.topic for m in broker.outbox_for(broker.sessions["c"])], ["ok/1"])
        self.assertEqual({t: m.payload for t, m in broker.retained.items()}, {"r": b"a"})
        warnings = [e for e in events if "a/#/b" in formatEvent(e)]
        self.assertEqual(len(warnings), 1, [formatEvent(e) for e in events])
        self.assertIn("'c'", formatEvent(warnings[0]))
        self.assertEqual(warnings[0]["log_level"], LogLevel.warn)

    def test_a_logged_subscription_to_no_valid_filter_is_not_replayed(self) -> None:
        """The same subscription in the state log after the checkpoint is dropped with a warning
        when replayed: it went into the routing tree (as plain levels, matching nothing), the
        next checkpoint held it, and the start after that was refused."""
        broker = make_broker(self, Clock())
        records = [Record(f, b"", 1, False, 0.0, (("op", "sub"), ("n", str(n)), ("client", "c")))
                   for n, f in ((1, "a/#/b"), (2, "ok/#"))]
        with capturedLogs() as events:
            self.assertEqual(persistence.replay(broker, records, 0, RetainedBudget(0, 0)), 2)
        self.assertEqual({f: list(e) for f, e in broker.subscriptions.items()}, {"ok/#": ["c"]})
        self.assertEqual(len([e for e in events if "a/#/b" in formatEvent(e)]), 1)
        store = BrokerStateStore(Path(self.mktemp()))
        store.save(persistence.checkpoint_content(broker))
        self.assertIsNotNone(store.load())

    def test_a_logged_message_queued_for_many_sessions_is_replayed_once(self) -> None:
        """A message queued for several offline sessions, logged once per session, is one object
        again once replayed, as :func:`persistence.restore` makes it: it was a copy of the
        payload per session (after a crash before the checkpoint, or while checkpoints fail and
        the log is not compacted, the start held every copy)."""
        broker = make_broker(self, Clock())
        records = [Record("fan/1", bytes(bytearray(b"p" * 1000)), 1, False, 0.0,
                          (("op", "queue"), ("n", str(n)), ("client", f"c{n}")))
                   for n in range(1, 4)]
        self.assertEqual(persistence.replay(broker, records, 0, RetainedBudget(0, 0)), 3)
        queued = [broker.sessions[f"c{n}"].outbox.peek() for n in range(1, 4)]  # type: ignore[union-attr]
        self.assertEqual(queued, [QueuedMessage("fan/1", b"p" * 1000, 1, False)] * 3)
        self.assertTrue(queued[0] is queued[1] is queued[2])

    @settings(max_examples=80, derandomize=True, deadline=None)
    @given(st.recursive(st.none() | st.booleans() | st.integers(-2, 70000) | st.sampled_from(["", "a/b", "YQ==", "#"]),
                        lambda inner: st.lists(inner, max_size=6) | st.dictionaries(
                            st.sampled_from(["format", "sessions", "retained", "client_id", "username", "subscriptions",
                                             "queue", "inflight", "inflight_in", "log_through",
                                             "offline_since"]), inner, max_size=6),
                        max_leaves=30))
    def test_whatever_the_file_holds_it_is_refused_or_restored(self, content: object) -> None:
        """Any JSON in the state file is either refused with BrokerStateError or restores into a
        broker without an error: never an error of another kind, never one half-way through."""
        with tempfile.TemporaryDirectory() as directory:
            store = BrokerStateStore(Path(directory))
            store.path.write_text(json.dumps({"format": 1, **content} if isinstance(content, dict) else content))
            try:
                state = store.load()
            except BrokerStateError:
                return
            assert state is not None
            persistence.restore(make_broker(self, Clock()), state)

    def test_user_name_round_trip_and_older_checkpoints(self) -> None:
        """A persistent session's user name comes back from a snapshot; a checkpoint written before
        user names were kept (no ``username``) still restores, its sessions without one."""
        clock = Clock()
        broker = make_broker(self, clock)
        broker.create_offline_session("c").username = "alice"
        store = BrokerStateStore(Path(self.mktemp()))
        store.save(persistence.checkpoint_content(broker))
        again = make_broker(self, clock)
        persistence.restore(again, store.load() or {})
        self.assertEqual(again.sessions["c"].username, "alice")
        older = {"sessions": [{"client_id": "c", "subscriptions": [], "queue": [], "inflight": [], "inflight_in": []}],
                 "retained": []}
        store.save(older)
        old = make_broker(self, clock)
        persistence.restore(old, store.load() or {})
        self.assertIsNone(old.sessions["c"].username)

    def test_inflight_round_trip(self) -> None:
        """Unacknowledged deliveries of a persistent session (QoS 1, QoS 2 before and after
        PUBREC) come back from a snapshot as they were sent, and are resent with DUP."""
        clock = Clock()
        broker = make_broker(self, clock)
        session = broker.create_offline_session("c")
        session.inflight_out[7] = mqtt_packets.publish("a/c", b"x", 1, True, 7)
        session.inflight_out[8] = mqtt_packets.publish("a/d", b"y", 2, False, 8)
        session.inflight_out[9] = PUBREC_SEEN
        session.inflight_out[10] = mqtt_packets.publish("big", b"z" * (2 << 20), 1, False, 10)  # over 1 MiB
        state = persistence.checkpoint_content(broker)
        self.assertEqual(state["sessions"][0]["inflight"],
                         [[7, "a/c", b"x", 1, True, False], [8, "a/d", b"y", 2, False, False], [9, "", b"", 2, False, True],
                          [10, "big", b"z" * (2 << 20), 1, False, False]])
        again = make_broker(self, clock)
        persistence.restore(again, state)
        self.assertEqual(again.sessions["c"].inflight_out, session.inflight_out)
        _, transport = attached(again, "c", clock, session=again.sessions["c"])
        clock.advance(0)
        self.assertEqual(transport.value(), mqtt_packets.publish("a/c", b"x", 1, True, 7, dup=True)
                         + mqtt_packets.publish("a/d", b"y", 2, False, 8, dup=True) + mqtt_packets.ack(mqtt_packets.PUBREL, 9)
                         + mqtt_packets.publish("big", b"z" * (2 << 20), 1, False, 10, dup=True))
