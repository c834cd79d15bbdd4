"""The certificates the gateway uses: when each expires, read once from its PEM file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gateway.clockstep import CLOCK_SET_SINCE

#: Seconds in a day, for days-left figures.
DAY = 86400.0


@dataclass(frozen=True)
class CertificateInfo:
    """One certificate as read from its file.

    :param role: what it is for, e.g. ``broker listener tls`` or ``link cloud client``.
    :param path: the PEM file.
    :param subject: its subject (RFC 4514 form), or ``""`` when it could not be read.
    :param not_after: when it expires (seconds since the epoch), or ``None`` when unreadable.
    :param error: why it could not be read, or ``""``.
    """

    role: str
    path: str
    subject: str
    not_after: float | None
    error: str = ""


@dataclass(frozen=True)
class CertificateSnapshot:
    """A certificate and the days it has left at the moment of the snapshot.

    :param role: what it is for.
    :param path: the PEM file (``""`` for a peer's certificate seen on a connection).
    :param subject: its subject.
    :param not_after: when it expires (seconds since the epoch), or ``None`` when unknown.
    :param days_left: days until then (negative once expired), or ``None`` when unknown (the
        certificate unreadable, or the gateway's clock not set yet).
    :param error: why it could not be read, or ``""``.
    """

    role: str
    path: str
    subject: str
    not_after: float | None
    days_left: float | None
    error: str = ""


def read_certificate(role: str, path: str) -> CertificateInfo:
    """Read the first certificate of a PEM file (blocking: call it at start-up, not per snapshot).

    Never raises: an unreadable file gives an info with ``error`` set, so a report says so.
    """
    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificate(Path(path).read_bytes())
    except (OSError, ValueError) as exc:
        return CertificateInfo(role, path, "", None, str(exc) or type(exc).__name__)
    return CertificateInfo(role, path, cert.subject.rfc4514_string(), cert.not_valid_after_utc.timestamp())


def certificate_from_x509(role: str, cert: object) -> CertificateInfo:
    """Info about a pyOpenSSL or ``cryptography`` certificate object (a TLS peer's)."""
    to_cryptography = getattr(cert, "to_cryptography", None)
    if to_cryptography is not None:
        cert = to_cryptography()
    try:
        return CertificateInfo(role, "", cert.subject.rfc4514_string(),  # type: ignore[attr-defined]
                               cert.not_valid_after_utc.timestamp())  # type: ignore[attr-defined]
    except (AttributeError, ValueError) as exc:
        return CertificateInfo(role, "", "", None, str(exc))


def at(info: CertificateInfo, now: float) -> CertificateSnapshot:
    """``info`` with the days left at ``now`` (seconds since the epoch): none while the clock
    is not set yet (before :data:`~gateway.clockstep.CLOCK_SET_SINCE`: a gateway without a
    real-time clock at 1970, before NTP), when they would be decades too many."""
    days = (info.not_after - now) / DAY if info.not_after is not None and now >= CLOCK_SET_SINCE else None
    return CertificateSnapshot(info.role, info.path, info.subject, info.not_after, days, info.error)
