"""The HTTP client downloads use: treq over an Agent that verifies https hostnames."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from twisted.internet import ssl
from twisted.internet.defer import Deferred, succeed
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IBodyProducer, IResponse
from zope.interface import implementer

from gateway.updates.settings import DownloadSettings

if TYPE_CHECKING:
    from treq.client import HTTPClient
    from twisted.web.client import HTTPConnectionPool

_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)


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


def make_http_client(reactor: Any, settings: DownloadSettings) -> "HTTPClient":
    """Build the downloader's client: persistent connections, hostnames verified
    (service-identity through ``optionsForClientTLS``), trusting ``settings.ca_file`` when set.

    :param reactor: the reactor.
    :param settings: the download settings (``ca_file``, ``concurrency``).
    """
    from treq.client import HTTPClient
    from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool

    if settings.ca_file:
        pem = Path(settings.ca_file).read_bytes()
        certificates = [ssl.Certificate.loadPEM(block) for block in _PEM_CERT.findall(pem)]
        policy = BrowserLikePolicyForHTTPS(trustRoot=ssl.trustRootFromCertificates(certificates))
    else:
        policy = BrowserLikePolicyForHTTPS()
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = settings.concurrency
    client = HTTPClient(RawBytesAgent(Agent(reactor, contextFactory=policy, pool=pool)))
    client.connection_pool = pool  # type: ignore[attr-defined]
    return client


def close_connections(http: Any) -> "Deferred[None]":
    """Close the kept-alive connections of a client made by :func:`make_http_client`."""
    pool: "HTTPConnectionPool | None" = getattr(http, "connection_pool", None)
    if pool is None:
        return succeed(None)
    return pool.closeCachedConnections()


class LazyHTTPClient:
    """An HTTP client built on first use, so an idle gateway never imports treq and
    twisted.web.client (about 2.5 MB of its resident memory).

    :param build: makes the real client (e.g. :func:`make_http_client` with its arguments).
    """

    def __init__(self, build: Callable[[], Any]) -> None:
        self._build = build
        self._client: Any = None

    @property
    def connection_pool(self) -> Any:
        """The real client's pool, or ``None`` while it has not been built (nothing to close)."""
        return getattr(self._client, "connection_pool", None)

    def __getattr__(self, name: str) -> Any:
        if self._client is None:
            self._client = self._build()
        return getattr(self._client, name)


def lazy_http_client(reactor: Any, settings: DownloadSettings) -> LazyHTTPClient:
    """:func:`make_http_client`, built when the first download starts."""
    return LazyHTTPClient(lambda: make_http_client(reactor, settings))
