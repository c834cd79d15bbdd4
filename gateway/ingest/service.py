"""The ingest service: serves the gmq-compatible device API on a Twisted endpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger

from gateway.addresses import address_text
from gateway.lazysite import LazySite
from gateway.portholder import listen_refusal
from gateway.unixsocket import listen_past_stale_lock
from gateway.blocking import RunBlocking, in_reactor_threads
from gateway.ingest.identities import LocalIdentities
from gateway.ingest.resource import DeviceAPIResource, Persist
from gateway.ingest.settings import IngestSettings, topic_problem
from gateway.ingest.snapshot import IngestSnapshot
from gateway.ingest.values import LastValues

#: Seconds an idle keep-alive connection stays open.
IDLE_TIMEOUT = 75
#: Why the ingest does nothing with ``ingest.enabled: false`` (its snapshot's ``off``).
OFF = "ingest.enabled: false"


def quiet_site(resource: Any, timeout: float) -> Any:
    """The device API's :class:`~gateway.ingest.site.QuietSite`; twisted.web.server is imported
    here, when the first connection comes (:class:`~gateway.lazysite.LazySite`)."""
    from gateway.ingest.site import QuietSite

    return QuietSite(resource, resource.settings.max_body, timeout)


class IngestService(Service):
    """Listens on the configured endpoint; a bind failure is logged, not fatal.

    The ingest is a compatibility door: a gateway whose broker and links work should not
    refuse to start because something else (a GWE ``gmq`` still running during migration)
    holds the port. ``listening`` and the error say what happened.

    :param settings: the ``ingest:`` section.
    :param state_dir: the state directory (``ingest/devices.json`` lives there).
    :param reactor: the reactor (endpoint, clock, thread pool).
    :param persist: the links' router (``LinksService.persist``).
    :param device: the gateway's device id.
    :param values: last values, shared with the links' downlink (a new one by default).
    :param run_blocking: runs file writes off the reactor thread (default: the reactor's pool).
    :raises ValueError: for a ``topic`` the configuration check refuses (:func:`topic_problem`).
    """

    name = "ingest"  # type: ignore[assignment]
    log = Logger()

    def __init__(self, settings: IngestSettings, state_dir: str | Path, reactor: Any, persist: Persist,
                 device: str, values: LastValues | None = None, run_blocking: RunBlocking | None = None) -> None:
        problem = topic_problem(settings.topic)
        if problem is not None:
            raise ValueError(f"ingest.topic {problem}")
        self.settings = settings
        self.reactor = reactor
        self.values = values if values is not None else LastValues(reactor)
        if run_blocking is None:
            run_blocking = in_reactor_threads(reactor)
        self.identities = LocalIdentities(Path(state_dir) / "ingest" / "devices.json", run_blocking,
                                          settings.ciks, settings.max_devices)
        self.resource = DeviceAPIResource(settings, persist, self.values, self.identities, reactor, device)
        self.site = LazySite(lambda: quiet_site(self.resource, IDLE_TIMEOUT), "QuietSite")
        self.port: Any = None
        self.error = ""

    @property
    def listening(self) -> bool:
        """Whether the endpoint is bound."""
        return self.port is not None

    def startService(self) -> Deferred[None]:
        """Load the local devices and listen; fires once bound (or once the bind failed)."""
        super().startService()
        if not self.settings.enabled:
            return succeed(None)
        self.identities.load()
        endpoint = serverFromString(self.reactor, self.settings.endpoint)
        d = listen_past_stale_lock(lambda: endpoint.listen(self.site))

        def bound(port: Any) -> None:
            self.port = port
            self.log.info("ingest: the device API listens on {address}", address=address_text(port.getHost()))

        def refused(failure: Any) -> None:
            self.error = listen_refusal(failure)
            # (Twisted's CannotListenError ends its sentence with a dot: not before the ";")
            self.log.error("ingest: cannot listen on {endpoint}: {error}; GWE apps cannot write",
                           endpoint=self.settings.endpoint, error=self.error.rstrip("."))

        return d.addCallbacks(bound, refused)

    def stopService(self) -> Deferred[None]:
        """Stop listening and close the open connections: an idle one at once, one with a
        request in progress once that is answered (``Connection: close``; a write's answer
        comes once the journal holds it, or it is refused: it is not waited for here, the
        journal stops after). A keep-alive client's next request reaches the ingest that
        listens next, not this stopped one."""
        super().stopService()
        port, self.port = self.port, None
        self.site.close_connections()
        if port is None:
            return succeed(None)
        return maybeDeferred(port.stopListening).addCallback(lambda _: None)

    def snapshot(self) -> IngestSnapshot:
        """The ingest's state: listening, counters, last values held, long-polls waiting,
        whether the configuration turned it off, and the devices activated locally."""
        stats = self.resource.stats
        return IngestSnapshot(self.listening, self.error, stats.writes, stats.values, stats.unrouted, stats.refused,
                              stats.bad, len(self.values.values), self.values.waiting,
                              "" if self.settings.enabled else OFF, len(self.identities.devices))
