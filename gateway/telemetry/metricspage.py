"""``GET /metrics`` over HTTP, served with ``twisted.web.http`` alone.

twisted.web.server (resources, templates) would add about 2 MB to every idle gateway for
one fixed path; prometheus-client is not imported here either: the first scrape loads it.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web import http

from gateway.browserguard import BrowserGuard
from gateway.clockstep import steady_seconds
from gateway.fdreserve import DescriptorReserve
from gateway.httpaccesslog import DatedWhenLogged
from gateway.httpchannels import ClosesChannels

#: ``(accept header) -> (body, content type)``.
Renderer = Callable[[str], "tuple[bytes, str]"]
log = Logger()


class MetricsRequest(http.Request):
    """One request: ``GET``/``HEAD /metrics`` gets the page for its ``Accept`` header;
    another path 404, another method 405; a cross-site browser request, whatever its path
    and method, 403 (:mod:`gateway.browserguard`)."""

    render_page: Renderer  # set on the subclass :class:`MetricsFactory` makes
    guard: BrowserGuard  # ... and the guard of its listener

    def gotLength(self, length: int | None) -> None:
        """The page takes no body: hold none (an empty in-memory one)."""
        super().gotLength(0)

    def handleContentChunk(self, data: bytes) -> None:
        """Drop a body's bytes as they come: twisted.web kept them all and, for a form
        content type, parsed them whole on the reactor thread before the 405."""

    def process(self) -> None:
        """Answer the request and finish it."""
        refusal = self.guard.refusal(self)
        if refusal is not None:
            self._answer(http.FORBIDDEN, f"{refusal}\n".encode(), "text/plain; charset=utf-8")
            return
        path = self.path.split(b"?", 1)[0]
        if path != b"/metrics":
            self._answer(http.NOT_FOUND, b"not found: try /metrics\n", "text/plain; charset=utf-8")
            return
        if self.method not in (b"GET", b"HEAD"):
            self.setHeader(b"allow", b"GET, HEAD")
            self._answer(http.NOT_ALLOWED, b"GET or HEAD only\n", "text/plain; charset=utf-8")
            return
        accept = (self.getHeader(b"accept") or b"").decode("latin-1")
        try:
            body, content_type = self.render_page(accept)
        except Exception as exc:  # a scrape failure is the scraper's to see, with the reason
            log.failure("metrics page failed")
            self._answer(http.INTERNAL_SERVER_ERROR, f"metrics failed: {exc}\n".encode(), "text/plain; charset=utf-8")
            return
        self._answer(http.OK, body, content_type)

    def _answer(self, code: int, body: bytes, content_type: str) -> None:
        self.setResponseCode(code)
        self.setHeader(b"content-type", content_type.encode("latin-1"))
        self.setHeader(b"content-length", str(len(body)).encode())
        if self.method != b"HEAD":
            self.write(body)
        self.finish()


class MetricsFactory(DatedWhenLogged, ClosesChannels, http.HTTPFactory):
    """HTTP connections whose requests are :class:`MetricsRequest`; no access log (a scrape
    every few seconds would fill it), and so no timer keeping its date; the telemetry service
    closes them when it stops (:meth:`close_connections`). It keeps the gateway's descriptor
    reserve from scrapers (:class:`~gateway.httpchannels.ClosesChannels`).

    :param render: builds the page.
    :param reactor: times out idle connections; default: the global reactor.
    :param reserve: the descriptor reserve; a :class:`DescriptorReserve` by default.
    """

    noisy = False

    def __init__(self, render: Renderer, reactor: IReactorTime | None = None,
                 reserve: DescriptorReserve | None = None) -> None:
        super().__init__(reactor=reactor, listener="metrics", reserve=reserve or DescriptorReserve())
        guard = BrowserGuard("metrics", lambda: steady_seconds(self.reactor))
        self.request_class = type("BoundMetricsRequest", (MetricsRequest,),
                                  {"render_page": staticmethod(render), "guard": guard})

    def buildProtocol(self, addr: Any) -> Any:
        """An HTTP channel making this factory's requests (``None`` to keep the descriptor reserve)."""
        channel = super().buildProtocol(addr)
        if channel is not None:
            channel.requestFactory = self.request_class
        return channel


def listen_metrics(reactor: Any, endpoint: str, factory: MetricsFactory) -> Any:
    """Serve ``/metrics`` with ``factory`` on a Twisted server endpoint string; a Deferred
    firing with the port.

    :raises ValueError: for an endpoint string Twisted cannot parse.
    """
    from twisted.internet.endpoints import serverFromString

    from gateway.unixsocket import listen_past_stale_lock

    server = serverFromString(reactor, endpoint)
    return listen_past_stale_lock(lambda: server.listen(factory))
