"""What clients connected across a configuration change see: the old services close their
connections (after answering what is in flight) and nothing acknowledged is lost
(docs/commands.md, step 3)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList, inlineCallbacks
from twisted.trial.unittest import TestCase

from tests.ports import closed_port, free_port
from tests.test_tree import TreeHelpers

#: Anonymous MQTT clients on the tree's broker.
ANONYMOUS = "  plugins:\n    amqtt.plugins.authentication.AnonymousAuthPlugin: {allow_anonymous: true}\n"


class ConnectionsAcrossAChangeTests(TreeHelpers, TestCase):
    """A configuration change restarts the services under clients that stay connected."""

    timeout = 60

    @inlineCallbacks
    def start_with_link(self, port: int = 0) -> Any:
        """The tree with one MQTT cloud link (never connected: its stream fills) and anonymous
        MQTT clients on ``port``."""
        work = Path(self.mktemp()).resolve()
        work.mkdir(parents=True)
        return (yield self.start_tree(work, "\n", port or free_port(), ANONYMOUS + (
            f"links:\n  links:\n    cloud:\n      endpoint: 'tcp:host=127.0.0.1:port={closed_port(self)}'\n")))

    @inlineCallbacks
    def journaled(self, root: Any, topic: str) -> Any:
        """The payloads on ``topic`` the running journal holds for the link (as the cloud gets them)."""
        stream = root.parts.journal.stream("link-cloud")
        yield stream.cursor("probe")
        records = yield stream.read("probe")
        return [record.payload for record in records if record.topic == f"telemetry/default/gateway/{topic}"]

    @inlineCallbacks
    def test_a_publish_while_the_links_stop_is_acknowledged_only_once_journaled(self) -> Any:
        """A QoS 1 PUBLISH the old broker reads after the old links stopped (the broker stops
        after them) gets no PUBACK there: the connection closes, the client sends it again to
        the new broker, and the PUBACK it then gets is for a message the journal holds. The old
        broker acknowledged it at once, the links' hook gone, and it was never journaled."""
        port = free_port()
        root = yield self.start_with_link(port)
        device = yield self.client(port)
        yield device.publish("telemetry/x", b"before", 1)
        links = root.parts.links
        stop = links.stopService
        acked: list[Deferred[Any]] = []

        def stop_then_publish() -> Deferred[Any]:
            stopped = stop()
            acked.append(device.publish("telemetry/x", b"during", 1))
            # the old broker answers it (PUBACK, or closing the connection) before it stops
            answered = DeferredList([acked[0], device.disconnected()], fireOnOneCallback=True, consumeErrors=True)
            return DeferredList([stopped, answered])

        links.stopService = stop_then_publish
        result = yield root.changer.apply({"gateway.log_level": "debug"})
        self.assertTrue(result.applied, result)
        yield acked[0]  # the PUBACK (of the resent PUBLISH, by the new broker)
        self.assertEqual((yield self.journaled(root, "x")), [b"before", b"during"])
