"""Whether a live process holds a state directory's lock, read from outside (gatewayctl's
way of telling a gateway that restarts its admin API from one that is not running)."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from gateway.state import StateDirService
from gateway.statelock import LOCK_FILE, lock_held


class LockHeldTests(SynchronousTestCase):
    """:func:`gateway.statelock.lock_held`: held, not held, cannot tell."""

    def setUp(self) -> None:
        self.state = Path(self.mktemp())
        self.state.mkdir()

    def test_held_while_a_gateway_holds_it_and_not_after(self) -> None:
        """The state service's lock reads as held from its start to its stop, then not held
        (the file stays)."""
        service = StateDirService(self.state)
        service.startService()
        self.assertIs(lock_held(str(self.state)), True)
        service.stopService()
        self.assertTrue((self.state / LOCK_FILE).exists())
        self.assertIs(lock_held(str(self.state)), False)

    def test_reading_it_never_keeps_a_gateway_from_its_lock(self) -> None:
        """Asking leaves the lock free: a gateway starting meanwhile takes it (asking by
        taking the lock, even shared, made such a start fail: "used by another gateway")."""
        (self.state / LOCK_FILE).write_text("1\n")
        self.assertIs(lock_held(str(self.state)), False)
        fd = os.open(self.state / LOCK_FILE, os.O_RDWR)
        self.addCleanup(os.close, fd)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self.assertIs(lock_held(str(self.state)), True)

    def test_cannot_tell_without_the_lock_file_or_the_list(self) -> None:
        """No lock file (no gateway ever used the directory, or it is not a state directory), a
        directory that is not there, or no lock list: ``None``."""
        self.assertIsNone(lock_held(str(self.state)))
        self.assertIsNone(lock_held(str(self.state / "nothing")))
        (self.state / LOCK_FILE).write_text("1\n")
        self.assertIsNone(lock_held(str(self.state), proc_locks=str(self.state / "no-such-list")))

    def test_a_process_waiting_for_the_lock_does_not_hold_it(self) -> None:
        """A ``->`` line of the list (a process blocked in ``flock``) is not a holder; the
        holder's line matches by device and inode, whatever the pid."""
        lock = self.state / LOCK_FILE
        lock.write_text("1\n")
        info = lock.stat()
        where = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}"
        listing = self.state / "locks"
        listing.write_text(f"1: POSIX  ADVISORY  WRITE 12 {where} 0 EOF\n"
                           f"2: FLOCK  ADVISORY  WRITE 13 {os.major(info.st_dev) + 1:02x}:00:{info.st_ino} 0 EOF\n"
                           f"2: -> FLOCK  ADVISORY  WRITE 14 {where} 0 EOF\n")
        self.assertIs(lock_held(str(self.state), proc_locks=str(listing)), False)
        with listing.open("a") as handle:
            handle.write(f"3: FLOCK  ADVISORY  WRITE 99999 {where} 0 EOF\n")
        self.assertIs(lock_held(str(self.state), proc_locks=str(listing)), True)
