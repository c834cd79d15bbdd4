"""Network failures told as sentences (gateway/netfailures.py): a TLS failure for the clock."""

from __future__ import annotations

from OpenSSL import SSL
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import ResponseNeverReceived

from gateway.certwindow import CertificateTimeError
from gateway.netfailures import describe, describe_answer

#: A TLS handshake that failed verification, as the HTTP client reports it.
UNVERIFIED = ResponseNeverReceived([Failure(SSL.Error([("SSL routines", "", "certificate verify failed")]))])


class CertificateWindowTests(SynchronousTestCase):
    """A server certificate refused for the clock (gateway/tlsverify.py gives a
    CertificateTimeError), and one refused otherwise."""

    def test_a_certificate_not_valid_yet_with_the_clock_not_set(self) -> None:
        """Before NTP sets the clock (1970), the failure gives the clock's reading, the
        certificate's window and says the clock is not set, not that a CA does not vouch for
        the server (a user would go and change it)."""
        refused = CertificateTimeError(572136.0, 1798761600.0, 1830297600.0, "CN=m2.exosite.io", 0)
        self.assertEqual(describe(ResponseNeverReceived([Failure(refused)])),
                         "the TLS connection failed: the certificate of the server (CN=m2.exosite.io) is not valid "
                         "yet by the gateway's clock: it is valid from 2027-01-01 00:00:00 UTC to 2028-01-01 "
                         "00:00:00 UTC, and the clock reads 1970-01-07; the clock is not set yet (no real-time "
                         "clock, and NTP has not set it)")

    def test_the_subject_stays_on_one_line(self) -> None:
        """A server's certificate subject with a line break cannot break or forge a log line."""
        refused = CertificateTimeError(0.0, 1798761600.0, 1830297600.0, "CN=a\nlink cloud connected", 0)
        self.assertIn("(CN=a\\nlink cloud connected) is not valid yet", describe(refused))
        self.assertNotIn("\n", describe(refused))

    def test_another_verify_failure(self) -> None:
        """Any other failed verification is the usual sentence, whatever the clock."""
        self.assertEqual(describe(UNVERIFIED), "the TLS connection failed (certificate verify failed: no CA "
                                               "trusted vouches for it); check the server's certificate and ca_file")
        self.assertEqual(describe(SSL.Error([("SSL routines", "", "wrong version number")])),
                         "the TLS connection failed (wrong version number); check the server's certificate and "
                         "ca_file")


#: twisted.web's page for a method a resource does not serve.
TWISTED_501 = (b'\n<html>\n  <head><title>501 - Method Not Implemented</title></head>\n  <body>\n    <h1>Method Not '
               b'Implemented</h1>\n    <p>Your browser approached me (at /x) with the method "PUT".  I only allow the '
               b'method GET here.</p>\n  </body>\n</html>\n')
#: nginx's page for a 502 (a proxy in front of the cloud whose upstream is down).
NGINX_502 = (b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway</h1>"
             b"</center>\r\n<hr><center>nginx/1.22.1</center>\r\n</body>\r\n</html>\r\n")


class AnswerTests(SynchronousTestCase):
    """An HTTP error answer told on one line (describe_answer): what a link's log line and
    ``last_error``, a fleet's error and an upload's status quote of a server's words."""

    def test_an_html_page_is_told_by_its_title(self) -> None:
        """A proxy's or a web server's HTML error page is told by its title, without the status
        it repeats; its whole multi-line page went into the line."""
        self.assertEqual(describe_answer(502, b"Bad Gateway", NGINX_502), "HTTP 502: Bad Gateway")
        self.assertEqual(describe_answer(501, b"Not Implemented", TWISTED_501), "HTTP 501: Method Not Implemented")
        self.assertEqual(describe_answer(403, b"Forbidden", b"<!DOCTYPE html>\n<html><head><TITLE>\n  Access &amp;\n"
                                         b"  denied </TITLE></head><body>...</body></html>"),
                         "HTTP 403: Access & denied")

    def test_an_html_page_without_a_title_is_told_by_its_text(self) -> None:
        """A page without a title is told by its text, its tags, scripts and styles left out."""
        page = (b"<html><head><style>h1 { color: red }</style><script>alert('<b>')</script></head>\n<body>"
                b"<h1>503 Service\n Unavailable</h1><p>Back at <b>noon</b>.</p><unclosed</body></html>")
        self.assertEqual(describe_answer(503, b"Service Unavailable", page),
                         "HTTP 503: Service Unavailable Back at noon .")

    def test_other_bodies_are_told_by_their_start_on_one_line(self) -> None:
        """A text or JSON body is told by its first 200 characters, its blanks and line breaks
        collapsed and other control characters escaped: nothing a server sends can break or
        forge a log line."""
        self.assertEqual(describe_answer(404, b"Not Found", b"unknown\r\n  alias\n"), "HTTP 404: unknown alias")
        self.assertEqual(describe_answer(400, b"Bad Request", b"bad \x1b[31mred\x00 \xff"),
                         "HTTP 400: bad \\x1b[31mred\\x00 \ufffd")
        self.assertEqual(describe_answer(500, b"Internal Server Error", b"x\n" * 1000), "HTTP 500: " + "x " * 99 + "x")
        self.assertEqual(describe_answer(404, b"Not Found", b'{"message": "no such\\nthing"}'),
                         'HTTP 404: {"message": "no such\\nthing"}')

    def test_an_empty_body_is_told_by_the_reason_phrase(self) -> None:
        """An answer without words is told by its reason phrase (its control characters
        escaped), or by its status alone."""
        self.assertEqual(describe_answer(502, b"Bad Gateway", b" \r\n"), "HTTP 502: Bad Gateway")
        self.assertEqual(describe_answer(502, b"Bad\x1bGateway", b""), "HTTP 502: Bad\\x1bGateway")
        self.assertEqual(describe_answer(599, b"", b""), "HTTP 599")
        self.assertEqual(describe_answer(502, b"Bad Gateway", b"<html><head><title> </title></head></html>"),
                         "HTTP 502: Bad Gateway")

    def test_a_hostile_page_is_read_in_linear_time(self) -> None:
        """Tags never closed, titles never ended: an answer of 16 KiB of them costs little
        (what is looked at is bounded, and scanned without backtracking)."""
        import time

        start = time.process_time()
        for body in (b"<html>" + b"<a" * 8000, b"<html>" + b"<title" * 2700, b"<html>" + b"<script>" * 2000):
            self.assertEqual(describe_answer(502, b"Bad Gateway", body * 100), "HTTP 502: Bad Gateway")
        self.assertLess(time.process_time() - start, 1.0)
