"""Streaming a file (or a byte range of it) as an HTTP body, hashing it on the way, and the
thread-side helpers: a file's identity (size, mtime) and its digests before sending."""

from __future__ import annotations

import base64
import hashlib
import os
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

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
    """An HTTP body read from ``path`` while the transport wants it, hashing MD5 and SHA-256
    in the same pass, never holding more than ``ahead`` chunks.

    One reader runs in a thread (through ``run_blocking``) for the whole body: it reads and
    hashes chunk after chunk (hashlib and file reads release the GIL) and hands each to the
    reactor with ``call_from_thread``; it waits only when ``ahead`` chunks are waiting for the
    transport. The reactor thread only writes chunks to the transport, so a slow disk never
    stalls it and no per-chunk thread hand-off sits between the disk and the socket.

    :param path: the file.
    :param run_blocking: runs the reader in a thread.
    :param call_from_thread: the reactor's ``callFromThread``.
    :param offset: where the body starts.
    :param length: how many bytes it has.
    :param chunk_size: bytes per read and write.
    :param on_bytes: called with the number of bytes handed to the transport.
    :param ahead: chunks read ahead at most.
    """

    def __init__(self, path: str, run_blocking: Callable[..., Deferred[Any]], call_from_thread: Callable[..., Any],
                 offset: int, length: int, chunk_size: int, on_bytes: Callable[[int], None] | None = None,
                 ahead: int = 3) -> None:
        self.path = path
        self.length = length
        self._offset = offset
        self._run_blocking = run_blocking
        self._call_from_thread = call_from_thread
        self._chunk_size = chunk_size
        self._on_bytes = on_bytes
        self._md5, self._sha = hashlib.md5(), hashlib.sha256()
        self._slots = threading.Semaphore(ahead)
        self._queue: deque[bytes] = deque()
        self._consumer: Any = None
        self._done: Deferred[None] | None = None
        self._remaining = length  # not yet handed to the transport
        self._paused = False
        self._stopped = False
        self.sent = 0

    def digests(self) -> Digests:
        """The digests of the bytes produced so far (all of them once the body is sent)."""
        return Digests(base64.b64encode(self._md5.digest()).decode(), self._sha.hexdigest())

    def startProducing(self, consumer: Any) -> Deferred[None]:
        """Write the range to ``consumer``; fires when all of it was written."""
        self._consumer = consumer
        self._done = done = Deferred[None]()
        if self.length == 0:
            self._finish(None)
        else:
            self._run_blocking(self._read_all).addErrback(self._finish)
        return done

    def _read_all(self) -> None:
        """In a thread: read, hash and hand over every chunk, ``ahead`` at most waiting."""
        left = self.length
        with open(self.path, "rb") as f:
            f.seek(self._offset)
            while left > 0:
                self._slots.acquire()
                if self._stopped:
                    return
                chunk = f.read(min(self._chunk_size, left))
                if not chunk:
                    raise OSError(f"{self.path} ended {left} bytes early: it changed while being sent")
                self._md5.update(chunk)
                self._sha.update(chunk)
                left -= len(chunk)
                self._call_from_thread(self._arrived, chunk)

    def _arrived(self, chunk: bytes) -> None:
        self._queue.append(chunk)
        self._pump()

    def _pump(self) -> None:
        while self._queue and not self._paused and not self._stopped and self._done is not None:
            chunk = self._queue.popleft()
            self._slots.release()
            self._remaining -= len(chunk)
            self._consumer.write(chunk)  # may pause us at once
            self.sent += len(chunk)
            if self._on_bytes is not None:
                self._on_bytes(len(chunk))
            if self._remaining <= 0:
                self._finish(None)

    def _finish(self, failure: Any) -> None:
        done, self._done = self._done, None
        if done is not None and not self._stopped:
            done.errback(failure) if failure is not None else done.callback(None)

    def pauseProducing(self) -> None:
        """The transport's buffer is full: write nothing until resumed (the reader goes on
        until ``ahead`` chunks wait)."""
        self._paused = True

    def resumeProducing(self) -> None:
        """The transport drained: write what was read ahead."""
        self._paused = False
        self._pump()

    def stopProducing(self) -> None:
        """The request is abandoned: stop for good (its Deferred is not fired); the reader
        ends at its next chunk."""
        self._stopped = True
        self._queue.clear()
        self._slots.release()
