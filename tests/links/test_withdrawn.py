"""A retained cloud command that its cloud withdraws stops being retained locally (docs/topics.md):
a journal, a broker with its state log and two links in process, the clouds' messages handed
to the links as their connections would."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks, succeed
from twisted.trial.unittest import TestCase

from gateway.broker.service import BrokerService
from gateway.broker.statelog import STATE_STREAM
from gateway.journal.service import JournalService
from gateway.journal.settings import JournalSettings, StreamSettings
from gateway.links.service import LinksService
from gateway.links.settings import LinkSettings, LinksSettings
from gateway.mqtt.packets import Publish
from tests.broker.harness import ANONYMOUS, broker_settings, port_of
from tests.links.memory import MemoryJournal
from tests.mqttclient import TestClient
from tests.ports import free_port

#: The command the tests' clouds send, and its local forms (the default downlink's).
COMMAND = "command//dev1/req/7/switch"
FORMS = {COMMAND: "cloud", "c//dev1/q/7/switch": "cloud"}


class WithdrawnCommandTests(TestCase):
    """Links ``cloud`` and ``backup`` (the default downlink both) on a broker with durable state."""

    timeout = 30

    def setUp(self) -> None:
        self.state_dir = Path(self.mktemp())
        self.state_dir.mkdir()

    @inlineCallbacks
    def start(self) -> Any:
        """Start the journal, the broker on it, and the links (whose clouds nothing listens for)."""
        journal = JournalService(JournalSettings(defaults=StreamSettings(min_free_bytes=0)), self.state_dir, reactor)
        yield journal.startService()
        self.addCleanup(lambda: journal.stopService() if journal.running else None)
        broker = BrokerService(broker_settings({"listeners": {"default": {"endpoint": "tcp:0:interface=127.0.0.1"}},
                                                "plugins": ANONYMOUS}),
                               reactor, state_dir=self.state_dir, state_stream=lambda: journal.stream(STATE_STREAM))
        yield broker.startService()
        self.addCleanup(lambda: broker.stopService() if broker.running else None)
        nowhere = LinkSettings(endpoint=f"tcp:host=127.0.0.1:port={free_port()}", loss_topic=None)
        links = LinksService(LinksSettings(links={"cloud": nowhere, "backup": nowhere}), reactor, broker.bus,
                             MemoryJournal(), identity=("t1", "gw1"), retry_policy=lambda attempt: 60.0)
        yield links.startService()
        self.addCleanup(lambda: links.stopService() if links.running else None)
        self.running = journal, broker, links
        return broker.broker

    @inlineCallbacks
    def restart(self, checkpoint: bool) -> Any:
        """Stop everything (``checkpoint`` False: as if killed, only the state log has the
        changes since the last one) and start again."""
        journal, broker, links = self.running
        yield links.stopService()
        if not checkpoint:
            self.patch(broker, "_final_save", lambda: succeed(None))
            broker._save_call and broker._save_call.cancel()
            broker._save_call = None
        yield broker.stopService()
        yield journal.stopService()
        return (yield self.start())

    def cloud(self, link: str, payload: bytes, retain: bool = False, topic: str = COMMAND) -> Any:
        """``link``'s cloud sends ``payload`` on ``topic``; fires when the link would acknowledge it."""
        return self.running[2].links[link].message(Publish(topic, payload, 1, retain, False, 1))

    @inlineCallbacks
    def client(self) -> Any:
        """A local MQTT client, connected."""
        client = TestClient(reactor)
        yield client.connect(port_of(self.running[1]))
        self.addCleanup(client.stop)
        return client

    @staticmethod
    def retained(broker: Any) -> dict[str, tuple[bytes, str]]:
        """Topic -> (retained payload, the link that brought it) of the broker's retained commands."""
        return {topic: (message.payload, broker.retained_links.get(topic, ""))
                for topic, message in broker.retained.items() if topic.startswith("c")}

    @inlineCallbacks
    def test_a_withdrawn_command_is_removed_from_both_forms(self) -> None:
        """The cloud's copy comes down retained and is kept, on both local forms; its removal
        comes live and empty, without the flag (MQTT 3.1.1): it removes both local copies, and a
        subscriber gets the empty message as it gets any removal, live and without the flag. An
        app that subscribes then gets no command. Before, the local copies stayed for ever."""
        broker = yield self.start()
        yield self.cloud("cloud", b"on", retain=True)
        self.assertEqual(self.retained(broker), {topic: (b"on", link) for topic, link in FORMS.items()})
        app = yield self.client()
        yield app.subscribe("command//+/req/#", 1)
        message = yield app.next_message()
        self.assertEqual((message.topic, message.payload, message.retain), (COMMAND, b"on", 1))
        yield self.cloud("cloud", b"")
        self.assertEqual(self.retained(broker), {})
        message = yield app.next_message()
        self.assertEqual((message.topic, message.payload, message.retain), (COMMAND, b"", 0))
        yield self.cloud("cloud", b"")  # (again: nothing left to remove, delivered as it came)
        message = yield app.next_message()
        self.assertEqual((message.topic, message.payload, message.retain), (COMMAND, b"", 0))

    @inlineCallbacks
    def test_a_local_clients_retained_message_is_not_removed(self) -> None:
        """A retained message a local client published on a command topic, over the link's copy
        or on a topic without one, stays when a cloud sends an empty message there."""
        broker = yield self.start()
        yield self.cloud("cloud", b"on", retain=True)
        device = yield self.client()
        yield device.publish("c//dev1/q/7/switch", b"mine", 1, retain=True)
        yield device.publish("command//dev1/req/8/x", b"mine too", 1, retain=True)
        yield self.cloud("cloud", b"")
        yield self.cloud("cloud", b"", topic="command//dev1/req/8/x")
        self.assertEqual(self.retained(broker), {"c//dev1/q/7/switch": (b"mine", ""),
                                                 "command//dev1/req/8/x": (b"mine too", "")})

    @inlineCallbacks
    def test_only_the_link_whose_cloud_sent_the_copy_removes_it(self) -> None:
        """Two links bring down the same topic: the local copy is the last one's, and only that
        link's cloud removes it (the other cloud's copy went away; this one's did not)."""
        broker = yield self.start()
        yield self.cloud("cloud", b"on", retain=True)
        yield self.cloud("backup", b"")
        self.assertEqual(self.retained(broker), {topic: (b"on", "cloud") for topic in FORMS})
        yield self.cloud("backup", b"off", retain=True)
        yield self.cloud("cloud", b"")
        self.assertEqual(self.retained(broker), {topic: (b"off", "backup") for topic in FORMS})
        yield self.cloud("backup", b"")
        self.assertEqual(self.retained(broker), {})

    @inlineCallbacks
    def test_which_link_brought_a_copy_and_its_removal_survive_restarts(self) -> None:
        """Broker state is durable: which link brought a retained copy is in the state log and
        the checkpoint, so its cloud's removal still removes it after a restart (or a crash),
        and the removal itself is in the log, so the copy does not come back at the next start."""
        broker = yield self.start()
        yield self.cloud("cloud", b"on", retain=True)
        yield self.cloud("cloud", b"up", retain=True, topic="command//dev1/req/8/x")
        broker = yield self.restart(checkpoint=False)  # (the log alone)
        self.assertEqual(self.retained(broker)[COMMAND], (b"on", "cloud"))
        yield self.cloud("cloud", b"")
        broker = yield self.restart(checkpoint=True)  # (the checkpoint)
        self.assertEqual(self.retained(broker), {"command//dev1/req/8/x": (b"up", "cloud"),
                                                 "c//dev1/q/8/x": (b"up", "cloud")})
        yield self.cloud("cloud", b"", topic="command//dev1/req/8/x")
        broker = yield self.restart(checkpoint=False)
        self.assertEqual(self.retained(broker), {})
