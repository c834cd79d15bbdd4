"""The server certificate of an HTTP link's TLS connections, told once each handshake completes.

An MQTT link reads its server's certificate from its one connection; an HTTP link's
connections belong to treq's pool, so its TLS policy wraps the usual one and asks each new
connection's ``SSL.Connection`` for the peer's certificate when its handshake is done
(only after Twisted's own verification accepted it: a refused certificate never completes
a handshake).

Imported by :func:`gateway.links.httpclient.make_link_client` only (``twisted.web.iweb``
stays out of a gateway without HTTP links).
"""

from __future__ import annotations

from typing import Any, Callable

from OpenSSL import SSL
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from gateway.tlsverify import NameCheckingCreator

#: Told the server's certificate (a ``cryptography`` certificate) of each completed handshake.
CertificateListener = Callable[[Any], None]


@implementer(IOpenSSLClientConnectionCreator)
class _RecordingCreator:
    """A connection creator that makes connections as ``creator`` does and reports the
    server's certificate once a handshake completes."""

    def __init__(self, creator: IOpenSSLClientConnectionCreator, policy: PeerCertificatePolicy) -> None:
        self.creator = creator
        self.policy = policy

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        """The wrapped creator's connection, with an info callback of its own (Twisted sets
        none: it verifies in the verify callback)."""
        connection = self.creator.clientConnectionForTLS(tlsProtocol)
        connection.set_info_callback(self._info)
        return connection

    def _info(self, connection: SSL.Connection, where: int, ret: int) -> None:
        if where & SSL.SSL_CB_HANDSHAKE_DONE:
            certificate = connection.get_peer_certificate(as_cryptography=True)
            if certificate is not None and self.policy.on_certificate is not None:
                self.policy.on_certificate(certificate)


@implementer(IPolicyForHTTPS)
class PeerCertificatePolicy:
    """A TLS policy for an ``Agent``: ``policy``'s connections (its verification, the
    server's name checked more strictly), each telling ``on_certificate`` the server's certificate once its handshake completes.

    :param policy: the policy that makes and verifies the connections
        (``BrowserLikePolicyForHTTPS``).
    """

    def __init__(self, policy: IPolicyForHTTPS) -> None:
        self.policy = policy
        #: Told of each server certificate; set by the link that owns the client.
        self.on_certificate: CertificateListener | None = None

    def creatorForNetloc(self, hostname: bytes, port: int) -> IOpenSSLClientConnectionCreator:
        """The wrapped policy's creator for ``hostname:port``, reporting certificates, and
        refusing one valid for no name (:mod:`gateway.tlsverify`)."""
        creator = NameCheckingCreator(self.policy.creatorForNetloc(hostname, port), hostname.decode("ascii"))
        return _RecordingCreator(creator, self)
