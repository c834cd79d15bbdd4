"""The ``.part`` file of one download and its persisted metadata (the resume point).

Every method except the constructor blocks on disk: the downloader calls them through its
``run_blocking`` (a thread in production), one at a time per download.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from twisted.logger import Logger

from gateway.atomic import fsync_directory, read_json, set_aside, write_json_atomically
from gateway.filelayer import makedirs_durably
from gateway.shown import shown_repr
from gateway.updates.digests import DigestChecker

#: What a download's file is called until it is complete and verified (the gateway appends to it).
PART_SUFFIX = ".part"

_IOV_MAX = 512

log = Logger()


@dataclass
class PartMeta:
    """What is persisted beside a ``.part`` file.

    :param url: the URL the bytes come from.
    :param size: the announced size, or the server's total once known.
    :param digests: normalised announced digests.
    :param etag: the server's ETag for the bytes on disk.
    :param last_modified: the server's Last-Modified for them.
    :param durable: how many leading bytes of the part are fsynced (the resume point).
    """

    url: str
    size: int | None = None
    digests: dict[str, str] = field(default_factory=dict)
    etag: str | None = None
    last_modified: str | None = None
    durable: int = 0

    @classmethod
    def from_json(cls, value: Any) -> PartMeta:
        """The metadata persisted by :class:`PartFile` (a key it lacks takes its default, but
        ``url``).

        :param value: the decoded ``.part.json``.
        :raises ValueError: for anything of another shape (a file damaged from outside).
        """
        if not isinstance(value, dict):
            raise ValueError("not an object")
        saved = {name: value[name] for name in _FIELDS if name in value}
        for name, ok in _FIELDS.items():
            if name in saved and not ok(saved[name]):
                raise ValueError(f"{name}: {shown_repr(saved[name])} is not what a download saves there")
        if "url" not in saved:
            raise ValueError("url: missing")
        return cls(**saved)


def _byte_count(value: object) -> bool:
    """Whether ``value`` is a count of bytes (an int, not a bool, not negative)."""
    return type(value) is int and value >= 0


#: What each field of a saved :class:`PartMeta` may hold.
_FIELDS: dict[str, Callable[[Any], bool]] = {
    "url": lambda v: isinstance(v, str),
    "size": lambda v: v is None or _byte_count(v),
    "digests": lambda v: isinstance(v, dict) and all(isinstance(d, str) for d in v.values()),
    "etag": lambda v: v is None or isinstance(v, str),
    "last_modified": lambda v: v is None or isinstance(v, str),
    "durable": _byte_count,
}


def _saved_meta(path: Path) -> PartMeta | None:
    """The metadata an earlier run saved at ``path``, or None when there is none. A file the
    gateway cannot have written (not JSON, not of :class:`PartMeta`'s shape, a directory in
    its place) is logged as an error and set aside (``<name>.damaged``): the download starts
    over rather than failing, and the next checkpoint writes a fresh one."""
    try:
        saved = read_json(path)
        return None if saved is None else PartMeta.from_json(saved)
    except (OSError, ValueError) as error:
        log.error("download: cannot resume from {path}: {error}; {kept}; starting over", path=str(path),
                  error=str(error) or type(error).__name__, kept=set_aside(path))
        return None


def _write_all(fd: int, chunks: Sequence[bytes]) -> None:
    for start in range(0, len(chunks), _IOV_MAX):
        group = chunks[start:start + _IOV_MAX]
        total = sum(len(c) for c in group)
        done = os.writev(fd, group)
        if done < total:  # rare short write: finish the rest the simple way
            rest = memoryview(b"".join(group))[done:]
            while rest:
                rest = rest[os.write(fd, rest):]


class PartFile:
    """A download's part file: appends and hashes batches, checkpoints the resume point.

    :param destination: where the verified file ends up; the part is ``<destination>.part``
        and its metadata ``<destination>.part.json``.
    :param meta: metadata for a fresh download (URL, announced size and digests).
    :param checkpoint_bytes: bytes written between two fsync + metadata checkpoints.
    """

    def __init__(self, destination: Path, meta: PartMeta, checkpoint_bytes: int) -> None:
        self.destination = destination
        self.path = destination.with_name(destination.name + PART_SUFFIX)
        self.meta_path = destination.with_name(destination.name + ".part.json")
        self.meta = meta
        self.checker = DigestChecker(meta.digests)
        self.written = 0
        #: Bytes written between two fsyncs that move the durable resume point.
        self.checkpoint_bytes = checkpoint_bytes
        self._fd: int | None = None

    def destination_verified(self) -> bool:
        """True when the destination already holds the announced file (downloaded before).

        Only files with an announced digest are reused; the digest is checked again.
        """
        if self.checker.expected is None or not self.destination.exists():
            return False
        size = self.destination.stat().st_size
        if self.meta.size not in (None, size):
            return False
        self.checker.rehash_file(self.destination, size)
        verified = self.checker.matches()
        self.checker.reset()
        self.written = size if verified else 0
        return verified

    def open(self) -> int:
        """Open the part, keeping the durable bytes of an earlier run for the same artifact.

        Bytes past the durable point may be garbage after a power cut, so they are cut off;
        the kept bytes are re-hashed. Metadata of another shape is set aside, and the download
        starts over (:func:`_saved_meta`).

        :return: the offset to resume from.
        """
        makedirs_durably(str(self.destination.parent))
        saved = _saved_meta(self.meta_path)
        keep = 0
        if (
            saved is not None
            and saved.url == self.meta.url
            and saved.digests == self.meta.digests
            and self.path.exists()
            and self.path.stat().st_size >= saved.durable
        ):
            keep = saved.durable
            self.meta.etag = saved.etag
            self.meta.last_modified = saved.last_modified
            self.meta.size = self.meta.size or saved.size
        # the gateway user's alone: an artifact may hold secrets (a container description's env);
        # a part an older version left 0644 is narrowed too (O_CREAT's mode is a new file's alone)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600)
        os.fchmod(self._fd, 0o600)
        os.ftruncate(self._fd, keep)
        os.lseek(self._fd, keep, os.SEEK_SET)
        self.checker.rehash_file(self.path, keep)
        self.written = self.meta.durable = keep
        if not keep:
            self.meta.etag = self.meta.last_modified = None
        self._persist_meta()
        return keep

    def hash_chunks(self, chunks: Sequence[bytes]) -> None:
        """Feed the next chunks to the digest.

        It may run in one thread while :meth:`write_chunks` writes the same chunks in another
        (both release the GIL), but never alongside another call of itself.

        :param chunks: body pieces, in order.
        """
        self.checker.update_all(chunks)

    def write_chunks(self, chunks: Sequence[bytes]) -> None:
        """Write the next chunks at the end.

        :param chunks: body pieces, in order.
        """
        assert self._fd is not None
        _write_all(self._fd, chunks)
        self.written += sum(len(c) for c in chunks)

    def sync_to(self, length: int) -> None:
        """fsync, then record ``length`` (bytes written before this call began) as durable.

        It may run while :meth:`write_chunks` appends more: those bytes are simply not
        counted yet.

        :param length: the value of :attr:`written` read before calling.
        """
        assert self._fd is not None
        os.fsync(self._fd)
        if length > self.meta.durable:
            self.meta.durable = length
            self._persist_meta()

    def checkpoint(self) -> None:
        """fsync the part, then record its length as the durable resume point."""
        assert self._fd is not None
        os.fsync(self._fd)
        self.meta.durable = self.written
        self._persist_meta()

    def restart(self, etag: str | None, last_modified: str | None) -> None:
        """Throw the bytes away and start over (the server sent the whole file anew).

        :param etag: the ETag of the new response.
        :param last_modified: its Last-Modified.
        """
        assert self._fd is not None
        os.ftruncate(self._fd, 0)
        os.lseek(self._fd, 0, os.SEEK_SET)
        self.checker.reset()
        self.written = self.meta.durable = 0
        self.meta.etag, self.meta.last_modified = etag, last_modified
        self._persist_meta()

    def finish(self) -> bool:
        """fsync and check the digest; when it matches, move the part to its destination.

        :return: True when the file was verified and moved; False when the digest did not
            match (the part is deleted).
        """
        self.close()
        if not self.checker.matches():
            self.discard()
            return False
        os.replace(self.path, self.destination)
        self.meta_path.unlink(missing_ok=True)
        fsync_directory(self.destination.parent)
        return True

    def close(self) -> None:
        """Checkpoint and close the part file (it stays on disk for a later resume).

        The part is closed even when the checkpoint fails (a full disk), which is raised: an
        open descriptor would keep the space of the part once it is deleted.
        """
        if self._fd is not None:
            try:
                self.checkpoint()
            finally:
                self._close_descriptor()

    def discard(self) -> None:
        """Close and delete the part and its metadata (without a checkpoint: they go)."""
        self._close_descriptor()
        self.path.unlink(missing_ok=True)
        self.meta_path.unlink(missing_ok=True)

    def _close_descriptor(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def _persist_meta(self) -> None:
        # 0600: the URL may carry a credential (a presigned URL's signature), as the
        # operation record that holds it too
        write_json_atomically(self.meta_path, asdict(self.meta), mode=0o600)
