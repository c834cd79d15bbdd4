"""The ``/metrics`` HTTP resource (twisted.web) and its endpoint.

prometheus-client is not imported here: it is loaded by the first scrape.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Request

#: ``(accept header) -> (body, content type)``.
Renderer = Callable[[str], "tuple[bytes, str]"]


class MetricsResource(Resource):
    """``GET /metrics``: the page ``render`` builds for the request's ``Accept`` header.

    :param render: ``(accept header) -> (body, content type)``.
    """

    isLeaf = True
    log = Logger()

    def __init__(self, render: Callable[[str], tuple[bytes, str]]) -> None:
        super().__init__()
        self.render_page = render

    def render_GET(self, request: Request) -> bytes:
        """The metrics, in the format the client accepts."""
        accept = (request.getHeader("accept") or "")
        try:
            body, content_type = self.render_page(accept)
        except Exception as exc:  # a scrape failure is the scraper's to see, with the reason
            self.log.failure("metrics page failed")
            request.setResponseCode(500)
            request.setHeader("content-type", "text/plain; charset=utf-8")
            return f"metrics failed: {exc}\n".encode()
        request.setHeader("content-type", content_type)
        return body


def listen_metrics(reactor: Any, endpoint: str, render: Renderer) -> Any:
    """Serve ``GET /metrics`` on a Twisted server endpoint string; a Deferred firing with the port.

    :raises ValueError: for an endpoint string Twisted cannot parse.
    """
    from twisted.internet.endpoints import serverFromString
    from twisted.web.server import Site

    root = Resource()
    root.putChild(b"metrics", MetricsResource(render))
    site = Site(root)
    site.displayTracebacks = False
    site.noisy = False
    return serverFromString(reactor, endpoint).listen(site)
