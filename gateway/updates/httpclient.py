"""The HTTP client downloads use: treq over an Agent that verifies https hostnames."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from treq.client import HTTPClient
from twisted.internet import ssl
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool

from gateway.updates.settings import DownloadSettings

_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)


def make_http_client(reactor: Any, settings: DownloadSettings) -> HTTPClient:
    """Build the downloader's client: persistent connections, hostnames verified
    (service-identity through ``optionsForClientTLS``), trusting ``settings.ca_file`` when set.

    :param reactor: the reactor.
    :param settings: the download settings (``ca_file``, ``concurrency``).
    """
    if settings.ca_file:
        pem = Path(settings.ca_file).read_bytes()
        certificates = [ssl.Certificate.loadPEM(block) for block in _PEM_CERT.findall(pem)]
        policy = BrowserLikePolicyForHTTPS(trustRoot=ssl.trustRootFromCertificates(certificates))
    else:
        policy = BrowserLikePolicyForHTTPS()
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = settings.concurrency
    return HTTPClient(Agent(reactor, contextFactory=policy, pool=pool))
