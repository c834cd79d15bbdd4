"""The shadow sync as a service: started after the twin, on the link ``twin.shadow_link`` names."""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed

from gateway.twin.settings import TwinSettings
from gateway.twin.sync import ShadowSync


class ShadowSyncService(Service):
    """Attaches a :class:`~gateway.twin.sync.ShadowSync` to a running MQTT link.

    :param settings: the ``twin:`` section (``shadow_link`` set).
    :param twin: the twin service (started before this one).
    :param links: the links service (its ``links`` by name).
    :param journal: the journal service; the sync's stream is ``shadow-<link>``.
    :param reactor: the clock.
    """

    name = "shadow-sync"  # type: ignore[assignment]

    def __init__(self, settings: TwinSettings, twin: Any, links: Any, journal: Any, reactor: Any) -> None:
        self.settings = settings
        self.twin = twin
        self.links = links
        self.journal = journal
        self.reactor = reactor
        self.sync: ShadowSync | None = None
        self._link: Any = None

    def startService(self) -> Deferred[None]:
        """Find the link, start the sync, hook it into the link.

        :raises ValueError: when ``shadow_link`` names no MQTT link.
        """
        super().startService()
        name = self.settings.shadow_link
        link = self.links.links.get(name)
        if link is None or not hasattr(link, "extensions"):
            raise ValueError(f"twin.shadow_link: {name!r} is not an MQTT link in links.links")
        thing = self.settings.shadow_thing or link.options.client_id
        stream = self.journal.stream(f"shadow-{name}")
        self.sync = ShadowSync(self.settings, self.twin, stream, self.reactor, thing,
                               max_record_bytes=stream.settings.max_bytes)
        self._link = link
        sync = self.sync

        def attach(_: Any) -> None:
            self.twin.sync = sync
            link.extensions.append(sync)
            if link.protocol is not None and link.is_connected:
                sync.link_connected(link.protocol)

        return sync.start().addCallback(attach)

    def stopService(self) -> Deferred[None]:
        """Detach from the link and stop; fires once the marks of the shadows behind are
        written whole (:meth:`ShadowSync.stop`)."""
        super().stopService()
        if self.sync is None:
            return succeed(None)
        stopped = self.sync.stop()
        if self.twin.sync is self.sync:
            self.twin.sync = None
        if self._link is not None and self.sync in self._link.extensions:
            self._link.extensions.remove(self.sync)
        return stopped
