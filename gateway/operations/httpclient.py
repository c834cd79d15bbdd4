"""The HTTP client the operation services use: treq over an Agent that verifies https
hostnames (service-identity through ``optionsForClientTLS``), with kept-alive connections."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from treq.client import HTTPClient
from twisted.internet import ssl
from twisted.internet.defer import Deferred, succeed
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool

_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)


def make_http_client(reactor: Any, ca_file: str | None, per_host: int,
                     wrap: Callable[[Any], Any] | None = None) -> HTTPClient:
    """Build a client: persistent connections, hostnames verified, trusting ``ca_file`` when set.

    :param reactor: the reactor.
    :param ca_file: a PEM file of the CAs to trust instead of the system store, or None.
    :param per_host: connections kept alive per host (the service's concurrency).
    :param wrap: wraps the innermost agent (the downloader's keeps bodies byte-exact).
    """
    if ca_file:
        pem = Path(ca_file).read_bytes()
        certificates = [ssl.Certificate.loadPEM(block) for block in _PEM_CERT.findall(pem)]
        policy = BrowserLikePolicyForHTTPS(trustRoot=ssl.trustRootFromCertificates(certificates))
    else:
        policy = BrowserLikePolicyForHTTPS()
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = per_host
    agent: Any = Agent(reactor, contextFactory=policy, pool=pool)
    client = HTTPClient(wrap(agent) if wrap is not None else agent)
    client.connection_pool = pool  # type: ignore[attr-defined]
    return client


def close_connections(http: Any) -> "Deferred[None]":
    """Close the kept-alive connections of a client made by :func:`make_http_client`."""
    pool: HTTPConnectionPool | None = getattr(http, "connection_pool", None)
    if pool is None:
        return succeed(None)
    return pool.closeCachedConnections()
