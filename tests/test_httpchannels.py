"""HTTP connections a service closes when it stops: idle ones at once, busy ones after their
response (gateway.httpchannels, on the ingest's, the admin API's and the metrics' sites)."""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from gateway.closingsite import ClosingSite
from gateway.httpchannels import BODY_GRACE, BODY_RATE, HEAD_TIMEOUT

GET = b"GET / HTTP/1.1\r\nHost: gw\r\n\r\n"


class HeldResource(Resource):
    """Answers every request when the test says so (a write waiting for the journal)."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.held: list[Request] = []

    def render_GET(self, request: Request) -> Any:
        self.held.append(request)
        return NOT_DONE_YET

    render_POST = render_GET

    def answer(self) -> None:
        request = self.held.pop(0)
        request.setHeader(b"content-length", b"2")
        request.write(b"ok")
        request.finish()


class ClosingSiteTests(SynchronousTestCase):
    """What a keep-alive client sees when the site's service stops."""

    def setUp(self) -> None:
        self.resource = HeldResource()
        self.clock = Clock()
        self.site = ClosingSite(self.resource, reactor=self.clock)  # (idle timeouts off the real reactor)

    def connect(self) -> tuple[Any, StringTransport]:
        channel = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        transport = StringTransport()
        channel.makeConnection(transport)
        return channel, transport

    def test_an_idle_connection_is_closed_at_once(self) -> None:
        """A keep-alive connection between requests is closed when the service stops, so the
        client's next request opens a connection to the service listening now."""
        channel, transport = self.connect()
        channel.dataReceived(GET)
        self.resource.answer()
        self.assertFalse(transport.disconnecting)  # kept alive
        self.site.close_connections()
        self.assertTrue(transport.disconnecting)

    def test_an_answer_names_no_library_and_no_version(self) -> None:
        """Every answer says ``Server: gateway``: Twisted's said ``TwistedWeb/<version>`` to anyone
        on the network (the ingest's, the admin API's and the metrics' listeners share it)."""
        channel, transport = self.connect()
        channel.dataReceived(GET)
        self.resource.answer()
        head = transport.value().partition(b"\r\n\r\n")[0]
        self.assertIn(b"\r\nServer: gateway\r\n", head)
        self.assertNotIn(b"twisted", head.lower())
        channel, transport = self.connect()  # (a refusal the channel writes itself: a malformed head)
        channel.dataReceived(b"GET / HTTP/9.9\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 505 "), transport.value())
        self.assertIn(b"\r\nServer: gateway\r\n", transport.value().partition(b"\r\n\r\n")[0])

    def test_a_request_in_progress_is_answered_then_the_connection_closes(self) -> None:
        """The response in progress when the service stops is sent whole, saying
        ``Connection: close``, and then the connection closes (a write's 204 is not lost)."""
        channel, transport = self.connect()
        channel.dataReceived(GET)
        self.site.close_connections()
        self.assertFalse(transport.disconnecting)
        self.resource.answer()
        response = transport.value()
        self.assertIn(b"\r\nConnection: close\r\n", response)
        self.assertTrue(response.endswith(b"\r\n\r\nok"))
        self.assertTrue(transport.disconnecting)

    def test_a_request_arriving_while_closing_is_the_last(self) -> None:
        """A request whose head was still arriving when the service stopped is answered with
        ``Connection: close`` and is the connection's last."""
        channel, transport = self.connect()
        head = GET.index(b"\r\n") + 2  # the request line: the request has begun
        channel.dataReceived(GET[:head])
        self.site.close_connections()
        self.assertFalse(transport.disconnecting)
        channel.dataReceived(GET[head:])
        self.resource.answer()
        self.assertIn(b"\r\nConnection: close\r\n", transport.value())
        self.assertTrue(transport.disconnecting)

    def test_a_closed_connection_is_forgotten(self) -> None:
        """A connection the client closed is not kept (nor closed again)."""
        channel, transport = self.connect()
        self.assertEqual(len(self.site.open_channels), 1)
        channel.connectionLost(None)
        self.assertEqual(self.site.open_channels, set())


class HeadTimeoutTests(SynchronousTestCase):
    """A request's head (request line and headers) has HEAD_TIMEOUT seconds from its first
    byte; the idle timeout alone started again at every byte, so a client trickling its
    headers (slowloris) held the connection as long as it liked."""

    setUp = ClosingSiteTests.setUp
    connect = ClosingSiteTests.connect

    def test_a_trickled_head_is_answered_408_and_closed(self) -> None:
        """One byte every 10 s (well within the idle timeout) does not keep the connection:
        at HEAD_TIMEOUT it is answered 408, saying why, and closed."""
        channel, transport = self.connect()
        slow = b"GET / HTTP/1.1\r\nHost: gw\r\nX-Slow: " + b"a" * 100
        for i in range(int(HEAD_TIMEOUT // 10)):
            self.assertFalse(transport.disconnecting, i)
            channel.dataReceived(slow[i:i + 1])
            self.clock.advance(10)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 408 Request Timeout\r\n"), transport.value())
        self.assertIn(b"Connection: close", transport.value())
        self.assertTrue(transport.value().endswith(b"the request line and headers took over 30 s\n"))
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.resource.held, [])

    def test_the_408_line_names_the_client_as_an_address(self) -> None:
        """The log line names the client as an operator writes its address (``[::1]:40000``);
        it was Twisted's repr, ``IPv6Address(type='TCP', host='::1', port=40000, flowInfo=0,
        scopeID=0)``."""
        channel = self.site.buildProtocol(IPv6Address("TCP", "::1", 40000))
        transport = StringTransport(peerAddress=IPv6Address("TCP", "::1", 40000))
        channel.makeConnection(transport)
        channel.dataReceived(b"GET / HTTP/1.1\r\n")
        with capturedLogs() as logs:
            self.clock.advance(HEAD_TIMEOUT)
        self.assertIn("HTTP: a request head from [::1]:40000 took over 30 s: 408, closed",
                      [formatEvent(e) for e in logs])

    def test_the_clock_runs_per_request_and_not_for_bodies_answers_or_idle_time(self) -> None:
        """A head that comes in time stops its clock: a slow answer, a body (which has its own,
        BodyTimeoutTests) and idle time between keep-alive requests are not cut; the next
        request's head has its own."""
        channel, transport = self.connect()
        channel.dataReceived(GET[:5])
        self.clock.advance(HEAD_TIMEOUT - 1)
        channel.dataReceived(GET[5:])
        self.clock.advance(HEAD_TIMEOUT * 2)  # the answer takes long (a long-poll)
        self.resource.answer()
        self.clock.advance(HEAD_TIMEOUT - 1)  # idle between requests (within the idle timeout)
        channel.dataReceived(GET[:5])
        self.clock.advance(HEAD_TIMEOUT - 1)
        channel.dataReceived(GET[5:])
        self.resource.answer()
        self.assertEqual(transport.value().count(b"HTTP/1.1 200 OK"), 2)
        self.assertFalse(transport.disconnecting)
        post = b"POST / HTTP/1.1\r\nHost: gw\r\nContent-Length: 4\r\n\r\n"
        channel.dataReceived(post[:5])
        self.clock.advance(HEAD_TIMEOUT - 1)
        channel.dataReceived(post[5:])
        self.clock.advance(BODY_GRACE - 1)
        channel.dataReceived(b"body")
        self.resource.answer()
        self.assertEqual(transport.value().count(b"HTTP/1.1 200 OK"), 3)
        self.assertFalse(transport.disconnecting)
        self.assertNotIn(b"408", transport.value())

    def test_a_connection_lost_mid_head_stops_the_clock(self) -> None:
        """No timer is left behind by a client that went away mid-head."""
        channel, transport = self.connect()
        channel.dataReceived(GET[:5])
        channel.connectionLost(None)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_line_over_the_limit_is_answered_before_the_close(self) -> None:
        """A request line (a URL) or a header line over 16 KiB closed the connection without a
        word (Twisted's LineReceiver); it is answered 414 or 431, saying which, once."""
        for head, status in ((b"GET /" + b"a" * 20000, b"414 URI Too Long"),
                             (b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 20000, b"431 Request Header Fields Too Large")):
            channel, transport = self.connect()
            channel.dataReceived(head)
            channel.dataReceived(b"a" * 20000)
            self.assertTrue(transport.value().startswith(b"HTTP/1.1 " + status + b"\r\n"), transport.value()[:100])
            self.assertEqual(transport.value().count(b"HTTP/1.1"), 1)
            self.assertTrue(transport.value().endswith(b" is longer than 16384 bytes\n"), transport.value())
            self.assertTrue(transport.disconnecting)
        self.assertEqual(self.resource.held, [])


class BodyTimeoutTests(SynchronousTestCase):
    """A request's body has BODY_GRACE seconds from the end of its head, and one second more
    for each BODY_RATE bytes that arrive; then it is answered 408 and closed. The idle timeout
    alone started again at every byte, so a body trickled a byte a second held its connection
    for ever."""

    setUp = ClosingSiteTests.setUp
    connect = ClosingSiteTests.connect

    def test_a_trickled_body_is_answered_408_and_closed(self) -> None:
        """A byte a second, with a Content-Length or chunked: 408 once the body is late,
        saying why, in plain text, and closed; the request never reaches the resource."""
        for head, came in ((b"POST / HTTP/1.1\r\nHost: gw\r\nContent-Length: 1000\r\n\r\n", b"30"),
                           # (the chunk's size line is the body's too, on the wire)
                           (b"POST / HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n3e8\r\n", b"35")):
            channel, transport = self.connect()
            channel.dataReceived(head)
            for second in range(int(BODY_GRACE)):
                self.assertFalse(transport.disconnecting, second)
                channel.dataReceived(b"a")
                self.clock.advance(1)
            self.assertFalse(transport.disconnecting)  # (the 30 bytes that came give it 30/1024 s more)
            self.clock.advance(1)
            response = transport.value()
            self.assertTrue(response.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), response)
            self.assertIn(b"Content-Type: text/plain; charset=utf-8\r\n", response)
            self.assertIn(b"Connection: close\r\n", response)
            self.assertTrue(response.endswith(b"the request body came too slowly: " + came + b" bytes in 30 s (it has 30 s,"
                                              b" and 1 s more for each 1024 bytes that arrive)\n"), response)
            self.assertTrue(transport.disconnecting)
            channel.dataReceived(b"a" * 10)  # more of it: not read
            self.assertEqual(transport.value().count(b"HTTP/1.1"), 1)
            channel.connectionLost(None)
        self.assertEqual(self.resource.held, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_body_bytes_in_the_read_that_ends_the_head_count(self) -> None:
        """Bytes of the body that come in the same read as the end of its head count as any
        (they went uncounted: the clock gave them no time, and the 408 said 0 bytes)."""
        channel, transport = self.connect()
        channel.dataReceived(b"POST / HTTP/1.1\r\nHost: gw\r\nContent-Length: 4096\r\n\r\n" + b"a" * 2048)
        self.clock.advance(BODY_GRACE)
        self.assertFalse(transport.disconnecting)  # (the 2048 bytes gave it 2 s more)
        self.clock.advance(2)
        self.assertTrue(transport.value().endswith(b"the request body came too slowly: 2048 bytes in 32 s (it has 30 s,"
                                                   b" and 1 s more for each 1024 bytes that arrive)\n"), transport.value())
        channel.connectionLost(None)

    def test_the_408_line_names_the_client_and_what_came(self) -> None:
        channel = self.site.buildProtocol(IPv4Address("TCP", "192.0.2.7", 40000))
        channel.makeConnection(StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.7", 40000)))
        channel.dataReceived(b"POST / HTTP/1.1\r\nHost: gw\r\nContent-Length: 100\r\n\r\n")
        channel.dataReceived(b"a=1")
        with capturedLogs() as logs:
            self.clock.advance(BODY_GRACE)
            self.clock.advance(1)
        self.assertIn("HTTP: a request body from 192.0.2.7:40000 came too slowly (3 bytes in 30 s): 408, closed",
                      [formatEvent(e) for e in logs])

    def test_the_408_lines_name_the_listener(self) -> None:
        """Both 408 lines began ``HTTP:`` whichever listener took the connection (the ingest,
        the metrics or the admin API): they name the site's listener."""
        site = ClosingSite(self.resource, reactor=self.clock, listener="ingest")
        slow_head = site.buildProtocol(IPv4Address("TCP", "192.0.2.7", 40000))
        slow_head.makeConnection(StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.7", 40000)))
        slow_head.dataReceived(b"GET / HTTP/1.1\r\n")
        slow_body = site.buildProtocol(IPv4Address("TCP", "192.0.2.8", 40000))
        slow_body.makeConnection(StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.8", 40000)))
        slow_body.dataReceived(b"POST / HTTP/1.1\r\nHost: gw\r\nContent-Length: 100\r\n\r\n")
        slow_body.dataReceived(b"a=1")
        with capturedLogs() as logs:
            self.clock.advance(BODY_GRACE)
            self.clock.advance(1)
        self.assertEqual([formatEvent(e) for e in logs if "408" in formatEvent(e)], [
            "ingest: a request head from 192.0.2.7:40000 took over 30 s: 408, closed",
            "ingest: a request body from 192.0.2.8:40000 came too slowly (3 bytes in 30 s): 408, closed"])

    def test_a_slow_cellular_upload_of_10_mib_is_taken(self) -> None:
        """10 MiB at 10 KiB/s (17 minutes), stalling 50 s twice on the way: taken whole."""
        channel, transport = self.connect()
        size = 10 * 1024 * 1024
        channel.dataReceived(b"POST / HTTP/1.1\r\nHost: gw\r\nContent-Length: %d\r\n\r\n" % size)
        chunk = b"a" * 10240
        for second in range(size // len(chunk)):
            if second in (10, 600):
                self.clock.advance(50)  # (within the idle timeout, 60 s here)
            channel.dataReceived(chunk)
            self.clock.advance(1)
        self.assertEqual(len(self.resource.held), 1)
        self.assertEqual(self.resource.held[0].content.seek(0, 2), size)
        self.assertNotIn(b"408", transport.value())
        self.assertFalse(transport.disconnecting)

    def test_a_body_at_the_rate_is_taken_and_the_clock_runs_per_request(self) -> None:
        """A body coming at BODY_RATE after a stall of BODY_GRACE - 1 s is taken; the clock
        stops with it (a slow answer is not cut), and the next request's body has its own."""
        channel, transport = self.connect()
        for _ in range(2):
            channel.dataReceived(b"POST / HTTP/1.1\r\nHost: gw\r\nContent-Length: %d\r\n\r\n" % (BODY_RATE * 40))
            self.clock.advance(BODY_GRACE - 1)
            for _ in range(40):
                channel.dataReceived(b"a" * BODY_RATE)
                self.clock.advance(1)
            self.clock.advance(BODY_GRACE * 3)  # the answer takes long
            self.resource.answer()
        self.assertEqual(transport.value().count(b"HTTP/1.1 200 OK"), 2)
        self.assertFalse(transport.disconnecting)

    def test_a_connection_lost_mid_body_stops_the_clock(self) -> None:
        channel, transport = self.connect()
        channel.dataReceived(b"POST / HTTP/1.1\r\nHost: gw\r\nContent-Length: 4\r\n\r\nab")
        channel.connectionLost(None)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class HeadSizeTests(SynchronousTestCase):
    """A request's head over twisted.web's limits in all (its request line and headers over
    16 KiB together, or more than 500 header lines) is answered ``431``, saying which, and
    closed: twisted.web answered a bare ``400 Bad Request`` with no word of why."""

    setUp = ClosingSiteTests.setUp
    connect = ClosingSiteTests.connect

    def test_headers_over_16_kib_in_all_are_answered_431(self) -> None:
        channel, transport = self.connect()
        channel.dataReceived(b"GET / HTTP/1.1\r\nHost: gw\r\n"
                             + b"".join(b"X-%d: %s\r\n" % (i, b"a" * 1000) for i in range(20)) + b"\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"),
                        transport.value()[:100])
        self.assertEqual(transport.value().count(b"HTTP/1.1"), 1)
        self.assertTrue(transport.value().endswith(b"the request line and headers are over 16384 bytes\n"),
                        transport.value())
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.resource.held, [])

    def test_over_500_headers_are_answered_431(self) -> None:
        channel, transport = self.connect()
        channel.dataReceived(b"GET / HTTP/1.1\r\nHost: gw\r\n" + b"".join(b"X-%d: a\r\n" % i for i in range(600))
                             + b"\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"),
                        transport.value()[:100])
        self.assertEqual(transport.value().count(b"HTTP/1.1"), 1)
        self.assertTrue(transport.value().endswith(b"more than 500 header lines\n"), transport.value())
        self.assertTrue(transport.disconnecting)

    def test_the_limits_are_per_request(self) -> None:
        """Keep-alive requests each have the whole limit: 300 headers of 40 bytes, twice."""
        channel, transport = self.connect()
        head = b"GET / HTTP/1.1\r\nHost: gw\r\n" + b"".join(b"X-%03d: %s\r\n" % (i, b"a" * 32) for i in range(300))
        for _ in range(2):
            channel.dataReceived(head + b"\r\n")
            self.resource.answer()
        self.assertEqual(transport.value().count(b"HTTP/1.1 200 OK"), 2)
        self.assertFalse(transport.disconnecting)


class DescriptorReserveTests(SynchronousTestCase):
    """An HTTP listener that faces devices (the ingest, /metrics, the admin API on TCP) keeps
    the gateway's reserve of file descriptors as the MQTT listeners do (gateway.fdreserve):
    300 connections to the ingest of a gateway limited to 256 descriptors took them all
    (Twisted's ``EMFILE encountered``), the journal's and the broker's with them."""

    def setUp(self) -> None:
        from gateway.fdreserve import DescriptorReserve

        self.clock = Clock()
        self.lowest = [112]
        self.reserve = DescriptorReserve(lambda: 128, lambda: self.lowest[0])
        self.site = ClosingSite(HeldResource(), reactor=self.clock, listener="ingest", reserve=self.reserve)

    def test_closed_on_accept_while_the_reserve_is_reached(self) -> None:
        address = IPv4Address("TCP", "127.0.0.1", 40410)
        with capturedLogs() as logs:
            self.assertIsNone(self.site.buildProtocol(address))
            self.assertIsNone(self.site.buildProtocol(address))
            self.clock.advance(60)
            self.assertIsNone(self.site.buildProtocol(address))
        self.assertEqual([formatEvent(e) for e in logs], [
            "ingest: closing 127.0.0.1:40410: the gateway has fewer than 16 of its 128 file descriptors free (its"
            " limit, LimitNOFILE), kept for its journal, links and hosted programs (1 closed so far; logged at most"
            " once a minute)",
            "ingest: closing 127.0.0.1:40410: the gateway has fewer than 16 of its 128 file descriptors free (its"
            " limit, LimitNOFILE), kept for its journal, links and hosted programs (3 closed so far; logged at most"
            " once a minute)"])
        self.lowest[0] = 20
        self.assertIsNotNone(self.site.buildProtocol(address))

    def test_the_gateways_device_facing_sites_keep_it(self) -> None:
        """The ingest's and the metrics' factories keep the reserve; a site made without one
        (the admin API's on its unix socket, the operator's way in) may use it."""
        from gateway.ingest.site import QuietSite
        from gateway.telemetry.metricspage import MetricsFactory

        address = IPv4Address("TCP", "127.0.0.1", 40410)
        ingest = QuietSite(HeldResource(), 65536, 30.0, reserve=self.reserve)
        metrics = MetricsFactory(lambda accept: (b"", "text/plain"), self.clock, reserve=self.reserve)
        with capturedLogs():
            self.assertIsNone(ingest.buildProtocol(address))
            self.assertIsNone(metrics.buildProtocol(address))
        self.assertIsNotNone(ClosingSite(HeldResource(), reactor=self.clock).buildProtocol(address))
        self.assertIsNotNone(QuietSite(HeldResource(), 65536, 30.0).reserve_refusals)
        self.assertIsNotNone(MetricsFactory(lambda accept: (b"", "text/plain"), self.clock).reserve_refusals)


class ExpectContinueTests(SynchronousTestCase):
    """A request that declares a body over its site's ``max_body`` and asks ``Expect:
    100-continue`` is answered 413 at once, instead of ``100 Continue`` (after which the
    client sent the whole body, up to 256 MiB to the admin API, for a 413 at its end)."""

    def setUp(self) -> None:
        from twisted.web.server import Request as WebRequest

        self.clock = Clock()
        self.resource = HeldResource()
        self.site = ClosingSite(self.resource, reactor=self.clock,
                                requestFactory=type("Capped", (WebRequest,), {"max_body": 1000}))

    connect = ClosingSiteTests.connect

    def test_a_body_declared_too_long_is_refused_before_it_is_sent(self) -> None:
        channel, transport = self.connect()
        channel.dataReceived(b"POST / HTTP/1.1\r\nHost: gw\r\nExpect: 100-continue\r\nContent-Length: 1001\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 413 Content Too Large\r\n"), transport.value())
        self.assertNotIn(b"100 Continue", transport.value())
        self.assertTrue(transport.value().endswith(b"the body would be 1001 bytes; at most 1000 are taken\n"))
        self.assertTrue(transport.disconnecting)
        channel.dataReceived(b"a" * 1001)  # sent all the same: dropped
        self.assertEqual(transport.value().count(b"HTTP/1.1"), 1)

    def test_a_body_within_the_limit_is_continued(self) -> None:
        channel, transport = self.connect()
        channel.dataReceived(b"POST / HTTP/1.1\r\nHost: gw\r\nExpect: 100-continue\r\nContent-Length: 1000\r\n\r\n")
        self.assertEqual(transport.value(), b"HTTP/1.1 100 Continue\r\n\r\n")
        self.assertFalse(transport.disconnecting)
