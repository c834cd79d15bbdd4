"""A DDI server that answers in HTTP/1.0 (a minimal server, or one behind an HTTP/1.0 proxy)
closes the connection after each answer without saying ``Connection: close``; the gateway's
requests to it still get through (real sockets on 127.0.0.1)."""

from __future__ import annotations

import json

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import TestCase

from gateway.fleet.ddi import DDIClient
from gateway.operations.httpclient import close_connections
from gateway.updates.httpclient import make_http_client
from gateway.updates.settings import DownloadSettings

POLL = json.dumps({"config": {"polling": {"sleep": "00:05:00"}}, "_links": {}}).encode()


class HTTP10Server(Protocol):
    """Reads one request, answers it in HTTP/1.0 (the poll's JSON, else an empty 200) and closes,
    as Python's ``http.server`` does; notes each request line in ``factory.requests``."""

    def connectionMade(self) -> None:
        self.data = b""

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        head, found, body = self.data.partition(b"\r\n\r\n")
        length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        if not found or len(body) < length:
            return
        request_line = head.split(b"\r\n", 1)[0].decode()
        self.factory.requests.append(request_line)  # type: ignore[attr-defined]
        answer = POLL if request_line.startswith("GET ") else b""
        self.transport.write(b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\n\r\n%s" % (len(answer), answer))
        self.transport.loseConnection()


class HTTP10ServerTests(TestCase):
    """The DDI client against a server that answers in HTTP/1.0."""

    @inlineCallbacks
    def test_configdata_and_feedback_after_a_poll_get_through(self) -> None:
        """A poll answered in HTTP/1.0 left its connection in the client's pool (Twisted keeps
        one whose answer does not say ``Connection: close``), and the server had closed it:
        the configData PUT and every feedback POST that followed went on that dead
        connection and failed, ``no answer: the server closed the connection``, at every poll,
        so the server never learnt how a deployment ended. A PUT or POST whose connection
        closes before any answer is sent once more, on a new connection (the docs accept a
        step told twice, never not at all)."""
        factory = Factory.forProtocol(HTTP10Server)
        factory.requests = []  # type: ignore[attr-defined]
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
        self.addCleanup(port.stopListening)
        http = make_http_client(reactor, DownloadSettings(concurrency=1))
        self.addCleanup(close_connections, http)
        ddi = DDIClient(http, reactor, f"http://127.0.0.1:{port.getHost().port}", "DEFAULT", "gw", None, 10)
        for _ in range(2):
            body = yield ddi.poll()
            self.assertEqual(body["config"]["polling"]["sleep"], "00:05:00")
            yield ddi.put_config_data({"hw_revision": "2"})
        self.assertEqual([line.split()[0] for line in factory.requests  # type: ignore[attr-defined]
                          if line.startswith(("PUT", "GET"))][-4:], ["GET", "PUT", "GET", "PUT"])
