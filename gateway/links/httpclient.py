"""The HTTP client of an HTTP link: treq over an Agent that verifies hostnames, kept-alive
connections, through ``gateway.proxy`` when one is set (:mod:`gateway.httpproxy`).

treq and twisted.web.client are imported when the first HTTP link's client is made: a
gateway without HTTP links does without them (see docs/benchmarks.md, idle footprint).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from twisted.internet import ssl
from twisted.internet.defer import Deferred, succeed

from gateway.links.http_settings import HTTPLinkSettings
from gateway.proxysettings import ProxySettings

if TYPE_CHECKING:
    from treq.client import HTTPClient
    from twisted.web.client import HTTPConnectionPool

_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)


def make_link_client(reactor: Any, settings: HTTPLinkSettings, proxy: ProxySettings = ProxySettings()) -> HTTPClient:
    """A client for one link: https hostnames verified (service-identity through
    ``optionsForClientTLS``), trusting ``settings.ca_file`` when set; one kept-alive
    connection for the uplink and one per long-polled alias. Each TLS connection's server
    certificate goes to the listener :func:`on_server_certificate` sets.

    :param reactor: the reactor.
    :param settings: the link's settings.
    :param proxy: ``gateway.proxy``: the requests go through its proxy, when it has one.
    """
    from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool

    from gateway.links.peercert import PeerCertificatePolicy
    from gateway.treqclient import GatewayHTTPClient

    if settings.ca_file:
        pem = Path(settings.ca_file).read_bytes()
        certificates = [ssl.Certificate.loadPEM(block) for block in _PEM_CERT.findall(pem)]
        verifying = BrowserLikePolicyForHTTPS(trustRoot=ssl.trustRootFromCertificates(certificates))
    else:
        verifying = BrowserLikePolicyForHTTPS()
    policy = PeerCertificatePolicy(verifying)
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = 1 + len(settings.downlink)
    agent: Any = Agent(reactor, contextFactory=policy, pool=pool)
    if proxy.url:
        from gateway.httpproxy import proxied_agent

        agent = proxied_agent(reactor, proxy, agent, policy, pool)
    client = GatewayHTTPClient(agent)
    client.connection_pool = pool  # type: ignore[attr-defined]
    client.tls_policy = policy  # type: ignore[attr-defined]
    return client


def on_server_certificate(client: Any, listener: Callable[[Any], None]) -> None:
    """Tell ``listener`` the server's certificate (a ``cryptography`` certificate) of each TLS
    connection of a client made by :func:`make_link_client` once its handshake completes
    (other clients, ``StubTreq`` among them, have none to tell)."""
    policy = getattr(client, "tls_policy", None)
    if policy is not None:
        policy.on_certificate = listener


def close_connections(client: Any) -> Deferred[None]:
    """Close the kept-alive connections of a client made by :func:`make_link_client`."""
    pool: HTTPConnectionPool | None = getattr(client, "connection_pool", None)
    if pool is None:
        return succeed(None)
    return pool.closeCachedConnections()
