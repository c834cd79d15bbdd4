"""Streaming a file (or a byte range of it) as an HTTP body, hashing it on the way, and the
thread-side helpers: a file's identity (size, mtime) and its digests before sending."""

from __future__ import annotations

import base64
import hashlib
import os
import queue
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred, succeed
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


class SideHasher:
    """Updates hash objects with the chunks handed to it, in a thread of its own, so the two
    digests of one stream are computed on two cores (``hashlib`` releases the GIL for
    buffers over 2 KiB): the caller's thread reads and feeds one, this thread the others.

    A plain thread, not one of the service's pool: a reader that waits for its side hasher
    must never wait for a pool slot that other readers hold.

    :param hashes: what each chunk updates, in order.
    :param depth: chunks waiting at most; :meth:`put` blocks beyond it (bounds the memory).
    """

    def __init__(self, hashes: list[Any], depth: int = 3) -> None:
        self._hashes = hashes
        self._queue: queue.Queue[bytes | None] = queue.Queue(depth)
        self._thread = threading.Thread(target=self._run, name="upload-hash", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (chunk := self._queue.get()) is not None:
            for h in self._hashes:
                h.update(chunk)

    def put(self, chunk: bytes) -> None:
        """Hash ``chunk`` after the ones before it (blocks while ``depth`` chunks wait)."""
        self._queue.put(chunk)

    def close(self) -> None:
        """Hash what is queued, then end the thread (blocking until it has)."""
        self._queue.put(None)
        self._thread.join()


class _BlockMD5:
    """MD5 of the whole stream and of each ``block_size`` block of it (Azure's Put Block)."""

    def __init__(self, md5: Any, block_size: int | None) -> None:
        self.md5 = md5
        self.block_size = block_size
        self.blocks: list[str] = []
        self._block = hashlib.md5()
        self._in_block = 0

    def update(self, chunk: bytes) -> None:
        """Hash ``chunk`` into the whole and into the blocks it spans."""
        self.md5.update(chunk)
        if self.block_size is None:
            return
        view = memoryview(chunk)
        while view:
            part = view[:self.block_size - self._in_block]
            self._block.update(part)
            self._in_block += len(part)
            view = view[len(part):]
            if self._in_block == self.block_size:
                self.close_block()

    def close_block(self) -> None:
        """End the block being hashed (the last, shorter one)."""
        if self._in_block:
            self.blocks.append(base64.b64encode(self._block.digest()).decode())
            self._block, self._in_block = hashlib.md5(), 0


def digest_file(path: str, block_size: int | None = None, read_size: int = 1 << 20) -> Digests:
    """Read ``path`` once (blocking: run it in a thread) for MD5, SHA-256 and block MD5s.

    The calling thread reads and hashes SHA-256; a :class:`SideHasher` thread hashes MD5 (and
    the block MD5s) at the same time.

    :param path: the file.
    :param block_size: also hash each block of this size (for Azure's Put Block).
    :param read_size: bytes per read.
    """
    md5, sha = _BlockMD5(hashlib.md5(), block_size), hashlib.sha256()
    side: SideHasher | None = None
    try:
        with open(path, "rb") as f:
            while chunk := f.read(read_size):
                if side is None and len(chunk) == read_size:  # more than one read: worth a thread
                    side = SideHasher([md5])
                if side is not None:
                    side.put(chunk)
                else:
                    md5.update(chunk)
                sha.update(chunk)
    finally:
        if side is not None:
            side.close()
    md5.close_block()
    return Digests(base64.b64encode(md5.md5.digest()).decode(), sha.hexdigest(), md5.blocks)


#: Bytes per write to the transport, whatever ``chunk_size`` is: what a transport buffers
#: before it pauses its producer (Twisted's ``bufferSize``), so that a slow link shows the
#: bytes moving every slice (every 26 s at 20 kbit/s) rather than every chunk (1 MiB: 7 min).
WRITE_SLICE = 1 << 16


@implementer(IBodyProducer)
class HashingFileBody:
    """An HTTP body read from ``path`` while the transport wants it, hashing MD5 and SHA-256
    in the same pass, never holding more than ``ahead`` chunks.

    One reader runs in a thread (through ``run_blocking``) for the whole body: it reads chunk
    after chunk, hands each to the reactor with ``call_from_thread`` at once, then hashes it
    (SHA-256) while a :class:`SideHasher` thread hashes MD5; it waits only when ``ahead``
    chunks are waiting for the transport or the side hasher. So the socket, SHA-256 and MD5
    each have a core's worth of time, the reactor thread only writes chunks, and a slow disk
    never stalls it. The body's Deferred fires once every byte was written *and* hashed.

    :param path: the file.
    :param run_blocking: runs the reader in a thread.
    :param call_from_thread: the reactor's ``callFromThread``.
    :param offset: where the body starts.
    :param length: how many bytes it has.
    :param chunk_size: bytes per read (written :data:`WRITE_SLICE` bytes at a time).
    :param on_bytes: called with the number of bytes handed to the transport, at each write.
    :param ahead: chunks read ahead at most.
    :param hashing: hash the bytes (off for a range whose digest nobody reads: an Azure
        block, which the service checks against the block's Content-MD5 hashed before).
    """

    def __init__(self, path: str, run_blocking: Callable[..., Deferred[Any]], call_from_thread: Callable[..., Any],
                 offset: int, length: int, chunk_size: int, on_bytes: Callable[[int], None] | None = None,
                 ahead: int = 3, hashing: bool = True) -> None:
        self.path = path
        self.length = length
        self._offset = offset
        self._run_blocking = run_blocking
        self._call_from_thread = call_from_thread
        self._chunk_size = chunk_size
        self._on_bytes = on_bytes
        self._ahead = ahead
        self._hashing = hashing
        self._md5, self._sha = hashlib.md5(), hashlib.sha256()
        self._slots = threading.Semaphore(ahead)
        self._queue: deque[bytes] = deque()
        self._writing = b""  # the chunk being written, a slice at a time
        self._written = 0  # its bytes written so far
        self._consumer: Any = None
        self._done: Deferred[None] | None = None
        self._remaining = length  # not yet handed to the transport
        self._hashed = False  # the reader (and its side hasher) ended
        self._hash_waiters: list[Deferred[Digests]] = []
        self._paused = False
        self._stopped = False
        self.sent = 0

    def digests(self) -> Digests:
        """The digests of the bytes hashed so far (all of them once the body's Deferred fired)."""
        return Digests(base64.b64encode(self._md5.digest()).decode(), self._sha.hexdigest())

    def when_hashed(self) -> Deferred[Digests]:
        """Fires with :meth:`digests` once the reader ended: every byte read was hashed (even
        when the transport stopped the body after its last byte)."""
        if self._hashed:
            return succeed(self.digests())
        d = Deferred[Digests]()
        self._hash_waiters.append(d)
        return d

    def startProducing(self, consumer: Any) -> Deferred[None]:
        """Write the range to ``consumer``; fires when all of it was written and hashed."""
        self._consumer = consumer
        self._done = done = Deferred[None]()
        if self.length == 0:
            self._hashed = True
            self._finish(None)
        else:
            self._run_blocking(self._read_all).addCallbacks(self._read_ended, self._read_failed)
        return done

    def _read_all(self) -> None:
        """In a thread: read, hand over and hash every chunk, ``ahead`` at most waiting."""
        left = self.length
        side = SideHasher([self._md5], self._ahead) if self._hashing and self.length > self._chunk_size else None
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                while left > 0:
                    self._slots.acquire()
                    if self._stopped:
                        return
                    chunk = f.read(min(self._chunk_size, left))
                    if not chunk:
                        raise OSError(f"{self.path} ended {left} bytes early: it changed while being sent")
                    left -= len(chunk)
                    self._call_from_thread(self._arrived, chunk)  # sent while it is hashed
                    if not self._hashing:
                        continue
                    if side is not None:
                        side.put(chunk)
                    else:
                        self._md5.update(chunk)
                    self._sha.update(chunk)
        finally:
            if side is not None:
                side.close()

    def _read_ended(self, _: None) -> None:
        self._hashed = True
        waiters, self._hash_waiters = self._hash_waiters, []
        for d in waiters:
            d.callback(self.digests())
        if self._remaining <= 0:
            self._finish(None)

    def _read_failed(self, failure: Any) -> None:
        waiters, self._hash_waiters = self._hash_waiters, []
        for d in waiters:
            d.errback(failure)
        self._finish(failure)

    def _arrived(self, chunk: bytes) -> None:
        self._queue.append(chunk)
        self._pump()

    def _pump(self) -> None:
        while (self._queue or self._writing) and not self._paused and not self._stopped and self._done is not None:
            if not self._writing:
                self._writing, self._written = self._queue.popleft(), 0
                self._slots.release()
            chunk, start = self._writing, self._written
            piece = chunk if start == 0 and len(chunk) <= WRITE_SLICE else chunk[start:start + WRITE_SLICE]
            self._written += len(piece)
            if self._written >= len(chunk):
                self._writing = b""
            self._remaining -= len(piece)
            self._consumer.write(piece)  # may pause us at once
            self.sent += len(piece)
            if self._on_bytes is not None:
                self._on_bytes(len(piece))
            if self._remaining <= 0 and self._hashed:
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
        self._writing = b""
        self._slots.release()
