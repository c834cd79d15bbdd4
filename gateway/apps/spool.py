"""The spool folder ``<state>/incoming/``: packages dropped there are installed.

Writers put a file there under a temporary name (a leading dot, or ``.tmp``/``.part``)
and rename it when it is complete; only complete ``*.tar.gz``/``*.tgz`` names are taken
(one that is not a regular file, a symbolic link, a directory or a pipe, is refused unread).
Each is installed, then moved to ``incoming/done/`` or ``incoming/failed/`` with
``<file>.log`` beside it; one whose install raised an unexpected error goes to
``failed/`` too, with the traceback in its log; each of them keeps the last :data:`KEEP_FILED`
filed there (older ones are removed with their logs). One whose install the apps service's stop
cut short stays for the next look. One the disk refuses to move (a full disk, a read-only
remount) is not installed again: its move is tried again at each look until it is done.

A package written under its final name instead (cp, scp) is taken once inotify says it is
closed: the looks made meanwhile leave it alone.

The folder is looked at once at start, then whenever inotify says a name arrived in it, and
once more :data:`RECHECK_AFTER` seconds after any event in it (what an overflowed inotify queue
did not report); it is looked at every ``interval`` seconds only while inotify cannot watch it
or a look or a move the system refused is to be tried again.
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from twisted.internet.defer import Deferred, inlineCallbacks, succeed
# INotifyError is missing from the module's __all__, but it is public all the same: Twisted's
# compatibility policy counts as private only what takes a leading underscore to reach, and
# says __all__ is no contract. INotify() and INotify.watch() raise it (watch's docstring says
# so), and it is no OSError: catching OSError alone would let it through.
from twisted.internet.inotify import (IN_CLOSE_WRITE, IN_CREATE, IN_DELETE_SELF, IN_IGNORED, IN_MOVE_SELF,
                                      IN_MOVED_TO, IN_ONLYDIR, IN_UNMOUNT, INotify, INotifyError)
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.filepath import FilePath

from gateway.apps.operations import InstallResult
from gateway.apps.outcome import outcome_line
from gateway.atomic import fsync_directory, temporary_path, write_atomically
from gateway.clockstep import steady_seconds
from gateway.filelayer import makedirs_durably
from gateway.shown import escaped

if TYPE_CHECKING:
    from gateway.apps.installer import Blocking

log = Logger()

#: Seconds after an event in the watched folder when it is looked at once more. inotify's
#: queue overflows when the reactor is held up while thousands of names are made there:
#: Twisted drops IN_Q_OVERFLOW without a word, and the events after it are lost (a package
#: renamed in would wait for the next start). Any event read after them brings this look.
RECHECK_AFTER = 60.0
#: Seconds a file created under its final name must stay unchanged before a look takes it
#: without its close seen (its IN_CLOSE_WRITE lost with an overflow; a writer this quiet is gone).
WRITER_QUIET = 600.0
#: Packages (each with its log) kept in ``done/`` and in ``failed/`` each: filing one more
#: removes the oldest filed there. Without a bound every package ever dropped (a whole
#: tarball) stayed on the gateway's disk for good.
KEEP_FILED = 10


#: What is not a package file, by its ``lstat`` type: refused without being read.
_NOT_FILES = ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISDIR, "a directory, not a package file"),
              (stat.S_ISFIFO, "a named pipe, not a package file"), (stat.S_ISSOCK, "a socket, not a package file"),
              (stat.S_ISCHR, "a device, not a package file"), (stat.S_ISBLK, "a device, not a package file"))


#: What inotify reports of ``incoming/``: a name written and closed, renamed into it, or
#: created (which alone says a package arrived only for what is not written: see `_arrived`).
_ARRIVALS = IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE
#: The watch is gone: the folder was removed, moved away, or its file system unmounted.
_LOST = IN_IGNORED | IN_DELETE_SELF | IN_MOVE_SELF | IN_UNMOUNT


def _taken(name: str) -> bool:
    """Whether a name in the spool is a complete package's (not a temporary one)."""
    return not name.startswith(".") and name.endswith((".tar.gz", ".tgz"))


def _arrived(path: Path) -> bool:
    """Whether a name just created in the spool is there whole: anything but a regular file
    (a link, a directory, a pipe: never written), or a hard link to a file written elsewhere.
    A new regular file with one link is still being written: its close says when it is done."""
    try:
        st = path.lstat()
    except OSError:  # (renamed away meanwhile: a look would not see it either)
        return False
    return not stat.S_ISREG(st.st_mode) or st.st_nlink > 1


def _ready(directory: Path) -> tuple[list[Path], dict[Path, str]]:
    """The complete package names in ``directory``, in name order, and what those that are
    not regular files are (refused, never opened: a symbolic link, since the rename that
    says a package is complete is the link's, not its target's; a directory; a named pipe,
    which would wait for a writer)."""
    if not directory.is_dir():
        return [], {}
    named = []
    others: dict[Path, str] = {}
    for path in directory.iterdir():
        if not _taken(path.name):
            continue
        try:
            mode = path.lstat().st_mode
        except FileNotFoundError:  # (renamed away meanwhile)
            continue
        named.append(path)
        what = next((what for test, what in _NOT_FILES if test(mode)), None)
        if what is not None:
            others[path] = what
    return sorted(named), others


def _not_a_file_refused(archive: Path, what: str) -> InstallResult:
    """The result for something other than a package file dropped in the spool: refused, not read."""
    return InstallResult(False, "refused", None, None, None,
                         f"refused: {archive.name} is {what}; put the package file itself "
                         "in the spool (written under a temporary name, then renamed)")


def _file_away(archive: Path, result: InstallResult) -> None:
    target = archive.parent / ("done" if result.ok else "failed")
    makedirs_durably(str(target))
    report = f"{outcome_line(result.outcome, result.message)}\n\n{result.log}"
    try:
        # The log first, so that whoever sees the file moved finds its log beside it.
        write_atomically(target / f"{archive.name}.log", report.encode())
    finally:
        # Moved even when the log cannot be written (a full disk): the next look must not
        # install the same file again; durably, nor the next start after a power cut.
        os.replace(archive, target / archive.name)
        fsync_directory(archive.parent)
        fsync_directory(target)
    try:
        _keep_newest_filed(target, archive.name)
    except OSError as error:  # (filed all the same: the next filing tries again)
        log.warn("apps: cannot remove old packages from {folder}: {error}", folder=str(target),
                 error=error.strerror or str(error))


def _keep_newest_filed(folder: Path, newest: str) -> None:
    """Remove the packages filed in ``folder`` longest ago, each with its log (and the
    temporary file of a log write a crash cut short), so that :data:`KEEP_FILED` remain,
    ``newest`` (the one just filed) among them; then fsync ``folder``, so that a power cut does
    not bring them back. Filed longest ago: the oldest change time, which the rename that filed
    it set (a directory refused as it is goes the same way).

    :param folder: ``done/`` or ``failed/``.
    :param newest: the name of the package just filed there.
    """
    filed: dict[str, int] = {}
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.name.startswith("."):
                continue  # (a log's temporary file: removed with its package)
            package = entry.name.removesuffix(".log")  # (a package's name ends .tar.gz or .tgz)
            changed = entry.stat(follow_symlinks=False).st_ctime_ns
            filed[package] = max(changed, filed.get(package, changed))
    filed.pop(newest, None)
    oldest_first = sorted(filed, key=lambda name: (filed[name], name))
    doomed = oldest_first[:max(0, len(oldest_first) - (KEEP_FILED - 1))]
    for package in doomed:
        for path in (folder / package, folder / f"{package}.log", temporary_path(folder / f"{package}.log")):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
    if doomed:  # (not durably removed, they came back with each cut, more after each filing)
        fsync_directory(folder)


#: A file's identity: inode, size and modification time (a package renamed over it differs).
Identity = tuple[int, int, int]


def _identity(path: Path) -> Identity | None:
    """``path``'s identity, or None when it is gone."""
    try:
        st = path.lstat()  # (a symbolic link's own: it is filed away, not its target)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def _unexpected(failure: Failure) -> InstallResult:
    """The result for a spool file whose install raised instead of answering."""
    return InstallResult(False, "failed", None, None, None,
                         f"unexpected error: {failure.getErrorMessage()}", failure.getTraceback())


class SpoolWatcher:
    """Looks at the spool at start and when a package arrives, and installs what it finds, in order.

    :param directory: the spool folder, made before :meth:`start` (durably, off the reactor
        thread: :meth:`gateway.apps.service.AppsService.startService`); while it is missing,
        it is looked at every ``interval`` until it is there.
    :param install: the operations' ``install``.
    :param clock: an IReactorTime.
    :param blocking: runs a blocking callable off the reactor thread.
    :param interval: seconds between looks while the folder is not watched or a retry is pending.
    :param notifier: makes the inotify instance that watches the folder (`INotify` on the
        reactor); None (or one that fails) and the folder is looked at every ``interval``.
    """

    def __init__(self, directory: Path, install: Callable[[Path], Deferred[InstallResult]],
                 clock: Any, blocking: Blocking[Any], interval: float,
                 notifier: Callable[[], INotify] | None = None) -> None:
        self.directory = directory
        self._install = install
        self._clock = clock
        self._blocking = blocking
        self._interval = interval
        self._make_notifier = notifier
        #: the inotify instance watching the folder, or None while it is not watched
        self._notifier: INotify | None = None
        #: the watch could not be made or was lost (logged once, until it is made again)
        self._unwatched = False
        self._running = False
        self._next: IDelayedCall | None = None
        #: a name arrived during a look: look again once it ends
        self._again = False
        self._busy: Deferred[None] | None = None
        #: packages tried whose move the disk refused, with their result and identity
        self._unfiled: dict[Path, tuple[InstallResult, Identity]] = {}
        #: the last look could not list the folder (logged once, until a look works again)
        self._refused = False
        #: names created in the folder and not closed yet (written under their final name, by
        #: cp or scp), with the file's identity when a look last saw it change, and when: a
        #: look leaves them until inotify says they are closed (or until WRITER_QUIET)
        self._writing: dict[str, tuple[Identity | None, float]] = {}
        #: the look RECHECK_AFTER an event
        self._recheck: IDelayedCall | None = None

    def start(self) -> None:
        """Watch the folder and look at it once (the apps service made it at its start)."""
        self._running = True
        self._look()

    def stop(self) -> Deferred[Any]:
        """Stop looking; fires once an install in progress has finished."""
        self._running = False
        for call in (self._next, self._recheck):
            if call is not None and call.active():
                call.cancel()
        self._next = self._recheck = None
        self._unwatch()
        if self._busy is None:
            return succeed(None)
        waiter: Deferred[None] = Deferred()

        def release(result: object) -> object:
            waiter.callback(None)
            return result

        self._busy.addBoth(release)
        return waiter

    def _watch(self) -> None:
        """Watch the folder, unless it is watched already or cannot be (logged once)."""
        if self._make_notifier is None or self._notifier is not None:
            return
        try:
            notifier = self._make_notifier()
        except (INotifyError, OSError) as exc:
            self._watch_refused(exc)
            return
        try:
            # (IN_ONLYDIR: a file in the folder's place is not watched, but looked at on the clock
            # until a folder is back; removed while held open, its watch would never end)
            notifier.watch(FilePath(str(self.directory)), _ARRIVALS | _LOST | IN_ONLYDIR,
                           callbacks=[lambda _, path, mask: self._notified(notifier, path, mask)])
        except (INotifyError, OSError) as exc:  # (ENOSPC: fs.inotify.max_user_watches reached)
            notifier.loseConnection()
            self._watch_refused(exc)
            return
        notifier.startReading()
        self._notifier = notifier
        if self._unwatched:
            log.info("apps: the spool {directory} is watched again", directory=self.directory)
            self._unwatched = False

    def _watch_refused(self, error: Exception) -> None:
        if not self._unwatched:
            log.warn("apps: cannot watch the spool {directory}: {error}; looked at every {interval:g} s"
                     " until it can be", directory=self.directory, error=error, interval=self._interval)
            self._unwatched = True

    def _unwatch(self) -> None:
        """Stop watching the folder (closing the inotify instance drops its watch)."""
        if self._notifier is not None:
            self._notifier.loseConnection()
            self._notifier = None
        self._writing.clear()  # (unwatched, no close is reported: a look takes what it sees)

    def _notified(self, notifier: INotify, path: FilePath[bytes], mask: int) -> None:
        """inotify reports ``mask`` for ``path``: look when a package arrived whole; fall back
        to periodic looks when the watch is gone."""
        if notifier is not self._notifier or not self._running:
            return  # (an event read after its watch was dropped)
        if mask & _LOST:
            self._unwatch()
            self._unwatched = True
            log.warn("apps: the spool {directory} is no longer watched (removed, moved or unmounted);"
                     " looked at every {interval:g} s until it can be watched again",
                     directory=self.directory, interval=self._interval)
            self._look()
            return
        self._look_again_later()
        arrived = Path(os.fsdecode(path.path))
        if not _taken(arrived.name):
            return
        if mask & IN_CREATE and not _arrived(arrived):
            # written under its final name: taken once closed
            self._writing[arrived.name] = (None, steady_seconds(self._clock))
            return
        self._writing.pop(arrived.name, None)
        self._look()

    def _look_again_later(self) -> None:
        """Make sure of a look :data:`RECHECK_AFTER` seconds from now at the latest."""
        if self._recheck is None or not self._recheck.active():
            self._recheck = self._clock.callLater(RECHECK_AFTER, self._look)

    def _look(self) -> None:
        """Look at the folder now (after the look under way, if any); then look again in
        ``interval`` seconds only while that is needed."""
        if not self._running:
            return
        if self._busy is not None:
            self._again = True
            return
        if self._next is not None and self._next.active():
            self._next.cancel()
        self._next = None
        self._watch()  # (before the look: what arrives during it is then reported)
        self._busy = self._scan_once()

        def idle(result: object) -> None:
            self._busy = None
            if isinstance(result, Failure):
                log.failure("apps: the look at the spool {directory} failed", result, directory=self.directory)
            if not self._running:
                return
            if self._again:
                self._again = False
                self._look()
            elif self._notifier is None or self._refused or self._unfiled or isinstance(result, Failure):
                self._next = self._clock.callLater(self._interval, self._look)
            if self._writing and self._notifier is not None:
                self._look_again_later()  # (a file whose close is not seen yet: see _check_writers)

        self._busy.addBoth(idle)

    @inlineCallbacks
    def _scan_once(self) -> Any:
        try:
            found, others = yield self._blocking(lambda: _ready(self.directory))
        except OSError as exc:
            # Passing (the process out of file descriptors: EMFILE), or not: either way the
            # watcher goes on looking, every interval until a look works again.
            if not self._refused:
                log.warn("apps: cannot look at the spool {directory}: {error}; looked at again every"
                         " {interval:g} s", directory=self.directory, error=exc, interval=self._interval)
                self._refused = True
            return
        if self._refused:
            log.info("apps: the spool {directory} can be looked at again", directory=self.directory)
            self._refused = False
        self._unfiled = {archive: kept for archive, kept in self._unfiled.items() if archive in found}
        if self._writing:
            yield self._check_writers()
        for archive in found:
            if not self._running:
                break
            if archive.name in self._writing:
                continue
            unfiled = self._unfiled.pop(archive, None)
            if unfiled is not None:
                result, identity = unfiled
                now = yield self._blocking(lambda: _identity(archive))
                if now == identity:  # tried already: only its move is left to do
                    yield self._file(archive, result, identity)
                    continue
            if archive in others:
                log.warn("apps: spool {file} is {what}: refused", file=escaped(archive.name), what=others[archive])
                yield self._file(archive, _not_a_file_refused(archive, others[archive]), None)
                continue
            log.info("apps: installing {file} from the spool", file=escaped(archive.name))
            try:
                result = yield self._install(archive)
            except Exception:
                # One bad file must neither stop the spool nor be retried forever: it goes to
                # failed/ with the traceback in its log.
                failure = Failure()
                log.failure("apps: spool {file} failed unexpectedly", failure, file=escaped(archive.name))
                result = _unexpected(failure)
            else:
                if not result.ok and not self._running:
                    # The apps service stopped under it (the gateway stops, or restarts for a
                    # configuration change): it is installed at the next look, as after a restart.
                    log.info("apps: spool {file}: {reason}; left for the next look", file=escaped(archive.name),
                             reason=result.message)
                    break
            yield self._file(archive, result, None)

    @inlineCallbacks
    def _check_writers(self) -> Any:
        """Forget the files being written that are gone, and those unchanged for
        :data:`WRITER_QUIET` seconds (their close lost: this look takes them)."""
        names = list(self._writing)
        try:
            seen = yield self._blocking(lambda: [(name, _identity(self.directory / name)) for name in names])
        except OSError:  # (the folder made unreadable since it was listed: they stay as they are)
            return
        now = steady_seconds(self._clock)
        for name, identity in seen:
            if name not in self._writing:  # (closed meanwhile)
                continue
            before, since = self._writing[name]
            if identity is None:
                del self._writing[name]
            elif identity != before:
                self._writing[name] = (identity, now)
            elif now - since >= WRITER_QUIET:
                del self._writing[name]
                log.warn("apps: spool {file} was not seen closed and has not changed for {quiet:g} s: taken",
                         file=escaped(name), quiet=WRITER_QUIET)

    @inlineCallbacks
    def _file(self, archive: Path, result: InstallResult, identity: Identity | None) -> Any:
        """Move a tried package to done/ or failed/; when the disk refuses, remember it, so
        that it is not installed again, and try the move again at the next look.

        :param identity: the file's identity when an earlier move failed (logged then), else None.
        """
        try:
            yield self._blocking(lambda: _file_away(archive, result))
        except Exception:
            failure = Failure()
            if identity is not None:  # logged at its first failure
                self._unfiled[archive] = (result, identity)
                return
            identity = yield self._blocking(lambda: _identity(archive))
            if identity is None:  # moved, but its log could not be written
                log.failure("apps: spool {file}: {outcome}, filed away without its log", failure,
                            file=escaped(archive.name), outcome=result.outcome)
                return
            log.failure("apps: spool {file}: {outcome}, but it cannot be filed away in done/ or failed/;"
                        " it is not installed again, and moved once the disk lets it", failure,
                        file=escaped(archive.name), outcome=result.outcome)
            self._unfiled[archive] = (result, identity)
            return
        log.info("apps: spool {file}: {outcome}", file=escaped(archive.name), outcome=result.outcome)
