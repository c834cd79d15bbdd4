"""HTTP connections a service closes when it stops: idle ones at once, busy ones after their
response (gateway.httpchannels, on the ingest's, the admin API's and the metrics' sites)."""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from gateway.closingsite import ClosingSite

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

    def answer(self) -> None:
        request = self.held.pop(0)
        request.setHeader(b"content-length", b"2")
        request.write(b"ok")
        request.finish()


class ClosingSiteTests(SynchronousTestCase):
    """What a keep-alive client sees when the site's service stops."""

    def setUp(self) -> None:
        self.resource = HeldResource()
        self.site = ClosingSite(self.resource, reactor=Clock())  # (idle timeouts off the real reactor)

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
