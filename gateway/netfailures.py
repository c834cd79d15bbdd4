"""Network errors (HTTP client, TCP, TLS) told as sentences a person can act on (never a ``Failure`` repr).

Used by downloads, uploads, the fleet's DDI client, the Exosite HTTP link and podman's event stream.
"""

from __future__ import annotations

from twisted.internet import error as net
from twisted.python.failure import Failure
from twisted.web.http import PotentialDataLoss

from gateway.clockstep import unset_clock

#: Twisted wraps what went wrong in a list of Failures (``ResponseFailed.reasons`` and its kin).
_WRAPPED = "reasons"


def describe(problem: BaseException | Failure, now: float | None = None) -> str:
    """Say what went wrong on the network, briefly, without Python reprs.

    :param problem: an exception (or a Failure) from the HTTP client: ``ResponseFailed``,
        ``ResponseNeverReceived``, ``RequestTransmissionFailed`` (their wrapped reasons are
        told one by one), a connection error, a TLS error ...
    :param now: the wall clock's time of the failure: a certificate that fails verification
        while the clock is not set yet (:func:`~gateway.clockstep.unset_clock`) is said to be
        the clock's doing (None: not known).
    """
    value = problem.value if isinstance(problem, Failure) else problem
    reasons = getattr(value, _WRAPPED, None)
    if isinstance(reasons, list) and reasons:
        parts: list[str] = []
        for reason in reasons:
            text = describe(reason, now)
            if text not in parts:
                parts.append(text)
        return "; ".join(parts)
    if isinstance(value, (net.ConnectionDone, net.ConnectionLost)):
        return "the server closed the connection"
    if isinstance(value, PotentialDataLoss) or type(value).__name__ == "_DataLoss":
        return "the body ended before the end the server announced: its length, or its last chunk"
    if isinstance(value, net.ConnectionRefusedError):
        return "the server refused the connection (is it running, is the port right?)"
    if isinstance(value, net.DNSLookupError):
        return "the server's name could not be resolved (check the URL and the gateway's DNS)"
    if isinstance(value, (net.TimeoutError, net.TCPTimedOutError)):
        return "the connection timed out"
    if isinstance(value, net.NoRouteError):
        return "there is no route to the server (is the network up?)"
    from service_identity.exceptions import CertificateError, VerificationError  # (loaded with TLS anyway)

    if isinstance(value, CertificateError):
        return ("the TLS connection failed: the server's certificate names no host (no subjectAltName), so it "
                "is valid for none; the server needs a certificate that carries its name")
    if isinstance(value, VerificationError):
        return ("the TLS connection failed: the server's certificate is not valid for the host name asked for "
                "(check the URL's host and the server's certificate)")
    if type(value).__module__.startswith("OpenSSL") or "SSL" in type(value).__name__:
        year = (unset_clock(now) if now is not None and "certificate verify failed" in ", ".join(tls_reasons(value))
                else None)
        if year is not None:
            return (f"the TLS connection failed (certificate verify failed): the gateway's clock says {year}, it is "
                    "not set yet (no real-time clock, and NTP has not set it), so the server's certificate is not "
                    "valid yet by it")
        return f"the TLS connection failed ({_tls_reasons(value)}); check the server's certificate and ca_file"
    return _plain(value)


def tls_reasons(value: BaseException) -> list[str]:
    """The reasons of a pyOpenSSL error (``Error([('SSL routines', '', 'certificate verify
    failed')])``: ``['certificate verify failed']``); none for another error."""
    items = value.args[0] if value.args and isinstance(value.args[0], list) else []
    return [str(item[-1]) for item in items if isinstance(item, tuple) and item]


def _tls_reasons(value: BaseException) -> str:
    """OpenSSL's reasons (``[('SSL routines', '', 'certificate verify failed')]``) in words."""
    text = ", ".join(tls_reasons(value) or [_plain(value)])
    if "certificate verify failed" in text:
        text += ": no CA trusted vouches for it, or it has expired or is not valid yet"
    return text


def _plain(value: BaseException) -> str:
    text = str(value).strip()
    if not text or text.startswith("[<") or "<twisted.python.failure.Failure" in text:
        return type(value).__name__
    return text
