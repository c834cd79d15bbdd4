"""gateway.httpbody.read_body: a server's answer read up to a limit, and given up on without
leaving its connection open."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import CancelledError
from twisted.internet.error import ConnectionLost
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import ResponseDone, ResponseFailed
from twisted.web.iweb import UNKNOWN_LENGTH

from gateway.httpbody import read_body


class FakeResponse:
    """An ``IResponse`` whose body the test delivers by hand over a ``StringTransport``."""

    def __init__(self) -> None:
        self.transport = StringTransport()
        self.protocol: Any = None
        self.length = UNKNOWN_LENGTH

    def deliverBody(self, protocol: Any) -> None:
        self.protocol = protocol
        protocol.makeConnection(self.transport)


class ReadBodyTests(SynchronousTestCase):
    """What each way a body can end gives, and what is left of the connection."""

    def test_a_whole_body_is_read(self) -> None:
        """A body that ends is the bytes received, not cut; the connection is left alone (kept alive)."""
        response = FakeResponse()
        d = read_body(response, 10)
        response.protocol.dataReceived(b"hello ")
        response.protocol.dataReceived(b"you")
        response.protocol.connectionLost(Failure(ResponseDone()))
        self.assertEqual(self.successResultOf(d), (b"hello you", False))
        self.assertFalse(response.transport.disconnecting)

    def test_a_body_over_the_limit_is_cut_and_its_connection_closed(self) -> None:
        """Past the limit the rest is not read: the first ``limit`` bytes, cut, the connection closed."""
        response = FakeResponse()
        d = read_body(response, 4)
        response.protocol.dataReceived(b"abc")
        response.protocol.dataReceived(b"defg")
        self.assertEqual(self.successResultOf(d), (b"abcd", True))
        self.assertTrue(response.transport.disconnecting)
        response.protocol.dataReceived(b"more")
        response.protocol.connectionLost(Failure(ConnectionLost()))

    def test_a_body_cut_short_fails(self) -> None:
        """A connection lost before the body's end fails the read with what the client said."""
        response = FakeResponse()
        d = read_body(response, 10)
        response.protocol.dataReceived(b"abc")
        response.protocol.connectionLost(Failure(ResponseFailed([Failure(ConnectionLost())])))
        self.failureResultOf(d, ResponseFailed)

    def test_a_cancelled_read_closes_the_connection(self) -> None:
        """Cancelling the read (a request's timeout: a server that trickles its answer, or stops
        half-way) closes the connection. It stayed open, fed by the server for as long as it
        liked, one more connection for each timed-out request."""
        response = FakeResponse()
        d = read_body(response, 10)
        response.protocol.dataReceived(b"a")
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertTrue(response.transport.disconnecting)
        response.protocol.dataReceived(b"b")
        response.protocol.connectionLost(Failure(ConnectionLost()))
