"""The HTTP client downloads use: the operations' client
(:mod:`gateway.operations.httpclient`) with :class:`RawBytesAgent` innermost."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IBodyProducer, IResponse
from zope.interface import implementer

from gateway.operations.httpclient import LazyHTTPClient, close_connections
from gateway.operations.httpclient import lazy_http_client as shared_lazy_client
from gateway.operations.httpclient import make_http_client as shared_client
from gateway.proxysettings import ProxySettings
from gateway.updates.settings import DownloadSettings

if TYPE_CHECKING:
    from treq.client import HTTPClient

__all__ = ["LazyHTTPClient", "RawBytesAgent", "close_connections", "lazy_http_client", "make_http_client"]


@implementer(IAgent)
class RawBytesAgent:
    """Keeps artifacts byte-exact under treq's automatic gzip decoding.

    treq wraps every agent in a ``ContentDecoderAgent`` that asks for gzip and inflates
    responses marked ``Content-Encoding: gzip``. For artifacts that is wrong twice: the
    announced digests and sizes are of the stored bytes, and byte ranges of a re-encoded
    body do not resume anything. This agent (innermost) asks for ``identity`` again and hides
    a ``Content-Encoding`` the server sends anyway (file servers label ``.gz`` files so), so the
    bytes hashed and written are the bytes served.

    :param agent: the agent that sends the requests.
    """

    def __init__(self, agent: IAgent) -> None:
        self._agent = agent

    def request(self, method: bytes, uri: bytes, headers: Headers | None = None,
                bodyProducer: IBodyProducer | None = None) -> "Deferred[IResponse]":
        """Send with ``Accept-Encoding: identity``; strip ``Content-Encoding`` from the answer."""
        headers = headers.copy() if headers is not None else Headers()
        headers.setRawHeaders(b"accept-encoding", [b"identity"])

        def raw(response: IResponse) -> IResponse:
            encoding = response.headers.getRawHeaders(b"content-encoding")
            if encoding:
                response.headers.removeHeader(b"content-encoding")
                response.headers.setRawHeaders(b"x-original-content-encoding", encoding)
            return response

        return self._agent.request(method, uri, headers, bodyProducer).addCallback(raw)


def make_http_client(reactor: Any, settings: DownloadSettings,
                     server_ca_files: Mapping[tuple[str, int], str] | None = None,
                     proxy: ProxySettings = ProxySettings()) -> "HTTPClient":
    """Build the downloader's client (:func:`gateway.operations.httpclient.make_http_client`)
    with :class:`RawBytesAgent` innermost, trusting ``settings.ca_file`` when set.

    :param reactor: the reactor.
    :param settings: the download settings (``ca_file``, ``concurrency``).
    :param server_ca_files: ``(host, port) -> PEM file`` trusted for that server instead (the
        fleet's DDI server: its ``ca_file``).
    :param proxy: ``gateway.proxy``.
    """
    return shared_client(reactor, settings.ca_file, settings.concurrency, RawBytesAgent, server_ca_files, proxy)


def lazy_http_client(reactor: Any, settings: DownloadSettings,
                     server_ca_files: Mapping[tuple[str, int], str] | None = None,
                     proxy: ProxySettings = ProxySettings()) -> LazyHTTPClient:
    """:func:`make_http_client`, built when the first download starts."""
    return shared_lazy_client(reactor, settings.ca_file, settings.concurrency, RawBytesAgent, server_ca_files,
                              proxy)
