"""A listening factory that builds its twisted.web ``Site`` when the first connection comes.

The admin API and the ingest listen from the start, but on an idle gateway nobody calls
them. ``twisted.web.server`` brings ``twisted.web.util``, templates, ``twisted.spread``,
``xml.sax`` and ``twisted.cred`` with it: about 2.5 MB of resident memory (see
docs/benchmarks.md, idle footprint). :class:`LazySite` listens in the site's place and
imports and builds it for the first connection; from then on it hands every connection
to that site.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol

from twisted.internet.interfaces import IProtocol, IProtocolFactory
from zope.interface import implementer


class ClosableFactory(Protocol):
    """What :class:`LazySite` builds: a server factory whose open connections can be closed
    (:class:`gateway.httpchannels.ClosesChannels`)."""

    def doStart(self) -> None:
        """A port started listening with it."""

    def doStop(self) -> None:
        """A port stopped listening."""

    def buildProtocol(self, addr: Any) -> IProtocol | None:
        """The protocol for a new connection."""

    def close_connections(self) -> None:
        """Close every open connection, each once its response in progress is sent."""


@implementer(IProtocolFactory)
class LazySite:
    """Stands in for a server factory (a ``Site``) until a connection needs it.

    The port's ``doStart``/``doStop`` are counted and replayed on the site once it exists,
    so it sees the same start and stop calls as if it had listened itself.

    :param make: builds the factory (and imports what it needs); called once, by the first
        :meth:`buildProtocol` or :meth:`build`.
    :param name: the log prefix of the listening port (default: ``LazySite``).
    """

    def __init__(self, make: Callable[[], ClosableFactory], name: str = "LazySite") -> None:
        self._make = make
        self._name = name
        self._site: ClosableFactory | None = None
        self._starts = 0

    @property
    def site(self) -> ClosableFactory | None:
        """The factory, once built (``None`` while no connection came)."""
        return self._site

    def build(self) -> ClosableFactory:
        """The factory, built now if it was not yet (and started as often as this one was)."""
        if self._site is None:
            site = self._make()
            for _ in range(self._starts):
                site.doStart()
            self._site = site
        return self._site

    def logPrefix(self) -> str:
        """What the listening port logs itself as."""
        return self._name

    def doStart(self) -> None:
        """A port started listening with this factory."""
        self._starts += 1
        if self._site is not None:
            self._site.doStart()

    def doStop(self) -> None:
        """A port stopped listening."""
        if self._starts > 0:
            self._starts -= 1
        if self._site is not None:
            self._site.doStop()

    def buildProtocol(self, addr: Any) -> IProtocol | None:
        """The site's protocol for a new connection (the site is built for the first one)."""
        return self.build().buildProtocol(addr)

    def close_connections(self) -> None:
        """Close the site's open connections, each at once when idle, else once its response
        in progress is sent (none to close when no connection came: the site was not built)."""
        if self._site is not None:
            self._site.close_connections()
