"""Per-program log files rotated by size, written off the reactor thread, under a global cap.

Regular files are always "ready" to select() and O_NONBLOCK does nothing for them, so a
write to a busy SD card blocks whoever calls it. The reactor therefore only appends to an
in-memory queue; one dedicated thread does every open, write, rename and unlink. The
queue is bounded (``max_pending`` bytes): an app that outpaces the disk loses output, and
the loss is counted and written into its log as a marker line, never silently.
"""

from __future__ import annotations

import contextlib
import errno
import os
import queue
import stat
import threading
from collections import deque
from pathlib import Path
from typing import IO, Any, Callable, NamedTuple

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from gateway.asciidigits import ascii_digits
from gateway.filelayer import makedirs
from gateway.stateaccess import is_permission_error, refusal

log = Logger()


class RotatingLog:
    """One log file rotated by size: ``path``, ``path.1`` ... ``path.<backups>``.

    Only the log writer's thread touches it.

    :param path: the current log file.
    :param maxbytes: rotate once the file reaches this size (at least 1; the writer turns
        supervisord's 0, "no limit", into its cap on all logs).
    :param backups: rotated files kept (0: the file is truncated instead).
    """

    def __init__(self, path: Path, maxbytes: int, backups: int) -> None:
        self.path = path
        self.maxbytes = maxbytes
        self.backups = backups
        self.dropped = 0
        #: the last write failed (a full disk): its warning was logged
        self.failing = False
        self._file: IO[bytes] | None = None
        self._size = 0
        self._regular = True
        #: sizes of ``path.1`` ... ``path.<backups>`` as last looked at and rotated since
        #: (0: none there); None until the writer has looked (:meth:`looked_at`)
        self._backup_sizes: list[int] | None = None
        #: the rotated files past ``backups`` have been deleted (at the first rotation)
        self._pruned = False

    def write(self, data: bytes) -> bool:
        """Append ``data``; rotate when the file has reached ``maxbytes``.

        What is not a regular file of its own at the path (``/dev/null``, ``/dev/stdout``, a
        named pipe, a symbolic link: a ``stdout_logfile`` written so) is written as it is and
        never rotated; a pipe that nobody reads, or that is full, takes what it can and the
        rest is dropped and counted, never waited for.

        :return: whether the file was rotated.
        """
        if self._file is None:
            self._open()
        assert self._file is not None
        if self.dropped:
            marker = f"\n[gateway: {self.dropped} bytes of output dropped]\n".encode()
            self._size += self._file.write(marker) or 0
            self.dropped = 0  # (once the marker is written: a failed write keeps counting)
        written = self._file.write(data) or 0
        self.dropped += len(data) - written
        self._size += written
        if not self._regular or self._size < self.maxbytes:
            return False
        self._rotate()
        return True

    def _open(self) -> None:
        makedirs(str(self.path.parent))
        # (O_NONBLOCK: a named pipe at the path, with no reader or a slow one, must not hold the
        # writer's thread for ever; a regular file ignores it)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK | os.O_CLOEXEC, 0o666)
        try:
            # Renaming or truncating a link, a device or a pipe would move or empty what is not
            # the gateway's: a /dev/null renamed to null.1 and replaced by a file, or deleted.
            self._regular = stat.S_ISREG(os.lstat(self.path).st_mode)
            self._size = os.lseek(fd, 0, os.SEEK_END) if self._regular else 0
            self._file = os.fdopen(fd, "ab", buffering=0)
        except BaseException:
            os.close(fd)
            raise

    def _rotate(self) -> None:
        assert self._file is not None
        self._file.close()
        self._file = None
        rotated, self._size = self._size, 0
        if not self._pruned:
            # Files past the number kept (a larger setting before) would stay for good, outside
            # the cap; with 0, the old .1 would be read on as the lines before the truncated ones.
            self._pruned = True
            for index, old in _numbered_backups(self.path):
                if index > self.backups:
                    with contextlib.suppress(OSError):  # (one it may not delete stays, as it was)
                        old.unlink(missing_ok=True)
        if self.backups == 0:
            os.truncate(self.path, 0)
            return
        # (None while it rotates: a rotation that fails half-way leaves the files to be looked at)
        known, self._backup_sizes = self._backup_sizes, None
        sizes = known if known is not None else [0] * self.backups
        for index in range(self.backups - 1, 0, -1):
            older = self.backup_path(index)
            if older.exists():
                os.replace(older, self.backup_path(index + 1))
                sizes[index] = sizes[index - 1]
            sizes[index - 1] = 0
        os.replace(self.path, self.backup_path(1))
        sizes[0] = rotated
        if known is not None:
            self._backup_sizes = sizes

    def counted_bytes(self) -> int | None:
        """The bytes in its files (the current one and the rotated ones) as counted from
        what it wrote and rotated since :meth:`looked_at`; None before that. Only regular
        files count."""
        if self._backup_sizes is None:
            return None
        return (self._size if self._regular else 0) + sum(self._backup_sizes)

    def looked_at(self, current: int, backups: list[int]) -> None:
        """What a look at its files found, which :meth:`counted_bytes` goes on from.

        :param current: the bytes in the current file (0: none, or not a regular file); an
            open file's count is its own (the bytes written to it).
        :param backups: the bytes in ``path.1`` ... ``path.<backups>`` (0: none there).
        """
        self._backup_sizes = list(backups)
        if self._file is None:
            self._size = current

    def backup_path(self, index: int) -> Path:
        """Where the rotated file ``index`` is (``path.<index>``; 1 is the newest)."""
        return backup_path(self.path, index)

    def close(self) -> None:
        """Close the file; the next write reopens it."""
        if self._file is not None:
            self._file.close()
            self._file = None


def backup_path(path: Path, index: int) -> Path:
    """Where the rotated file ``index`` of the log ``path`` is (``path.<index>``; 1 is the
    newest, 0 is ``path`` itself)."""
    return path.with_name(f"{path.name}.{index}") if index else path


#: Bytes read at a time while looking back for the start of a log's last lines.
TAIL_CHUNK = 64 * 1024
#: Most bytes a tail looks back (a log without line ends, never rotated, is not read whole).
TAIL_MAX_BYTES = 16 * 2**20


def tail_offset(handle: IO[bytes], size: int, lines: int, most: int | None = None) -> int:
    """Where the last ``lines`` lines of an open file of ``size`` bytes begin (blocking).

    The file is read back from its end a chunk at a time, only as far as those lines go,
    however long they are, but not over ``most`` bytes; its last byte ends the last line, a
    newline or not.

    :param handle: the file, opened for reading in binary mode.
    :param size: its size.
    :param lines: how many lines (0: none, the offset is ``size``).
    :param most: the most bytes to look back (None: :data:`TAIL_MAX_BYTES`).
    """
    if lines <= 0:
        return size
    found, pos, floor = 0, size - 1, max(0, size - (TAIL_MAX_BYTES if most is None else most))
    while pos > floor:
        start = max(floor, pos - TAIL_CHUNK)
        handle.seek(start)
        chunk = handle.read(pos - start)
        newline = len(chunk)
        while (newline := chunk.rfind(b"\n", 0, newline)) >= 0:
            found += 1
            if found == lines:
                return start + newline + 1
        pos = start
    return floor


def open_log(path: Path) -> IO[bytes]:
    """Open a log file to read it (blocking: call it from a thread). What is not a regular
    file at that path (a named pipe or a device an app put in its log's place) counts as no
    log at all, at once: opening a pipe waits for a writer, reading it for data, and a
    thread of the pool would wait for ever.

    :raises FileNotFoundError: nothing there, or nothing that is a regular file.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise FileNotFoundError(errno.ENOENT, "not a regular file", str(path))
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


#: A file's identity, ``(st_dev, st_ino)``: a log that rotated is another file under its name.
FileIdentity = tuple[int, int]


class LogTail(NamedTuple):
    """A log's last lines and where they end, from one look at it (:func:`tail_to_end`)."""

    #: the lines' bytes as they are (a partial last line included)
    data: bytes
    #: the offset in the file ``identity`` where they end: following the log from there
    #: neither repeats nor misses a line
    offset: int
    #: the file at the log's path when they were read (None: there was none)
    identity: FileIdentity | None


def tail_to_end(path: Path, lines: int) -> LogTail:
    """The last ``lines`` lines of ``path`` as they are (blocking: call it from a thread), with
    the offset they end at and the file they are in, all from one look at the file: its bytes
    from where they begin (:func:`tail_offset`: lines end at a newline alone, a carriage return
    or a byte that is no UTF-8 is kept as it is) to its end, reaching back into its newest
    rotated file, ``path.1``, when ``path`` holds fewer: a log rotated a moment ago (it reached
    its size with the program's last output) is empty, and its last lines are there. Read again
    when ``path`` rotates meanwhile, so that no line shows twice. Not over :data:`TAIL_MAX_BYTES`
    in all; ``(b"", 0, None)`` when neither file exists.

    :param path: the log file.
    :param lines: how many lines.
    """
    def read() -> LogTail:
        data, offset, identity = _tail_of(path, lines, TAIL_MAX_BYTES)
        return LogTail(last_lines(_rotated_lead(path, lines, data) + data, lines), offset, identity)

    return _read_unrotated(path, read)


def tail_bytes(path: Path, lines: int) -> bytes:
    """The last ``lines`` lines of ``path`` as they are (:func:`tail_to_end`; blocking: call it
    from a thread).

    :param path: the log file.
    :param lines: how many lines.
    """
    return tail_to_end(path, lines).data


def last_lines(data: bytes, lines: int) -> bytes:
    """The last ``lines`` lines of ``data`` as they are: from after the newline that ends the
    line before them (its last byte ends the last line, a newline or not, as in
    :func:`tail_offset`); all of ``data`` when it holds no more, ``b""`` for 0 lines."""
    if lines <= 0:
        return b""
    pos = len(data) - 1
    for _ in range(lines):
        pos = data.rfind(b"\n", 0, pos)
        if pos < 0:
            return data
    return data[pos + 1:]


#: Reads of a log's tail made, at most, while the log is rotated under them (:func:`tail_to_end`).
TAIL_TRIES = 3


def _read_unrotated(path: Path, read: Callable[[], LogTail]) -> LogTail:
    """``read()``, a read of the log ``path`` and then of its ``path.1`` (blocking), made again
    when ``path`` was rotated meanwhile (a program writing fast: the writer's thread rotates
    as another reads), up to :data:`TAIL_TRIES` times: the lines read in ``path`` were in
    ``path.1`` then too, and would be shown twice."""
    for _ in range(TAIL_TRIES - 1):
        before = file_identity(path)
        result = read()
        if file_identity(path) == before:
            return result
    return read()


def file_identity(path: Path) -> FileIdentity | None:
    """The identity of the file at ``path`` (None when there is none)."""
    try:
        return identity_of(os.stat(path))
    except OSError:
        return None


def identity_of(info: os.stat_result) -> FileIdentity:
    """The identity of the file ``info`` (an ``os.stat`` or ``os.fstat`` result) is of."""
    return info.st_dev, info.st_ino


def _rotated_lead(path: Path, lines: int, data: bytes) -> bytes:
    """What goes before ``data``, the last bytes of ``path`` read for its last ``lines``
    lines, when they hold fewer: the end of its newest rotated file, ``path.1`` (blocking).
    Nothing when they hold enough (their last byte ends their last line, a newline or not, as
    in :func:`tail_offset`), or :data:`TAIL_MAX_BYTES` already."""
    held = data.count(b"\n") + (data[-1:] not in (b"", b"\n"))
    if lines <= 0 or held >= lines or len(data) >= TAIL_MAX_BYTES:
        return b""
    return _tail_of(backup_path(path, 1), lines, TAIL_MAX_BYTES - len(data))[0]


def _tail_of(path: Path, lines: int, most: int) -> tuple[bytes, int, FileIdentity | None]:
    """The bytes of the last ``lines`` lines of ``path``, at most ``most`` of them, the offset
    they end at and the file's identity, from one look at it (its size then: what is appended
    meanwhile is not read); ``(b"", 0, None)`` when no regular file is there."""
    try:
        with open_log(path) as handle:
            info = os.fstat(handle.fileno())
            start = tail_offset(handle, info.st_size, lines, most)
            handle.seek(start)
            data = handle.read(info.st_size - start)
    except FileNotFoundError:
        return b"", 0, None
    return data, start + len(data), identity_of(info)


def log_lines(data: bytes, lines: int) -> list[str]:
    """The last ``lines`` lines of a log's bytes (:func:`tail_bytes`) as text: for a message or
    a JSON reply, each line without its end, a byte that is no UTF-8 as U+FFFD.

    :param data: the bytes.
    :param lines: how many lines.
    """
    return [line.decode("utf-8", "replace") for line in deque(data.splitlines(), lines)]


def tail_file(path: Path, lines: int) -> list[str]:
    """The last ``lines`` lines of ``path`` as text (:func:`log_lines`; blocking: call it from a thread).

    :param path: the log file.
    :param lines: how many lines.
    """
    return log_lines(tail_bytes(path, lines), lines)


def remove_logs(paths: list[Path]) -> None:
    """Delete log files and their rotated backups (``path.1``, ``path.2`` ...), regular files
    only (a ``/dev/null`` or a link named as a log stays); blocks.

    Release them from the :class:`AppLogWriter` and flush it first: a write still queued
    would create the file again.
    """
    for path in paths:
        for old in [path, *(backup for _, backup in _numbered_backups(path))]:
            if _regular(old):
                old.unlink(missing_ok=True)


def _numbered_backups(path: Path) -> list[tuple[int, Path]]:
    """The rotated files of the log ``path`` there are, each with its number: ``path.<n>``, named
    as :func:`backup_path` names them (``n`` from 1, in ASCII digits, no leading zero: ``path.٣``,
    a copy ``path.07`` and ``path.0`` are none), regular files only (blocking)."""
    prefix = path.name + "."
    try:
        names = os.listdir(path.parent)
    except OSError:  # (no folder, or one it may not read: none that it knows of)
        return []
    numbered = [(int(name[len(prefix):]), name) for name in names
                if name.startswith(prefix) and ascii_digits(name[len(prefix):])]
    return [(index, path.parent / name) for index, name in numbered
            if backup_path(path, index).name == name and _regular(path.parent / name)]


def _regular(path: Path) -> bool:
    """Whether ``path`` is a regular file itself (not a link to one, a device, a pipe): the only
    kind of log the gateway rotates and deletes."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


class AppLogWriter:
    """Writes program output to RotatingLogs and keeps all of them under one size cap.

    :param max_total_bytes: cap on every registered log's files together; over it, the
        oldest rotated files are deleted (current files are never deleted): the oldest by the
        order they were rotated in, which the writer counts (the wall clock, and so the files'
        modification times, may have stepped by years between two rotations); files rotated
        before the writer began are older than any rotated since, and among themselves
        ``path.<n>`` of a greater ``n`` is older.
    :param reactor: used to report back from the writer thread; ``None`` writes inline
        on the caller's thread (tests).
    :param max_pending: bytes queued for the thread before output is dropped and counted.
    """

    def __init__(self, max_total_bytes: int, reactor: Any = None,
                 max_pending: int = 4 * 2**20) -> None:
        self._cap = max_total_bytes
        self._reactor = reactor
        self._max_pending = max_pending
        self._pending = 0
        self._lock = threading.Lock()
        self._logs: set[RotatingLog] = set()
        #: rotations counted by the writer's thread, and, per log path, the count of the
        #: rotation that made each of its rotated files (``path.1`` first) since the writer began
        self._rotations = 0
        self._rotated: dict[Path, list[int]] = {}
        self._queue: queue.SimpleQueue[tuple[RotatingLog, bytes] | Deferred[None] | None] = (
            queue.SimpleQueue())
        self._thread: threading.Thread | None = None
        self._stopped: Deferred[None] | None = None

    def start(self) -> None:
        """Start the writer thread (does nothing when writing inline)."""
        if self._reactor is not None and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="app-logs", daemon=True)
            self._thread.start()

    def open(self, path: Path, maxbytes: int, backups: int) -> RotatingLog:
        """A log to write to; it counts toward the global cap. One with no limit of its own
        (``maxbytes`` 0), or a limit over the cap, is rotated when it reaches the cap: the cap
        deletes only rotated files, and such a file would grow past it (until the disk is full)."""
        rotating = RotatingLog(path, min(maxbytes or self._cap, self._cap), backups)
        with self._lock:
            self._logs.add(rotating)
        return rotating

    def write(self, target: RotatingLog, data: bytes) -> None:
        """Queue ``data`` for ``target``; never blocks while the thread runs.

        Output arriving after :meth:`stop` (a process's last words) is written inline.
        """
        if self._thread is None or self._stopped is not None:
            self._write_counted(target, data, lambda f, *args, **kwargs: f(*args, **kwargs))
            return
        with self._lock:
            if self._pending + len(data) > self._max_pending:
                target.dropped += len(data)
                return
            self._pending += len(data)
        self._queue.put((target, data))

    def release(self, target: RotatingLog) -> None:
        """Close ``target`` once its queued output is written; it no longer counts."""
        with self._lock:
            self._logs.discard(target)
        if self._thread is None:
            target.close()
        else:
            self._queue.put((target, b""))

    def flush(self) -> Deferred[None]:
        """Fires once everything queued so far is written."""
        if self._thread is None or self._stopped is not None:
            return succeed(None)
        written: Deferred[None] = Deferred()
        self._queue.put(written)
        return written

    def stop(self) -> Deferred[None]:
        """Write everything queued, close the files and end the thread."""
        if self._thread is None:
            for target in list(self._logs):
                target.close()
            return succeed(None)
        if self._stopped is None:
            self._stopped = Deferred()
            self._queue.put(None)
        return self._stopped

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                break
            if isinstance(item, Deferred):
                self._reactor.callFromThread(item.callback, None)
                continue
            target, data = item
            with self._lock:
                self._pending -= len(data)
            self._write_counted(target, data, self._reactor.callFromThread)
        with self._lock:
            targets = list(self._logs)
        for target in targets:
            target.close()
        self._thread = None
        assert self._stopped is not None
        self._reactor.callFromThread(self._stopped.callback, None)

    def _write_counted(self, target: RotatingLog, data: bytes, call: Callable[..., Any]) -> None:
        """Write ``data`` to ``target`` (nothing: close it). Output the disk refuses (full,
        read-only, a file the gateway's user may not write) is dropped and counted, with one
        warning until a write to it succeeds again.

        :param call: runs a function on the reactor thread (``callFromThread`` from the writer's).
        """
        try:
            if data:
                self._write_now(target, data)
            else:
                target.close()
        except OSError as exc:
            target.dropped += len(data)
            if not target.failing:  # once until a write succeeds again, not at every write
                target.failing = True
                call(log.warn, "apps: cannot write {path}: {error}; its output is dropped (and counted in it)"
                     " until it can be written again", path=str(target.path), error=_why(exc, target.path))
        else:
            if target.failing and data:
                target.failing = False
                call(log.info, "apps: {path} is written again", path=str(target.path))

    def _write_now(self, target: RotatingLog, data: bytes) -> None:
        if target.write(data):
            if target.backups:
                self._rotations += 1
                self._rotated[target.path] = [self._rotations, *self._rotated.get(target.path, ())][:target.backups]
            self._enforce_cap()

    def _enforce_cap(self) -> None:
        with self._lock:
            targets = list(self._logs)
        counted = [target.counted_bytes() for target in targets]
        if None not in counted and sum(c or 0 for c in counted) <= self._cap:
            # Under the cap by the logs' own counts: no file is looked at. A rotation looked
            # at every file of every log, O(logs) stat calls each, O(logs²) for them all.
            return
        # (key: files rotated before the writer began first, greatest index first; then by rotation)
        rotated: list[tuple[tuple[int, int, str], int, Path, list[int], int]] = []
        found: list[tuple[RotatingLog, list[int]]] = []
        total = 0
        for target in targets:
            numbers = self._rotated.get(target.path, [])
            sizes = [0] * (target.backups + 1)
            found.append((target, sizes))
            for index in range(target.backups + 1):
                path = target.backup_path(index)
                try:
                    info = path.lstat()
                except FileNotFoundError:
                    continue
                if not stat.S_ISREG(info.st_mode):
                    continue  # (a /dev/null written as a log holds nothing, and is not the gateway's)
                sizes[index] = info.st_size
                total += info.st_size
                if index:
                    key = (1, numbers[index - 1], "") if index <= len(numbers) else (0, -index, str(path))
                    rotated.append((key, info.st_size, path, sizes, index))
        for _key, size, path, sizes, index in sorted(rotated, key=lambda item: item[0]):
            if total <= self._cap:
                break
            path.unlink(missing_ok=True)
            sizes[index] = 0
            total -= size
        for target, sizes in found:
            target.looked_at(sizes[0], sizes[1:])


def _why(error: OSError, path: Path) -> str:
    """Why the log at ``path`` could not be written: for a permission problem, the file (or the
    directory that keeps a new one out), its owner and mode and the command that sets it right
    (the next write tries again: no restart is needed)."""
    if not is_permission_error(error):
        return str(error)
    refused = Path(os.fsdecode(error.filename)) if error.filename else path
    if not os.path.lexists(refused):
        refused = refused.parent  # (a new file its directory keeps out)
    return str(refusal(refused, then=None))
