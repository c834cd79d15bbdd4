"""gateway.lazysite: a listening factory that builds its Site for the first connection."""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject
from twisted.internet.interfaces import IProtocolFactory

from gateway.lazysite import LazySite


class RecordingFactory(Factory):
    """A factory that records its starts and stops."""

    protocol = Protocol

    def __init__(self) -> None:
        self.events: list[str] = []

    def startFactory(self) -> None:
        self.events.append("start")

    def stopFactory(self) -> None:
        self.events.append("stop")


ADDRESS = IPv4Address("TCP", "127.0.0.1", 4321)


class LazySiteTests(SynchronousTestCase):
    """What a port sees of a LazySite, and when the real factory is made."""

    def setUp(self) -> None:
        self.made: list[RecordingFactory] = []

        def make() -> Any:
            factory = RecordingFactory()
            self.made.append(factory)
            return factory

        self.lazy = LazySite(make, "Site")

    def test_provides_the_interface(self) -> None:
        """A LazySite is an IProtocolFactory a port can listen with."""
        self.assertTrue(verifyObject(IProtocolFactory, self.lazy))

    def test_nothing_built_while_listening_idle(self) -> None:
        """Listening starts the stand-in only: the factory is not made before a connection."""
        self.lazy.doStart()
        self.assertEqual(self.made, [])
        self.assertIsNone(self.lazy.site)

    def test_first_connection_builds_and_starts_the_factory(self) -> None:
        """The first connection makes the factory once, starts it as often as the port started
        the stand-in, and gets its protocol; later connections reuse it."""
        self.lazy.doStart()
        first = self.lazy.buildProtocol(ADDRESS)
        second = self.lazy.buildProtocol(ADDRESS)
        self.assertEqual(len(self.made), 1)
        self.assertIs(self.lazy.site, self.made[0])
        self.assertEqual(self.made[0].events, ["start"])
        self.assertIsInstance(first, Protocol)
        self.assertIs(first.factory, self.made[0])  # type: ignore[union-attr]
        self.assertIsNot(first, second)

    def test_stop_reaches_a_built_factory(self) -> None:
        """Stopping the port stops the factory once it exists; before, nothing is made."""
        self.lazy.doStart()
        self.lazy.doStop()
        self.assertEqual(self.made, [])
        self.lazy.doStart()
        self.lazy.buildProtocol(ADDRESS)
        self.lazy.doStop()
        self.assertEqual(self.made[0].events, ["start", "stop"])

    def test_built_after_stop_is_not_started(self) -> None:
        """A factory made after the port stopped listening is not started."""
        self.lazy.doStart()
        self.lazy.doStop()
        self.lazy.build()
        self.assertEqual(self.made[0].events, [])

    def test_log_prefix(self) -> None:
        """The listening port logs the name given (the site's class name before)."""
        self.assertEqual(self.lazy.logPrefix(), "Site")
