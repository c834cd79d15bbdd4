"""Servers that lie: every lie ends in a clear error, and the previous file stays untouched."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from treq.testing import StubTreq
from twisted.internet import protocol, reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import TestCase

from gateway.updates.downloader import Downloader
from gateway.updates.errors import AttemptsExhausted, DigestMismatch, DownloadError, SizeMismatch
from gateway.updates.httpclient import make_http_client
from gateway.updates.settings import DownloadSettings
from tests.updates.realservers import close_pool
from tests.updates.resources import RangeFile
from tests.updates.test_downloader import run_inline

REAL = bytes(range(256)) * 8  # 2048 bytes
OLD = b"the version that works"


class _Overlong(protocol.Protocol):
    """Announces 1000 bytes and sends the whole 2048."""

    def dataReceived(self, data: bytes) -> None:
        if b"\r\n\r\n" in data:
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + REAL)
            self.transport.loseConnection()


class _CutShort(protocol.Protocol):
    """Announces 2048 bytes, sends 100, and closes the connection."""

    def dataReceived(self, data: bytes) -> None:
        if b"\r\n\r\n" in data:
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2048\r\n\r\n" + REAL[:100])
            self.transport.loseConnection()


class LyingServerTests(TestCase):
    """The destination holds an older good file; a lying server must not replace it."""

    timeout = 20

    def setUp(self) -> None:
        self.destination = Path(self.mktemp())
        self.destination.write_bytes(OLD)
        factory = protocol.ServerFactory.forProtocol(_Overlong)
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.url = f"http://127.0.0.1:{port.getHost().port}/a"
        settings = DownloadSettings(allow_http=True, max_attempts=1)
        http = make_http_client(reactor, settings)
        self.addCleanup(close_pool, http)
        self.downloader = Downloader(http, reactor, settings, run_inline, lambda n: 0.0)

    @inlineCallbacks
    def check_fails(self, error: type[DownloadError], message: str, **kwargs: Any) -> Any:
        with self.assertRaises(error) as caught:
            yield self.downloader.download(self.url, self.destination, **kwargs).result
        self.assertIn(message, str(caught.exception))
        self.assertEqual(self.destination.read_bytes(), OLD)

    def test_body_longer_than_content_length_with_size(self) -> None:
        """Content-Length below the announced size is refused before the body."""
        return self.check_fails(SizeMismatch, "server says 1000 bytes, announced 2048", size=len(REAL))

    def test_body_longer_than_content_length_with_digest(self) -> None:
        """Without a size, the digest catches the truncated file."""
        return self.check_fails(DigestMismatch, "sha256 is", digests={"sha256": hashlib.sha256(REAL).hexdigest()})

    def test_changed_file_behind_same_url(self) -> None:
        """The file changes mid-download: If-Range brings the new one, and its digest is refused."""
        resource = RangeFile(REAL)
        resource.cuts = [1000]
        stub = StubTreq(resource)
        clock = Clock()
        downloader = Downloader(stub, clock, DownloadSettings(), run_inline, lambda n: 1.0)
        download = downloader.download("https://x.example/a", self.destination,
                                       digests={"SHA256": hashlib.sha256(REAL).hexdigest()})
        stub.flush()
        resource.data, resource.etag = REAL[::-1], '"v2"'
        clock.advance(1)
        stub.flush()
        failure = self.failureResultOf(download.result, DigestMismatch)
        self.assertIn("file deleted", str(failure.value))
        self.assertEqual(self.destination.read_bytes(), OLD)
        self.assertFalse(self.destination.with_name(self.destination.name + ".part").exists())


class CutShortTests(TestCase):
    """A server that closes the connection in the middle of the body."""

    timeout = 20

    @inlineCallbacks
    def test_cut_short_download_is_told_in_words(self) -> None:
        """The error (the operation's status message) says the download was cut short and that the
        server closed the connection; no Python Failure repr."""
        port = reactor.listenTCP(0, protocol.ServerFactory.forProtocol(_CutShort), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        settings = DownloadSettings(allow_http=True, max_attempts=2)
        http = make_http_client(reactor, settings)
        self.addCleanup(close_pool, http)
        downloader = Downloader(http, reactor, settings, run_inline, lambda n: 0.0)
        url = f"http://127.0.0.1:{port.getHost().port}/a"
        with self.assertRaises(AttemptsExhausted) as caught:
            yield downloader.download(url, Path(self.mktemp())).result
        message = str(caught.exception)
        self.assertNotIn("Failure", message)
        self.assertNotIn("<", message)
        self.assertIn("the download was cut short after 100 bytes of this attempt: the server closed the connection",
                      message)


class _Silent(protocol.Protocol):
    """Takes the connection and never answers (a TLS client's handshake included); its
    ``factory.closed`` counts the connections closed."""

    def connectionLost(self, reason: Any = None) -> None:
        self.factory.closed += 1  # type: ignore[attr-defined]


class SilentServerTests(TestCase):
    """A server that accepts the connection and never answers, over http and https."""

    timeout = 20

    @inlineCallbacks
    def test_a_server_that_never_answers_is_told_as_the_idle_timeout(self) -> None:
        """Each attempt is aborted after idle_timeout (its connection closed) and the download ends
        saying so: 'no data for 1s'. It said 'the request got no answer: CancelledError', the
        HTTP client's wrapping of the abort."""
        factory = protocol.ServerFactory.forProtocol(_Silent)
        factory.closed = 0  # type: ignore[attr-defined]
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        settings = DownloadSettings(allow_http=True, max_attempts=1, idle_timeout=1)
        http = make_http_client(reactor, settings)
        self.addCleanup(close_pool, http)
        downloader = Downloader(http, reactor, settings, run_inline, lambda n: 0.0)
        for scheme in ("http", "https"):
            with self.assertRaises(AttemptsExhausted) as caught:
                yield downloader.download(f"{scheme}://localhost:{port.getHost().port}/a", Path(self.mktemp())).result
            self.assertTrue(str(caught.exception).endswith(": no data for 1s"), str(caught.exception))
        yield deferLater(reactor, 0.2, lambda: None)  # (the last abort's RST on its way)
        self.assertEqual(factory.closed, 2)  # type: ignore[attr-defined]
