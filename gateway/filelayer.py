"""The file operations the journal uses, behind one small interface.

Everything the journal does to the disk goes through a :class:`FileLayer`, so the
tests can swap in a layer that simulates a power cut (forgetting what was never
fsynced). :class:`OSFiles` is the real one. All of its methods block; the journal
calls them only from its dedicated I/O thread.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Protocol

from gateway.stateaccess import is_permission_error, refusal


class FileLayer(Protocol):
    """Blocking file operations on paths (``str``)."""

    def makedirs(self, path: str) -> None:
        """Create ``path`` and its parents if missing."""

    def listdir(self, path: str) -> list[str]:
        """Names in directory ``path``."""

    def exists(self, path: str) -> bool:
        """Whether ``path`` exists."""

    def size(self, path: str) -> int:
        """Length of file ``path`` in bytes."""

    def read(self, path: str, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes of ``path`` from ``offset``."""

    def append(self, path: str, data: bytes) -> None:
        """Append ``data`` to ``path``, creating it if missing (no fsync)."""

    def append_sync(self, path: str, data: bytes) -> None:
        """Append ``data`` to ``path`` and make the file durable: :meth:`append` then
        :meth:`fsync`, in one system call where the OS can."""

    def fsync(self, path: str) -> None:
        """Make what was written to ``path`` durable."""

    def truncate(self, path: str, size: int) -> None:
        """Cut ``path`` to ``size`` bytes."""

    def write(self, path: str, data: bytes) -> None:
        """Create or replace the content of ``path`` with ``data`` (no fsync)."""

    def replace(self, src: str, dst: str) -> None:
        """Rename ``src`` over ``dst`` atomically."""

    def unlink(self, path: str) -> None:
        """Remove file ``path``; a missing file is not an error."""

    def fsync_dir(self, path: str) -> None:
        """Make the entries of directory ``path`` durable."""

    def free_bytes(self, path: str) -> int:
        """Bytes an unprivileged writer can still use on ``path``'s filesystem."""

    def close(self, path: str) -> None:
        """Drop any handle kept open on ``path``."""

    def close_all(self) -> None:
        """Drop every handle kept open."""


def write_atomic(files: FileLayer, path: str, data: bytes) -> None:
    """Replace ``path`` with ``data`` so a crash leaves the old or the new content.

    Write a temporary file, fsync it, rename it over ``path``, fsync the directory. A write
    the disk refuses (full) removes the temporary file again, best effort, so that no empty
    or partial ``<path>.tmp`` stays beside ``path`` until the next open.
    """
    tmp = path + ".tmp"
    try:
        files.write(tmp, data)
        files.fsync(tmp)
        files.close(tmp)
        files.replace(tmp, path)
    except OSError:
        try:
            files.unlink(tmp)
        except OSError:
            pass  # (a disk that refuses that too: the error raised is the one that counts)
        raise
    files.fsync_dir(os.path.dirname(path))


def set_aside(files: FileLayer, path: str) -> str:
    """Move a state file the journal cannot read (a directory or a loop of symbolic links in
    its place) to ``<path>.damaged``, so that the next atomic write of ``path`` makes a fresh
    file and a person can still look at it.

    A file the gateway's user may not read or move is not damaged: it is left as it is, and
    the stream's open fails, saying what to do (the same decision as
    :func:`gateway.atomic.set_aside`'s, through ``files``).

    :return: where it is now, for the log: ``moved to <path>.damaged``, or why it was left.
    :raises StateAccessError: when the gateway's user may not read or move it.
    """
    try:
        files.read(path, 0, 0)
    except OSError as why:
        if is_permission_error(why):
            raise refusal(Path(path)) from why
    aside = path + ".damaged"
    try:
        files.replace(path, aside)
    except OSError as why:
        if is_permission_error(why):  # (its directory's mode or owner)
            raise refusal(Path(path).parent) from why
        return f"left where it is: {why.strerror or why}"
    return f"moved to {aside}"


#: ``pwritev`` flag for a write that returns once its data is durable (Linux 4.7+).
_RWF_DSYNC: int | None = getattr(os, "RWF_DSYNC", None)


class OSFiles:
    """:class:`FileLayer` on the real filesystem; keeps one descriptor per file.

    :meth:`append_sync` writes with ``pwritev(RWF_DSYNC)``: one system call instead of
    ``write`` and ``fsync``. That matters beyond the saved call: the journal's I/O
    thread must win back Python's GIL from the busy reactor thread after every call
    that blocks, so each call it saves is a wait it saves. Where the flag is missing or
    refused (an old kernel, a filesystem that does not take it) it falls back to the two
    calls, and remembers.
    """

    def __init__(self) -> None:
        self._fds: dict[str, int] = {}
        self._dsync = _RWF_DSYNC

    def _fd(self, path: str) -> int:
        fd = self._fds.get(path)
        if fd is None:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
            self._fds[path] = fd
        return fd

    def makedirs(self, path: str) -> None:
        """See :class:`FileLayer`."""
        os.makedirs(path, exist_ok=True)

    def listdir(self, path: str) -> list[str]:
        """See :class:`FileLayer`."""
        return os.listdir(path)

    def exists(self, path: str) -> bool:
        """See :class:`FileLayer`."""
        return os.path.exists(path)

    def size(self, path: str) -> int:
        """See :class:`FileLayer`."""
        return os.stat(path).st_size

    def read(self, path: str, offset: int, length: int) -> bytes:
        """See :class:`FileLayer`."""
        fd = self._fds.get(path)
        if fd is not None:
            return os.pread(fd, length, offset)
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(length)

    def append(self, path: str, data: bytes) -> None:
        """See :class:`FileLayer`; a partial write raises (ENOSPC) after writing part."""
        fd = self._fd(path)
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            if written == 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
            view = view[written:]

    def append_sync(self, path: str, data: bytes) -> None:
        """See :class:`FileLayer`; a partial write raises (ENOSPC) after writing part."""
        flag = self._dsync
        if flag is None:
            self.append(path, data)
            self.fsync(path)
            return
        fd = self._fd(path)
        view = memoryview(data)
        while view:
            try:
                # -1: at the file's offset (it is opened O_APPEND, so at its end).
                written = os.pwritev(fd, [view], -1, flag)
            except OSError as e:
                if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL) or len(view) < len(data):
                    raise
                self._dsync = None  # this kernel or filesystem does not take the flag
                self.append_sync(path, data)
                return
            if written == 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
            view = view[written:]

    def fsync(self, path: str) -> None:
        """See :class:`FileLayer`."""
        os.fsync(self._fd(path))

    def truncate(self, path: str, size: int) -> None:
        """See :class:`FileLayer`."""
        os.truncate(path, size)

    def write(self, path: str, data: bytes) -> None:
        """See :class:`FileLayer`."""
        self.close(path)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o640)
        os.close(fd)
        self.append(path, data)

    def replace(self, src: str, dst: str) -> None:
        """See :class:`FileLayer`."""
        self.close(src)
        self.close(dst)
        os.replace(src, dst)

    def unlink(self, path: str) -> None:
        """See :class:`FileLayer`."""
        self.close(path)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass

    def fsync_dir(self, path: str) -> None:
        """See :class:`FileLayer`."""
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def free_bytes(self, path: str) -> int:
        """See :class:`FileLayer`."""
        st = os.statvfs(path)
        return st.f_bavail * st.f_frsize

    def close(self, path: str) -> None:
        """See :class:`FileLayer`."""
        fd = self._fds.pop(path, None)
        if fd is not None:
            os.close(fd)

    def close_all(self) -> None:
        """Close every descriptor kept open."""
        for path in list(self._fds):
            self.close(path)
