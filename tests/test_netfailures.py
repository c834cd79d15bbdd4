"""Network failures told as sentences (gateway/netfailures.py): a TLS failure with the clock not set."""

from __future__ import annotations

from OpenSSL import SSL
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import ResponseNeverReceived

from gateway.clockstep import CLOCK_SET_SINCE
from gateway.netfailures import describe

#: A TLS handshake that failed verification, as the HTTP client reports it.
UNVERIFIED = ResponseNeverReceived([Failure(SSL.Error([("SSL routines", "", "certificate verify failed")]))])


class ClockNotSetTests(SynchronousTestCase):
    """A gateway without a real-time clock at 1970: every server certificate is not valid yet."""

    def test_a_verify_failure_with_the_clock_not_set_says_so(self) -> None:
        """Before NTP sets the clock (1970), a failed verification is said to be the clock's
        doing, not a CA that does not vouch for the server (a user would go and change it)."""
        self.assertEqual(describe(UNVERIFIED, now=572136.0),
                         "the TLS connection failed (certificate verify failed): the gateway's clock says 1970, it "
                         "is not set yet (no real-time clock, and NTP has not set it), so the server's certificate "
                         "is not valid yet by it")

    def test_a_verify_failure_with_the_clock_set_or_unknown(self) -> None:
        """With the clock set, or its time not given, the usual sentence."""
        usual = ("the TLS connection failed (certificate verify failed: no CA trusted vouches for it, or it has "
                 "expired or is not valid yet); check the server's certificate and ca_file")
        self.assertEqual(describe(UNVERIFIED, now=CLOCK_SET_SINCE + 86400), usual)
        self.assertEqual(describe(UNVERIFIED), usual)
        self.assertEqual(describe(SSL.Error([("SSL routines", "", "wrong version number")]), now=0.0),
                         "the TLS connection failed (wrong version number); check the server's certificate and "
                         "ca_file")
