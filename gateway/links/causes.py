"""Why a link is down, as a sentence a user can act on: the ``cause`` in the link status.

Connection failures arrive as Python exceptions (``ConnectionRefusedError``, pyOpenSSL's
``Error([('SSL routines', '', 'certificate verify failed')])``, service-identity's
``VerificationError``...); :func:`describe` turns each into what happened, where, and,
when the usual remedy is a link setting, which one.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass

from OpenSSL import SSL
from service_identity.exceptions import CertificateError, VerificationError
from twisted.internet import error
from twisted.python.failure import Failure

from gateway.certwindow import CertificateTimeError
from gateway.addresses import host_port_text
from gateway.endpointstrings import client_host_port, split_description
from gateway.nameresolver import FAILURES
from gateway.netfailures import ProxyError, tls_reasons


@dataclass(frozen=True)
class Peer:
    """Where a link connects, for messages.

    :ivar address: ``host:port`` or a unix socket path, as configured.
    :ivar host: the host name or address (the path for unix sockets).
    :ivar tls: whether the link uses TLS.
    :ivar name: the name the server certificate must carry (TLS only).
    :ivar ca_file: the CA file the link trusts (``None``: the platform's CAs).
    :ivar unix: whether it is a unix socket (``address`` and ``host`` are then its path).
    """

    address: str
    host: str
    tls: bool = False
    name: str = ""
    ca_file: str | None = None
    unix: bool = False


def peer_of(endpoint: str, hostname: str | None = None, ca_file: str | None = None) -> Peer:
    """The :class:`Peer` of a link's endpoint string (``tls:host=H:port=P``, ``tcp:H:P``,
    ``tcp:host=H:port=P``, ``unix:path=P``...), its host and port read as the link connects to
    them (:func:`~gateway.endpointstrings.client_host_port`; ``?`` for one not written); an IPv6
    address (its colons escaped, ``tcp:host=\\:\\:1:port=P``) is shown as ``[::1]:P``."""
    args, named = split_description(endpoint)
    kind, positional = (args[0], args[1:]) if args else ("", [])
    if kind == "unix":
        path = named.get("path") or (positional[0] if positional else endpoint)
        return Peer(path, path, unix=True)
    host, port = client_host_port(args, named) or (named.get("host", ""), named.get("port", ""))
    host, port = host or "?", port or "?"
    tls = kind == "tls"
    address = host_port_text(host, port)
    return Peer(address, host, tls, (hostname or host) if tls else "", ca_file)


def _tls(exc: SSL.Error, peer: Peer) -> str:
    text = ", ".join(tls_reasons(exc) or [str(exc) or "TLS error"])
    lowered = text.lower()
    trusted = f"the CAs in {peer.ca_file}" if peer.ca_file else "the platform's CAs (set ca_file)"
    if "certificate verify failed" in lowered:
        return f"TLS certificate verification failed: {peer.address} sent a certificate that {trusted} do not vouch for"
    if "certificate required" in lowered:
        return f"{peer.address} requires a TLS client certificate: set cert_file and key_file"
    if "unknown ca" in lowered or "bad certificate" in lowered or "certificate unknown" in lowered \
            or "certificate revoked" in lowered or "certificate expired" in lowered:
        return f"{peer.address} refused the gateway's TLS client certificate ({text})"
    if "wrong version number" in lowered or "packet length too long" in lowered or "http request" in lowered:
        return f"TLS handshake with {peer.address} failed ({text}): is it a TLS port?"
    return f"TLS handshake with {peer.address} failed: {text}"


def _clock_remedy(exc: CertificateTimeError) -> str:
    """What to do about a certificate refused for the clock, and that the link keeps trying."""
    return f"{exc.remedy()}; the link tries again on its backoff and connects once the clock and the certificate agree"


def describe(reason: Failure | BaseException, peer: Peer, accepted: bool = False) -> str:
    """A sentence saying why the connection to ``peer`` failed or ended.

    :param reason: the failure (of a connection attempt, or the reason a connection was lost).
    :param accepted: whether the MQTT session had been accepted (CONNACK) before it ended.

    A server certificate refused for the clock (:class:`~gateway.certwindow.CertificateTimeError`)
    is told with the clock's reading and the certificate's validity window.
    """
    exc = reason.value if isinstance(reason, Failure) else reason
    where = peer.address
    setting = "the endpoint's path" if peer.unix else "the endpoint's host and port"
    if isinstance(exc, ProxyError):  # (it names the proxy, the server and the proxy's answer)
        return str(exc)
    if isinstance(exc, error.ConnectionRefusedError):
        return f"connection refused by {where}: nothing listens there (check {setting})"
    if peer.unix and isinstance(exc, error.ConnectError) and exc.osError == errno.ENOENT:
        return f"no socket at {where}: nothing listens there (check {setting})"
    if peer.unix and isinstance(exc, error.ConnectError) and exc.osError == errno.EACCES:
        return f"cannot connect to {where}: permission denied (may the gateway's user use that socket?)"
    if isinstance(exc, error.DNSLookupError):
        why = FAILURES.reason(peer.host) or f"DNS lookup failed for {peer.host}"
        return f"{why}: check the host name and the gateway's DNS"
    if isinstance(exc, (error.TimeoutError, error.TCPTimedOutError)):
        return f"no answer from {where}: connecting timed out (a firewall, or the host is down)"
    if isinstance(exc, error.NoRouteError):
        return f"no route to {where}: check the gateway's network"
    if isinstance(exc, CertificateTimeError):
        return f"TLS certificate verification failed: {exc.window(where)}; {_clock_remedy(exc)}"
    if isinstance(exc, CertificateError):
        return (f"TLS certificate verification failed: the certificate of {where} names no host (no "
                f"subjectAltName), so it is valid for none, not for {peer.name or peer.host}: the server needs "
                "a certificate that carries its name")
    if isinstance(exc, VerificationError):
        return (f"TLS certificate verification failed: the certificate of {where} is not valid for the name "
                f"{peer.name or peer.host} (set hostname to the name it carries)")
    if isinstance(exc, SSL.Error):
        return _tls(exc, peer)
    if isinstance(exc, (error.ConnectionDone, error.ConnectionLost)):
        if accepted:
            lost = "closed" if isinstance(exc, error.ConnectionDone) else "lost"
            return f"connection to {where} {lost}"
        return (f"{where} closed the connection before accepting the MQTT session "
                f"(is it an MQTT{' over TLS' if peer.tls else ''} port?)")
    message = str(exc) or type(exc).__name__
    if accepted:
        return f"connection to {where} lost: {message}"
    return f"cannot connect to {where}: {message}"
