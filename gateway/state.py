"""The state directory: created (mode 0750) and locked for this gateway before any service
that keeps state starts."""

from __future__ import annotations

import fcntl
import os
import stat
from pathlib import Path

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from gateway.apps.registry import APPS_DIR, DATA_DIR, REMOVING_PREFIX
from gateway.errors import GatewayError
from gateway.filelayer import makedirs_durably
from gateway.journal.segments import SUFFIX as SEGMENT_SUFFIX
from gateway.lastrun import ALIVE_INTERVAL, PreviousStop, RunRecord
from gateway.readonlyfs import read_only_at
from gateway.stateaccess import check_state_tree, is_permission_error, refusal
from gateway.statelock import LOCK_FILE, lock_text, read_holder
from gateway.updates.partfile import PART_SUFFIX

__all__ = ["LOCK_FILE", "StateDirService"]


class StateDirService(Service):
    """Makes sure the state directory exists, is writable (by no other user) and is used by
    no other gateway.

    The lock is held from :meth:`startService` to :meth:`stopService`: a second gateway on
    the same directory fails its start here, before its journal, broker or apps touch
    anything the running one owns (segment files, sessions, hosted programs).

    :param path: the state directory.
    :param journal: the journal's directory (``journal.directory``), looked through as the
        state directory is when it lies elsewhere (default: ``<path>/journal``).
    :param clock: marks the run alive every :data:`~gateway.lastrun.ALIVE_INTERVAL` seconds in
        its record (:mod:`gateway.lastrun`); ``None``: never (the record still says when it
        started and whether it stopped cleanly).
    """

    name = "state"  # type: ignore[assignment]
    log = Logger()

    def __init__(self, path: Path, journal: Path | None = None, clock: IReactorTime | None = None) -> None:
        self.path = path
        self.clock = clock
        self.run_record = RunRecord(path)
        #: how the previous run on this state directory ended (known once the service started)
        self.previous_stop = PreviousStop()
        self._stopping_pid: str | None = None  # the pid the lock file named as stopping before this run took it
        self._alive: LoopingCall | None = None
        self.journal = Path(os.path.normpath(journal)) if journal is not None else path / "journal"
        self._locks: list[int] = []  # the state directory's lock file, then the journal's when it lies elsewhere
        self._pid_refused = False  # (said once: the tree locks before twistd starts the service)

    def startService(self) -> None:
        """Create the directory and lock it (unless :meth:`lock` has); fail clearly when that
        is impossible. Then read how the previous run ended and record this one
        (:class:`~gateway.lastrun.RunRecord`)."""
        super().startService()
        self.lock()
        self.log.info("state under {path}", path=str(self.path))
        self.previous_stop = self.run_record.begin(os.getpid(), self._stopping_pid)
        if self.clock is not None:
            self._alive = LoopingCall(self.run_record.alive)
            self._alive.clock = self.clock
            self._alive.start(ALIVE_INTERVAL, now=False)

    def lock(self) -> None:
        """Create the directory and lock it, at once: the tree calls it before anything reads
        or writes the state directory or the configuration's drop-ins (a pending configuration
        change is reverted before the services are built). Once held, the lock file is only
        given this process's pid again (a daemonizing twistd forks after the tree is built).

        :raises GatewayError: when the directory cannot be created or written, holds what the
            gateway's user may not use (:func:`~gateway.stateaccess.check_state_tree`; the
            journal's directory too), or another process holds the lock.
        """
        if self._locks:
            for fd in self._locks:
                self._write_pid(fd)
            return
        try:
            makedirs_durably(str(self.path), 0o750)
        except OSError as exc:
            raise GatewayError(f"cannot create the state directory {self.path}: {exc.strerror or exc}") from exc
        if read_only_at(self.path) == self.path:
            # (the kernel remounts a disk read-only after errors: no chmod or chown helps then)
            raise GatewayError(f"the state directory {self.path} is on a read-only filesystem: make it writable"
                               " (remount it read-write) and start again")
        if not os.access(self.path, os.W_OK | os.X_OK):
            raise GatewayError(str(refusal(self.path, self.path)))
        # The journal's own filesystem (a partition of its own, or journal.directory elsewhere)
        # mounted read-only: every append would fail, and nothing could be acknowledged.
        journal = read_only_at(self.journal)
        if journal is not None:
            raise GatewayError(f"the journal directory {self.journal} is on a read-only filesystem ({journal}):"
                               " make it writable (remount it read-write) and start again")
        mode = stat.S_IMODE(self.path.stat().st_mode)
        # Anyone could rename what it holds (the apps' spool...) and put their own in its
        # place; the sticky bit (a tmpfs mounted there, 1777) keeps them from it.
        if mode & stat.S_IWOTH and not mode & stat.S_ISVTX:
            raise GatewayError(f"the state directory {self.path} may be written by every user"
                               f" (mode {mode:04o}): chmod o-w {self.path}")
        self._check_trees()
        self._locks = [self._take_lock(self.path, "state directory")]
        if not self.journal.is_relative_to(self.path):
            # Another gateway's state directory may name the same journal.directory: two journals
            # would write the same segments and cursors.
            try:
                makedirs_durably(str(self.journal), 0o750)
            except OSError:
                return  # (the journal says why it cannot make it, or what is in its place)
            try:
                self._locks.append(self._take_lock(self.journal, "journal directory"))
            except GatewayError:
                os.close(self._locks.pop())
                raise

    def _check_trees(self) -> None:
        """Refuse what the gateway's user may not use in the state directory, and in the
        journal's directory when it lies elsewhere (:func:`~gateway.stateaccess.check_state_tree`):
        what it appends to (the apps' logs, the journal's segments, a download's ``.part``) it
        must write too; of an app's installed version only the top files and the directories."""
        logs, updates, apps = self.path / "logs", self.path / "updates", self.path / APPS_DIR

        def appended(path: Path) -> bool:
            if path.suffix == SEGMENT_SUFFIX:
                return path.is_relative_to(self.journal)
            if path.suffix == PART_SUFFIX:
                return path.is_relative_to(updates)
            return path.is_relative_to(logs)

        def installed(directory: Path) -> bool:
            """An app's version (``apps/<name>/<version>``), or an app being deleted."""
            if directory.parent == apps:
                return directory.name.startswith(REMOVING_PREFIX)
            return directory.parent.parent == apps and directory.name != DATA_DIR

        check_state_tree(self.path, appended, installed)
        if self.journal.is_relative_to(self.path):
            return
        try:
            info = os.stat(self.journal)
        except OSError:
            return  # (not there yet, or out of reach: the journal makes it, or says why it cannot)
        if not stat.S_ISDIR(info.st_mode):
            return  # (the journal says what is in its place)
        if info.st_uid != os.geteuid() and not os.access(self.journal, os.R_OK | os.W_OK | os.X_OK):
            raise refusal(self.journal, self.journal)
        check_state_tree(self.journal, appended)

    def stopService(self) -> None:
        """Record this run's clean stop and release the lock (every other service has stopped:
        this one stops last)."""
        super().stopService()
        if self._alive is not None and self._alive.running:
            self._alive.stop()
        if self._locks:
            self.run_record.end()
        while self._locks:
            os.close(self._locks.pop())

    def _take_lock(self, directory: Path, what: str) -> int:
        """Lock ``directory``'s :data:`LOCK_FILE` and write this process's pid in it.

        :param directory: the state directory, or the journal's when it lies elsewhere.
        :param what: what ``directory`` is, for the refusal.
        :return: the lock file's descriptor, open while the lock is held.
        :raises GatewayError: when another process holds the lock, or the file cannot be used.
        """
        path = directory / LOCK_FILE
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o640)  # (never through a link)
        except OSError as exc:
            if is_permission_error(exc):
                raise refusal(path, directory) from exc
            raise GatewayError(f"cannot open {path}: {exc.strerror or exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder, stopping = read_holder(os.read(fd, 64).decode(errors="replace"))
            os.close(fd)
            raise GatewayError(f"the {what} {directory} is used by another gateway"
                               f" (pid {holder or 'unknown'}, {path})"
                               + (": it is stopping; start this one once it has ended" if stopping else "")) from None
        except OSError as exc:
            os.close(fd)
            raise GatewayError(f"cannot lock {path}: {exc.strerror or exc}") from exc
        if directory == self.path:  # (what the previous run left in it: it may have begun to stop)
            try:
                holder, stopping = read_holder(os.pread(fd, 64, 0).decode(errors="replace"))
            except OSError:
                holder, stopping = "", False
            self._stopping_pid = holder if stopping else None
        self._write_pid(fd)
        return fd

    def stopping(self) -> None:
        """The gateway begins to stop: its lock file says so after its pid, for ``gatewayctl``
        (which then does not wait for the admin API) and for a second gateway's refusal."""
        for fd in self._locks:
            self._write_pid(fd, stopping=True)

    def _write_pid(self, fd: int, stopping: bool = False) -> None:
        """Make the lock file open at ``fd`` name this process's pid (and whether it is
        ``stopping``). The pid only names the holder for another gateway's refusal: a disk that
        refuses it (a first start on a full disk) is logged, and the lock holds all the same."""
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, lock_text(os.getpid(), stopping).encode(), 0)
        except OSError as exc:
            if self._pid_refused:
                return
            self._pid_refused = True
            self.log.warn("cannot write this gateway's pid in {path} ({error}): it holds the lock all the same"
                          " (a second gateway on this directory is refused, its pid unknown)",
                          path=str(self.path / LOCK_FILE), error=exc.strerror or str(exc))
