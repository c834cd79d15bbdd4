"""HTTP connections a listening service closes when it stops, after what is in flight.

Twisted's ``stopListening`` stops accepting but leaves open connections be: a keep-alive
client (a GWE app writing every second, a Prometheus scraper, a status page) went on being
served by the stopped service's site, whose resources point at stopped services, after a
configuration change had started new ones. A factory with :class:`ClosesChannels` keeps
its open :class:`ClosingChannel` connections and :meth:`~ClosesChannels.close_connections`
closes them: an idle one at once, a busy one once the response in progress has been sent
(with ``Connection: close``), so the client's next request opens a connection to whoever
listens now.

Twisted's idle timeout starts again with every byte received, so a client that trickles a
request's head (a byte every few seconds: slowloris) held its connection, and up to 16 KiB of
headers, for as long as it liked. A :class:`ClosingChannel` gives a request's head (its
request line and headers) :data:`HEAD_TIMEOUT` seconds from its first byte, then answers
``408`` and closes. A request line or header line over Twisted's limit (16 KiB) closed the
connection without a word; it is answered ``414`` or ``431`` first. So is a head over
Twisted's limits in all (``totalHeadersSize``, 16 KiB, or ``maxHeaders``, 500 header lines),
which Twisted answered with a bare ``400 Bad Request``. A malformed request line or header line
(:mod:`gateway.httpheadcheck`) is answered ``400`` (``505`` for an HTTP version other than 1.0
and 1.1), saying what is wrong, where Twisted's ``400`` said nothing. A target in absolute-form
(``GET http://gw/metrics HTTP/1.1``) is served as its origin-form, the host it names standing for
the request's ``Host`` (:func:`~gateway.httpheadcheck.origin_form`). A chunked body whose framing
is broken (:mod:`gateway.chunkcheck`) is answered ``400`` saying what is wrong too.

Either ``408`` is logged, naming the listener (``ingest: a request head from 192.0.2.7:40000 took
over 30 s: 408, closed``).

A request's body, likewise, kept the connection for as long as a byte came within the idle
timeout (a byte a second did). It has :data:`BODY_GRACE` seconds from the end of its head and
one second more for each :data:`BODY_RATE` bytes that arrive, then is answered ``408`` and closed:
a body must come at 1 KiB/s on average, which a slow cellular link (10 KiB/s and more) sending a
10 MiB package to the admin API never comes near, and a client trickling it cheaply cannot.

A request that asks ``Expect: 100-continue`` for a body declared longer than its request
class's ``max_body`` (the ingest's and the admin API's requests have one) is answered ``413``
and closed instead of ``100 Continue``, after which the client sent the whole body to be
dropped. (Without ``Expect`` the body is read and dropped as before: a client sending it
whole before it reads would see the connection reset, not the 413, were it closed at once.)
A request asking ``Expect: 100-continue`` whose request says it does not want its body
(``wants_body()``: the admin API's on TCP without the bearer token) is answered at once, by its
resource as it would be after the body (401), and the connection closed: neither invited to
send a body dropped unread nor told, by a 413, a limit it has no business knowing.

A factory given a :class:`~gateway.fdreserve.DescriptorReserve` closes a new connection as
soon as it is accepted while the gateway has too few descriptors left for its own work, as
the MQTT listeners do: clients connecting to the ingest until the process met its limit left
the journal, the broker and the links none.

Every answer names its server ``Server: gateway`` (:data:`SERVER`; the refusals this channel
writes itself and the MQTT over WebSocket listeners' handshakes too): Twisted's
``TwistedWeb/<version>`` told anyone on the network which library, at which version, answered.
The headers a listener gives every answer (the admin API's ``X-Frame-Options`` and the like) its
factory's ``refusal_headers`` give those refusals too: they went without them.

Imported with ``twisted.web.http``, by the modules that build a site (not by an idle gateway).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any

from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.http_headers import Headers

from gateway.addresses import address_text
from gateway.clockstep import steady_seconds
from gateway.fdreserve import DescriptorReserve, ReserveRefusals
from gateway.chunkcheck import ChunkedBodyCheck
from gateway.httpheadcheck import BAD_REQUEST, HeadCheck, origin_form

#: Seconds a request's head (its request line and headers) may take, from its first byte.
HEAD_TIMEOUT = 30.0
#: Seconds a request's body may take from the end of its head, and more with every byte ...
BODY_GRACE = 30.0
#: ... one second more for each this many bytes that arrive (its slowest rate, on average).
BODY_RATE = 1024
#: What every answer of the gateway's HTTP listeners names as its ``Server``: no library,
#: no version (Twisted's and autobahn's named theirs).
SERVER = "gateway"

#: The answer to a head that took longer (or a line of it that is too long), and closes: its
#: status, its listener's own headers (:attr:`ClosingChannel.refusal_headers`), its body's length, its body.
_REFUSED = (b"HTTP/1.1 %s\r\nServer: " + SERVER.encode() + b"\r\n%sContent-Type: text/plain; charset=utf-8\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s")

log = Logger()


class ClosingChannel(HTTPChannel):
    """An HTTP/1.1 connection that its factory can close once its responses are sent.

    (A plain ``HTTPChannel``, not the HTTP/2-negotiating one a ``Site`` makes by default: no
    listener of the gateway offers HTTP/2 through ALPN.)

    :param open_channels: the factory's open connections; this one is in it while connected.
    :param listener: what its log lines call the listener (its factory's: ``ingest``,
        ``metrics``, ``admin API``).
    :param refusal_headers: headers the answers this channel writes itself (``400`` to ``505``)
        carry besides ``Server``, as every answer of its listener does (the admin API's
        ``X-Frame-Options`` and the like); none by default.
    :ivar head_timeout: seconds a request's head may take from its first byte (:data:`HEAD_TIMEOUT`).
    :ivar body_grace: seconds a request's body may take from the end of its head (:data:`BODY_GRACE`) ...
    :ivar body_rate: ... and one more for each this many bytes that arrive (:data:`BODY_RATE`).
    """

    head_timeout = HEAD_TIMEOUT
    body_grace = BODY_GRACE
    body_rate = BODY_RATE

    def __init__(self, open_channels: set[ClosingChannel], listener: str = "HTTP",
                 refusal_headers: Mapping[bytes, bytes] | None = None) -> None:
        super().__init__()
        self._open = open_channels
        self.listener = listener
        self.refusal_headers = b"".join(b"%s: %s\r\n" % (name.title(), value)  # (X-Frame-Options, as Twisted writes it)
                                        for name, value in (refusal_headers or {}).items())
        self.closing = False
        self._deadline: IDelayedCall | None = None  # while a request's head, or its body, is arriving
        self._body_bytes: int | None = None  # bytes received while its body is arriving
        self._past_head = False  # a request's head is in; its body or its answer is under way
        self._unread = False  # answered (408, 413, 414, 431, or without its body): nothing more is read
        self._head_size = 0  # bytes of the request line and header lines of the head arriving
        self._header_lines = 0  # its header lines (not their continuations)
        self._check = HeadCheck()  # what is wrong with a line of the head arriving, in words
        self._authority: bytes | None = None  # the host its request line's absolute-form target names
        self._chunks: ChunkedBodyCheck | None = None  # the framing of a chunked body arriving

    def dataReceived(self, data: bytes) -> None:
        """Start the head's clock at the first byte of a request; drop what comes once refused."""
        if self._unread:
            return
        if data and self._deadline is None and not self._past_head:
            self._deadline = self.callLater(self.head_timeout, self._head_too_slow)
        super().dataReceived(data)

    def rawDataReceived(self, data: bytes) -> None:
        """Count the body's bytes (those in the read that ended its head too), each giving its
        clock ``1 / body_rate`` s more; answer ``400`` to a chunked body whose framing is
        broken, saying why, before Twisted's decoder's bare ``400``."""
        if self._body_bytes is not None and self._deadline is not None:
            self._body_bytes += len(data)
            self._deadline.delay(len(data) / self.body_rate)
        chunks = self._chunks
        if chunks is not None:
            problem = chunks.feed(data)
            if problem is not None:
                self._refuse(BAD_REQUEST, problem)
                return
            if chunks.done:
                self._chunks = None
        super().rawDataReceived(data)

    def lineReceived(self, line: bytes) -> None:
        """Answer ``431`` to a head over ``totalHeadersSize`` bytes or ``maxHeaders`` header
        lines, and ``400`` or ``505`` to a malformed line (:mod:`gateway.httpheadcheck`), saying
        why, before Twisted's bare ``400``."""
        if self._unread:
            return
        if not self.requests:  # (the request line, or a blank line before it)
            self._head_size, self._header_lines, self._authority = len(line), 0, None
            problem = self._check.request_line(line) if line else self._check.blank_line()
            if line and problem is None:
                method, target, version = line.split(b" ")
                target, self._authority = origin_form(target)
                line = b" ".join((method, target, version))
        else:
            self._head_size += len(line)
            if not line:
                problem = self._check.end_of_head()
            elif line[:1] in (b" ", b"\t"):
                problem = self._check.continuation(line)
            else:
                self._header_lines += 1
                problem = self._check.header_line(line)
            if self._head_size > self.totalHeadersSize:
                self._refuse(b"431 Request Header Fields Too Large",
                             f"the request line and headers are over {self.totalHeadersSize} bytes")
                return
            if self._header_lines > self.maxHeaders:
                self._refuse(b"431 Request Header Fields Too Large", f"more than {self.maxHeaders} header lines")
                return
        if problem is not None:
            self._refuse(*problem)
            return
        super().lineReceived(line)

    def allHeadersReceived(self) -> None:
        """The head is in time: its clock stops, and its body's starts. A body asked
        to be continued is not invited when the request does not want it (it is answered at
        once), and is refused (413) when declared over the request's ``max_body``."""
        self._stop_clock()
        self._past_head = True
        request = self.requests[-1]
        if self._authority is not None:  # (an absolute-form target: its host is the request's)
            request.requestHeaders.setRawHeaders(b"host", [self._authority])
        if request.requestHeaders.getRawHeaders(b"expect", [b""])[0].lower() == b"100-continue":
            wants_body = getattr(request, "wants_body", None)
            if wants_body is not None and not wants_body():
                self._answer_without_body(request)
                return
            limit: int | None = getattr(request, "max_body", None)
            length = int(request.requestHeaders.getRawHeaders(b"content-length", [b"0"])[0])  # (checked by Twisted)
            if limit is not None and length > limit:
                self._refuse(b"413 Content Too Large", f"the body would be {length} bytes; at most {limit} are taken")
                return
        super().allHeadersReceived()
        if self.length is None:  # (chunked)
            self._chunks = ChunkedBodyCheck()
        if self.length != 0:  # (a length, or None: chunked)
            self._body_bytes = 0
            self._deadline = self.callLater(self.body_grace, self._body_too_slow)

    def allContentReceived(self) -> None:
        """The body is in: its clock stops."""
        self._stop_clock()
        super().allContentReceived()

    def _answer_without_body(self, request: Any) -> None:
        # Not continued (no 100 Continue), processed now as with an empty body, and the last
        # request of the connection: a body the client sends anyway is not read.
        request.requestHeaders.removeHeader(b"expect")
        super().allHeadersReceived()
        self.persistent = False
        request.responseHeaders.setRawHeaders(b"connection", [b"close"])
        self.length = 0  # (HTTPChannel.lineReceived then processes the request: its body is in)
        self._unread = True

    def writeHeaders(self, version: bytes, code: bytes, reason: bytes, headers: Headers) -> None:
        """Send an answer's head, its ``Server`` header :data:`SERVER` (whatever the request set)."""
        headers.setRawHeaders(b"server", [SERVER.encode()])
        super().writeHeaders(version, code, reason, headers)

    def requestDone(self, request: Any) -> None:
        """The answer is sent: the next bytes begin the next request's head."""
        self._past_head = False
        super().requestDone(request)

    def _stop_clock(self) -> None:
        self._body_bytes = None
        if self._deadline is not None:
            if self._deadline.active():
                self._deadline.cancel()
            self._deadline = None

    def _head_too_slow(self) -> None:
        self._deadline = None
        transport = self.transport
        assert transport is not None  # (the clock stops when the connection is lost)
        log.info("{listener}: a request head from {peer} took over {seconds:g} s: 408, closed",
                 listener=self.listener, peer=address_text(transport.getPeer()), seconds=self.head_timeout)
        self._refuse(b"408 Request Timeout", f"the request line and headers took over {self.head_timeout:g} s")

    def _body_too_slow(self) -> None:
        size = self._body_bytes
        assert size is not None  # (the clock stops with the body)
        seconds = self.body_grace + size / self.body_rate
        self._deadline, self._body_bytes = None, None
        transport = self.transport
        assert transport is not None  # (the clock stops when the connection is lost)
        log.info("{listener}: a request body from {peer} came too slowly ({size} bytes in {seconds:.0f} s): 408,"
                 " closed", listener=self.listener, peer=address_text(transport.getPeer()), size=size, seconds=seconds)
        self._refuse(b"408 Request Timeout",
                     f"the request body came too slowly: {size} bytes in {seconds:.0f} s (it has {self.body_grace:g} s,"
                     f" and 1 s more for each {self.body_rate} bytes that arrive)")

    def lineLengthExceeded(self, line: bytes) -> None:
        """A request line (414) or header line (431) longer than ``MAX_LENGTH``: say so, and close."""
        if self.requests:  # (the request line made one)
            self._refuse(b"431 Request Header Fields Too Large", f"a header line is longer than {self.MAX_LENGTH} bytes")
        else:
            self._refuse(b"414 URI Too Long", f"the request line is longer than {self.MAX_LENGTH} bytes")

    def _refuse(self, status: bytes, why: str) -> None:
        if self._unread:  # (more of a too long line may come while the connection closes)
            return
        self._unread = True
        body = f"{why}\n".encode()
        assert self.transport is not None
        self.transport.write(_REFUSED % (status, self.refusal_headers, len(body), body))
        self.loseConnection()

    def connectionMade(self) -> None:
        """Count as open."""
        super().connectionMade()
        self._open.add(self)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """No longer open."""
        self._stop_clock()
        self._open.discard(self)
        super().connectionLost(reason)

    def checkPersistence(self, request: Any, version: bytes) -> bool:
        """Once closing, a request that arrives is the connection's last (``Connection: close``)."""
        if self.closing:
            request.responseHeaders.setRawHeaders(b"connection", [b"close"])
            return False
        return bool(super().checkPersistence(request, version))

    def close_when_done(self) -> None:
        """Close now when no request is in progress, else once its response is sent (a
        pipelined request after it is not answered: the client sends it again)."""
        self.closing = True
        if not self.requests:
            self.loseConnection()
            return
        self.persistent = False
        for request in self.requests:
            if not request.startedWriting:
                request.responseHeaders.setRawHeaders(b"connection", [b"close"])


class ClosesChannels:
    """Mixin for an ``HTTPFactory`` (a ``Site``) whose connections can be closed when its
    service stops, and that may keep the gateway's descriptor reserve; put it first among the
    bases.

    :param listener: what the log calls the listener (``ingest``, ``metrics``, ``admin API``): its
        lines of a connection refused for the descriptor reserve, and of a 408.
    :param reserve: the descriptors kept from clients: a new connection is closed on accept
        while they are short; ``None``: connections may use them.
    :param refusal_headers: what the answers its connections write themselves (``400`` to ``505``)
        carry besides ``Server`` (:class:`ClosingChannel`).
    :param args: the factory's.
    :param kwargs: the factory's.
    """

    #: builds the connections: :class:`ClosingChannel` (typed loosely: a ``Site`` declares the
    #: HTTP/2-negotiating wrapper it makes by default)
    protocol: Any
    reactor: Any  # (set by HTTPFactory)

    def __init__(self, *args: Any, listener: str = "HTTP", reserve: DescriptorReserve | None = None,
                 refusal_headers: Mapping[bytes, bytes] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.open_channels: set[ClosingChannel] = set()
        self.protocol = partial(ClosingChannel, self.open_channels, listener, refusal_headers)
        #: closes new connections on accept while the gateway keeps its last file descriptors
        self.reserve_refusals = (ReserveRefusals(listener, log, lambda: steady_seconds(self.reactor), reserve)
                                 if reserve is not None else None)

    def buildProtocol(self, addr: Any) -> Any:
        """A connection, or ``None`` (Twisted closes it) while the gateway keeps its last file
        descriptors (:attr:`reserve_refusals`)."""
        if self.reserve_refusals is not None and self.reserve_refusals.refuses(addr):
            return None
        return super().buildProtocol(addr)  # type: ignore[misc]

    def close_connections(self) -> None:
        """Close every open connection: at once when idle, else after its response in progress."""
        for channel in list(self.open_channels):
            channel.close_when_done()
