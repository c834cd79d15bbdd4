"""A malformed request head is answered ``400`` (``505`` for an HTTP version other than 1.0
and 1.1) saying what is wrong, on every listener built on gateway.closingsite (the ingest, the
admin API, /metrics): twisted.web answered a bare ``400 Bad Request`` with no body."""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from tests import test_httpchannels

HOST = b"Host: gw\r\n"

#: A malformed head -> the status line and the reason its body gives.
MALFORMED = {
    b"GARBAGE\r\n\r\n": (b"400 Bad Request", b"malformed request line 'GARBAGE': it is METHOD TARGET HTTP/1.1"),
    b"GET / / HTTP/1.1\r\n\r\n": (b"400 Bad Request", b"malformed request line"),
    b"GET /\r\n\r\n": (b"505 HTTP Version Not Supported", b"no HTTP version in the request line (HTTP/0.9"),
    # one blank line before the request line is ignored (RFC 9112, section 2.2), a second not
    b"\r\n\r\nGET / HTTP/1.1\r\n" + HOST + b"\r\n": (
        b"400 Bad Request", b"more than one blank line before the request line (one is ignored)"),
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n": (b"505 HTTP Version Not Supported", b"HTTP/2 is not served here: send HTTP/1.1"),
    b"GET / HTTP/9.9\r\n" + HOST + b"\r\n": (b"505 HTTP Version Not Supported", b"'HTTP/9.9' is not served here"),
    b"GET /a\x00 HTTP/1.1\r\n" + HOST + b"\r\n": (b"400 Bad Request", b"the request target '/a\\x00' holds"),
    b"GET /\x80 HTTP/1.1\r\n" + HOST + b"\r\n": (b"400 Bad Request", b"the request target '/\\x80' holds"),
    b"GET /a\x7f HTTP/1.1\r\n" + HOST + b"\r\n": (b"400 Bad Request", b"the request target '/a\\x7f' holds"),
    b"GET / http/1.1\r\n\r\n": (b"400 Bad Request", b"malformed request line 'GET / http/1.1': it ends with HTTP/1.1"),
    b"GET * HTTP/1.1\r\n" + HOST + b"\r\n": (b"400 Bad Request", b"the target * is for OPTIONS only, not 'GET'"),
    b"G(T / HTTP/1.1\r\n\r\n": (b"400 Bad Request", b"'G(T' is no HTTP method"),
    b"GET / HTTP/1.1\r\nNoColon\r\n\r\n": (b"400 Bad Request", b"the header line 'NoColon' has no colon"),
    b"GET / HTTP/1.1\r\nX-A : 1\r\n\r\n": (b"400 Bad Request", b"'X-A ' is no header name"),
    b"GET / HTTP/1.1\r\nX-A: a\x00b\r\n\r\n": (b"400 Bad Request", b"the header X-A holds a NUL byte"),
    # a bare CR or LF in a value (Twisted refuses them too: it answered a bare 400)
    b"GET / HTTP/1.1\r\nX-A: a\rb\r\n\r\n": (b"400 Bad Request", b"the header X-A holds a CR byte"),
    b"GET / HTTP/1.1\r\nX-A: a\nb\r\n\r\n": (b"400 Bad Request", b"the header X-A holds an LF byte"),
    b"GET / HTTP/1.1\r\nX-A: a\r\n\t\rb\r\n\r\n": (b"400 Bad Request", b"the header X-A holds a CR byte"),
    b"POST / HTTP/1.1\r\nContent-Length: 3\n\r\n\r\nabc": (b"400 Bad Request", b"the header Content-Length holds an LF"),
    b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nabcde": (
        b"400 Bad Request", b"Content-Length given twice, or with Transfer-Encoding"),
    b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n": (b"400 Bad Request", b"Content-Length '-1' is not a number"),
    b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n": (
        b"400 Bad Request", b"Transfer-Encoding given twice, or with Content-Length"),
    b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n": (
        b"400 Bad Request", b"Transfer-Encoding 'gzip' is not taken: only chunked is"),
    # a folded header is read whole, its lines joined by a space, as Twisted reads it
    b"POST / HTTP/1.1\r\nContent-Length: 1\r\n 2\r\n\r\n": (b"400 Bad Request", b"Content-Length '1 2' is not"),
    b"POST / HTTP/1.1\r\nContent-Length:\r\n 3\r\nContent-Length: 3\r\n\r\nabc": (
        b"400 Bad Request", b"Content-Length given twice"),
    b"GET / HTTP/1.1\r\nX-A: a\r\n b\x00\r\n\r\n": (b"400 Bad Request", b"the header X-A holds a NUL byte"),
    b"GET / HTTP/1.1\r\n X-A: a\r\n\r\n": (
        b"400 Bad Request", b"the header line ' X-A: a' is folded (it begins with a space or tab) but follows no header"),
}

#: Heads Twisted takes, and the listeners serve as before.
WELL_FORMED = [b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
               b"\r\nGET /%ff HTTP/1.1\r\nX-A: 1\r\n  more\r\n\r\n",
               b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
               b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: identity\r\n\r\nabc",
               b"POST / HTTP/1.1\r\nContent-Length:\r\n 3\r\n\r\nabc",
               b"POST / HTTP/1.1\r\nTransfer-Encoding:\r\n\tchunked\r\nX-A: 1\r\n\r\n3\r\nabc\r\n0\r\n\r\n"]


def assert_refused(test: SynchronousTestCase, transport: Any, status: bytes, reason: bytes) -> None:
    """``transport`` got one answer, ``status``, whose plain-text body is one line starting with
    ``reason``, and is closing."""
    answer = transport.value()
    test.assertTrue(answer.startswith(b"HTTP/1.1 " + status + b"\r\n"), answer)
    test.assertEqual(answer.count(b"\r\n\r\n"), 1, answer)  # one answer
    test.assertIn(b"\r\nContent-Type: text/plain; charset=utf-8\r\n", answer)
    body = answer.split(b"\r\n\r\n", 1)[1]
    test.assertTrue(body.startswith(reason), body)
    test.assertEqual(body.count(b"\n"), 1, body)  # one line
    test.assertTrue(transport.disconnecting)


class MalformedHeadTests(SynchronousTestCase):
    """Each malformed head is answered once, in plain text saying why, and closed; the
    resource never sees it."""

    setUp = test_httpchannels.ClosingSiteTests.setUp
    connect = test_httpchannels.ClosingSiteTests.connect

    def test_each_is_answered_with_its_reason(self) -> None:
        for head, (status, reason) in MALFORMED.items():
            with self.subTest(head=head):
                channel, transport = self.connect()
                channel.dataReceived(head)
                assert_refused(self, transport, status, reason)
                self.assertEqual(self.resource.held, [])

    def test_well_formed_heads_are_served_as_before(self) -> None:
        """What Twisted takes is still taken: HTTP/1.0, a folded header, a blank line before
        the request line, a chunked body, a length; a ``Content-Length`` or ``Transfer-Encoding``
        folded onto a line of its own (the 400 said ``Content-Length '' is not a number``)."""
        for head in WELL_FORMED:
            with self.subTest(head=head):
                channel, transport = self.connect()
                channel.dataReceived(head)
                self.resource.answer()
                self.assertIn(b" 200 OK\r\n", transport.value())


class AbsoluteFormTests(SynchronousTestCase):
    """A request target in absolute-form (``GET http://gw:8090/path HTTP/1.1``), which a server
    must accept (RFC 9112, section 3.2.2), is served as its origin-form, with the host it names
    (RFC 9112, section 7.2): Twisted took the whole URL for the path (the ingest and
    ``/metrics`` answered ``404``)."""

    setUp = test_httpchannels.ClosingSiteTests.setUp
    connect = test_httpchannels.ClosingSiteTests.connect

    def served(self, head: bytes) -> Any:
        channel, transport = self.connect()
        channel.dataReceived(head)
        self.assertEqual(transport.value(), b"")  # (not refused)
        return self.resource.held.pop(0)

    def test_served_as_its_origin_form_with_its_host(self) -> None:
        for target, uri, host in ((b"http://gw:8090/onep:v1/stack/alias?a", b"/onep:v1/stack/alias?a", b"gw:8090"),
                                  (b"HTTPS://[::1]:9883/metrics", b"/metrics", b"[::1]:9883"),
                                  (b"http://gw?a", b"/?a", b"gw"),
                                  (b"http://gw", b"/", b"gw")):
            with self.subTest(target=target):
                request = self.served(b"GET " + target + b" HTTP/1.1\r\nHost: other\r\n\r\n")
                self.assertEqual((request.uri, request.path), (uri, uri.split(b"?")[0]))
                self.assertEqual(request.requestHeaders.getRawHeaders(b"host"), [host])

    def test_other_targets_are_left_as_they_are(self) -> None:
        """An origin-form target, a path holding ``://``, and a URL of another scheme or with a
        user (which no HTTP client sends to a server) go to the resource as before."""
        for target in (b"/a?u=http://b/c", b"/http://b", b"ftp://gw/a", b"http://user@gw/a"):
            with self.subTest(target=target):
                request = self.served(b"GET " + target + b" HTTP/1.1\r\nHost: gw\r\n\r\n")
                self.assertEqual((request.uri, request.requestHeaders.getRawHeaders(b"host")), (target, [b"gw"]))
