"""A link's cursor saves that fail (a full disk) show in its status, not only in the log."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase

from gateway.degraded import Degraded
from gateway.journal.record import Record
from gateway.links.forwarder import CURSOR_RETRY_INTERVAL
from gateway.links.service import LinksService
from gateway.links.settings import LinkSettings, LinksSettings
from gateway.readside import ReadSide, ServiceState
from tests.links.memory import MemoryJournal
from tests.links.test_service import RecordingBus

CONNACK_ACCEPTED = b"\x20\x02\x00\x00"
NO_SPACE = "[Errno 28] No space left on device"


def puback(packet_id: int) -> bytes:
    """The cloud's PUBACK for ``packet_id``."""
    return b"\x40\x02" + packet_id.to_bytes(2, "big")


class CursorSaveFailureStatusTests(SynchronousTestCase):
    """A link whose cursor saves failed (a full disk) logged ``saving it failed`` once a minute
    and went on sending, while ``gatewayctl links``, ``GET /links``, ``GET /status`` and
    ``/metrics`` showed nothing: the resends a restart would cost grew unseen. The link's
    snapshot now has ``cursor_failing`` (the house :class:`Degraded`), the links' snapshot
    every failing link's, and the status the links service's ``error``; all cleared once a
    save works."""

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.reactor.advance(1796211823)
        self.journal = MemoryJournal()
        self.links = LinksService(LinksSettings(links={"cloud": LinkSettings(loss_topic=None),
                                                       "backup": LinkSettings(loss_topic=None)}),
                                  self.reactor, RecordingBus(), self.journal)
        self.links.startService()
        self.addCleanup(self.links.stopService)
        self.full = True
        stream = self.journal.stream("link-cloud")
        real_ack = stream.ack

        def ack(cursor: str, seq: int, above: Any = ()) -> Deferred[None]:
            if self.full:
                return fail(OSError(28, "No space left on device"))
            return real_ack(cursor, seq, above)

        stream.ack = ack  # type: ignore[method-assign]
        self.stream = stream

    def connect(self, name: str) -> Any:
        """Accept a connection of link ``name``: its protocol."""
        protocol = self.links.links[name].buildProtocol(None)
        protocol.makeConnection(StringTransport())
        protocol.dataReceived(CONNACK_ACCEPTED)
        return protocol

    def test_failing_saves_show_in_the_link_the_links_and_the_status(self) -> None:
        protocol = self.connect("cloud")
        self.connect("backup")
        side = ReadSide(self.reactor, object(), object(), self.links, object(), object(),  # type: ignore[arg-type]
                        services=[self.links])
        self.assertEqual(side.status().services, (ServiceState("links", True, ""),))
        self.stream.append(Record("telemetry/t/gw/x", b"1", 1, False, 0.0))
        self.reactor.advance(0.01)  # (linger_ms)
        protocol.dataReceived(puback(1))  # (its save fails at once, then once a second)
        since = self.reactor.seconds()
        for _ in range(3):
            self.reactor.advance(CURSOR_RETRY_INTERVAL)
        cloud, backup = self.links.snapshot().links
        self.assertEqual(cloud.cursor_failing, Degraded("cursor-not-saved", NO_SPACE, since, 4))
        self.assertIsNone(backup.cursor_failing)
        self.assertEqual(self.links.snapshot().cursor_failing,
                         Degraded("cursor-not-saved", f"link cloud: {NO_SPACE}", since, 4))
        self.assertEqual(side.status().services, (ServiceState(
            "links", True, f"cursor-not-saved: link cloud: {NO_SPACE} (since 2026-12-02T11:43:43Z, 4 failed)"),))
        self.full = False
        self.reactor.advance(CURSOR_RETRY_INTERVAL)
        self.assertEqual(self.stream.acked["cloud"], 1)
        self.assertIsNone(self.links.snapshot().links[0].cursor_failing)
        self.assertIsNone(self.links.snapshot().cursor_failing)
        self.assertEqual(side.status().services, (ServiceState("links", True, ""),))
