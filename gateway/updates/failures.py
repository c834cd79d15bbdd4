"""Network errors of a download, told as sentences a person can act on (never a ``Failure`` repr)."""

from __future__ import annotations

from twisted.internet import error as net
from twisted.python.failure import Failure
from twisted.web.http import PotentialDataLoss

#: Twisted wraps what went wrong in a list of Failures (``ResponseFailed.reasons`` and its kin).
_WRAPPED = "reasons"


def describe(problem: BaseException | Failure) -> str:
    """Say what went wrong on the network, briefly, without Python reprs.

    :param problem: an exception (or a Failure) from the HTTP client: ``ResponseFailed``,
        ``ResponseNeverReceived``, ``RequestTransmissionFailed`` (their wrapped reasons are
        told one by one), a connection error, a TLS error ...
    """
    value = problem.value if isinstance(problem, Failure) else problem
    reasons = getattr(value, _WRAPPED, None)
    if isinstance(reasons, list) and reasons:
        parts: list[str] = []
        for reason in reasons:
            text = describe(reason)
            if text not in parts:
                parts.append(text)
        return "; ".join(parts)
    if isinstance(value, (net.ConnectionDone, net.ConnectionLost)):
        return "the server closed the connection"
    if isinstance(value, PotentialDataLoss) or type(value).__name__ == "_DataLoss":
        return "the body ended before the length the server announced"
    if isinstance(value, net.ConnectionRefusedError):
        return "the server refused the connection (is it running, is the port right?)"
    if isinstance(value, net.DNSLookupError):
        return "the server's name could not be resolved (check the URL and the gateway's DNS)"
    if isinstance(value, (net.TimeoutError, net.TCPTimedOutError)):
        return "the connection timed out"
    if isinstance(value, net.NoRouteError):
        return "there is no route to the server (is the network up?)"
    if type(value).__module__.startswith("OpenSSL") or "SSL" in type(value).__name__:
        return f"the TLS connection failed ({_plain(value)}); check the server's certificate and ca_file"
    return _plain(value)


def _plain(value: BaseException) -> str:
    text = str(value).strip()
    if not text or text.startswith("[<") or "<twisted.python.failure.Failure" in text:
        return type(value).__name__
    return text
