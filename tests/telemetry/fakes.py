"""Snapshots and a bus for telemetry unit tests."""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.defer import Deferred, succeed

from gateway import __version__
from gateway.apps.snapshot import AppSnapshot, AppsSnapshot
from gateway.broker.bus import BusMessage
from gateway.broker.snapshot import BrokerSnapshot, ListenerSnapshot
from gateway.certinfo import CertificateSnapshot
from gateway.journal.snapshot import CursorSnapshot, JournalSnapshot, LatencySnapshot, LossCount, StreamSnapshot
from gateway.journal.stats import Histogram
from gateway.fleet.snapshot import FleetSnapshot
from gateway.ingest.snapshot import IngestSnapshot
from gateway.links.snapshot import LinkSnapshot, LinksSnapshot
from gateway.readside import GatewayStatus, ServiceState
from gateway.twin.snapshot import ShadowSyncSnapshot, TwinSnapshot
from gateway.updates.snapshot import ModuleSnapshot, OperationSnapshot, UpdatesSnapshot

CERT = CertificateSnapshot("link cloud client", "/etc/gateway/client.pem", "CN=device-1", 2e9, 42.5)


def fsync_histogram() -> Any:
    h = Histogram()
    for value in (0.0004, 0.003, 0.003, 0.2):
        h.observe(value)
    return h.snapshot()


class FakeReadSide:
    """A read side whose snapshots the test sets (``acked`` moves the link's counters)."""

    def __init__(self) -> None:
        self.acked = 10
        self.bytes_up = 1000
        self.programs = [AppSnapshot("web", "web", "1.0", "RUNNING", 123, 30.0, None, 2)]
        self.ingest_snapshot: IngestSnapshot | None = IngestSnapshot(True, "", 7, 9, 2, 1, 3, 4, 1)
        self.twin_snapshot: TwinSnapshot | None = TwinSnapshot(
            "acme:gw1", 3, 12, ShadowSyncSnapshot("gw1", True, 2, 1, 0, 3, 2, 900.0), max_things=1000,
            things_refused=4)
        self.fleet_snapshot: FleetSnapshot | None = None

    def status(self) -> GatewayStatus:
        return GatewayStatus(__version__, 1000.0, 60, 4321, (ServiceState("journal", True),
                                                               ServiceState("broker", True)))

    def broker(self) -> BrokerSnapshot:
        return BrokerSnapshot(True, 2, 3, 4, 1, (5, 6, 7), (8, 9, 0), 100, 200, 1, 0, 0, 0,
                              (ListenerSnapshot("default", "tcp:1883", "127.0.0.1:1883", 2, 5000, 1, 7000, 4),), (),
                              messages_resent=3)

    def journal(self) -> JournalSnapshot:
        return JournalSnapshot("/var/lib/gateway/journal", (StreamSnapshot(
            "link-cloud", 12, 4096, 1, 10 ** 9, 30.0, 12.5, 13, 12, LatencySnapshot(12, 0.06, 0.01, 0.004), 4,
            fsync_histogram(), (CursorSnapshot("cloud", 10, 2),), (LossCount("max-age", 3),)),))

    def links(self) -> LinksSnapshot:
        return LinksSnapshot((LinkSnapshot("cloud", "tls:host=x:port=8883", "connected", 1500.0, "", 2, 1, 1,
                                           self.acked + 1, self.acked, 0, self.bytes_up, 300, 2, 1, 0.5, (CERT,)),))

    def apps(self) -> AppsSnapshot:
        return AppsSnapshot(__version__, tuple(self.programs))

    def updates(self) -> UpdatesSnapshot:
        return UpdatesSnapshot((OperationSnapshot("op-1", "install", "DOWNLOADING", "", (
            ModuleSnapshot("web", "2.0", "app"),), 0, True, 500, 1000, 50),))

    def ingest(self) -> IngestSnapshot | None:
        return self.ingest_snapshot

    def twin(self) -> TwinSnapshot | None:
        return self.twin_snapshot

    def fleet(self) -> FleetSnapshot | None:
        return self.fleet_snapshot


class FakeBus:
    """Records publishes; hands messages to subscribers when the test calls :meth:`receive`."""

    def __init__(self) -> None:
        self.published: list[tuple[str, bytes, int, bool]] = []
        self.subscriptions: list[tuple[str, Callable[[BusMessage], Any]]] = []

    def subscribe(self, topic_filter: str, callback: Callable[[BusMessage], Any]) -> Callable[[], None]:
        entry = (topic_filter, callback)
        self.subscriptions.append(entry)
        return lambda: self.subscriptions.remove(entry)

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> Deferred[None]:
        self.published.append((topic, payload, qos, retain))
        return succeed(None)

    def receive(self, topic: str, payload: bytes) -> Any:
        for topic_filter, callback in list(self.subscriptions):
            if topic_filter == topic:
                return callback(BusMessage(topic, payload, 1, False))
        return None
