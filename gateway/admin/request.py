"""Request bodies with a size limit, spooled to a file on disk by a worker thread, never
held in memory.

twisted.web collects a request's body in ``request.content`` (a BytesIO for small
declared lengths, an anonymous temporary file otherwise) with no limit at all, writing on
the reactor thread. The admin API's requests instead write every body larger than a small
JSON document into a named file in the admin spool directory (on the state dir's
filesystem, so an uploaded package is installed from where it landed). The writes run off
the reactor thread, a batch at a time: a file write can take long on an SD card, and the
reactor must not wait for it. While more than :data:`HIGH_WATER` bytes wait for the disk,
the connection stops being read; the request is processed once every byte is written.
Past the limit, the bytes are dropped (the file is emptied) and the request is answered 413.
"""

from __future__ import annotations

import hmac
import io
import tempfile
from pathlib import Path
from typing import IO, Any, Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import Request

from gateway.admin.router import bearer
from gateway.filelayer import makedirs

log = Logger()

#: Bodies declared at most this long are kept in memory (JSON requests).
IN_MEMORY = 64 * 1024
#: Bytes waiting for the disk past which the connection is paused.
HIGH_WATER = 1024 * 1024
#: ... and resumed again once the waiting bytes are fewer than this.
LOW_WATER = 256 * 1024

#: Runs a blocking callable off the reactor thread.
Blocking = Callable[[Callable[[], Any]], Deferred[Any]]

#: A queued marker: empty the file (the body went over the limit).
_TRUNCATE = object()


class BoundedRequest(Request):
    """A twisted.web request whose body is bounded and spooled to ``spool_dir``.

    Subclasses (made by :func:`bounded_request_factory`) set the class attributes.

    :ivar spool_dir: where bodies larger than :data:`IN_MEMORY` are written.
    :ivar max_body: the largest body kept, in bytes.
    :ivar blocking: runs the file writes off the reactor thread (None: inline).
    :ivar token: the bearer token every request must carry (TCP), or None (the unix socket).
    :ivar body_size: bytes received so far.
    :ivar body_too_large: the body passed ``max_body`` (it was discarded).
    :ivar body_error: why the body could not be stored, if it could not (the rest of it is
        then read and dropped).
    :ivar body_dropped: the request carries no valid bearer token: its body is read and
        dropped, never stored (the router answers 401).
    """

    content: Any  # twisted.web declares it None until gotLength sets it
    spool_dir: Path = Path(tempfile.gettempdir())
    max_body: int = 2**20
    blocking: Blocking | None = None
    token: bytes | None = None
    _lost = False

    def gotLength(self, length: int | None) -> None:
        """Choose where the body goes, once its declared length (if any) is known."""
        self.body_size = 0
        self.body_too_large = length is not None and length > self.max_body
        self.body_dropped = not self.wants_body()
        self.body_error: str | None = None
        self._queue: list[Any] = []  # chunks of bytes, or _TRUNCATE
        self._waiting = 0  # bytes received and not yet written
        self._writing = False
        self._paused = False
        self._received: tuple[bytes, bytes, bytes] | None = None
        content: IO[bytes] = io.BytesIO()
        if not (self.body_too_large or self.body_dropped or (length is not None and length <= IN_MEMORY)):
            try:
                makedirs(str(self.spool_dir), 0o700)
                content = tempfile.NamedTemporaryFile(dir=self.spool_dir, prefix=".body-")
            except OSError:  # a read-only or failed disk: the body is read and dropped, answered 500
                failure = Failure()
                log.failure("admin API: cannot spool a request body", failure)
                self.body_error = failure.getErrorMessage()
        self.content = content
        self._threaded = self.blocking is not None and not isinstance(content, io.BytesIO)

    def wants_body(self) -> bool:
        """Whether the body would be kept: not without the site's bearer token (its body is
        read and dropped, and the router answers 401). The connection asks it of a request
        that expects ``100 Continue`` (:class:`~gateway.httpchannels.ClosingChannel`): one
        whose body is not wanted is answered without being invited to send it."""
        if self.token is None:
            return True
        given = bearer(self.requestHeaders.getRawHeaders(b"authorization", [None])[0])
        return bool(given) and hmac.compare_digest(given, self.token)

    def handleContentChunk(self, data: bytes) -> None:
        """Queue a chunk of the body for the disk, unless the body is already too large."""
        self.body_size += len(data)
        if self.body_too_large or self.body_dropped or self.body_error is not None:
            return
        if self.body_size > self.max_body:
            self.body_too_large = True
            self._waiting -= _size(self._queue)
            self._queue = [_TRUNCATE]  # give the disk space back at once
        elif data:
            self._queue.append(data)
            self._waiting += len(data)
        if not self._threaded:
            self._write(self._take())
            return
        if self._waiting > HIGH_WATER and not self._paused:
            self._paused = True
            self._network().pauseProducing()
        self._kick()

    def _network(self) -> Any:
        # The connection as a producer, as HTTPChannel itself pauses and resumes it.
        return IPushProducer(self.channel.transport)

    def _take(self) -> list[Any]:
        batch, self._queue = self._queue, []
        return batch

    def _write(self, batch: list[Any]) -> None:
        for chunk in batch:
            if chunk is _TRUNCATE:
                self.content.seek(0)
                self.content.truncate()
            else:
                self.content.write(chunk)

    def _kick(self) -> None:
        if self._writing or not self._queue:
            return
        batch = self._take()
        self._writing = True
        assert self.blocking is not None
        self.blocking(lambda: self._write(batch)).addCallbacks(
            lambda _: self._written(batch), lambda failure: self._failed(batch, failure))

    def _failed(self, batch: list[Any], failure: Failure) -> None:
        if self.body_error is None:
            log.failure("admin API: cannot spool a request body", failure)
            self.body_error = failure.getErrorMessage()
        self._written(batch)

    def _written(self, batch: list[Any]) -> None:
        self._writing = False
        self._waiting -= _size(batch)
        if self._paused and self._waiting < LOW_WATER and self._received is None:
            self._paused = False
            self._network().resumeProducing()
        if self._queue:
            self._kick()
        elif self._received is not None and not self._writing:
            received, self._received = self._received, None
            if not self._lost:
                super().requestReceived(*received)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        """Process the request once its whole body is on disk, never parsing it as a form.

        twisted.web would read a form-encoded or multipart body whole into memory to fill
        ``args`` (curl's ``--data-binary`` says ``application/x-www-form-urlencoded`` unless
        told otherwise); the admin API takes JSON or a raw package, so those content types
        are dropped here and the body is left where it is.
        """
        kind = (self.requestHeaders.getRawHeaders(b"content-type") or [b""])[0].lower()
        if kind.startswith((b"application/x-www-form-urlencoded", b"multipart/form-data")):
            self.requestHeaders.removeHeader(b"content-type")
        if getattr(self, "_writing", False) or getattr(self, "_queue", None):
            # The channel has stopped reading for this request; it goes on once the disk has it all.
            self._received = (command, path, version)
            return
        super().requestReceived(command, path, version)

    def connectionLost(self, reason: Failure) -> None:
        """The client went away: a request still waiting for the disk is never processed."""
        self._lost = True
        super().connectionLost(reason)

    def body_path(self) -> Path | None:
        """The file the body was spooled to, or None when it is held in memory."""
        name = getattr(self.content, "name", None)
        return Path(name) if isinstance(name, str) else None


def _size(chunks: list[Any]) -> int:
    return sum(len(chunk) for chunk in chunks if chunk is not _TRUNCATE)


def bounded_request_factory(spool_dir: Path, max_body: int, blocking: Blocking | None = None,
                            token: bytes | None = None) -> Any:
    """A :class:`BoundedRequest` subclass for one site (``Site(requestFactory=...)``).

    :param spool_dir: where large bodies are written (created mode 0700 when needed).
    :param max_body: the largest body accepted, in bytes.
    :param blocking: runs the body's file writes off the reactor thread (None: inline).
    :param token: the site's bearer token: the body of a request without it is dropped.
    """
    return type("AdminRequest", (BoundedRequest,), {"spool_dir": spool_dir, "max_body": max_body,
                                                     "blocking": staticmethod(blocking) if blocking else None,
                                                     "token": token})
