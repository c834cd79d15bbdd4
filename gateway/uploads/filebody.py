"""Streaming a file (or a byte range of it) as an HTTP body, hashing it on the way, and the
thread-side helpers: a file's identity (size, mtime) and its digests before sending."""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from twisted.internet.defer import Deferred
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer


@dataclass(frozen=True)
class FileIdentity:
    """What says a file did not change: its size and modification time in nanoseconds."""

    size: int
    mtime_ns: int


def identify(path: str) -> FileIdentity:
    """Stat ``path`` (blocking).

    :raises OSError: when it cannot be read.
    """
    st = os.stat(path)
    return FileIdentity(st.st_size, st.st_mtime_ns)


@dataclass
class Digests:
    """A file's MD5 (base64, as Content-MD5 wants it) and SHA-256 (hex), and the base64 MD5 of
    each block when it was read in blocks."""

    md5: str
    sha256: str
    blocks: list[str] = field(default_factory=list)

    @property
    def sha256_base64(self) -> str:
        """SHA-256 as S3's ``x-amz-checksum-sha256`` wants it."""
        return base64.b64encode(bytes.fromhex(self.sha256)).decode()


def digest_file(path: str, block_size: int | None = None, read_size: int = 1 << 20) -> Digests:
    """Read ``path`` once (blocking: run it in a thread) for MD5, SHA-256 and block MD5s.

    :param path: the file.
    :param block_size: also hash each block of this size (for Azure's Put Block).
    :param read_size: bytes per read.
    """
    md5, sha = hashlib.md5(), hashlib.sha256()
    blocks: list[str] = []
    block = hashlib.md5()
    in_block = 0
    with open(path, "rb") as f:
        while chunk := f.read(read_size if block_size is None else min(read_size, block_size - in_block)):
            md5.update(chunk)
            sha.update(chunk)
            if block_size is not None:
                block.update(chunk)
                in_block += len(chunk)
                if in_block == block_size:
                    blocks.append(base64.b64encode(block.digest()).decode())
                    block, in_block = hashlib.md5(), 0
    if block_size is not None and in_block:
        blocks.append(base64.b64encode(block.digest()).decode())
    return Digests(base64.b64encode(md5.digest()).decode(), sha.hexdigest(), blocks)


@implementer(IBodyProducer)
class HashingFileBody:
    """An HTTP body read from ``path`` in chunks while the transport wants them, hashing MD5
    and SHA-256 in the same pass (a chunk being read and one read ahead, never the whole file).

    Each read (and its hashing: hashlib releases the GIL) runs through ``run_blocking``, off
    the reactor thread, so a slow disk never stalls the reactor; the reactor only hands the
    chunk to the transport. Backpressure: a paused producer reads one chunk ahead and then
    waits to be resumed.

    :param path: the file.
    :param run_blocking: runs one read in a thread.
    :param offset: where the body starts.
    :param length: how many bytes it has.
    :param chunk_size: bytes per read and write.
    :param on_bytes: called with the number of bytes handed to the transport.
    """

    def __init__(self, path: str, run_blocking: Callable[..., Deferred[Any]], offset: int, length: int,
                 chunk_size: int, on_bytes: Callable[[int], None] | None = None) -> None:
        self.path = path
        self.length = length
        self._offset = offset
        self._run_blocking = run_blocking
        self._chunk_size = chunk_size
        self._on_bytes = on_bytes
        self._md5, self._sha = hashlib.md5(), hashlib.sha256()
        self._file: BinaryIO | None = None
        self._consumer: Any = None
        self._done: Deferred[None] | None = None
        self._remaining = length  # not yet handed to the transport
        self._to_read = length  # not yet read
        self._ready: bytes | None = None  # read ahead, waiting for the transport
        self._reading = False
        self._pumping = False
        self._paused = False
        self._stopped = False
        self.sent = 0

    def digests(self) -> Digests:
        """The digests of the bytes produced so far (all of them once the body is sent)."""
        return Digests(base64.b64encode(self._md5.digest()).decode(), self._sha.hexdigest())

    def startProducing(self, consumer: Any) -> Deferred[None]:
        """Write the range to ``consumer``; fires when all of it was written."""
        self._file = open(self.path, "rb")
        self._file.seek(self._offset)
        self._consumer = consumer
        self._done = done = Deferred()
        if self.length == 0:
            self._finish(None)
        else:
            self._pump()
        return done

    def _read(self, size: int) -> bytes:
        """In a thread: the next chunk, hashed."""
        assert self._file is not None
        chunk = self._file.read(size)
        self._md5.update(chunk)
        self._sha.update(chunk)
        return chunk

    def _pump(self) -> None:
        """Hand the chunk read ahead to the transport unless paused; keep one read ahead, also
        while paused, so the socket never waits for the disk after a resume."""
        if self._pumping:
            return  # re-entered from a read that completed synchronously: the loop goes on
        self._pumping = True
        try:
            while not self._stopped and self._done is not None:
                if self._ready is not None and not self._paused:
                    chunk, self._ready = self._ready, None
                    self._deliver(chunk)
                    continue
                if self._reading or self._ready is not None or self._to_read <= 0:
                    break
                self._reading = True
                d = self._run_blocking(self._read, min(self._chunk_size, self._to_read))
                d.addCallbacks(self._got, self._failed)
        finally:
            self._pumping = False

    def _got(self, chunk: bytes) -> None:
        self._reading = False
        if self._stopped:
            self._close()
            return
        if not chunk:
            self._failed(OSError(f"{self.path} ended {self._to_read} bytes early: it changed while being sent"))
            return
        self._to_read -= len(chunk)
        self._ready = chunk
        self._pump()

    def _deliver(self, chunk: bytes) -> None:
        self._remaining -= len(chunk)
        self._consumer.write(chunk)
        self.sent += len(chunk)
        if self._on_bytes is not None:
            self._on_bytes(len(chunk))
        if self._remaining <= 0:
            self._finish(None)

    def _failed(self, reason: Any) -> None:
        self._reading = False
        self._finish(reason)

    def _finish(self, failure: Any) -> None:
        self._close()
        done, self._done = self._done, None
        if done is not None and not self._stopped:
            done.errback(failure) if failure is not None else done.callback(None)

    def _close(self) -> None:
        if self._file is not None and not self._reading:
            self._file.close()
            self._file = None

    def pauseProducing(self) -> None:
        """The transport's buffer is full: start no new read."""
        self._paused = True

    def resumeProducing(self) -> None:
        """The transport drained: read again."""
        self._paused = False
        if self._done is not None:
            self._pump()

    def stopProducing(self) -> None:
        """The request is abandoned: stop for good (its Deferred is not fired; the file is
        closed once a read in flight returns)."""
        self._stopped = True
        self._ready = None
        self._close()
