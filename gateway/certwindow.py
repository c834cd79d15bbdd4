"""A server certificate refused because the gateway's clock is outside its validity: the
clock's reading and the certificate's window, told as the error every TLS client of the
gateway reports (MQTT links, the Exosite HTTP link, downloads, uploads, the fleet, the proxy
path).

OpenSSL says only ``certificate verify failed`` for a certificate that is not valid yet or
has expired, the same words as for one no trusted CA vouches for. A gateway without a
real-time clock boots at 1970 (or at a time it saved) until NTP steps its clock, and one whose
clock runs years ahead finds every certificate expired: the user must be told that it is the
clock. :mod:`gateway.tlsverify`'s verify callback sees OpenSSL's precise error and the
certificate, and fails the handshake with a :class:`CertificateTimeError`.

No OpenSSL import here: the describers of failures (:mod:`gateway.netfailures`) import it in
a gateway without TLS too.
"""

from __future__ import annotations

import time

from gateway.clockstep import unset_clock
from gateway.shown import escaped, shown


def utc_time(seconds: float) -> str:
    """``seconds`` since the epoch as ``2027-01-31 12:00:00 UTC``."""
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(seconds))


def utc_day(seconds: float) -> str:
    """The UTC day of ``seconds`` since the epoch: ``1970-01-01`` (a clock before 1970 reads 1970-01-01)."""
    return time.strftime("%Y-%m-%d", time.gmtime(max(seconds, 0.0)))


class CertificateTimeError(Exception):
    """A certificate of the server's chain is not valid at the time the gateway's clock reads:
    not valid yet, or expired.

    The message gives the clock's reading to the day only, so that it stays one sentence from
    attempt to attempt (a link logs a cause again only when it changes), and the
    certificate's window to the second.

    :param clock: the wall clock's time when it was judged (seconds since the epoch).
    :param not_before: when the certificate becomes valid.
    :param not_after: when it expires.
    :param subject: its subject (RFC 4514).
    :param depth: where it is in the chain: 0 the server's own, 1 its issuer ...
    """

    def __init__(self, clock: float, not_before: float, not_after: float, subject: str, depth: int) -> None:
        super().__init__(clock, not_before, not_after, subject, depth)
        self.clock = clock
        self.not_before = not_before
        self.not_after = not_after
        self.subject = subject
        self.depth = depth

    @property
    def expired(self) -> bool:
        """Whether it has expired by the clock (else it is not valid yet by it)."""
        return self.clock > self.not_after

    def window(self, server: str) -> str:
        """What was refused, and why: the certificate, its window and the clock's reading.

        :param server: how to name the server (``mqtt.example.com:8883``, ``the server``).
        """
        subject = shown(escaped(self.subject)) or "no subject"  # (the server's words: kept on one line)
        which = (f"the certificate of {server} ({subject})" if self.depth == 0
                 else f"a CA certificate in the chain of {server} ({subject}, depth {self.depth})")
        state = "has expired" if self.expired else "is not valid yet"
        return (f"{which} {state} by the gateway's clock: it is valid from "
                f"{utc_time(self.not_before)} to {utc_time(self.not_after)}, and the clock reads "
                f"{utc_day(self.clock)}")

    def remedy(self) -> str:
        """What to do about it: set the clock, or renew the certificate."""
        if not self.expired and unset_clock(self.clock) is not None:
            return "the clock is not set yet (no real-time clock, and NTP has not set it)"
        if self.expired:
            return ("if the clock is right the server needs a renewed certificate; if it is ahead, set it "
                    "(NTP)")
        return "if the clock is behind, set it (NTP); if it is right, the certificate is for a later time"

    def __str__(self) -> str:
        return f"TLS certificate verification failed: {self.window('the server')}; {self.remedy()}"


def waits_for_clock(problem: BaseException | None) -> bool:
    """Whether ``problem`` (or what it was raised from, or a reason it wraps: the HTTP
    client's ``ResponseNeverReceived``) is a server certificate not valid yet by a clock that
    is not set yet: a failure that only NTP setting the clock cures, and that no retry should
    count against its limit."""
    seen: list[BaseException] = []
    while problem is not None and problem not in seen:
        seen.append(problem)
        if isinstance(problem, CertificateTimeError):
            return not problem.expired and unset_clock(problem.clock) is not None
        for reason in getattr(problem, "reasons", None) or ():
            if waits_for_clock(getattr(reason, "value", reason)):
                return True
        problem = problem.__cause__
    return False

