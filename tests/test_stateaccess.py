"""A state file the gateway's user may not use is not damaged: the start stops with one line
naming it, its owner and mode, and what to do (docs/configuration.md, gateway.state_dir)."""

from __future__ import annotations

import errno
import os
import pwd
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from gateway.atomic import set_aside
from gateway.errors import GatewayError
from gateway.state import StateDirService
from gateway.stateaccess import StateAccessError, check_state_tree, is_permission_error, refusal
from gateway.statelock import LOCK_FILE

#: A user id no file here belongs to: the gateway's user, as the tests pretend to be (tests
#: run as root, whom no mode keeps out).
GATEWAY_UID = 4242


def name_of(uid: int) -> str:
    """What a refusal calls user ``uid``."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


class StateDirFixture(SynchronousTestCase):
    """A state directory with its lock file and one state file, owned by whoever runs the tests."""

    def setUp(self) -> None:
        self.state = Path(self.mktemp()).absolute()
        (self.state / "journal" / "cursors").mkdir(parents=True)
        (self.state / LOCK_FILE).write_text("1\n")
        self.file = self.state / "journal" / "cursors" / "cloud.json"
        self.file.write_text('{"acked": 7}')
        os.chmod(self.file, 0o640)
        self.owner = name_of(os.stat(self.file).st_uid)

    def be_another_user(self, refused: set[Path]) -> None:
        """Act as :data:`GATEWAY_UID`, whom the kernel refuses ``refused`` (as it would once
        root owned them, mode 0640)."""
        self.patch(os, "geteuid", lambda: GATEWAY_UID)
        self.patch(os, "access", lambda path, *args, **kwargs: Path(path) not in refused)


class RefusalTests(StateDirFixture):
    """The line names the file, its owner and mode, and the command that sets it right."""

    def test_a_file_another_user_owns_asks_for_the_state_directory_back(self) -> None:
        """Owned by another user (root, after ``sudo twistd gateway``): chown the whole state
        directory to the gateway's user (a sudo run leaves such files everywhere)."""
        self.patch(os, "geteuid", lambda: GATEWAY_UID)
        self.assertEqual(str(refusal(self.file)),
                         f"{self.file} (owner {self.owner}, mode 0640) may not be used by the gateway's user"
                         f" {name_of(GATEWAY_UID)}: chown -R {name_of(GATEWAY_UID)}: {self.state} and start again")

    def test_its_own_file_asks_for_a_chmod(self) -> None:
        """A file the gateway's user owns but may not read (mode 0): no chown helps, chmod does."""
        os.chmod(self.file, 0)
        self.assertEqual(str(refusal(self.file)),
                         f"{self.file} (owner {self.owner}, mode 0000) may not be used by the gateway's user"
                         f" {self.owner}: chmod u+rw {self.file} and start again")
        self.assertIn(f"chmod u+rwx {self.file.parent} and start again", str(refusal(self.file.parent)))

    def test_a_file_outside_a_state_directory_asks_for_itself_only(self) -> None:
        """No lock file above it (a key a setting names): only that file is to be given back,
        never ``chown -R`` of whatever directory holds it."""
        (self.state / LOCK_FILE).unlink()
        self.patch(os, "geteuid", lambda: GATEWAY_UID)
        self.assertIn(f": chown {name_of(GATEWAY_UID)}: {self.file} and start again", str(refusal(self.file)))

    def test_a_path_that_is_not_there_is_named_alone(self) -> None:
        """Nothing to say of its owner or mode: its name and what to do."""
        missing = self.state / "nothing"
        self.assertEqual(str(refusal(missing)), f"{missing} may not be used by the gateway's user {self.owner}:"
                                                " give it to that user and start again")

    def test_only_eacces_and_eperm_are_permission_problems(self) -> None:
        """A directory or a loop of links in a file's place is damage; EACCES and EPERM are not."""
        self.assertTrue(is_permission_error(PermissionError(errno.EACCES, "Permission denied")))
        self.assertTrue(is_permission_error(OSError(errno.EPERM, "Operation not permitted")))
        self.assertFalse(is_permission_error(IsADirectoryError(errno.EISDIR, "Is a directory")))
        self.assertFalse(is_permission_error(OSError(errno.ELOOP, "Too many levels of symbolic links")))
        self.assertFalse(is_permission_error(ValueError("not JSON")))


class SetAsideTests(StateDirFixture):
    """:func:`gateway.atomic.set_aside` (:func:`gateway.filelayer.set_aside`, the journal's too),
    which every service's state file goes through when it cannot be used: a permission problem
    stops the caller, the file stays; damage is moved aside."""

    def test_a_file_the_user_may_not_read_stays_and_is_refused(self) -> None:
        """The read refused (EACCES): it was moved to ``cloud.json.damaged`` and the service
        started without it (the twin without its things, a link resending everything)."""
        real_open = os.open

        def refusing_open(path: Any, *args: Any, **kwargs: Any) -> int:
            if Path(path) == self.file:
                raise PermissionError(errno.EACCES, "Permission denied", str(path))
            return real_open(path, *args, **kwargs)

        self.patch(os, "open", refusing_open)
        self.patch(os, "geteuid", lambda: GATEWAY_UID)
        with self.assertRaises(StateAccessError) as raised:
            set_aside(self.file)
        self.assertIn(f"{self.file} (owner {self.owner}, mode 0640) may not be used", str(raised.exception))
        self.assertIn(f"chown -R {name_of(GATEWAY_UID)}: {self.state} and start again", str(raised.exception))
        self.assertEqual(self.file.read_text(), '{"acked": 7}')
        self.assertFalse(self.file.with_name("cloud.json.damaged").exists())

    def test_a_file_the_user_may_not_move_stays_and_its_directory_is_named(self) -> None:
        """The rename refused (EPERM, EACCES: a directory root owns): the directory is named."""
        for number in (errno.EACCES, errno.EPERM):
            def refused(*args: Any, **kwargs: Any) -> None:
                raise OSError(number, os.strerror(number))

            self.patch(os, "replace", refused)
            with self.assertRaises(StateAccessError) as raised:
                set_aside(self.file)
            self.assertTrue(str(raised.exception).startswith(f"{self.file.parent} (owner "), number)
            self.assertTrue(self.file.exists())

    def test_a_file_of_mode_0_stays_and_is_refused(self) -> None:
        """For real: mode 0 keeps a user other than root from reading it."""
        if os.geteuid() == 0:
            raise self.skipTest("root reads a file of mode 0: the decision is tested with an injected refusal")
        os.chmod(self.file, 0)
        with self.assertRaises(StateAccessError) as raised:
            set_aside(self.file)
        self.assertIn(f"chmod u+rw {self.file} and start again", str(raised.exception))
        self.assertTrue(self.file.exists())

    def test_damage_is_still_moved_aside(self) -> None:
        """A directory in the file's place is damage: moved to ``<name>.damaged``."""
        self.file.unlink()
        self.file.mkdir()
        self.assertEqual(set_aside(self.file), f"moved to {self.file}.damaged")
        self.assertTrue(self.file.with_name("cloud.json.damaged").is_dir())


class StateTreeTests(StateDirFixture):
    """At start, before any service reads its state: what another user owns and the gateway's
    user may not use (a ``sudo twistd gateway`` leaves root's files and directories) is refused."""

    def test_a_file_root_left_is_refused_before_the_lock(self) -> None:
        """A cursor root wrote (mode 0640): the start stops with the chown line; the lock is not
        taken (it went on, and the journal set the cursor aside as damaged and sent everything
        again)."""
        self.be_another_user({self.file})
        with self.assertRaises(GatewayError) as raised:
            StateDirService(self.state).lock()
        self.assertEqual(str(raised.exception),
                         f"{self.file} (owner {self.owner}, mode 0640) may not be used by the gateway's user"
                         f" {name_of(GATEWAY_UID)}: chown -R {name_of(GATEWAY_UID)}: {self.state} and start again")
        self.assertEqual((self.state / LOCK_FILE).read_text(), "1\n")

    def test_a_directory_root_left_is_refused(self) -> None:
        """A directory it may not write (where its segments and cursors are made) is refused too."""
        directory = self.state / "journal"
        self.be_another_user({directory})
        with self.assertRaises(StateAccessError) as raised:
            check_state_tree(self.state)
        self.assertTrue(str(raised.exception).startswith(f"{directory} (owner {self.owner}, mode 0"))

    def test_what_another_user_owns_and_it_may_use_is_no_problem(self) -> None:
        """A file root wrote that the gateway's user may read (the self-update's result, mode
        0644), and a file that user owns whatever its mode (an app's own tree; chmod's business,
        not chown's): no refusal."""
        if os.geteuid() != 0:
            raise self.skipTest("only root makes a file another user owns")
        mine = self.state / "mine"
        mine.write_text("")
        os.chown(mine, GATEWAY_UID, -1)
        self.be_another_user({mine})
        check_state_tree(self.state)

    def test_root_is_not_checked(self) -> None:
        """Root may use anything: nothing is walked."""
        self.patch(os, "geteuid", lambda: 0)
        self.patch(os, "scandir", lambda *args: self.fail("walked"))
        check_state_tree(self.state)

    def test_the_lock_file_the_user_may_not_open_is_named(self) -> None:
        """The lock file itself refused (EACCES): the chown line, not 'cannot open PATH'."""
        real_open = os.open
        lock = self.state / LOCK_FILE

        def refusing_open(path: Any, *args: Any, **kwargs: Any) -> int:
            if Path(path) == lock:
                raise PermissionError(errno.EACCES, "Permission denied", str(path))
            return real_open(path, *args, **kwargs)

        self.patch(os, "open", refusing_open)
        self.patch(os, "geteuid", lambda: GATEWAY_UID)
        self.patch(os, "access", lambda *args, **kwargs: True)
        with self.assertRaises(GatewayError) as raised:
            StateDirService(self.state).lock()
        self.assertIn(f"{lock} (owner {self.owner}, mode ", str(raised.exception))
        self.assertIn(f"chown -R {name_of(GATEWAY_UID)}: {self.state} and start again", str(raised.exception))


class StateLayoutTests(StateDirFixture):
    """What the walk asks of each part of the state directory (docs/configuration.md,
    gateway.state_dir): files the gateway appends to must be writable too; an app's installed
    version is looked at to its top files and its directories only; a journal directory
    elsewhere is looked through as well."""

    def only_reads(self, refused: set[Path]) -> list[tuple[Path, int]]:
        """Act as :data:`GATEWAY_UID`, whom the kernel lets read ``refused`` but not write
        (root's files of mode 0644); return the access checks made, as they come."""
        asked: list[tuple[Path, int]] = []

        def access(path: Any, mode: int, **kwargs: Any) -> bool:
            asked.append((Path(path), mode))
            return not (Path(path) in refused and mode & os.W_OK)

        self.patch(os, "geteuid", lambda: GATEWAY_UID)
        self.patch(os, "access", access)
        return asked

    def chown_line(self, path: Path, mode: str, root: Path | None = None) -> str:
        user = name_of(GATEWAY_UID)
        return (f"{path} (owner {self.owner}, mode {mode}) may not be used by the gateway's user {user}:"
                f" chown -R {user}: {root or self.state} and start again")

    def test_an_app_log_root_left_readable_is_refused(self) -> None:
        """An app's log root wrote (mode 0644: readable): the gateway appends to it, so the
        start stops with the chown line. It passed, and every line the app printed was
        dropped while it ran, with a warning that named no fix."""
        log = self.state / "logs" / "apps" / "sensor.log"
        log.parent.mkdir(parents=True)
        log.write_text("")
        os.chmod(log, 0o644)
        self.only_reads({log})
        with self.assertRaises(GatewayError) as raised:
            StateDirService(self.state).lock()
        self.assertEqual(str(raised.exception), self.chown_line(log, "0644"))

    def test_a_journal_segment_root_left_readable_is_refused(self) -> None:
        """The journal appends to a stream's last segment: root's, mode 0644, refused too."""
        segment = self.state / "journal" / "link-cloud" / "00000000000000000001.seg"
        segment.parent.mkdir(parents=True)
        segment.write_bytes(b"")
        os.chmod(segment, 0o644)
        self.only_reads({segment})
        with self.assertRaises(GatewayError) as raised:
            StateDirService(self.state).lock()
        self.assertEqual(str(raised.exception), self.chown_line(segment, "0644"))

    def test_a_download_part_root_left_readable_is_refused(self) -> None:
        """A download's ``.part`` is appended to when it resumes: root's, mode 0644, refused."""
        part = self.state / "updates" / "artifacts" / "op1" / "m0" / "app.tar.gz.part"
        part.parent.mkdir(parents=True)
        part.write_bytes(b"")
        os.chmod(part, 0o644)
        self.only_reads({part})
        with self.assertRaises(GatewayError) as raised:
            StateDirService(self.state).lock()
        self.assertEqual(str(raised.exception), self.chown_line(part, "0644"))

    def test_files_root_left_readable_elsewhere_are_no_problem(self) -> None:
        """What the gateway reads or replaces whole (a cursor, the self-update's result, an app's
        manifest, its data): readable is enough."""
        version = self.state / "apps" / "sensor" / "1.0"
        version.mkdir(parents=True)
        (version / "supervisor.conf").write_text("")
        (self.state / "apps" / "sensor" / "data").mkdir()
        (self.state / "apps" / "sensor" / "data" / "db.json").write_text("")
        self.only_reads({self.file, version / "supervisor.conf", self.state / "apps" / "sensor" / "data" / "db.json"})
        StateDirService(self.state).lock()

    def test_an_installed_version_is_looked_at_to_its_top_and_its_directories(self) -> None:
        """An app's version (``node_modules`` may hold 50,000 files, every one a system call
        at every start): its top files (the manifest the gateway reads) and every directory in
        it (its deletion writes in each) are checked, the files below them are not. Its data
        directory is looked through whole."""
        version = self.state / "apps" / "sensor" / "1.0"
        deep = version / "node_modules" / "left-pad"
        deep.mkdir(parents=True)
        (version / "supervisor.conf").write_text("")
        (deep / "index.js").write_text("")
        data = self.state / "apps" / "sensor" / "data" / "cache"
        data.mkdir(parents=True)
        (data / "a.json").write_text("")
        calls = self.only_reads(set())
        StateDirService(self.state).lock()
        asked = {path for path, _mode in calls}
        self.assertLessEqual({version / "supervisor.conf", version / "node_modules", deep, data / "a.json"}, asked)
        self.assertNotIn(deep / "index.js", asked)

    def test_a_directory_root_left_in_an_installed_version_is_refused(self) -> None:
        """A directory in an app's version that the gateway's user may not write (``npm
        install`` run by root): pruning, rolling back or uninstalling that version could not
        delete what it holds, so the start stops with the chown line."""
        deep = self.state / "apps" / "sensor" / "1.0" / "node_modules" / "left-pad"
        deep.mkdir(parents=True)
        (deep / "index.js").write_text("")
        self.be_another_user({deep})
        with self.assertRaises(GatewayError) as raised:
            StateDirService(self.state).lock()
        self.assertTrue(str(raised.exception).startswith(f"{deep} (owner {self.owner}, mode 0"), raised.exception)

    def test_a_journal_directory_elsewhere_is_looked_through(self) -> None:
        """``journal.directory`` outside the state directory (docs/journal.md): a cursor root
        left there stops the start with the chown of that directory, before the lock. It was
        not looked at: the journal's start met such a file with a chown of that one file."""
        journal = Path(self.mktemp()).absolute()
        cursor = journal / "link-cloud" / "cursors" / "cloud.json"
        cursor.parent.mkdir(parents=True)
        cursor.write_text('{"acked": 7}')
        os.chmod(cursor, 0o640)
        self.be_another_user({cursor})
        with self.assertRaises(GatewayError) as raised:
            StateDirService(self.state, journal).lock()
        self.assertEqual(str(raised.exception), self.chown_line(cursor, "0640", journal))
        self.assertEqual((self.state / LOCK_FILE).read_text(), "1\n")

    def test_a_journal_directory_elsewhere_root_left_is_refused(self) -> None:
        """The journal directory itself root's (mode 0755): named, with its chown. A stream's
        directory of root's there stopped the journal's start with '<stream>/cursors may not
        be used by the gateway's user nobody: give it to that user and start again' (seen run
        as nobody): a path that was not there, no owner, no command."""
        journal = Path(self.mktemp()).absolute()
        journal.mkdir()
        os.chmod(journal, 0o755)
        self.be_another_user({journal})
        with self.assertRaises(GatewayError) as raised:
            StateDirService(self.state, journal).lock()
        self.assertEqual(str(raised.exception), self.chown_line(journal, "0755", journal))

    def test_a_segment_in_a_journal_directory_elsewhere_must_be_writable(self) -> None:
        """Its segments are appended to there too."""
        journal = Path(self.mktemp()).absolute()
        segment = journal / "link-cloud" / "00000000000000000001.seg"
        segment.parent.mkdir(parents=True)
        segment.write_bytes(b"")
        os.chmod(segment, 0o644)
        self.only_reads({segment})
        with self.assertRaises(GatewayError) as raised:
            StateDirService(self.state, journal).lock()
        self.assertEqual(str(raised.exception), self.chown_line(segment, "0644", journal))
