"""Client endpoints for links: Twisted endpoint strings, plus ``tls:`` with files from config.

``tls:host=H:port=P`` connects over TCP and verifies the server's certificate for H (or
the link's ``hostname``) through service-identity, trusting ``ca_file`` (the platform's
CAs when unset) and presenting ``cert_file``/``key_file`` when given.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Callable

from twisted.internet import ssl
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import HostnameEndpoint, clientFromString, wrapClientTLS
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IStreamClientEndpoint
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.errors import LinkError
from gateway.links.settings import LinkSettings


def _tls_fields(description: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for part in description[len("tls:"):].split(":"):
        key, sep, value = part.partition("=")
        if not sep:
            raise LinkError(f"{description!r}: write tls:host=NAME:port=NUMBER")
        fields[key] = value
    unknown = set(fields) - {"host", "port", "timeout"}
    if unknown or "host" not in fields:
        raise LinkError(f"{description!r}: tls: takes host=, port= and timeout= (TLS files are link keys)")
    return fields


def tls_options(settings: LinkSettings, host: str) -> Any:
    """Client TLS options: hostname verification, CA file, client certificate.

    :raises LinkError: when a file cannot be read or parsed.
    """
    try:
        trust = ssl.Certificate.loadPEM(Path(settings.ca_file).read_bytes()) if settings.ca_file else None
        client = None
        if settings.cert_file:
            key = Path(settings.key_file or settings.cert_file).read_bytes()
            client = ssl.PrivateCertificate.loadPEM(Path(settings.cert_file).read_bytes() + b"\n" + key)
    except (OSError, ValueError, ssl.SSL.Error) as exc:
        raise LinkError(f"TLS files for the link: {exc}") from exc
    return ssl.optionsForClientTLS(settings.hostname or host, trustRoot=trust, clientCertificate=client)


def link_endpoint(reactor: Any, settings: LinkSettings) -> IStreamClientEndpoint:
    """The endpoint a link connects through.

    :raises LinkError: for an endpoint string Twisted cannot parse or unreadable TLS files.
    """
    description = settings.endpoint
    if description.startswith("tls:"):
        fields = _tls_fields(description)
        try:
            port = int(fields.get("port", "8883"))
            timeout = float(fields.get("timeout", "30"))
        except ValueError as exc:
            raise LinkError(f"{description!r}: {exc}") from None
        tcp = HostnameEndpoint(reactor, fields["host"], port, timeout=timeout)
        return wrapClientTLS(tls_options(settings, fields["host"]), tcp)
    try:
        return clientFromString(reactor, description)
    except (ValueError, TypeError, KeyError) as exc:
        raise LinkError(f"{description!r} is not a Twisted client endpoint: {exc}") from exc


@implementer(IStreamClientEndpoint)
class ReportingEndpoint:
    """An endpoint that tells ``on_failure`` why each connection attempt failed.

    ``ClientService`` only retries; the link shows the reason in its status.

    :param endpoint: the endpoint connections go through.
    :param on_failure: called with the failure of each attempt (not with cancellations).
    """

    def __init__(self, endpoint: IStreamClientEndpoint, on_failure: Callable[[Failure], None]) -> None:
        self.endpoint = endpoint
        self.on_failure = on_failure

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        """Connect through the wrapped endpoint, reporting a failure before passing it on."""
        d: Deferred[IProtocol] = self.endpoint.connect(protocolFactory)

        def failed(failure: Failure) -> Failure:
            if not failure.check(CancelledError):
                self.on_failure(failure)
            return failure

        return d.addErrback(failed)


def full_jitter_backoff(initial: float, factor: float, cap: float,
                        uniform: Callable[[float, float], float] = random.uniform) -> Callable[[int], float]:
    """A ``ClientService`` retry policy: a delay drawn from ``[0, min(cap, initial * factor**n)]``.

    Twisted's ``backoffPolicy`` only adds jitter on top of the exponential delay; full
    jitter (as in Kanto and AWS's advice) spreads a fleet's reconnects over the whole range.
    """

    def policy(attempt: int) -> float:
        ceiling = cap if attempt > 64 else min(cap, initial * factor ** attempt)
        return uniform(0.0, ceiling)

    return policy
