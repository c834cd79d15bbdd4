"""Blocking file operations behind one small interface, and the one atomic writer and the one
``set_aside`` of the gateway's state files, written over it.

The journal does everything to the disk through a :class:`FileLayer`, so the tests can swap in
a layer that simulates a power cut (forgetting what was never fsynced); the services' state
files go through :class:`OSFiles`, the real one, by way of :mod:`gateway.atomic`. All of
its methods block: the journal calls them only from its dedicated I/O thread, the services
from a thread of their own.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from pathlib import Path
from typing import Callable, Iterable, Iterator, Protocol

from gateway.stateaccess import is_permission_error, refusal

#: Bytes :func:`write_atomic` gathers into one write.
WRITE_SIZE = 1 << 20

#: Free inodes below which a filesystem takes no new file for the gateway: :meth:`OSFiles.free_bytes`
#: says 0 bytes then (journal segments, cursors' and ledgers' temp files each need one).
MIN_FREE_INODES = 64


class FileLayer(Protocol):
    """Blocking file operations on paths (``str``)."""

    def makedirs(self, path: str) -> None:
        """Create ``path`` and its parents if missing, each one durably (its parent fsynced)."""

    def listdir(self, path: str) -> list[str]:
        """Names in directory ``path``."""

    def exists(self, path: str) -> bool:
        """Whether ``path`` exists."""

    def size(self, path: str) -> int:
        """Length of file ``path`` in bytes."""

    def read(self, path: str, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes of ``path`` from ``offset``; never waits for a writer (a
        named pipe in a file's place is an OSError): :func:`set_aside` reads to look."""

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
        """Create ``path`` afresh holding ``data`` (no fsync): a file already there (a temp
        file a crash left) is replaced by a new one, which keeps none of its mode or owner."""

    def replace(self, src: str, dst: str) -> None:
        """Rename ``src`` over ``dst`` atomically."""

    def unlink(self, path: str) -> None:
        """Remove file ``path``; a missing file is not an error."""

    def remove_tree(self, path: str) -> None:
        """Remove directory ``path`` and everything in it, closing the handles kept open in
        it first; a missing directory is not an error."""

    def fsync_dir(self, path: str) -> None:
        """Make the entries of directory ``path`` durable."""

    def free_bytes(self, path: str) -> int:
        """Bytes an unprivileged writer can still use on ``path``'s filesystem (0 when it can
        create no more files there: out of inodes)."""

    def close(self, path: str) -> None:
        """Drop any handle kept open on ``path``."""

    def close_all(self) -> None:
        """Drop every handle kept open."""


def write_atomic(files: FileLayer, path: str, parts: Iterable[bytes], temp: str | None = None) -> int:
    """Replace ``path`` with the bytes of ``parts`` so that a crash leaves the old or the new
    content: write a temporary file, fsync it, rename it over ``path``, fsync the directory
    (:func:`write_temporary`, then :func:`move_into_place`).

    :param files: the file layer (its files' mode is the new file's).
    :param path: the file to replace; its directory must exist.
    :param parts: the new content, in order.
    :param temp: the temporary file (default ``<path>.tmp``), beside ``path``.
    :return: the new content's size in bytes.
    """
    temp = path + ".tmp" if temp is None else temp
    size = write_temporary(files, temp, parts)
    move_into_place(files, temp, path)
    return size


def write_temporary(files: FileLayer, temp: str, parts: Iterable[bytes]) -> int:
    """The first half of :func:`write_atomic`: write ``temp`` and fsync it.

    The parts are taken one at a time, as they are written (a large state encoded a part at a
    time, so that the whole of it as bytes never exists at once), gathered into writes of
    about :data:`WRITE_SIZE` bytes. A write that fails (a full disk, a part that cannot be
    encoded) removes the temporary file again, best effort, so that no empty or partial one
    stays; the error raised is the write's.

    :return: the content's size in bytes.
    """
    try:
        chunks = _gathered(parts)
        first = next(chunks)
        files.write(temp, first)
        size = len(first)
        for chunk in chunks:
            files.append(temp, chunk)
            size += len(chunk)
        files.fsync(temp)
        files.close(temp)
    except BaseException:
        _remove_temporary(files, temp)
        raise
    return size


def move_into_place(files: FileLayer, temp: str, path: str) -> None:
    """The second half of :func:`write_atomic`: rename ``temp`` (written and fsynced by
    :func:`write_temporary`) over ``path`` and fsync the directory. A rename that fails
    removes ``temp``, best effort."""
    try:
        files.replace(temp, path)
    except BaseException:
        _remove_temporary(files, temp)
        raise
    files.fsync_dir(os.path.dirname(path))


def _remove_temporary(files: FileLayer, temp: str) -> None:
    try:
        files.unlink(temp)
    except OSError:
        pass  # (a disk that refuses that too: the error raised is the one that counts)


def _gathered(parts: Iterable[bytes]) -> Iterator[bytes]:
    """``parts`` joined into chunks of at least :data:`WRITE_SIZE` bytes, then the rest: at
    least one chunk (empty for no content), never an empty one after the first."""
    gathered: list[bytes] = []
    size = 0
    sent = False
    for part in parts:
        gathered.append(part)
        size += len(part)
        if size >= WRITE_SIZE:
            yield b"".join(gathered)
            gathered, size, sent = [], 0, True
    if gathered or not sent:
        yield b"".join(gathered)


def set_aside(files: FileLayer, path: str) -> str:
    """Move a state file the gateway cannot use (one it cannot parse; a directory, a named pipe
    or a loop of symbolic links in its place) to ``<path>.damaged``, so that the service starts
    without it, the next atomic write of ``path`` makes a fresh file (never over the damaged
    one) and a person can still look at it.

    A file the gateway's user may not read or move is not damaged: it is left as it is, and
    the caller stops (a service's start, a journal stream's open), saying what to do.

    :param files: the file layer.
    :param path: the unusable file.
    :return: where it is now, for the log: ``moved to <path>.damaged``, or why it was left.
    :raises StateAccessError: when the gateway's user may not read or move it (it says to
        give it back: :func:`~gateway.stateaccess.refusal`).
    """
    return move_aside(files, path)[1]


def move_aside(files: FileLayer, path: str) -> tuple[str | None, str]:
    """:func:`set_aside`, saying also where the file went.

    :return: ``<path>.damaged`` (``None``: the file was left where it is), and what
        :func:`set_aside` returns.
    :raises StateAccessError: as :func:`set_aside`.
    """
    try:
        files.read(path, 0, 0)
    except OSError as why:
        if is_permission_error(why):
            raise refusal(Path(path)) from why
    aside = path + ".damaged"
    try:
        try:
            files.replace(path, aside)
        except OSError as why:
            if why.errno not in _IN_THE_WAY:
                raise
            # An older <path>.damaged of another kind (a file where a directory goes, or a
            # directory with something in it) is in the way: the newer takes its place, as a
            # damaged file's does a file's. Left in the way, the unusable path stayed for good
            # (every write of it failing: a processes.json, a desired.json made a directory).
            _remove(files, aside)
            files.replace(path, aside)
    except OSError as why:
        if is_permission_error(why):  # (its directory's mode or owner)
            raise refusal(Path(path).parent) from why
        return None, f"left where it is: {why.strerror or why}"
    return aside, f"moved to {aside}"


#: What ``rename`` says when what it would replace is of another kind than what it moves.
_IN_THE_WAY = (errno.ENOTDIR, errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST)


def _remove(files: FileLayer, path: str) -> None:
    """Remove ``path``, a file or a directory with what it holds."""
    try:
        files.unlink(path)
    except IsADirectoryError:
        files.remove_tree(path)


#: ``pwritev`` flag for a write that returns once its data is durable (Linux 4.7+).
_RWF_DSYNC: int | None = getattr(os, "RWF_DSYNC", None)


class OSFiles:
    """:class:`FileLayer` on the real filesystem; keeps the descriptor of the file it appended
    to last in each directory (a journal stream's tail segment) open, and no other: a segment
    a stream has sealed is read through a descriptor of its own, closed after the read, so a
    backlog of thousands of segments holds no descriptor each.

    :param mode: the permissions of the files it creates, narrowed by the process's umask as
        for any file it creates (the .deb's unit sets ``UMask=0027``): ``0o600`` for secrets.
    :param statvfs: ``os.statvfs`` (tests pass a stand-in), for :meth:`free_bytes`.

    :meth:`append_sync` writes with ``pwritev(RWF_DSYNC)``: one system call instead of
    ``write`` and ``fsync``. That matters beyond the saved call: the journal's I/O
    thread must win back Python's GIL from the busy reactor thread after every call
    that blocks, so each call it saves is a wait it saves. Where the flag is missing or
    refused (an old kernel, a filesystem that does not take it) it falls back to the two
    calls, and remembers.
    """

    def __init__(self, mode: int = 0o640, statvfs: Callable[[str], os.statvfs_result] = os.statvfs) -> None:
        self._statvfs = statvfs
        self._fds: dict[str, int] = {}
        self._kept: dict[str, str] = {}  # directory -> the file whose descriptor _fd keeps there
        self._dsync = _RWF_DSYNC
        self._mode = mode

    def _fd(self, path: str) -> int:
        fd = self._fds.get(path)
        if fd is None:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, self._mode)
            self._fds[path] = fd
            directory = os.path.dirname(path)
            before = self._kept.get(directory)
            self._kept[directory] = path
            if before is not None and before != path:
                self.close(before)
        return fd

    def makedirs(self, path: str) -> None:
        """See :class:`FileLayer`."""
        makedirs_durably(path)

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
        # (O_NONBLOCK: a named pipe in a file's place fails at the seek, it does not wait for a writer)
        with open(path, "rb", opener=_open_nonblocking) as f:
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
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC
        try:
            fd = os.open(path, flags, self._mode)
        except FileExistsError:
            os.unlink(path)
            fd = os.open(path, flags, self._mode)
        self._fds[path] = fd
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

    def remove_tree(self, path: str) -> None:
        """See :class:`FileLayer`."""
        inside = os.path.join(path, "")
        for kept in [p for p in self._fds if p.startswith(inside)]:
            self.close(kept)
        try:
            shutil.rmtree(path)
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
        """See :class:`FileLayer`: 0 while fewer than :data:`MIN_FREE_INODES` inodes are free
        (a small flash filesystem full of small files), whatever the bytes; a filesystem that
        does not count inodes (``f_files`` 0) is never out of them."""
        st = self._statvfs(path)
        if 0 < st.f_files and st.f_favail < MIN_FREE_INODES:
            return 0
        return st.f_bavail * st.f_frsize

    def close(self, path: str) -> None:
        """See :class:`FileLayer`."""
        fd = self._fds.pop(path, None)
        directory = os.path.dirname(path)
        if self._kept.get(directory) == path:
            del self._kept[directory]
        if fd is not None:
            os.close(fd)

    def close_all(self) -> None:
        """Close every descriptor kept open."""
        for path in list(self._fds):
            self.close(path)


#: The permissions of a directory the gateway makes, unless it names others: never writable
#: by the group or by every user, whatever the process's umask (under ``umask 0`` a default of
#: 0777 let every user put their own files in place of the gateway's).
DIRECTORY_MODE = 0o755

#: The permission bits a directory the gateway makes never has, whatever mode it is asked for.
_NEVER = stat.S_IWGRP | stat.S_IWOTH


def makedirs(path: str, mode: int = DIRECTORY_MODE) -> list[str]:
    """Create directory ``path`` and its missing parents (as ``mkdir -p``), none of them
    writable by the group or by every user whatever the umask (which may narrow them
    further). Blocks.

    :param path: the directory.
    :param mode: the permissions of ``path`` if made, less group and world write; its
        parents get :data:`DIRECTORY_MODE`.
    :return: the directories made, ``path`` first.
    :raises OSError: as :func:`os.makedirs` (a file in its place: ``FileExistsError``; one
        in a parent's place: ``NotADirectoryError``).
    """
    made: list[str] = []
    here = os.path.abspath(path)
    while not os.path.lexists(here):
        made.append(here)
        here = os.path.dirname(here)
    if not made and not os.path.isdir(here):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), path)
    for directory in reversed(made):
        try:
            os.mkdir(directory, (mode if directory == made[0] else DIRECTORY_MODE) & ~_NEVER)
        except FileExistsError:
            if not os.path.isdir(directory):
                raise
    return made


def makedirs_durably(path: str, mode: int = DIRECTORY_MODE) -> None:
    """Create directory ``path`` and its missing parents (:func:`makedirs`), and fsync the
    parent of each one made, so that a power cut cannot take a directory (and every file in
    it, fsynced or not) that the gateway went on to use. Blocks.

    :param path: the directory.
    :param mode: the permissions of ``path`` if made, as :func:`makedirs` gives them.
    :raises OSError: as :func:`makedirs`.
    """
    files = OSFiles()
    for directory in makedirs(path, mode):
        files.fsync_dir(os.path.dirname(directory))


def sync_tree(path: str) -> None:
    """fsync every regular file and directory under ``path`` (``path`` too) and ``path``'s
    parent, so that a tree written without fsyncs (an unpacked package) survives a power cut
    whole before anything points at it. Symbolic links are not followed (their entries are
    made durable by their directory's fsync). Blocks.

    :param path: the directory.
    :raises OSError: when a file cannot be opened or fsynced.
    """
    files = OSFiles()
    for here, _, names in os.walk(path, topdown=False):
        for name in names:
            full = os.path.join(here, name)
            if stat.S_ISREG(os.lstat(full).st_mode):
                fd = os.open(full, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        files.fsync_dir(here)
    files.fsync_dir(os.path.dirname(os.path.abspath(path)))


def _open_nonblocking(path: str, flags: int) -> int:
    """The opener of :meth:`OSFiles.read`: ``os.open`` without waiting for a named pipe's writer."""
    return os.open(path, flags | os.O_NONBLOCK | os.O_NOCTTY)
