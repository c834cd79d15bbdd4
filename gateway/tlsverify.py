"""Client TLS that refuses a server certificate valid for no name, as it refuses a wrong name,
and that tells a certificate refused for the clock as that.

Twisted's ``optionsForClientTLS`` checks the server's certificate against the host name
with service-identity in its verify callback, but counts only service-identity's
``VerificationError`` (a name mismatch) as a failure. A certificate without any
subjectAltName makes service-identity raise ``CertificateError`` instead, which that
callback logs ("while verifying certificate") and then lets through: such a certificate,
signed by a trusted CA, was accepted for *any* host name (a private CA's device
certificate, say, could pass for the cloud broker). :class:`NameCheckingCreator` wraps a
connection creator and checks the name itself, failing on either error.

A certificate of the chain that is not valid yet or has expired by the gateway's clock
(OpenSSL's ``X509_V_ERR_CERT_NOT_YET_VALID``, ``X509_V_ERR_CERT_HAS_EXPIRED``) fails the
handshake with a :class:`~gateway.certwindow.CertificateTimeError`, which names the clock's
reading and the certificate's window, where OpenSSL says only "certificate verify failed".
Every TLS client of the gateway makes its connections through this creator.
"""

from __future__ import annotations

import ipaddress
import time
from typing import Any, Callable

from OpenSSL import SSL
from service_identity.exceptions import CertificateError, VerificationError
from service_identity.hazmat import DNS_ID, IPAddress_ID, ServiceID, verify_service_identity
from service_identity.pyopenssl import extract_patterns
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.certwindow import CertificateTimeError

_log = Logger()

#: OpenSSL's verification errors for a certificate outside its validity window
#: (``X509_V_ERR_CERT_NOT_YET_VALID``, ``X509_V_ERR_CERT_HAS_EXPIRED``).
TIME_ERRORS = frozenset({9, 10})


def service_id(hostname: str) -> ServiceID:
    """The identity a server certificate must carry for ``hostname``: an IP address's, or a
    DNS name's."""
    try:
        ipaddress.ip_address(hostname)
    except ValueError:
        return DNS_ID(hostname)
    return IPAddress_ID(hostname)


@implementer(IOpenSSLClientConnectionCreator)
class NameCheckingCreator:
    """Makes connections as ``creator`` does (its trust roots, client certificate, ALPN,
    server name indication), with a verify callback that fails the handshake when the
    server's certificate is not valid for ``hostname``, including when it names no host.

    A certificate refused for its validity window fails the handshake with a
    :class:`~gateway.certwindow.CertificateTimeError`.

    :param creator: the connection creator to wrap (``optionsForClientTLS``'s).
    :param hostname: the name the server's certificate must carry.
    """

    def __init__(self, creator: IOpenSSLClientConnectionCreator, hostname: str) -> None:
        self.creator = creator
        self.hostname = hostname

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        """The wrapped creator's connection, its verify callback replaced by the stricter one."""
        connection = self.creator.clientConnectionForTLS(tlsProtocol)
        connection.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT,
                              _verify_callback(tlsProtocol, service_id(self.hostname)))
        return connection


def _time_error(certificate: Any, depth: int) -> CertificateTimeError:
    """The error for ``certificate`` (pyOpenSSL's), refused at ``depth`` of the chain for its
    validity window. The clock's reading is the system's wall clock, ``time.time()``, not an
    injected clock's: OpenSSL judged the certificate by that one."""
    cert = certificate.to_cryptography()
    return CertificateTimeError(time.time(), cert.not_valid_before_utc.timestamp(), cert.not_valid_after_utc.timestamp(),
                                cert.subject.rfc4514_string(), depth)


def _verify_callback(tlsProtocol: Any, identity: ServiceID) -> Callable[[SSL.Connection, Any, int, int, int], bool]:
    """Twisted's verify callback (the chain as OpenSSL judged it; the leaf's name by
    service-identity, a failure told to ``tlsProtocol``), with ``CertificateError`` a failure too,
    and a certificate outside its validity window told as :class:`CertificateTimeError`."""
    protocol: list[Any] = [tlsProtocol]  # dropped after the leaf, as Twisted does (no cycle)

    def verify(connection: SSL.Connection, certificate: Any, error: int, depth: int, ok: int) -> bool:
        if not ok and error in TIME_ERRORS:
            if protocol:
                try:
                    protocol[0].failVerification(Failure(_time_error(certificate, depth)))
                except Exception:  # (an exception escaping an OpenSSL callback is lost: log it)
                    _log.failure("while telling the validity of the certificate of {name}", name=identity)
                protocol.clear()
            return False
        if depth != 0:
            return bool(ok)  # only the leaf carries the server's name
        result = bool(ok)
        try:
            verify_service_identity(extract_patterns(certificate), [identity], [])
        except (VerificationError, CertificateError):
            result = False
            if protocol:
                protocol[0].failVerification(Failure())
        except BaseException:  # an exception escaping an OpenSSL callback is lost: log it, refuse
            _log.failure("while verifying the certificate of {name}", name=identity)
            result = False
        protocol.clear()
        return result

    return verify
