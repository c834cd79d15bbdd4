"""The real file layer (its durable append: one pwritev(RWF_DSYNC), or write and fsync) and the
one atomic writer and set_aside written over a file layer, as the journal uses them."""

from __future__ import annotations

import errno
import os
import stat
from typing import Any, Callable, Iterator

from twisted.trial.unittest import SynchronousTestCase

from gateway import filelayer
from gateway.filelayer import MIN_FREE_INODES, OSFiles, makedirs, makedirs_durably, set_aside, write_atomic
from tests.journal.powercut import PowerCutFiles


class AppendSyncTests(SynchronousTestCase):
    """:meth:`OSFiles.append_sync` appends, syncs, and copes with what the OS refuses."""

    def setUp(self) -> None:
        self.path = os.path.join(self.mktemp())
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        self.files = OSFiles()
        self.addCleanup(self.files.close_all)
        self.calls: list[tuple[int, int]] = []
        self.real_pwritev = os.pwritev

    def _content(self) -> bytes:
        with open(self.path, "rb") as f:
            return f.read()

    def test_appends(self) -> None:
        """Data lands at the end of the file, after plain appends too."""
        self.files.append_sync(self.path, b"one,")
        self.files.append(self.path, b"two,")
        self.files.append_sync(self.path, b"three" * 10000)
        self.assertEqual(self._content(), b"one,two," + b"three" * 10000)

    def test_partial_writes_continue(self) -> None:
        """A short write goes on with the rest; a write of nothing is a full disk."""

        def short(fd: int, buffers: list[Any], offset: int, flags: int) -> int:
            self.calls.append((len(buffers[0]), flags))
            return self.real_pwritev(fd, [buffers[0][:3]], offset, flags)

        self.patch(os, "pwritev", short)
        self.files.append_sync(self.path, b"abcdefgh")
        self.assertEqual(self._content(), b"abcdefgh")
        self.assertEqual([n for n, _ in self.calls], [8, 5, 2])
        self.patch(os, "pwritev", lambda *a: 0)
        err = self.assertRaises(OSError, self.files.append_sync, self.path, b"more")
        self.assertEqual(err.errno, errno.ENOSPC)

    def test_falls_back_when_the_flag_is_refused(self) -> None:
        """EOPNOTSUPP (an old kernel or a filesystem without RWF_DSYNC): write and fsync
        instead, and do not ask again."""
        synced: list[int] = []
        real_fsync = os.fsync

        def refuse(fd: int, buffers: list[Any], offset: int, flags: int) -> int:
            self.calls.append((len(buffers[0]), flags))
            raise OSError(errno.EOPNOTSUPP, "Operation not supported")

        def fsync(fd: int) -> None:
            synced.append(fd)
            real_fsync(fd)

        self.patch(os, "pwritev", refuse)
        self.patch(os, "fsync", fsync)
        self.files.append_sync(self.path, b"first,")
        self.files.append_sync(self.path, b"second")
        self.assertEqual(self._content(), b"first,second")
        self.assertEqual(len(self.calls), 1)
        self.assertEqual(len(synced), 2)

    def test_other_errors_raise(self) -> None:
        """An I/O error is the caller's to handle (the journal undoes the batch)."""

        def broken(fd: int, buffers: list[Any], offset: int, flags: int) -> int:
            raise OSError(errno.EIO, "Input/output error")

        self.patch(os, "pwritev", broken)
        err = self.assertRaises(OSError, self.files.append_sync, self.path, b"data")
        self.assertEqual(err.errno, errno.EIO)


def record_fsyncs(test: SynchronousTestCase) -> list[str]:
    """Patch :func:`os.fsync` (as :mod:`gateway.filelayer` calls it) to note the path of each
    file or directory fsynced, then fsync it; returns the list it fills."""
    fsynced: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        fsynced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    test.patch(filelayer.os, "fsync", fsync)
    return fsynced


def record_calls(test: SynchronousTestCase, events: list[str], owner: Any, name: str) -> None:
    """Patch ``owner.name`` (``os.unlink``, ``shutil.rmtree``) to note ``"<name> <first argument>"``
    in ``events`` (the list :func:`record_fsyncs` fills: what was fsynced after what), then call it."""
    real = getattr(owner, name)

    def call(first: Any, *args: Any, **kwargs: Any) -> Any:
        events.append(f"{name} {first}")
        return real(first, *args, **kwargs)

    test.patch(owner, name, call)


class MakedirsDurablyTests(SynchronousTestCase):
    """A directory the gateway makes survives a power cut: its parent is fsynced."""

    def test_each_directory_made_is_fsynced_in_its_parent(self) -> None:
        """``OSFiles.makedirs`` (the journal's stream and cursor directories, every state file's
        directory through :mod:`gateway.atomic`) fsyncs the parent of each directory it made,
        and nothing when they are all there. It fsynced none: a power cut after the first
        acknowledged messages took the journal's directory with its fsynced segments (bench/
        powercut.py lost every message still queued, every retained message and session)."""
        base = os.path.abspath(self.mktemp())
        os.makedirs(base)
        fsynced = record_fsyncs(self)
        OSFiles().makedirs(os.path.join(base, "journal", "cloud"))
        self.assertEqual(sorted(fsynced), [base, os.path.join(base, "journal")])
        del fsynced[:]
        OSFiles().makedirs(os.path.join(base, "journal", "cloud"))
        self.assertEqual(fsynced, [])

    def test_the_mode_is_the_last_directorys_and_a_file_in_the_way_is_an_error(self) -> None:
        """Only the directory named gets ``mode`` (as ``Path.mkdir(mode, parents=True)``); a
        file where a directory should be raises ``FileExistsError``."""
        self.addCleanup(os.umask, os.umask(0o022))
        base = os.path.abspath(self.mktemp())
        makedirs_durably(os.path.join(base, "state"), 0o750)
        self.assertEqual(stat.S_IMODE(os.stat(base).st_mode), 0o755)
        self.assertEqual(stat.S_IMODE(os.stat(os.path.join(base, "state")).st_mode), 0o750)
        with open(os.path.join(base, "file"), "wb"):
            pass
        self.assertRaises(FileExistsError, makedirs_durably, os.path.join(base, "file"))
        self.assertRaises(NotADirectoryError, makedirs_durably, os.path.join(base, "file", "below"))

    def test_no_directory_it_makes_is_writable_by_others_whatever_the_umask(self) -> None:
        """Under ``umask 0`` the parents it makes are 0755 and the directory the mode asked for,
        less group and world write (a state_dir's parents were 0777: every user could rename the
        state directory away and put their own in its place); :func:`makedirs` (the directories
        made without fsync: sockets', spools', logs') does the same and says what it made."""
        self.addCleanup(os.umask, os.umask(0))
        base = os.path.abspath(self.mktemp())
        state = os.path.join(base, "lib", "state")
        makedirs_durably(state, 0o750)
        self.assertEqual([stat.S_IMODE(os.stat(path).st_mode) for path in (base, os.path.dirname(state), state)],
                         [0o755, 0o755, 0o750])
        spool = os.path.join(base, "run", "spool")
        self.assertEqual(makedirs(spool, 0o777), [spool, os.path.dirname(spool)])
        self.assertEqual([stat.S_IMODE(os.stat(path).st_mode) for path in (os.path.dirname(spool), spool)],
                         [0o755, 0o755])
        self.assertEqual(makedirs(spool), [])


class WriteAtomicTests(SynchronousTestCase):
    """:func:`write_atomic`, the one atomic writer (the journal's cursors and loss ledgers, every
    service's state through :mod:`gateway.atomic`)."""

    def setUp(self) -> None:
        self.directory = self.mktemp()
        os.makedirs(self.directory)
        self.path = os.path.join(self.directory, "losses.json")
        self.files = OSFiles()
        self.addCleanup(self.files.close_all)
        self.addCleanup(os.umask, os.umask(0o027))

    def test_a_temp_file_a_crash_left_gives_the_new_file_none_of_its_mode(self) -> None:
        """A ``losses.json.tmp`` a crash left, readable and writable by everyone, is not reused
        with its mode: the ledger written is 0640. It was 0666 (the journal's temp file was
        truncated, not made afresh)."""
        temp = self.path + ".tmp"
        with open(temp, "wb") as f:
            f.write(b"half")
        os.chmod(temp, 0o666)
        write_atomic(self.files, self.path, (b"new",))
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o640)
        with open(self.path, "rb") as f:
            self.assertEqual(f.read(), b"new")
        self.assertEqual(os.listdir(self.directory), ["losses.json"])

    def test_a_part_that_fails_leaves_the_old_content_and_no_temp_file(self) -> None:
        """Content made piece by piece whose making fails (any error, not only the disk's): the
        old content stays and the temp file goes, through the layer."""
        files = PowerCutFiles()
        files.makedirs("/j")
        write_atomic(files, "/j/state", (b"old",))

        def parts() -> Iterator[bytes]:
            yield b"a" * (1 << 20)
            yield b"b"
            raise ValueError("cannot be encoded")

        self.assertRaises(ValueError, write_atomic, files, "/j/state", parts())
        self.assertEqual(sorted(files.names), ["/j/state"])
        self.assertEqual(files.read("/j/state", 0, 10), b"old")


class SetAsideTests(SynchronousTestCase):
    """:func:`set_aside` on the real files, as a journal stream's open uses it."""

    def test_a_named_pipe_in_a_files_place_is_moved_aside_without_waiting(self) -> None:
        """A named pipe where a cursor file should be is damage, moved aside at once: the look
        at whether the gateway's user may read it waited for a writer for ever (the journal's
        set_aside opened it blocking; the services' one did not)."""
        path = os.path.join(self.mktemp(), "link.json")
        os.makedirs(os.path.dirname(path))
        os.mkfifo(path)
        files = OSFiles()
        self.addCleanup(files.close_all)
        self.assertRaises(OSError, files.read, path, 0, 100)
        self.assertEqual(set_aside(files, path), f"moved to {path}.damaged")
        self.assertTrue(stat.S_ISFIFO(os.lstat(path + ".damaged").st_mode))


    def test_an_older_damaged_copy_of_another_kind_gives_way(self) -> None:
        """A damaged path is moved aside also when an older ``.damaged`` of another kind is
        there (a file where a directory goes, a directory with files in it): the newer takes
        its place, as a damaged file's does a file's. It was left where it was, so a
        ``processes.json`` or ``desired.json`` made a directory stayed one, every write of it
        failing (docs/apps.md: moved aside to ``processes.json.damaged``)."""
        root = self.mktemp()
        files = OSFiles()
        self.addCleanup(files.close_all)
        for older, newer in [("file", "directory"), ("directory", "file"), ("directory", "directory")]:
            path = os.path.join(root, f"{older}-{newer}", "processes.json")
            os.makedirs(os.path.dirname(path))
            for where, kind in [(path + ".damaged", older), (path, newer)]:
                if kind == "file":
                    with open(where, "w") as f:
                        f.write(where)
                else:
                    os.makedirs(os.path.join(where, "inside"))
            self.assertEqual(set_aside(files, path), f"moved to {path}.damaged", (older, newer))
            self.assertFalse(os.path.lexists(path))
            self.assertEqual(os.path.isdir(path + ".damaged"), newer == "directory")

class FreeBytesTests(SynchronousTestCase):
    """:meth:`OSFiles.free_bytes` counts a filesystem out of inodes as full."""

    def test_out_of_inodes_is_no_room(self) -> None:
        """A filesystem with bytes to spare but fewer than MIN_FREE_INODES inodes takes no new
        file (a journal segment, a cursor's temp file): it has 0 bytes free for the journal's
        limits, as a full disk has (it said the bytes, and drop-oldest never made room). One
        that does not count inodes (``f_files`` 0: btrfs) is never out of them."""
        def statvfs(favail: int, files: int) -> Callable[[str], os.statvfs_result]:
            return lambda path: os.statvfs_result((4096, 4096, 1000, 900, 800, files, favail, favail, 0, 255))

        self.assertEqual(OSFiles(statvfs=statvfs(MIN_FREE_INODES, 200)).free_bytes("/j"), 800 * 4096)
        self.assertEqual(OSFiles(statvfs=statvfs(MIN_FREE_INODES - 1, 200)).free_bytes("/j"), 0)
        self.assertEqual(OSFiles(statvfs=statvfs(0, 0)).free_bytes("/j"), 800 * 4096)
        self.assertGreater(OSFiles().free_bytes(os.getcwd()), 0)
