"""Streaming a file (or a byte range of it) as an HTTP body, hashing it on the way, and the
thread-side helpers: a file's identity (size, mtime) and its digests before sending."""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from twisted.internet.defer import Deferred
from twisted.internet.task import Cooperator, SchedulerStopped, TaskDone, TaskFailed, TaskStopped
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
    and SHA-256 in the same pass (never more than one chunk in memory).

    The reads are small and sequential, so they run on the reactor thread between writes,
    as :class:`twisted.web.client.FileBodyProducer` does; the cooperator keeps each turn short.

    :param path: the file.
    :param cooperator: schedules the reads (built on the injected reactor).
    :param offset: where the body starts.
    :param length: how many bytes it has.
    :param chunk_size: bytes per read and write.
    :param on_bytes: called with the number of bytes handed to the transport.
    """

    def __init__(self, path: str, cooperator: Cooperator, offset: int, length: int, chunk_size: int,
                 on_bytes: Callable[[int], None] | None = None) -> None:
        self.path = path
        self.length = length
        self._offset = offset
        self._cooperator = cooperator
        self._chunk_size = chunk_size
        self._on_bytes = on_bytes
        self._md5, self._sha = hashlib.md5(), hashlib.sha256()
        self._file: BinaryIO | None = None
        self._task: Any = None
        self.sent = 0

    def digests(self) -> Digests:
        """The digests of the bytes produced so far (all of them once the body is sent)."""
        return Digests(base64.b64encode(self._md5.digest()).decode(), self._sha.hexdigest())

    def startProducing(self, consumer: Any) -> Deferred[None]:
        """Write the range to ``consumer``; fires when all of it was written."""
        self._file = open(self.path, "rb")
        self._file.seek(self._offset)
        self._task = self._cooperator.cooperate(self._chunks(consumer))
        d: Deferred[Any] = self._task.whenDone()
        d.addBoth(self._close)

        def stopped(reason: Any) -> Deferred[None]:
            reason.trap(TaskStopped)
            return Deferred()  # abandoned by stopProducing: the request fails on its own

        d.addCallbacks(lambda _: None, stopped)
        return d

    def _chunks(self, consumer: Any) -> Iterator[None]:
        assert self._file is not None
        remaining = self.length
        while remaining > 0:
            chunk = self._file.read(min(self._chunk_size, remaining))
            if not chunk:
                raise OSError(f"{self.path} ended {remaining} bytes early: it changed while being sent")
            remaining -= len(chunk)
            self._md5.update(chunk)
            self._sha.update(chunk)
            consumer.write(chunk)
            self.sent += len(chunk)
            if self._on_bytes is not None:
                self._on_bytes(len(chunk))
            yield None

    def _close(self, result: Any) -> Any:
        if self._file is not None:
            self._file.close()
            self._file = None
        return result

    def pauseProducing(self) -> None:
        """The transport's buffer is full: stop reading."""
        if self._task is not None:
            self._task.pause()

    def resumeProducing(self) -> None:
        """The transport drained: read again."""
        if self._task is not None:
            self._task.resume()

    def stopProducing(self) -> None:
        """The request is abandoned: stop for good (its Deferred is not fired)."""
        if self._task is not None:
            try:
                self._task.stop()
            except (TaskDone, TaskStopped, TaskFailed, SchedulerStopped):
                pass
        self._close(None)
