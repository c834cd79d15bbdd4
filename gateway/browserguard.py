"""Refuses what a web page makes a browser send to the gateway's local HTTP listeners (the
ingest, the admin API, ``/metrics``): a cross-site request, told by the headers browsers add.

Any page the operator opens on the gateway (or through an SSH tunnel to it) can make the
browser send requests to ``127.0.0.1``: a form POST needs no CORS preflight, so a page could
activate serials on the ingest until ``ingest.max_devices`` refused the real devices. A
browser says where such a request comes from: ``Origin`` (the page's scheme://host:port, on
every POST and every cross-origin fetch) and ``Sec-Fetch-Site``. A request whose ``Origin``
is not the listener's own (the scheme it is served on and the request's ``Host``), or whose
``Sec-Fetch-Site`` is ``cross-site`` or ``same-site`` (another port of ``127.0.0.1`` is the
same site), is refused before anything is done. A top-level navigation (``GET`` or ``HEAD``
with ``Sec-Fetch-Mode: navigate``: a link followed, an address typed) passes whatever site it
comes from: a ``GET`` changes nothing here, the page it leaves cannot read the answer, and
framing is refused by ``X-Frame-Options``, so a link to the status page on another site's page
(a local Grafana on another port) opens it. A request without those headers (curl,
gmq clients, apps, a Prometheus) is not a browser's and passes: ``Host`` is not checked
against a list (containers reach the host by names such as ``host.containers.internal``).
"""

from __future__ import annotations

from typing import Any, Callable
from urllib.parse import urlsplit

from twisted.logger import Logger

from gateway.logthrottle import REFUSED_LOG_INTERVAL, LogThrottle, refused_since
from gateway.shown import shown

#: The start of the body of every refusal (the rest says why).
REFUSED = "cross-site browser requests are refused"
#: The ``Sec-Fetch-Site`` values of a request a page of another origin made.
_OTHER_SITES = ("cross-site", "same-site")
#: The methods of a top-level navigation that changes nothing (a form's ``POST`` navigates too).
_NAVIGATING_METHODS = (b"GET", b"HEAD")
#: The port of an origin that names none, by scheme.
_DEFAULT_PORTS = {"http": 80, "https": 443}
#: The attribute marking a request this guard refused (its access log line is the guard's).
_MARK = "cross_site_refused"


def origin_parts(text: str) -> tuple[str, str, int] | None:
    """``(scheme, host, port)`` of ``scheme://host[:port]`` (host in lower case, an IPv6
    address without its brackets), or None for anything else (``null``, a path, a bad port)."""
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname or parts.path or parts.query or parts.fragment \
            or parts.username is not None:
        return None
    return scheme, parts.hostname, port if port is not None else _DEFAULT_PORTS[scheme]


def cross_site(request: Any) -> str | None:
    """Why ``request`` (a ``twisted.web.http.Request``) is a cross-site browser request, or
    None when it is not one.

    :param request: the request, with its headers and ``isSecure()``.
    """
    if request.method in _NAVIGATING_METHODS and \
            (request.getHeader(b"sec-fetch-mode") or b"").decode("latin-1").strip().lower() == "navigate":
        return None  # (a link followed: the page it leaves reads nothing, and a GET changes nothing)
    fetch_site = (request.getHeader(b"sec-fetch-site") or b"").decode("latin-1").strip().lower()
    if fetch_site in _OTHER_SITES:
        return f"Sec-Fetch-Site: {fetch_site}"
    origins = request.requestHeaders.getRawHeaders(b"origin") or []
    if not origins:
        return None
    scheme = "https" if request.isSecure() else "http"
    host = (request.getHeader(b"host") or b"").decode("latin-1").strip()
    own = origin_parts(f"{scheme}://{host}") if host else None
    for raw in origins:
        text = raw.decode("latin-1").strip()
        if own is None or origin_parts(text) != own:
            where = f"{scheme}://{host}" if host else "a request without Host"
            return f"Origin {shown(text)} is not this listener's ({shown(where)})"
    return None


def refused_here(request: Any) -> bool:
    """Whether a :class:`BrowserGuard` refused ``request`` (its throttled line stands for the
    request's access log line)."""
    return bool(getattr(request, _MARK, False))


class BrowserGuard:
    """One listener's guard: says why a request is refused, and logs the refusals at most
    once per :data:`~gateway.logthrottle.REFUSED_LOG_INTERVAL` seconds.

    :param listener: the listener's name at the start of its log lines (``ingest``).
    :param now: the steady clock the log lines are counted on (``clockstep.steady_seconds``).
    """

    log = Logger()

    def __init__(self, listener: str, now: Callable[[], float]) -> None:
        self.listener = listener
        self._lines = LogThrottle(REFUSED_LOG_INTERVAL, now)

    def refusal(self, request: Any) -> str | None:
        """The one-line reason to answer ``request`` ``403`` with, doing nothing else, or None
        when it may go on. A refusal is logged (throttled) and marked on the request.

        :param request: the request, before anything is done for it.
        """
        why = cross_site(request)
        if why is None:
            return None
        setattr(request, _MARK, True)
        return self.refused(f"{request.method.decode('latin-1')} {shown(request.path.decode('latin-1'))}", why)

    def refused(self, what: str, why: str) -> str:
        """Note that ``what`` was refused for ``why`` (logged, throttled) and return the one-line
        reason to answer it with.

        :param what: what was refused, as the log line names it (``POST /apps/NAME/stop``).
        :param why: why, as :func:`cross_site` says it.
        """
        count = self._lines.note()
        if count is not None:
            self.log.warn("{listener}: cross-site browser request refused: {what}: {why} ({since})",
                          listener=self.listener, what=what, why=why, since=refused_since(count))
        return f"{REFUSED}: {why}"
