"""The ``/metrics`` HTTP resource (twisted.web)."""

from __future__ import annotations

from typing import Callable

from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Request


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
