"""amqtt reader/writer adapters over a Twisted transport.

amqtt's "external" listener type takes a :class:`ReaderAdapter` and a :class:`WriterAdapter`;
these feed it from a Twisted protocol and write through the Twisted transport, whose
buffered writes coalesce the many small packets amqtt sends in one loop iteration.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable

from amqtt.adapters import ReaderAdapter, WriterAdapter
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.interfaces import IConsumer, IPushProducer, ITCPTransport
from zope.interface import implementer

#: Pause reading from the socket while this many bytes wait for amqtt; resume below half.
READ_HIGH_WATER = 1 << 20


class IConnectionTransport(ITCPTransport, IConsumer, IPushProducer):
    """What a client connection uses of its transport (TCP, TLS or the WebSocket adapter):
    a stream that can be aborted, takes a producer and pauses reading. For type checking:
    Twisted's transports provide these interfaces one by one, none declares this one."""


class TransportReader(ReaderAdapter):
    """Bytes received by a Twisted protocol, read by amqtt with ``readexactly`` semantics.

    :param loop: the asyncio loop amqtt runs on.
    :param transport: paused while too much unread data piles up (back-pressure), or ``None``.
    :param connection: the :class:`~gateway.broker.connection.MQTTConnection` feeding it.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, transport: Any = None, connection: Any = None) -> None:
        self._loop = loop
        self._transport = transport
        #: the Twisted protocol the bytes come from: a handler attaches to it for whole packets.
        self.connection = connection
        self._buffer = bytearray()
        self._eof = False
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False

    def feed(self, data: bytes) -> None:
        """Add bytes from the socket."""
        self._buffer += data
        if self._transport is not None and not self._paused and len(self._buffer) > READ_HIGH_WATER:
            self._paused = True
            if self.connection is not None:
                self.connection.pause_reading(self)  # one bookkeeping for every pause (and the keep-alive)
            else:
                self._transport.pauseProducing()
        self._wake()

    def _resume(self) -> None:
        self._paused = False
        if self.connection is not None:
            self.connection.resume_reading(self)
        else:
            self._transport.resumeProducing()

    def feed_eof(self) -> None:
        """The connection is gone: pending and later reads end."""
        self._eof = True
        self._wake()

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def read(self, n: int = -1) -> bytes:
        """Read exactly ``n`` bytes (all until EOF when ``n`` is -1).

        :raises asyncio.IncompleteReadError: when the connection ends first.
        """
        while (n < 0 and not self._eof) or len(self._buffer) < n:
            if self._eof:
                partial = bytes(self._buffer)
                self._buffer.clear()
                raise asyncio.IncompleteReadError(partial, n)
            self._waiter = self._loop.create_future()
            await self._waiter
        if n < 0:
            n = len(self._buffer)
        data = bytes(self._buffer[:n])
        del self._buffer[:n]
        if self._paused and len(self._buffer) < READ_HIGH_WATER // 2:
            self._resume()
        return data


class PeerCertificate:
    """The slice of :class:`ssl.SSLObject` amqtt and its plugins use: ``getpeercert``.

    :param x509: the peer's pyOpenSSL certificate (already verified by the TLS layer).
    """

    def __init__(self, x509: Any) -> None:
        self._x509 = x509

    def getpeercert(self, binary_form: bool = False) -> Any:
        """The peer certificate: DER bytes, or a dict with its subject like the ssl module's."""
        from OpenSSL import crypto

        if binary_form:
            return crypto.dump_certificate(crypto.FILETYPE_ASN1, self._x509)
        subject = tuple(((k.decode(), v.decode()),) for k, v in self._x509.get_subject().get_components())
        return {"subject": subject}


@implementer(IPushProducer)
class TransportWriter(WriterAdapter):
    """amqtt's writes go to the Twisted transport; ``drain`` waits while Twisted says pause.

    :param loop: the asyncio loop amqtt runs on.
    :param transport: the connection's Twisted transport.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, transport: IConnectionTransport) -> None:
        self._loop = loop
        self._transport = transport
        self._resumed: asyncio.Future[None] | None = None
        self._lost: asyncio.Future[None] = loop.create_future()
        self.closed = False
        #: called when Twisted's send buffer has drained after a pause.
        self.on_resume: Callable[[], None] | None = None
        transport.registerProducer(self, True)

    def write(self, data: bytes) -> None:
        """Queue bytes on the transport (they leave on the next reactor turn, coalesced)."""
        if not self.closed:
            self._transport.write(data)

    async def drain(self) -> None:
        """Wait while the transport's buffer is over its high-water mark."""
        while self._resumed is not None and not self.closed:
            await self._resumed

    def pauseProducing(self) -> None:
        """Twisted: the send buffer is full."""
        if self._resumed is None:
            self._resumed = self._loop.create_future()

    @property
    def paused(self) -> bool:
        """Whether Twisted's send buffer is over its high-water mark."""
        return self._resumed is not None

    def resumeProducing(self) -> None:
        """Twisted: the send buffer drained."""
        resumed, self._resumed = self._resumed, None
        if resumed is not None and not resumed.done():
            resumed.set_result(None)
        if resumed is not None and self.on_resume is not None and not self.closed:
            self.on_resume()

    def stopProducing(self) -> None:
        """Twisted: the connection is going away."""
        self.connection_lost()

    def connection_lost(self) -> None:
        """Called by the protocol when the connection is gone: release every waiter."""
        self.closed = True
        self.resumeProducing()
        if not self._lost.done():
            self._lost.set_result(None)

    def get_peer_info(self) -> tuple[str, int] | None:
        """The peer's address as ``(host, port)``; ``("unix", 0)`` for a unix socket."""
        peer = self._transport.getPeer()
        if isinstance(peer, (IPv4Address, IPv6Address)):
            return peer.host, peer.port
        if isinstance(peer, UNIXAddress):
            return "unix:" + (peer.name.decode() if isinstance(peer.name, bytes) else str(peer.name or "")), 0
        return str(peer), 0

    def get_ssl_info(self) -> Any:
        """A :class:`PeerCertificate` when the peer presented a verified certificate, else ``None``."""
        getter = getattr(self._transport, "getPeerCertificate", None)
        x509 = getter() if getter is not None else None
        return PeerCertificate(x509) if x509 is not None else None

    async def close(self) -> None:
        """Close the connection after what was written has been sent; wait until it is gone."""
        if not self.closed:
            self.closed = True
            self._transport.loseConnection()
        await self._lost
