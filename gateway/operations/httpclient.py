"""The HTTP client the operation services (updates, uploads, the fleet) use: treq over an
Agent that verifies https hostnames (service-identity through ``optionsForClientTLS``), with
kept-alive connections, through ``gateway.proxy`` when one is set (:mod:`gateway.httpproxy`),
built on first use (:class:`LazyHTTPClient`) so an idle gateway never imports treq and
twisted.web.client."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from twisted.internet import ssl
from twisted.internet.defer import Deferred, succeed
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from gateway.proxysettings import ProxySettings

if TYPE_CHECKING:
    from treq.client import HTTPClient
    from twisted.web.client import HTTPConnectionPool

__all__ = ["LazyHTTPClient", "close_connections", "lazy_http_client", "make_http_client"]

_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)


def _policy(ca_file: str | None) -> Any:
    """A browser-like TLS policy (hostnames verified) trusting ``ca_file``, or the system store."""
    from twisted.web.client import BrowserLikePolicyForHTTPS

    if not ca_file:
        return BrowserLikePolicyForHTTPS()
    pem = Path(ca_file).read_bytes()
    certificates = [ssl.Certificate.loadPEM(block) for block in _PEM_CERT.findall(pem)]
    return BrowserLikePolicyForHTTPS(trustRoot=ssl.trustRootFromCertificates(certificates))


@implementer(IPolicyForHTTPS)
class _PolicyPerServer:
    """A TLS policy that trusts other CAs for a few servers (``(host, port) -> policy``), and
    refuses a server certificate valid for no name, which Twisted's own policy lets through
    (:mod:`gateway.tlsverify`)."""

    def __init__(self, default: Any, servers: dict[tuple[str, int], Any]) -> None:
        self.default = default
        self.servers = servers

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        """The connection creator of the server's own policy, else the default one's, refusing
        a certificate valid for no name (:mod:`gateway.tlsverify`)."""
        from gateway.tlsverify import NameCheckingCreator  # (the first HTTPS connection)

        policy = self.servers.get((hostname.decode("ascii", "replace").lower(), port), self.default)
        return NameCheckingCreator(policy.creatorForNetloc(hostname, port), hostname.decode("ascii"))


def make_http_client(reactor: Any, ca_file: str | None, per_host: int,
                     wrap: Callable[[Any], Any] | None = None,
                     server_ca_files: Mapping[tuple[str, int], str] | None = None,
                     proxy: ProxySettings = ProxySettings()) -> "HTTPClient":
    """Build a client: persistent connections, hostnames verified, trusting ``ca_file`` when set.

    treq and twisted.web.client are imported here, not at module import.

    :param reactor: the reactor.
    :param ca_file: a PEM file of the CAs to trust instead of the system store, or None.
    :param per_host: connections kept alive per host (the service's concurrency).
    :param wrap: wraps the innermost agent (the downloader's keeps bodies byte-exact).
    :param server_ca_files: ``(host, port) -> PEM file`` trusted for that server instead
        (the fleet's DDI server, whose artifacts the downloads fetch).
    :param proxy: ``gateway.proxy``: the requests go through its proxy, when it has one.
    """
    from twisted.web.client import Agent, HTTPConnectionPool

    from gateway.treqclient import GatewayHTTPClient

    policy = _PolicyPerServer(_policy(ca_file), {(host.lower(), port): _policy(path)
                                                 for (host, port), path in (server_ca_files or {}).items()})
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = per_host
    agent: Any = Agent(reactor, contextFactory=policy, pool=pool)
    if proxy.url:
        from gateway.httpproxy import proxied_agent

        agent = proxied_agent(reactor, proxy, agent, policy, pool)
    client = GatewayHTTPClient(wrap(agent) if wrap is not None else agent)
    client.connection_pool = pool  # type: ignore[attr-defined]
    return client


def close_connections(http: Any) -> "Deferred[None]":
    """Close the kept-alive connections of a client made by :func:`make_http_client` (or a
    :class:`LazyHTTPClient`; nothing to close while it has not been built)."""
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


def lazy_http_client(reactor: Any, ca_file: str | None, per_host: int,
                     wrap: Callable[[Any], Any] | None = None,
                     server_ca_files: Mapping[tuple[str, int], str] | None = None,
                     proxy: ProxySettings = ProxySettings()) -> LazyHTTPClient:
    """:func:`make_http_client` with these arguments, built when the client is first used.

    :param reactor: the reactor.
    :param ca_file: a PEM file of the CAs to trust instead of the system store, or None.
    :param per_host: connections kept alive per host.
    :param wrap: wraps the innermost agent.
    :param server_ca_files: ``(host, port) -> PEM file`` trusted for that server instead.
    :param proxy: ``gateway.proxy``.
    """
    return LazyHTTPClient(lambda: make_http_client(reactor, ca_file, per_host, wrap, server_ca_files, proxy))
