"""The broker's state log on a real journal, in process: replayed after a checkpoint that
never happened, and compacted by the next checkpoint."""

from __future__ import annotations

import errno
import tracemalloc
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import gatherResults, inlineCallbacks, succeed
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.trial.unittest import TestCase

from gateway.broker.service import BrokerService
from gateway.broker.statelog import STATE_CURSOR, STATE_STREAM
from gateway.journal.service import JournalService
from gateway.journal.settings import JournalSettings, StreamSettings
from tests.broker import packets
from tests.broker.harness import ANONYMOUS, broker_settings, eventually, port_of
from tests.broker.mqttraw import scripted_connect
from tests.mqttclient import TestClient

MIB = 1 << 20
SECTION = {"listeners": {"default": {"endpoint": "tcp:0:interface=127.0.0.1"}}, "plugins": ANONYMOUS}


class StateLogCase(TestCase):
    """A journal and a broker service with the state log, as ``tree.py`` wires them."""

    timeout = 60
    #: the broker section the tests start with.
    section: dict[str, Any] = SECTION

    def setUp(self) -> None:
        self.state_dir = Path(self.mktemp())
        self.state_dir.mkdir()
        self.settings = JournalSettings(defaults=StreamSettings(min_free_bytes=0),
                                        streams={STATE_STREAM: StreamSettings(segment_bytes=4096, min_free_bytes=0)})

    @inlineCallbacks
    def start(self, traced: list[int] | None = None) -> Any:
        """Start a journal, then a broker service on it; with ``traced``, the broker's start
        (not the journal's) is traced and its peak of traced memory appended to it."""
        journal = JournalService(self.settings, self.state_dir, reactor)
        yield journal.startService()
        self.addCleanup(lambda: journal.stopService() if journal.running else None)
        broker = BrokerService(broker_settings(self.section), reactor, state_dir=self.state_dir,
                               state_stream=lambda: journal.stream(STATE_STREAM))
        if traced is not None:
            tracemalloc.start()
            self.addCleanup(tracemalloc.stop)
        yield broker.startService()
        if traced is not None:
            traced.append(tracemalloc.get_traced_memory()[1])
            tracemalloc.stop()
        self.addCleanup(lambda: broker.stopService() if broker.running else None)
        return journal, broker

    @inlineCallbacks
    def stop(self, journal: Any, broker: Any, checkpoint: bool = True) -> Any:
        if not checkpoint:  # as if killed before the checkpoint: only the log has the changes
            self.patch(broker, "_final_save", lambda: succeed(None))
            broker._save_call and broker._save_call.cancel()
            broker._save_call = None
        yield broker.stopService()
        yield journal.stopService()

    def client(self, **kwargs: Any) -> TestClient:
        client = TestClient(reactor, **kwargs)
        self.addCleanup(client.stop)
        return client


class StateLogTests(StateLogCase):
    """The state log replayed, compacted and kept out of memory."""

    @inlineCallbacks
    def test_changes_after_the_checkpoint_are_replayed(self):
        """Subscribe, unsubscribe, a session cleared, retained set and removed: replayed from the log alone."""
        journal, broker = yield self.start()
        port = port_of(broker)
        keeper = self.client(client_id="keeper", clean_session=False)
        yield keeper.connect(port)
        yield keeper.subscribe("a/#", 1)
        yield keeper.subscribe("b/#", 1)
        keeper.client.unsubscribe("b/#")
        yield eventually(reactor, lambda: "b/#" not in broker.broker.subscriptions)
        forgotten = self.client(client_id="forgotten", clean_session=False)
        yield forgotten.connect(port)
        yield forgotten.subscribe("c/#", 1)
        forgotten.stop()
        yield forgotten.disconnected()
        cleaner = self.client(client_id="forgotten", clean_session=True)
        yield cleaner.connect(port)
        cleaner.stop()
        yield cleaner.disconnected()
        keeper.stop()
        yield keeper.disconnected()
        publisher = self.client()
        yield publisher.connect(port)
        yield publisher.publish("r/gone", b"soon removed", 1, retain=True)
        yield publisher.publish("r/gone", b"", 1, retain=True)
        yield publisher.publish("r/kept", b"kept", 1, retain=True)
        yield publisher.publish("a/1", b"queued", 1)
        publisher.stop()
        yield publisher.disconnected()
        yield self.stop(journal, broker, checkpoint=False)
        self.assertFalse((self.state_dir / "broker" / "state.json").exists())

        journal, broker = yield self.start()
        restored = broker.broker

        self.assertEqual({f: list(e) for f, e in restored.subscriptions.items()},
                         {"a/#": ["keeper"]})
        self.assertNotIn("forgotten", restored.sessions)
        self.assertEqual({t: m.payload for t, m in restored.retained.items()}, {"r/kept": b"kept"})
        back = self.client(client_id="keeper", clean_session=False)
        yield back.connect(port_of(broker))
        message = yield back.next_message()
        self.assertEqual((message.topic, message.payload), ("a/1", b"queued"))

    @inlineCallbacks
    def test_qos2_ids_awaiting_pubrel_survive_a_crash(self):
        """A persistent session's QoS 2 PUBLISH, PUBREC'd, then the gateway dies before any
        checkpoint: after the restart the resend (DUP, same id) is PUBREC'd and not routed
        again, and its PUBREL, once logged, leaves nothing behind for the next restart."""
        journal, broker = yield self.start()
        keeper = self.client(client_id="keeper", clean_session=False)
        yield keeper.connect(port_of(broker))
        yield keeper.subscribe("x/#", 1)
        keeper.stop()
        yield keeper.disconnected()
        publish = packets.publish("x/1", b"once", qos=2, packet_id=9)
        pub = yield self.raw_client(broker, publish)
        yield pub.until(lambda: (0x50, b"\x00\x09") in pub.others, reactor)
        pub.transport.abortConnection()
        yield pub.lost
        yield self.stop(journal, broker, checkpoint=False)

        journal, broker = yield self.start()
        self.assertEqual(broker.broker.sessions["pub"].inflight_in, {9})
        pub = yield self.raw_client(broker, packets.publish("x/1", b"once", qos=2, packet_id=9, dup=True))
        yield pub.until(lambda: (0x50, b"\x00\x09") in pub.others, reactor)
        pub.transport.write(packets.ack(6, 9))
        yield pub.until(lambda: (0x70, b"\x00\x09") in pub.others, reactor)
        self.assertEqual(len(broker.broker.sessions["keeper"].outbox or ()), 1)
        pub.transport.abortConnection()
        yield pub.lost
        yield self.stop(journal, broker, checkpoint=False)

        journal, broker = yield self.start()
        self.assertEqual(broker.broker.sessions["pub"].inflight_in, set())

    @inlineCallbacks
    def test_user_name_survives_a_restart(self):
        """A persistent session keeps its client's user name across a restart, from the checkpoint
        and from the log alone: a topic plugin deciding on the user name lets a message queued
        after the restart in (it saw no user name and refused it, so the message was lost), and
        a session resumed under another user name is decided on that one after the next restart."""
        self.section = {**SECTION, "plugins": {**ANONYMOUS, "tests.broker.userplugins.OwnTopicsOnly": {}}}
        for checkpoint in (True, False):
            self.state_dir = Path(self.mktemp())
            self.state_dir.mkdir()
            journal, broker = yield self.start()
            keeper = self.client(client_id="keeper", clean_session=False, username="alice")
            yield keeper.connect(port_of(broker))
            yield keeper.subscribe("to/#", 1)
            keeper.stop()
            yield keeper.disconnected()
            yield self.stop(journal, broker, checkpoint=checkpoint)

            journal, broker = yield self.start()
            self.assertEqual(broker.broker.sessions["keeper"].username, "alice")
            publisher = self.client()
            yield publisher.connect(port_of(broker))
            yield publisher.publish("to/alice/1", b"for alice", 1)
            yield publisher.publish("to/bob/1", b"for bob", 1)
            publisher.stop()
            yield publisher.disconnected()
            back = self.client(client_id="keeper", clean_session=False, username="alice")
            yield back.connect(port_of(broker))
            message = yield back.next_message()
            self.assertEqual((message.topic, message.payload), ("to/alice/1", b"for alice"))
            back.stop()
            yield back.disconnected()
            bob = self.client(client_id="keeper", clean_session=False, username="bob")
            yield bob.connect(port_of(broker))
            bob.stop()
            yield bob.disconnected()
            yield self.stop(journal, broker, checkpoint=checkpoint)

            journal, broker = yield self.start()
            self.assertEqual(broker.broker.sessions["keeper"].username, "bob", checkpoint)
            yield self.stop(journal, broker)

    @inlineCallbacks
    def test_leaving_and_coming_back_are_logged(self):
        """A persistent session's client that leaves and comes back: the state log holds
        ``offline``, then ``online`` (so a restart after a crash counts its session offline
        from the start, not since it left: docs/broker.md, Sessions); a clean
        session's client logs neither."""
        journal, broker = yield self.start()
        broker.broker.on_state_changed = None  # no checkpoint: the log keeps every record here
        port = port_of(broker)
        for client_id, clean in (("device", False), ("device", False), ("passer-by", True)):
            client = self.client(client_id=client_id, clean_session=clean)
            yield client.connect(port)
            client.stop()
            yield client.disconnected()
            # The client's side of the end is not the broker's: come back only once the broker
            # ended the connection (else the next CONNECT takes the old one over, logging neither).
            yield eventually(reactor, lambda: client_id not in broker.broker.live)
        # Reads see only durable records, and the log's fsyncs run on the journal's I/O thread:
        # under load the last ones were still on their way, and the read missed them.
        state_log = broker.broker.state_log
        yield state_log.wait(state_log.appended)
        records = yield journal.stream(STATE_STREAM).read(STATE_CURSOR)
        self.assertEqual([(dict(r.headers)["op"], dict(r.headers)["client"]) for r in records],
                         [("offline", "device"), ("online", "device"), ("offline", "device")])

    @inlineCallbacks
    def test_the_log_keeps_no_records_in_memory(self):
        """Messages queued for an offline session go to the state log, which nobody reads
        while the broker runs: its stream keeps none of them in memory for readers that keep
        up (a soak saw that tail hold 16,384 to 32,768 copies of queued messages, about 16 MB;
        docs/journal.md, Using it)."""
        journal, broker = yield self.start()
        port = port_of(broker)
        keeper = self.client(client_id="keeper", clean_session=False)
        yield keeper.connect(port)
        yield keeper.subscribe("a/#", 1)
        keeper.stop()
        yield keeper.disconnected()
        yield eventually(reactor, lambda: "keeper" not in broker.broker.live)
        publisher = self.client()
        yield publisher.connect(port)
        yield gatherResults([publisher.publish("a/1", b"x" * 100, 1) for _ in range(50)])
        state_log = broker.broker.state_log
        yield state_log.wait(state_log.appended)
        stream = journal.stream(STATE_STREAM)
        self.assertGreater(stream.written_seq, 50)
        self.assertEqual(len(stream.tail), 0)

    @inlineCallbacks
    def raw_client(self, broker: Any, *sent: bytes) -> Any:
        """A byte-level client ``pub`` with CleanSession=0, connected (CONNACK read), having sent ``sent``."""
        client = yield scripted_connect(reactor, port_of(broker))
        self.addCleanup(lambda: client.transport.abortConnection())
        client.transport.write(packets.connect("pub", flags=0) + b"".join(sent))
        yield client.until(lambda: client.others, reactor)
        return client

    @inlineCallbacks
    def test_the_log_is_replayed_a_batch_at_a_time(self):
        """24 retained messages of 1 MiB logged on one topic (a client replacing its message)
        and no checkpoint after them: the start holds about one read of the log at a time (1
        MiB of payloads) and the message it keeps, not the whole log. Before, it read every record first, then replayed
        them: 24 MiB here, and a log as large as the memory limit (checkpoint saves failing for
        a while, a crash before the checkpoint) killed every start."""
        journal, broker = yield self.start()
        state_log = broker.broker.state_log
        for n in range(24):
            state_log.retained("big", bytes([n]) * MIB, 1)
        yield state_log.wait(state_log.appended)
        yield self.stop(journal, broker, checkpoint=False)
        peaks: list[int] = []
        journal, broker = yield self.start(traced=peaks)
        self.assertEqual(broker.broker.retained["big"].payload, bytes([23]) * MIB)
        self.assertLess(peaks[0], 6 * MIB)

    @inlineCallbacks
    def test_checkpoint_compacts_the_log(self):
        """Hundreds of retained messages fill many 4 KiB segments; a checkpoint lets the journal delete them."""
        journal, broker = yield self.start()
        publisher = self.client()
        yield publisher.connect(port_of(broker))
        yield gatherResults([publisher.publish(f"r/{n % 20}", b"v" * 100, 1, retain=True) for n in range(300)])
        stream = journal.stream(STATE_STREAM)
        self.assertGreater(len(stream.segments), 5)
        # The checkpoint (SAVE_DELAY after the changes) acknowledges the log's cursor; the
        # journal then deletes the sealed segments.
        yield eventually(reactor, lambda: stream.reader.cursors[STATE_CURSOR].acked == stream.written_seq
                         and len(stream.segments) <= 2)
        publisher.stop()
        yield publisher.disconnected()
        yield self.stop(journal, broker)
        journal, broker = yield self.start()
        self.assertEqual(len(broker.broker.retained), 20)

    @inlineCallbacks
    def test_a_checkpoint_the_disk_refuses_is_one_line_and_saved_again_later(self):
        """A checkpoint save the disk refuses (a full one) was a critical log with a traceback
        at every save (about one a second while clients come and go): seen on a real gateway on
        a full tmpfs. Now the first failure is one error line naming the file and the error,
        the next ones are counted into a line at most once a minute, and the next save that
        works says so once. What the checkpoint would have held is still in the state log. The
        broker's snapshot says so while it lasts (checkpoint_failing): the status showed it running."""
        journal, broker = yield self.start()
        publisher = self.client()
        yield publisher.connect(port_of(broker))
        yield publisher.publish("r/1", b"one", 1, retain=True)

        def full(state: Any) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        with capturedLogs() as events:
            broker.store.save = full
            for _ in range(5):
                yield broker._save()
        lines = [(e["log_level"], formatEvent(e)) for e in events if e["log_namespace"].startswith("gateway.broker")]
        self.assertEqual(lines, [(LogLevel.error, f"broker: saving the checkpoint {broker.store.path} failed (1 in a"
                                  " row; logged at most once a minute): [Errno 28] No space left on device; what it"
                                  " holds stays in the state log, and the next change saves it again")])
        self.assertFalse(any("log_failure" in e for e in events))
        # ... and the read side says so (gatewayctl status, GET /status: the broker's error)
        failing = broker.snapshot().checkpoint_failing
        self.assertEqual((failing.reason, failing.error, failing.failures),
                         ("checkpoint-not-saved", "[Errno 28] No space left on device", 5))

        with capturedLogs() as events:
            del broker.store.save  # the disk has room again
            yield publisher.publish("r/2", b"two", 1, retain=True)
            yield eventually(reactor, lambda: any("saved again" in formatEvent(e) for e in events))
        self.assertIn(f"broker: the checkpoint {broker.store.path} is saved again, after 5 failed saves",
                      [formatEvent(e) for e in events])
        self.assertIsNone(broker.snapshot().checkpoint_failing)
        publisher.stop()
        yield publisher.disconnected()
        yield self.stop(journal, broker, checkpoint=False)
        journal, broker = yield self.start()
        self.assertEqual(sorted(broker.broker.retained), ["r/1", "r/2"])
