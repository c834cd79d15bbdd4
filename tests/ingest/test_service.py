"""The ingest service's life: where it listens, and not at all when disabled."""

from __future__ import annotations

from pathlib import Path

from typing import Any

from twisted.internet.defer import succeed
from twisted.internet.error import CannotListenError
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from gateway import config
from gateway.errors import ConfigError
from gateway.ingest.service import IngestService
from gateway.ingest.settings import IngestSettings
from tests.logevents import capture_log_events
from tests.ports import free_port


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

    def test_max_devices_from_the_config_bounds_the_activations(self) -> None:
        """``ingest.max_devices`` reaches the activations: past it a new serial is refused; the
        snapshot's ``devices`` counts those activated."""
        from gateway.ingest.identities import TooManyDevices
        service, _ = self.service(max_devices=1)
        self.successResultOf(service.startService())
        self.successResultOf(service.identities.activate("acme", "box", "sn1"))
        self.failureResultOf(service.identities.activate("acme", "box", "sn2"), TooManyDevices)
        self.assertEqual(service.snapshot().devices, 1)
        self.successResultOf(service.stopService())

    def test_where_it_listens_is_logged_as_an_address(self) -> None:
        """The log names the address it listens on as an operator writes it (``[::1]:8090``),
        not the endpoint string with its escaped colons (``tcp:8090:interface=\\:\\:1``)."""
        service, _ = self.service(endpoint="tcp:8090:interface=\\:\\:1")
        with capturedLogs() as logs:
            self.successResultOf(service.startService())
        self.assertEqual([formatEvent(e) for e in logs], ["ingest: the device API listens on [::1]:8090"])

    def test_port_in_use_is_logged_as_one_sentence(self) -> None:
        """A port in use: the ingest says so once, ``...already in use; GWE apps cannot write``
        (it read ``in use.; GWE``: Twisted's error ends with a dot), and its snapshot keeps
        Twisted's sentence whole."""
        class TakenReactor(MemoryReactorClock):
            def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> Any:
                raise CannotListenError(interface, port, OSError(98, "Address already in use"))

        port = free_port()  # (the default 8090 may be a gateway's of this machine: its holder would be named)
        service = IngestService(IngestSettings(endpoint=f"tcp:{port}:interface=127.0.0.1"), self.mktemp(),
                                TakenReactor(),  # type: ignore[arg-type]
                                lambda *a, **k: None, "gw", run_blocking=lambda f, *a: succeed(f(*a)))
        with capturedLogs() as logs:
            self.successResultOf(service.startService())
        self.assertEqual([formatEvent(e) for e in logs],
                         [f"ingest: cannot listen on tcp:{port}:interface=127.0.0.1: Couldn't listen on"
                          f" 127.0.0.1:{port}: [Errno 98] Address already in use; GWE apps cannot write"])
        self.assertEqual(service.snapshot().error,
                         f"Couldn't listen on 127.0.0.1:{port}: [Errno 98] Address already in use.")

    def test_the_site_starting_and_stopping_logs_nothing(self):
        """The site built at the first connection and stopped with the service logs no
        "Starting factory <gateway.ingest.site.QuietSite object at 0x...>" / "Stopping factory
        ..." (seen on a real gateway's log): the service logs where it listens."""
        service, reactor = self.service()
        self.successResultOf(service.startService())
        events = capture_log_events(self)
        factory = reactor.tcpServers[0][1]
        factory.doStart()
        factory.buildProtocol(None)
        self.successResultOf(service.stopService())
        self.assertEqual([formatEvent(e) for e in events if "factory" in formatEvent(e)], [])

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

    def test_topic_template_checked_with_the_config(self):
        """A topic without {alias}, with another placeholder than {device}, or that is no topic is
        a configuration error, listed by the load (--check-config) with its key path, not a
        traceback when the gateway starts."""
        directory = Path(self.mktemp())
        directory.mkdir()
        for topic, why in (("telemetry/all", "{alias}"), ("telemetry/{alias}/{tenant}", "{tenant}"),
                           ("telemetry/+/{alias}", "not a valid topic")):
            path = directory / "gateway.yaml"
            path.write_text(f"ingest:\n  topic: '{topic}'\n")
            errors = self.assertRaises(ConfigError, config.load, path).errors
            self.assertEqual(len(errors), 1, errors)
            self.assertIn(f"{path}: ingest.topic: ", errors[0])
            self.assertIn(why, errors[0])
        path.write_text("ingest:\n  topic: 'gwe/{device}/{alias}'\n")
        self.assertEqual(config.load(path).ingest.topic, "gwe/{device}/{alias}")
