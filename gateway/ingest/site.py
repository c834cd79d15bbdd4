"""The ingest's ``Site``: imported by the first connection to the device API (gateway.lazysite)."""

from __future__ import annotations

from typing import Any

from twisted.web.server import Request

from gateway.closingsite import ClosingSite
from gateway.fdreserve import DescriptorReserve


class CappedBodyRequest(Request):
    """A request that keeps at most ``max_body`` bytes of its body and counts the rest.

    twisted.web keeps a whole body however long (in a temporary file) and, for a form
    content type, parses all of it into ``args`` on the reactor thread before the resource
    sees it: a 200 MB write took gigabytes of memory and stalled the gateway for most of a
    minute before its 413. Past ``max_body`` the bytes are dropped as they come; the
    resource answers 413 from :attr:`body_size`.

    :ivar max_body: the most body bytes kept (set by :class:`QuietSite`).
    :ivar body_size: the body's bytes received so far, kept or not.
    """

    max_body = 65536
    body_size = 0

    def gotLength(self, length: int | None) -> None:
        """Hold the body in memory when it can be kept, nowhere when it is too long already."""
        self.body_size = 0
        super().gotLength(0 if length is not None and length > self.max_body else length)

    def handleContentChunk(self, data: bytes) -> None:
        """Keep the chunk while the body is within ``max_body``; count it in any case."""
        self.body_size += len(data)
        if self.body_size <= self.max_body:
            super().handleContentChunk(data)
        elif self.content is not None and self.content.tell():
            self.content.seek(0)
            self.content.truncate()  # over the limit: nothing of it is parsed or kept


class QuietSite(ClosingSite):
    """A Site without an access log line per request (a write per second per app adds up),
    whose requests keep at most ``max_body`` bytes of a body (:class:`CappedBodyRequest`),
    are not parsed into ``args`` (the device API reads the body itself),
    and whose connections the ingest closes when it stops.

    :param resource: the device API.
    :param max_body: ``ingest.max_body``.
    :param timeout: seconds an idle connection stays open.
    :param reserve: the gateway's descriptor reserve, kept from the apps and devices
        (:class:`~gateway.httpchannels.ClosesChannels`); a :class:`DescriptorReserve` by default.
    """

    #: no "Starting factory <... object at 0x...>" / "Stopping factory ..." lines either (at
    #: the first request and at every stop): the ingest logs where it listens.
    noisy = False

    def __init__(self, resource: Any, max_body: int, timeout: float, reserve: DescriptorReserve | None = None) -> None:
        # The device API parses bodies itself (and answers 415 to any but a form): twisted.web
        # would parse a form into args again, and answer a multipart body it cannot parse with
        # a bare 400, closing the connection, before the resource saw it.
        super().__init__(resource, timeout=timeout, parsePOSTFormSubmission=False, listener="ingest",
                         reserve=reserve or DescriptorReserve())
        self.requestFactory: type[Request] = type("IngestRequest", (CappedBodyRequest,), {"max_body": max_body})
