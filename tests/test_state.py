"""The state directory service: created, writable, and used by one gateway at a time."""

from __future__ import annotations

import os
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from gateway.errors import GatewayError
from gateway.state import LOCK_FILE, StateDirService
from gateway.statelock import stopping_holder
from tests.test_filelayer import record_fsyncs


class StateDirLockTests(SynchronousTestCase):
    """docs/configuration.md (gateway.state_dir): one gateway at a time on a state directory."""

    def test_second_gateway_on_the_same_directory_is_refused(self) -> None:
        """A second start on a state directory in use fails naming the directory and the pid
        of the gateway that uses it; once that one has stopped, the directory is free. A
        second gateway started every service, killing the first one's hosted programs as
        left over from a crash, before its admin socket refused it."""
        path = Path(self.mktemp())
        first = StateDirService(path)
        first.startService()
        self.assertEqual((path / LOCK_FILE).read_text(), f"{os.getpid()}\n")
        second = StateDirService(path)
        with self.assertRaises(GatewayError) as raised:
            second.startService()
        self.assertEqual(str(raised.exception), f"the state directory {path} is used by another gateway"
                                                f" (pid {os.getpid()}, {path / LOCK_FILE})")
        second.stopService()  # (the root stops a child whose start failed)
        first.stopService()
        third = StateDirService(path)
        third.startService()
        third.stopService()

    def test_a_state_directory_it_makes_survives_a_power_cut(self) -> None:
        """The state directory (and a journal directory elsewhere) the gateway makes at its
        first start is fsynced in its parent: it was not, and a power cut could take it with
        everything acknowledged into it (bench/powercut.py)."""
        base = Path(self.mktemp()).absolute()
        fsynced = record_fsyncs(self)
        service = StateDirService(base / "state", base / "journal")
        service.startService()
        service.stopService()
        self.assertIn(str(base), fsynced)
        self.assertIn(str(base.parent), fsynced)  # (base itself was made too)

    def test_a_stopping_gateway_says_so_in_its_lock_file(self) -> None:
        """Once its stop has begun, the gateway's lock file says so after its pid (gatewayctl
        reads it), and a second gateway's refusal says the first is stopping and when to start
        again; the next start writes its pid alone."""
        path = Path(self.mktemp())
        first = StateDirService(path)
        first.startService()
        first.stopping()
        self.assertEqual((path / LOCK_FILE).read_text(), f"{os.getpid()} stopping\n")
        self.assertEqual(stopping_holder(str(path)), str(os.getpid()))
        with self.assertRaises(GatewayError) as raised:
            StateDirService(path).startService()
        self.assertEqual(str(raised.exception), f"the state directory {path} is used by another gateway"
                                                f" (pid {os.getpid()}, {path / LOCK_FILE}): it is stopping;"
                                                " start this one once it has ended")
        first.stopService()
        again = StateDirService(path)
        again.startService()
        self.addCleanup(again.stopService)
        self.assertEqual(((path / LOCK_FILE).read_text(), stopping_holder(str(path))), (f"{os.getpid()}\n", None))

    def test_a_journal_directory_elsewhere_is_locked_too(self) -> None:
        """Two gateways with state directories of their own and the same journal.directory
        outside them: the second one is refused, naming the journal directory and the first
        one's pid, and the first one's state directory stays free of it; its journal lock is
        released at its stop. Both ran on the one journal (segments and cursors)."""
        base = Path(self.mktemp())
        journal = base / "shared-journal"
        first = StateDirService(base / "one", journal)
        first.startService()
        self.assertEqual((journal / LOCK_FILE).read_text(), f"{os.getpid()}\n")
        second = StateDirService(base / "two", journal)
        with self.assertRaises(GatewayError) as raised:
            second.startService()
        self.assertEqual(str(raised.exception), f"the journal directory {journal} is used by another gateway"
                                                f" (pid {os.getpid()}, {journal / LOCK_FILE})")
        second.stopService()
        third = StateDirService(base / "two")  # (its state directory was not left locked)
        third.startService()
        third.stopService()
        first.stopping()
        self.assertEqual((journal / LOCK_FILE).read_text(), f"{os.getpid()} stopping\n")
        first.stopService()
        again = StateDirService(base / "two", journal)
        again.startService()
        again.stopService()

    def test_a_lock_file_left_behind_is_no_lock(self) -> None:
        """The lock file of a gateway that died (its pid still written) does not stop a start."""
        path = Path(self.mktemp())
        path.mkdir()
        (path / LOCK_FILE).write_text("999999999\n")
        service = StateDirService(path)
        service.startService()
        self.addCleanup(service.stopService)
        self.assertEqual((path / LOCK_FILE).read_text(), f"{os.getpid()}\n")


    def test_a_pid_the_disk_refuses_does_not_stop_the_start(self) -> None:
        """A lock file the disk refuses to write the pid in (a first start on a full disk: the
        file is made, its content cannot be): the lock is held all the same (a second gateway
        is refused, 'pid unknown') and one warning says so. The OSError went up through
        twistd as a traceback, and the gateway did not start."""
        import errno

        from twisted.logger import LogLevel, formatEvent

        from tests.logevents import capture_log_events

        def full(fd: int, data: bytes, offset: int) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

        path = Path(self.mktemp())
        self.patch(os, "pwrite", full)
        events = capture_log_events(self)
        first = StateDirService(path)
        first.lock()  # (as the tree does, before twistd starts the service, which writes the pid again)
        first.startService()
        self.addCleanup(first.stopService)
        self.assertEqual([formatEvent(e) for e in events if e["log_level"] == LogLevel.warn], [
            f"cannot write this gateway's pid in {path / LOCK_FILE} (No space left on device): it holds the lock"
            " all the same (a second gateway on this directory is refused, its pid unknown)"])
        with self.assertRaises(GatewayError) as raised:
            StateDirService(path).startService()
        self.assertEqual(str(raised.exception), f"the state directory {path} is used by another gateway"
                                                f" (pid unknown, {path / LOCK_FILE})")


class StateDirPermissionTests(SynchronousTestCase):
    """docs/configuration.md (gateway.state_dir): a directory every user may write to is refused."""

    def test_a_state_directory_others_may_write_is_refused(self) -> None:
        """Mode 0777: any user could replace what the gateway keeps there, the apps' spool and
        directories among it (renames need only the directory's write bit), and have the
        gateway run their programs. The start fails saying so, before the lock is taken; it
        went on. A directory only its owner and group write to starts, and so does one with the
        sticky bit (a tmpfs mounted as the state directory is 1777), where others may rename
        only what they own."""
        path = Path(self.mktemp())
        path.mkdir()
        for mode in (0o777, 0o757):
            path.chmod(mode)
            with self.assertRaises(GatewayError) as raised:
                StateDirService(path).startService()
            self.assertEqual(str(raised.exception), f"the state directory {path} may be written by every user"
                                                    f" (mode {mode:04o}): chmod o-w {path}")
            self.assertFalse((path / LOCK_FILE).exists())
        for mode in (0o770, 0o1777):
            path.chmod(mode)
            service = StateDirService(path)
            service.startService()
            service.stopService()


class StateDirNotWritableTests(SynchronousTestCase):
    """docs/configuration.md (gateway.state_dir): a state directory the gateway cannot write
    stops the start with one line saying why and what to do."""

    def test_a_read_only_filesystem_is_named_with_what_to_do(self) -> None:
        """The state directory on a filesystem mounted read-only (a device that remounted its
        disk read-only after errors): the start fails saying so and to make it writable; it
        said only 'the state directory PATH is not writable', which a user reads as a question
        of permissions."""
        from tests.tmpfs import mount_tmpfs, remount_read_only

        path = Path(self.mktemp()).absolute()
        mount_tmpfs(self, path, "1m")
        os.chmod(path, 0o750)
        remount_read_only(path)
        with self.assertRaises(GatewayError) as raised:
            StateDirService(path).startService()
        self.assertEqual(str(raised.exception), f"the state directory {path} is on a read-only filesystem:"
                                                " make it writable (remount it read-write) and start again")

    def test_a_read_only_journal_filesystem_stops_the_start(self) -> None:
        """The journal's directory on a filesystem of its own mounted read-only (a partition
        for the journal, remounted read-only after errors) under a writable state directory:
        the start fails saying so and what to do. The gateway started, and then refused every
        QoS 1/2 message of every client (no PUBACK, the connection closed), the ingest's every
        write, for as long as it ran."""
        from tests.tmpfs import mount_tmpfs, remount_read_only

        path = Path(self.mktemp()).absolute()
        journal = path / "journal"
        mount_tmpfs(self, journal, "1m")
        remount_read_only(journal)
        with self.assertRaises(GatewayError) as raised:
            StateDirService(path).startService()
        self.assertEqual(str(raised.exception), f"the journal directory {journal} is on a read-only filesystem"
                                                f" ({journal}): make it writable (remount it read-write) and"
                                                " start again")

    def test_a_journal_elsewhere_yet_to_be_made_on_a_read_only_filesystem(self) -> None:
        """``journal.directory`` outside the state directory, not made yet, under a directory
        on a read-only filesystem: the start fails naming that directory."""
        from tests.tmpfs import mount_tmpfs, remount_read_only

        work = Path(self.mktemp()).absolute()
        data = work / "data"
        mount_tmpfs(self, data, "1m")
        remount_read_only(data)
        with self.assertRaises(GatewayError) as raised:
            StateDirService(work / "state", data / "gw" / "journal").startService()
        self.assertEqual(str(raised.exception), f"the journal directory {data / 'gw' / 'journal'} is on a read-only"
                                                f" filesystem ({data}): make it writable (remount it read-write)"
                                                " and start again")

    def test_a_directory_the_user_may_not_write_names_the_user(self) -> None:
        """A state directory the gateway's user may not write (owned by another user): the start
        fails naming its owner and mode and the command that gives it back, as every refusal of
        the state does; it said only 'give it to that user (chown)', with the user's number."""
        from tests.test_stateaccess import GATEWAY_UID, name_of

        path = Path(self.mktemp()).absolute()
        path.mkdir()
        os.chmod(path, 0o755)
        self.patch(os, "geteuid", lambda: GATEWAY_UID)
        self.patch(os, "access", lambda *args, **kwargs: False)  # (as a user other than its owner)
        with self.assertRaises(GatewayError) as raised:
            StateDirService(path).startService()
        user = name_of(GATEWAY_UID)
        self.assertEqual(str(raised.exception), f"{path} (owner {name_of(os.stat(path).st_uid)}, mode 0755) may not be"
                                                f" used by the gateway's user {user}: chown -R {user}: {path} and start"
                                                " again")

    def test_its_own_directory_it_may_not_write_asks_for_a_chmod(self) -> None:
        """The gateway's user owns it but may not write it (mode 0500): no chown helps, chmod does."""
        path = Path(self.mktemp()).absolute()
        path.mkdir()
        os.chmod(path, 0o500)
        self.patch(os, "access", lambda *args, **kwargs: False)
        with self.assertRaises(GatewayError) as raised:
            StateDirService(path).startService()
        self.assertTrue(str(raised.exception).endswith(f": chmod u+rwx {path} and start again"), raised.exception)
