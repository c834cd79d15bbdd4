"""AdminService: serves the admin API and status page on a unix socket and, optionally, on
loopback TCP with a bearer token; samples journal depths for the status page."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, inlineCallbacks, succeed
from twisted.internet.endpoints import UNIXServerEndpoint, serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.admin.history import DepthHistory, pick, stream_depth
from gateway.admin.interfaces import Backends
from gateway.blocking import in_reactor_threads
from gateway.clockstep import steady_seconds
from gateway.errors import GatewayError
from gateway.filelayer import makedirs
from gateway.readside import to_jsonable
from gateway.admin.settings import AdminSettings
from gateway.admin.token import load_or_create_token
from gateway.addresses import address_text
from gateway.lazysite import LazySite
from gateway.portholder import listen_refusal
from gateway.unixsocket import MAX_SOCKET_PATH, clear_stale_lock, lock_holder

if TYPE_CHECKING:  # the API, its router and twisted.web.server come with the first request (gateway.lazysite)
    from gateway.admin.api import AdminApi
    from gateway.closingsite import ClosingSite

#: A ``token=`` query value (the status page opened in a browser), up to the next ``&``, ``#``,
#: blank or quote of an access log line; the key however it is spelled: in any case (a slip
#: of the hand, whose value is the token all the same) and with any letter percent-encoded
#: (``%74oken=`` is ``token=`` to the router).
_TOKEN_QUERY = re.compile("([?&]" + "".join(f"(?:{c}|%{ord(c):x}|%{ord(c.upper()):x})" for c in "token")
                          + r'=)[^&#\s"]*', re.IGNORECASE)
#: The socket lock files this process holds (a second service here must not take one).
_HELD_LOCKS: set[str] = set()
#: The spool directories this process has cleared (once: a later tree may still be receiving
#: an upload that began under the one before it).
_CLEARED_SPOOLS: set[Path] = set()


def access_log_line(timestamp: str, request: Any) -> str:
    """twisted.web's combined access log line for ``request``, with the value of a ``?token=``
    (in the request's URI or its Referer) replaced by ``<redacted>``: the line goes to the
    gateway's log, and the bearer token must not (its file is 0600).

    :param timestamp: the time, as twisted.web formats it.
    :param request: the request that was answered.
    """
    from twisted.web.http import combinedLogFormatter

    return _TOKEN_QUERY.sub(r"\1<redacted>", combinedLogFormatter(timestamp, request))


def clear_spool(spool: Path) -> int:
    """Remove what a gateway that died left in the admin spool: bodies it was receiving
    (``.body-*``) and packages it was installing (``.install-*``) (blocking).

    :return: how many entries were removed.
    """
    try:
        entries = list(spool.iterdir())
    except FileNotFoundError:
        return 0
    for entry in entries:
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
    return len(entries)


def socket_path(settings: AdminSettings, state_dir: Path) -> Path:
    """Where the admin socket is: ``admin.socket``, or ``<state_dir>/run/admin.sock``."""
    return Path(settings.socket) if settings.socket else state_dir / "run" / "admin.sock"


def token_path(settings: AdminSettings, state_dir: Path) -> Path:
    """Where the TCP endpoint's token is: ``admin.token_file``, or ``<state_dir>/admin/token``."""
    return Path(settings.token_file) if settings.token_file else state_dir / "admin" / "token"


class AdminService(Service):
    """The ``admin`` service, last in the tree.

    :param settings: the ``admin`` section.
    :param state_dir: the gateway's state directory.
    :param reactor: listens (unix, TCP), schedules, runs blocking work in its thread pool.
    :param backends: what the API reads and acts through.
    :param blocking: runs a blocking callable off the reactor thread; default: the
        reactor's thread pool.
    :param history: journal depth samples to go on with (those of the service this one
        replaces when a configuration change rebuilds the tree, kept at this one's
        ``history_interval``); default: none yet.
    """

    name = "admin"  # type: ignore[assignment]
    log = Logger()

    def __init__(self, settings: AdminSettings, state_dir: Path, reactor: Any, backends: Backends,
                 blocking: Callable[[Callable[[], Any]], Deferred[Any]] | None = None,
                 history: DepthHistory | None = None) -> None:
        self.settings = settings
        self.reactor = reactor
        self.socket = socket_path(settings, state_dir)
        self.token_file = token_path(settings, state_dir)
        self.blocking = blocking if blocking is not None else in_reactor_threads(reactor)
        self.history = history.resized(settings.history_interval) if history is not None else \
            DepthHistory(interval=settings.history_interval)
        self.backends = backends
        self._spool = state_dir / "admin" / "spool"
        self._api: AdminApi | None = None
        self._ports: list[Any] = []
        self._sites: list[LazySite] = []  # one per listener, their connections closed at stop
        self._dir_fd: int | None = None
        self._held: str | None = None  # the socket's lock file, while this service holds it
        self._sampler = LoopingCall(self._sample)
        self._sampler.clock = reactor
        self.token: bytes | None = None

    @property
    def api(self) -> AdminApi:
        """The API's handlers, made (and imported) for the first request."""
        if self._api is None:
            from gateway.admin.api import AdminApi

            self._api = AdminApi(self.backends, self.settings, self.reactor, self.blocking, self._spool,
                                 self.history)
        return self._api

    def site(self, token: bytes | None) -> ClosingSite:
        """A site serving the API; with ``token``, every request must carry it.

        The listeners build it when their first connection comes (:class:`LazySite`); its
        connections are closed when the service stops (:meth:`stopService`).
        """
        from gateway.admin.request import bounded_request_factory
        from gateway.admin.router import BROWSER_HEADERS, Router
        from gateway.browserguard import BrowserGuard
        from gateway.closingsite import ClosingSite
        from gateway.fdreserve import DescriptorReserve

        request_factory = bounded_request_factory(self._spool, self.settings.max_upload_bytes, self.blocking, token)
        # On TCP (token), devices may reach it: it keeps the descriptor reserve from them; the unix
        # socket, the operator's way in, may use the reserve.
        guard = BrowserGuard("admin API", lambda: steady_seconds(self.reactor))
        site = ClosingSite(Router(self.api.routes(), token, guard), access_log_line, requestFactory=request_factory,
                           listener="admin API", reserve=DescriptorReserve() if token is not None else None,
                           refusal_headers=BROWSER_HEADERS)
        site.displayTracebacks = False
        site.noisy = False
        return site

    @inlineCallbacks
    def startService(self) -> Any:
        """Listen on the socket (and TCP, with its token), then start sampling."""
        Service.startService(self)
        if not self.settings.enabled:
            self.log.info("admin API disabled (admin.enabled: false)")
            return
        yield self.blocking(lambda: makedirs(str(self.socket.parent), 0o750))
        lock = f"{self.socket}.lock"
        if (yield self.blocking(lambda: clear_stale_lock(self.socket, _HELD_LOCKS))):
            self.log.info("removed the stale lock {lock} (and socket) of a gateway that is gone", lock=lock)
        site = LazySite(lambda: self.site(None), "Site")
        try:
            port = yield self._unix_endpoint().listen(site)
        except CannotListenError as exc:
            if exc.socketError != "Cannot acquire lock":
                raise
            raise GatewayError(f"admin: the socket {self.socket} is used by another gateway (pid"
                               f" {lock_holder(self.socket)}, {lock}): give each gateway its own admin.socket")
        self._sites.append(site)
        _HELD_LOCKS.add(lock)
        self._held = lock
        self._ports.append(port)
        self.log.info("admin API on unix:{path}", path=str(self.socket))
        if self._spool not in _CLEARED_SPOOLS:  # the socket is ours: no other gateway uses this spool
            _CLEARED_SPOOLS.add(self._spool)
            spool = self._spool
            left = yield self.blocking(lambda: clear_spool(spool))
            if left:
                self.log.info("removed {n} upload(s) left in {spool} by a gateway that stopped", n=left,
                              spool=str(spool))
        if self.settings.tcp:
            self.token = yield self.blocking(lambda: load_or_create_token(self.token_file))
            token = self.token
            site = LazySite(lambda: self.site(token), "Site")
            try:
                port = yield serverFromString(self.reactor, self.settings.tcp).listen(site)
            except CannotListenError:
                # (naming who holds the port: another gateway with the same admin.tcp, often)
                raise GatewayError(f"admin: {self.settings.tcp}: {listen_refusal(Failure())}") from None
            self._sites.append(site)
            self._ports.append(port)
            self.log.info("admin API on {address} (bearer token in {file})", address=address_text(port.getHost()),
                          file=str(self.token_file))
        if self.backends.readside is not None:
            self._sampler.start(self.settings.history_interval, now=True).addErrback(
                lambda f: self.log.failure("admin: journal depth sampling failed", f))

    def _unix_endpoint(self) -> UNIXServerEndpoint:
        mode = int(self.settings.socket_mode, 8)
        path = str(self.socket)
        if len(os.fsencode(path)) > MAX_SOCKET_PATH:
            # Too long for sun_path (deep test or state directories): bind through the
            # directory's descriptor instead, /proc/self/fd/N/admin.sock names the same file.
            self._dir_fd = os.open(self.socket.parent, os.O_RDONLY | os.O_DIRECTORY)
            path = f"/proc/self/fd/{self._dir_fd}/{self.socket.name}"
        # wantPID: a lock file beside the socket; a stale socket of a dead gateway is removed.
        return UNIXServerEndpoint(self.reactor, path, mode=mode, wantPID=True)

    def _sample(self) -> None:
        readside = self.backends.readside
        if readside is None:
            return
        streams = pick(to_jsonable(readside.journal()), "streams", default=[])
        self.history.sample(steady_seconds(self.reactor), [
            (str(pick(s, "name", default="?")), stream_depth(s))
            for s in streams])

    def stopService(self) -> Deferred[None]:
        """Stop sampling, end followed logs, close the listeners (the socket file goes) and
        the open connections: an idle one at once, one with a request in progress once that
        is answered (``Connection: close``), so that a keep-alive client's next request
        reaches the admin API that listens next, not this stopped one and the stopped
        services behind it."""
        Service.stopService(self)
        if self._sampler.running:
            self._sampler.stop()
        if self._api is not None:
            self._api.stop_followers()
        sites, self._sites = self._sites, []
        for site in sites:
            site.close_connections()
        ports, self._ports = self._ports, []
        if not ports:
            return succeed(None)
        d: Deferred[Any] = DeferredList([port.stopListening() for port in ports], consumeErrors=True)

        def close_dir(_: Any) -> None:
            if self._held is not None:
                _HELD_LOCKS.discard(self._held)
                self._held = None
            if self._dir_fd is not None:
                os.close(self._dir_fd)
                self._dir_fd = None

        return d.addCallback(close_dir)
