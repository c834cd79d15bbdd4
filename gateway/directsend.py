"""Sending a connection's bytes on its socket directly, as C servers do.

A write to a Twisted transport buffers the bytes, registers the socket for writing
(``epoll_ctl``), sends them in a later reactor turn and unregisters it again (another
``epoll_ctl``). On a plain TCP or Unix socket, :class:`DirectSender` calls ``send`` at once
instead, and hands the transport only what the kernel does not take. From then on every
byte goes through the transport, behind those, until Twisted says it holds nothing again:
the sender is the transport's pull producer, whose ``resumeProducing`` Twisted calls when
its buffer drains. On TLS and WebSocket transports, and tests' transports, the sender
writes to the transport as before, and its owner is the transport's push producer.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import tcp
from twisted.internet.interfaces import IPullProducer, IPushProducer, ISSLTransport
from zope.interface import implementer


def plain_socket(transport: object) -> socket.socket | None:
    """The socket under a plain TCP or Unix-socket transport; None for any other transport
    (TLS, the WebSocket adapter, a test's)."""
    if not isinstance(transport, tcp.Connection) or ISSLTransport.providedBy(transport):
        return None
    handle = transport.getHandle()
    return handle if isinstance(handle, socket.socket) else None


@implementer(IPullProducer)
class DirectSender:
    """Sends on a transport's socket while the transport holds none of its bytes; on any
    other transport, through the transport.

    :param transport: the connection's transport (see :meth:`attach`).
    :param sock: its plain socket, or None (then every byte goes through the transport).
    :param owner: told ``pauseProducing`` when the transport takes bytes the kernel did not,
        ``resumeProducing`` once it has sent them all, ``stopProducing`` when the connection
        goes; or None.
    :ivar held: the transport holds bytes (or the connection is going): what is sent now
        goes through it.
    """

    __slots__ = ("transport", "socket", "owner", "held")

    def __init__(self, transport: Any, sock: socket.socket | None, owner: IPushProducer | None) -> None:
        self.transport = transport
        self.socket = sock
        self.owner = owner
        self.held = False

    @classmethod
    def attach(cls, transport: Any, owner: IPushProducer | None = None) -> "DirectSender":
        """A sender for ``transport``: on a plain socket registered as its pull producer; on
        another transport ``owner`` (if any) is registered as its push producer instead,
        paused when the transport's buffer is full."""
        sender = cls(transport, plain_socket(transport), owner)
        if sender.socket is not None:
            transport.registerProducer(sender, False)  # (Twisted calls resumeProducing at once)
        elif owner is not None:
            transport.registerProducer(owner, True)
        return sender

    def write(self, data: bytes) -> None:
        """Send ``data``: on the socket while the transport holds nothing and the kernel takes
        it, the rest (and everything after it) through the transport, in order."""
        sock = self.socket
        if sock is not None and not self.held:
            try:
                sent = sock.send(data)
            except OSError:  # the kernel's buffer is full, or the connection broke: the
                sent = 0     # transport sends it when it can, or finds the error and ends it
            if sent == len(data):
                return
            data = data[sent:]
            self.held = True
            if self.owner is not None:
                self.owner.pauseProducing()
        self.transport.write(data)

    def close(self) -> None:
        """Close the connection once what was sent has left (the transport's
        ``loseConnection``); what is written afterwards goes through the transport. The
        owner stops being the producer of a transport other than a plain socket first:
        Twisted's TLS sends its close alert, and closes, only once no producer is registered."""
        if self.socket is None and self.owner is not None:
            self.transport.unregisterProducer()
        self.detach()
        self.transport.loseConnection()

    def close_sending(self) -> None:
        """On a plain socket, close the sending side once what was sent has left (a TCP
        half-close, ``shutdown(SHUT_WR)``) and go on reading: the client reads the end of the
        stream and closes its side, and then the connection ends. A socket closed while bytes
        of the client's wait unread in it (a PINGREQ, a PUBACK sent while the broker was not
        reading) is reset by the kernel, which throws away what it still holds for the
        client. On any other transport, :meth:`close` (TLS and the WebSocket adapter read the
        client's answer to their close themselves)."""
        if self.socket is None:
            self.close()
            return
        self.detach()
        self.transport.loseWriteConnection()

    def detach(self) -> None:
        """Stop being the transport's producer: Twisted does not close a connection whose
        pull producer is registered. What is written afterwards goes through the transport."""
        if self.socket is not None:
            self.socket = None
            self.held = True
            self.transport.unregisterProducer()

    # -- IPullProducer, called by the transport ---------------------------------------

    def resumeProducing(self) -> None:
        """Twisted: it holds none of the connection's bytes now. When it was told to close
        meanwhile (by someone other than the owner: Twisted's ``ClientService`` stopping),
        the sender lets go, so that it does."""
        if getattr(self.transport, "disconnecting", False):
            self.detach()
        elif self.socket is not None:
            self.held = False
            if self.owner is not None:
                self.owner.resumeProducing()

    def stopProducing(self) -> None:
        """Twisted: the connection is going away."""
        self.held = True
        if self.owner is not None:
            self.owner.stopProducing()
