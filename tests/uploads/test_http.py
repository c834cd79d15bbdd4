"""Generic HTTP uploads against a real twisted.web server on 127.0.0.1 that checks a signed
URL and Content-MD5 like a storage does."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from pathlib import Path
from typing import Any

from twisted.internet import protocol, reactor, task
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.trial.unittest import TestCase
from twisted.web import resource, server

from gateway.uploads.providers import MAX_ANSWER
from gateway.uploads.settings import UploadsSettings
from tests.uploads.flow import make_file, start_service, upload
from tests.uploads.realservers import UploadCuttingProxy

SECRET = b"test-secret"
#: The length of the answers of ``/babble/<status>/...``.
BABBLE = MAX_ANSWER + 2**20


def sign(path: str, expires: int) -> str:
    """The query a backend would presign ``path`` with."""
    sig = hmac.new(SECRET, f"{path}\n{expires}".encode(), hashlib.sha256).hexdigest()
    return f"expires={expires}&sig={sig}"


class Sink(resource.Resource):
    """Stores PUT/POST bodies by path after checking the signature, expiry and Content-MD5."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.stored: dict[str, bytes] = {}
        self.headers: dict[str, dict[str, str]] = {}
        #: every request's path, in order.
        self.seen: list[str] = []

    def render_PUT(self, request: Any) -> bytes:
        path = request.path.decode()
        self.seen.append(path)
        if path.startswith("/moved/"):  # S3's answer to a bucket addressed in the wrong region
            request.setResponseCode(301)
            request.setHeader("location", "http://user:SECRET-pw@elsewhere.example/bucket/key?sig=secret")
            return (b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>PermanentRedirect</Code><Message>"
                    b"The bucket you are attempting to access must be addressed using the specified endpoint."
                    b"</Message></Error>")
        if path.startswith("/babble/"):  # a broken server: an answer far longer than any storage's
            request.content.read()
            request.setResponseCode(int(path.split("/")[2]))
            return b"Babble: " + b"b" * BABBLE
        query = {k.decode(): v[0].decode() for k, v in request.args.items()}
        expires = int(query.get("expires", "0"))
        if not hmac.compare_digest(sign(path, expires).split("sig=")[1], query.get("sig", "")):
            request.setResponseCode(403)
            return b"SignatureDoesNotMatch: the signature does not match"
        if expires < time.time():
            request.setResponseCode(403)
            return b"AccessDenied: Request has expired"
        body = request.content.read()
        md5 = request.getHeader("content-md5")
        if md5 is not None and md5 != base64.b64encode(hashlib.md5(body).digest()).decode():
            request.setResponseCode(400)
            return b"BadDigest: Content-MD5 mismatch"
        self.stored[path] = body
        self.headers[path] = {k.decode().lower(): v[0].decode() for k, v in request.requestHeaders.getAllRawHeaders()}
        request.setResponseCode(201)
        return b""

    render_POST = render_PUT


class Silent(protocol.Protocol):
    """Accepts a connection, reads what comes and never answers; ``factory.closed`` holds a
    Deferred per connection, fired when it is closed."""

    def connectionMade(self) -> None:
        self.lost: Deferred[None] = Deferred()
        self.factory.closed.append(self.lost)

    def connectionLost(self, reason: Any = None) -> None:
        self.lost.callback(None)


class Hasty(Silent):
    """Answers 200 as soon as a request begins, before its body has come (a server that lies),
    then reads and drops the rest; ``factory.closed`` as :class:`Silent`'s."""

    answered = False

    def connectionMade(self) -> None:
        super().connectionMade()
        self.factory.connections.append(self)

    def dataReceived(self, data: bytes) -> None:
        if not self.answered:
            self.answered = True
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")


class Trickling(Silent):
    """Reads a request whole, answers its headers (a body of 1000 bytes announced) and then
    trickles the body a byte every 0.2 s; ``factory.closed`` as :class:`Silent`'s."""

    trickle: Any = None

    def connectionMade(self) -> None:
        super().connectionMade()
        self.received = b""

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        head, _, body = self.received.partition(b"\r\n\r\n")
        length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        if self.trickle is None and len(body) >= length:
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
            self.trickle = task.LoopingCall(self.transport.write, b" ")
            self.trickle.start(0.2)

    def connectionLost(self, reason: Any = None) -> None:
        if self.trickle is not None:
            self.trickle.stop()
        super().connectionLost(reason)


class HTTPUploadTests(TestCase):
    """The generic provider: PUT/POST with the cloud's headers, Content-MD5, retries."""

    timeout = 60

    def setUp(self) -> None:
        self.sink = Sink()
        self.port = reactor.listenTCP(0, server.Site(self.sink), interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.base = f"http://127.0.0.1:{self.port.getHost().port}"
        self.dir = Path(self.mktemp())

    def url(self, path: str, expires_in: int = 600, port: int | None = None) -> str:
        base = self.base if port is None else f"http://127.0.0.1:{port}"
        return f"{base}{path}?{sign(path, int(time.time()) + expires_in)}"

    @inlineCallbacks
    def test_put_stores_the_file_and_reports_its_digests(self) -> Any:
        """A PUT with the cloud's headers and Content-MD5 stores the exact bytes; SUCCESS carries
        the MD5 and SHA-256 the stored object has."""
        sha = make_file(self.dir / "app.log", 3 * 2**20 + 17)
        service, watcher = yield start_service(self, UploadsSettings(checksum=True))
        status = yield upload(service, watcher, str(self.dir / "app.log"), {
            "https.url": self.url("/logs/app.log"), "https.header.X-Token": "abc", "info.batch": "7"})
        self.assertEqual(status["state"], "SUCCESS", status)
        self.assertEqual(hashlib.sha256(self.sink.stored["/logs/app.log"]).hexdigest(), sha)
        self.assertEqual(status["files"][0]["sha256"], sha)
        self.assertEqual(status["progress"], 100)
        self.assertEqual(status["info"], {"batch": "7"})
        self.assertEqual(self.sink.headers["/logs/app.log"]["x-token"], "abc")
        self.assertIn("content-md5", self.sink.headers["/logs/app.log"])
        self.assertEqual(self.sink.headers["/logs/app.log"]["content-type"], "application/x-binary")
        request = watcher.requests()[0]
        self.assertEqual(request["options"]["file.checksum.sha256"], sha)
        states = [s["state"] for s in watcher.statuses()]
        self.assertEqual(states[0], "PENDING")
        self.assertIn("UPLOADING", states)

    @inlineCallbacks
    def test_post_and_delete_after_success(self) -> Any:
        """https.method POST works, with the cloud's Content-Type (a header name in any case),
        and delete removes the file once it is stored."""
        make_file(self.dir / "a.bin", 1000)
        service, watcher = yield start_service(self, UploadsSettings(delete=True))
        status = yield upload(service, watcher, str(self.dir / "a.bin"), {
            "https.url": self.url("/a.bin"), "https.method": "post", "https.header.content-type": "text/plain"})
        self.assertEqual(status["state"], "SUCCESS", status)
        self.assertEqual(len(self.sink.stored["/a.bin"]), 1000)
        self.assertEqual(self.sink.headers["/a.bin"]["content-type"], "text/plain")  # the cloud's, not ours
        self.assertFalse((self.dir / "a.bin").exists())

    @inlineCallbacks
    def test_expired_and_tampered_urls_fail_with_the_servers_reason(self) -> Any:
        """A 403 is final: FAILED at once, with what the server said."""
        make_file(self.dir / "x.bin", 5000)
        service, watcher = yield start_service(self)
        expired = yield upload(service, watcher, str(self.dir / "x.bin"),
                               {"https.url": self.url("/x.bin", expires_in=-10)}, cid="expired")
        self.assertEqual(expired["state"], "FAILED")
        self.assertIn("Request has expired", expired["message"])
        tampered = yield upload(service, watcher, str(self.dir / "x.bin"),
                                {"https.url": self.url("/x.bin").replace("sig=", "sig=0")}, cid="tampered")
        self.assertEqual(tampered["state"], "FAILED")
        self.assertIn("SignatureDoesNotMatch", tampered["message"])
        self.assertEqual(self.sink.stored, {})

    @inlineCallbacks
    def test_a_redirect_is_final_with_the_servers_reason(self) -> Any:
        """A 301 (S3's PermanentRedirect for a bucket in another region) is an answer like a 403:
        FAILED after one attempt with the server's code and message and where it pointed (its
        host and path: its query may hold a signature, its user information a password, which
        the message repeated), not retried as a cut connection."""
        make_file(self.dir / "x.bin", 5000)
        service, watcher = yield start_service(self)
        status = yield upload(service, watcher, str(self.dir / "x.bin"), {"https.url": self.url("/moved/x.bin")})
        self.assertEqual(status["state"], "FAILED")
        self.assertEqual(status["message"], f"{self.dir.resolve() / 'x.bin'}: HTTP 301: PermanentRedirect: The bucket "
                         "you are attempting to access must be addressed using the specified endpoint. "
                         "(redirected to http://elsewhere.example/bucket/key)")
        self.assertEqual(self.sink.seen, ["/moved/x.bin"])

    @inlineCallbacks
    def test_an_answer_over_the_limit_is_not_read_further(self) -> Any:
        """A server answering with 17 MiB (broken, or hostile): the gateway reads no more than 16
        MiB of it. An error keeps its status and the start of its words; a success that long is
        no storage's answer: it fails the attempt as a cut connection does. The whole answer was
        read into memory (a 400 MiB one grew the gateway by 1.7 GB, against "a transfer holds at
        most a few MiB"), and a 2xx that long was a SUCCESS."""
        make_file(self.dir / "x.bin", 5000)
        service, watcher = yield start_service(self, UploadsSettings(max_attempts=1))
        refused = yield upload(service, watcher, str(self.dir / "x.bin"), {"https.url": self.url("/babble/500/x")},
                               cid="refused")
        self.assertEqual(refused["state"], "FAILED")
        self.assertTrue(refused["message"].endswith(": HTTP 500: Babble: " + "b" * 192), refused["message"][-300:])
        stored = yield upload(service, watcher, str(self.dir / "x.bin"), {"https.url": self.url("/babble/201/x")},
                              cid="stored")
        self.assertEqual(stored["state"], "FAILED")
        self.assertTrue(stored["message"].endswith(
            f": HTTP 201 with an answer over {MAX_ANSWER} bytes, not read further"), stored["message"])

    @inlineCallbacks
    def test_an_answer_trickled_after_the_body_is_aborted_and_its_connection_closed(self) -> Any:
        """A server that takes the whole body, answers 200's headers and trickles the answer's
        body a byte at a time: each attempt is aborted after ``idle_timeout``, as for a server
        that never answers, and its connection is closed. The attempt was aborted, but its
        connection stayed open, fed by the server, one more for each attempt."""
        make_file(self.dir / "slow.bin", 5000)
        factory = protocol.Factory.forProtocol(Trickling)
        factory.closed = []
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        service, watcher = yield start_service(self, UploadsSettings(idle_timeout=1, max_attempts=2))
        status = yield upload(service, watcher, str(self.dir / "slow.bin"),
                              {"https.url": self.url("/slow.bin", port=port.getHost().port)})
        self.assertEqual(status["state"], "FAILED", status)
        self.assertIn("slow.bin: no byte sent and no answer for 1s (idle_timeout)", status["message"])
        self.assertEqual(len(factory.closed), 2)
        yield task.deferLater(reactor, 0.5, lambda: None)  # (the last close's FIN on its way)
        self.assertEqual([closed.called for closed in factory.closed], [True, True])

    @inlineCallbacks
    def test_a_success_answered_before_the_whole_body_is_a_failed_attempt(self) -> Any:
        """A server answering 200 before it received the body: the attempt fails, saying so, and
        is retried as a cut connection is. It was a SUCCESS at 100%, the file deleted with
        delete: true, while the server had got a part of it."""
        make_file(self.dir / "x.bin", 8 * 2**20)
        factory = protocol.Factory.forProtocol(Hasty)
        factory.closed = []
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)

        def close_server_sides() -> Deferred[Any]:
            """After the service has stopped (a later cleanup runs first): the server's side of a
            connection the client kept (the 200 was whole) or had not closed yet goes too."""
            for connection in factory.connections:
                connection.transport.abortConnection()
            return gatherResults(factory.closed)

        factory.connections = []
        self.addCleanup(close_server_sides)
        service, watcher = yield start_service(self, UploadsSettings(max_attempts=2, chunk_size=65536, delete=True))
        status = yield upload(service, watcher, str(self.dir / "x.bin"),
                              {"https.url": self.url("/x.bin", port=port.getHost().port)})
        self.assertEqual(status["state"], "FAILED", status)
        self.assertRegex(status["message"], r"x\.bin: the server answered before it received the whole body "
                         r"\(\d+ of 8388608 bytes sent\)$")
        self.assertTrue((self.dir / "x.bin").exists())

    @inlineCallbacks
    def test_a_connection_cut_mid_upload_is_retried(self) -> Any:
        """The connection is cut after 1 MiB of a 4 MiB body: the upload is sent again and the
        stored object is the file."""
        sha = make_file(self.dir / "big.bin", 4 * 2**20)
        proxy = UploadCuttingProxy(reactor, self.port.getHost().port, cut_after=2**20)
        proxy_port = proxy.listen()
        self.addCleanup(proxy.port.stopListening)
        service, watcher = yield start_service(self)
        status = yield upload(service, watcher, str(self.dir / "big.bin"),
                              {"https.url": self.url("/big.bin", port=proxy_port)})
        self.assertEqual(status["state"], "SUCCESS", status)
        self.assertEqual(hashlib.sha256(self.sink.stored["/big.bin"]).hexdigest(), sha)
        self.assertGreaterEqual(len(proxy.sent), 2)

    @inlineCallbacks
    def test_a_server_that_never_answers_fails_the_upload_after_the_idle_timeout(self) -> Any:
        """A server that accepts the connection and never answers held the transfer slot until
        a cancel; now each attempt is aborted (its connection closed) after ``idle_timeout``
        seconds without a byte moving, retried, and the upload ends FAILED, saying why."""
        make_file(self.dir / "stuck.bin", 5000)
        factory = protocol.Factory.forProtocol(Silent)
        factory.closed = []
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        service, watcher = yield start_service(self, UploadsSettings(idle_timeout=1, max_attempts=2))
        started = reactor.seconds()
        status = yield upload(service, watcher, str(self.dir / "stuck.bin"),
                              {"https.url": self.url("/stuck.bin", port=port.getHost().port)})
        self.assertEqual(status["state"], "FAILED", status)
        self.assertIn("stuck.bin: no byte sent and no answer for 1s (idle_timeout)", status["message"])
        self.assertGreaterEqual(reactor.seconds() - started, 2)
        self.assertEqual(len(factory.closed), 2)
        yield gatherResults(factory.closed)  # each aborted attempt closed its connection
