"""The ingest service's life: where it listens, and not at all when disabled."""

from __future__ import annotations

from twisted.internet.defer import succeed
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from gateway.ingest.service import IngestService
from gateway.ingest.settings import IngestSettings


class IngestServiceTests(SynchronousTestCase):
    """Start and stop on a fake reactor."""

    def service(self, **changes: object) -> tuple[IngestService, MemoryReactorClock]:
        reactor = MemoryReactorClock()
        service = IngestService(IngestSettings(**changes), self.mktemp(), reactor,  # type: ignore[arg-type]
                                lambda *a, **k: None, "gw", run_blocking=lambda f, *a: succeed(f(*a)))
        return service, reactor

    def test_listens_on_127_0_0_1_8090_by_default(self):
        """The default endpoint is GWE's gmq address, local only."""
        service, reactor = self.service()
        self.successResultOf(service.startService())
        port, factory, backlog, interface = reactor.tcpServers[0]
        self.assertEqual((port, interface), (8090, "127.0.0.1"))
        self.assertTrue(service.snapshot().listening)
        self.successResultOf(service.stopService())
        self.assertFalse(service.listening)

    def test_disabled_listens_nowhere(self):
        """enabled: false: no port."""
        service, reactor = self.service(enabled=False)
        self.successResultOf(service.startService())
        self.assertEqual(reactor.tcpServers, [])
        self.assertFalse(service.snapshot().listening)

    def test_topic_template_needs_alias(self):
        """A topic without {alias}, or with an unknown placeholder, is refused with the reason."""
        for topic in ("telemetry/all", "telemetry/{alias}/{tenant}"):
            with self.assertRaises(ValueError) as caught:
                self.service(topic=topic)
            self.assertIn("{alias}", str(caught.exception))
