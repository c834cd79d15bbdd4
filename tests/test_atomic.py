"""Durable file writes: a failed write leaves the old content and no temp file behind."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from gateway.atomic import read_json, temporary_of, temporary_path, write_atomically, write_parts_atomically
from gateway.filelayer import WRITE_SIZE


def refuse(number: int) -> Any:
    """A stand-in for an ``os`` call that the disk refuses with ``number`` (ENOSPC, EROFS)."""
    def refused(*args: Any, **kwargs: Any) -> Any:
        raise OSError(number, os.strerror(number))
    return refused


class WriteAtomicallyTests(SynchronousTestCase):
    """A write, fsync or rename that fails leaves the old file and removes its temp file."""

    def setUp(self) -> None:
        self.directory = Path(self.mktemp())
        self.directory.mkdir()
        self.path = self.directory / "desired.json"
        self.path.write_bytes(b"old")

    def assert_failed_cleanly(self, number: int) -> None:
        """The write fails with the error ``number``, the old content stays, no temp file."""
        with self.assertRaises(OSError) as raised:
            write_atomically(self.path, b"new")
        self.assertEqual(raised.exception.errno, number)
        self.assertEqual(self.path.read_bytes(), b"old")
        self.assertEqual(sorted(p.name for p in self.directory.iterdir()), ["desired.json"])

    def test_the_size_written_is_returned(self) -> None:
        """A write made of parts, more than one gathered write's worth, returns the new file's
        size (the broker's checkpoint size on /metrics), and an empty one 0."""
        parts = [b"x" * 1000] * (WRITE_SIZE // 1000 + 5) + [b"end"]
        self.assertEqual(write_parts_atomically(self.path, parts), self.path.stat().st_size)
        self.assertEqual(self.path.stat().st_size, sum(map(len, parts)))
        self.assertEqual(write_parts_atomically(self.path, []), 0)

    def test_a_write_the_disk_refuses_leaves_no_temp_file(self) -> None:
        """A full disk during the write: .desired.json.tmp was left behind, half written."""
        self.patch(os, "write", refuse(errno.ENOSPC))
        self.assert_failed_cleanly(errno.ENOSPC)

    def test_a_write_that_writes_nothing_is_a_full_disk(self) -> None:
        """A write that takes none of the bytes (0 written) raises ENOSPC, as the journal's
        writes do: the writer asked again and again for ever (here stopped at the fourth)."""
        calls: list[int] = []

        def writes_nothing(fd: int, data: Any) -> int:
            calls.append(fd)
            if len(calls) > 3:
                raise AssertionError("asked again and again")
            return 0

        self.patch(os, "write", writes_nothing)
        self.assert_failed_cleanly(errno.ENOSPC)
        self.assertEqual(len(calls), 1)

    def test_an_fsync_the_disk_refuses_leaves_no_temp_file(self) -> None:
        """An fsync that fails (the data could not be stored) removes the temp file."""
        self.patch(os, "fsync", refuse(errno.EIO))
        self.assert_failed_cleanly(errno.EIO)

    def test_a_rename_the_disk_refuses_leaves_no_temp_file(self) -> None:
        """A rename that fails (a read-only remount meanwhile) removes the temp file."""
        self.patch(os, "replace", refuse(errno.EROFS))
        self.assert_failed_cleanly(errno.EROFS)

    def test_the_original_error_is_raised_when_the_temp_file_cannot_be_removed(self) -> None:
        """Removing the temp file is best effort: its failure does not hide the write's error."""
        self.patch(os, "replace", refuse(errno.EROFS))
        self.patch(os, "unlink", refuse(errno.EACCES))
        with self.assertRaises(OSError) as raised:
            write_atomically(self.path, b"new")
        self.assertEqual(raised.exception.errno, errno.EROFS)
        self.assertEqual(self.path.read_bytes(), b"old")


class TemporaryNameTests(SynchronousTestCase):
    """The one name of a write's temporary file, which the sweeps of leftovers look for."""

    def test_the_temporary_file_of_a_write_is_found_by_its_name(self) -> None:
        """A write stopped before its rename leaves ``.<name>.tmp`` beside the file, at
        :func:`temporary_path`; :func:`temporary_of` names the file it was for, and nothing
        for any other name."""
        directory = Path(self.mktemp())
        directory.mkdir()
        path = directory / "abc.json"

        def stopped(temp: str, target: str) -> None:
            raise KeyboardInterrupt  # (a kill between the write and the rename; the temp file stays)

        self.patch(os, "replace", stopped)
        self.patch(os, "unlink", lambda *args, **kwargs: None)
        with self.assertRaises(KeyboardInterrupt):
            write_atomically(path, b"{}")
        self.assertEqual([p.name for p in directory.iterdir()], [temporary_path(path).name])
        self.assertEqual(temporary_of(temporary_path(path).name), "abc.json")
        for other in ("abc.json", ".abc.json", "abc.json.tmp", ".tmp", "."):
            self.assertIsNone(temporary_of(other), other)


class ModeTests(SynchronousTestCase):
    """The file written has the mode asked for, narrowed by the process's umask, as any file
    it creates: the .deb's unit runs the gateway with UMask=0027, so that what it keeps
    (retained messages, the twin, the apps' wishes) is not readable by every user."""

    def setUp(self) -> None:
        self.directory = Path(self.mktemp())
        self.directory.mkdir()
        self.path = self.directory / "state.json"
        self.addCleanup(os.umask, os.umask(0o027))

    def test_the_umask_narrows_the_mode(self) -> None:
        """Under umask 0027 the default 0644 is 0640, and 0600 stays 0600. It was 0644
        whatever the umask (the temp file was chmod'ed to exactly the mode asked for)."""
        write_atomically(self.path, b"new")
        self.assertEqual(stat.S_IMODE(self.path.stat().st_mode), 0o640)
        write_atomically(self.path, b"newer", 0o600)
        self.assertEqual(stat.S_IMODE(self.path.stat().st_mode), 0o600)

    def test_a_temp_file_a_crash_left_gives_the_new_file_none_of_its_mode(self) -> None:
        """A temp file left behind by a crash, readable by everyone, is not reused with its
        mode: the new file is made afresh."""
        temp = self.directory / ".state.json.tmp"
        temp.write_bytes(b"half")
        temp.chmod(0o666)
        write_atomically(self.path, b"new", 0o600)
        self.assertEqual(stat.S_IMODE(self.path.stat().st_mode), 0o600)
        self.assertEqual(self.path.read_bytes(), b"new")
        self.assertFalse(temp.exists())


class ReadJsonTests(SynchronousTestCase):
    """A state file that holds no valid JSON is a ValueError, whatever is wrong with it."""

    def test_json_nested_too_deeply_is_a_value_error(self) -> None:
        """JSON nested deeper than the parser goes raises the ValueError documented for bad JSON
        (callers set such a file aside), not a RecursionError."""
        path = Path(self.mktemp())
        path.write_bytes(b"[" * 100000)
        self.assertRaises(ValueError, read_json, path)

    def test_an_absent_file_is_none(self) -> None:
        """No file (or a file where a directory on its path belongs) reads as None: nothing saved."""
        path = Path(self.mktemp())
        self.assertIsNone(read_json(path))
        path.write_bytes(b"{}")
        self.assertIsNone(read_json(path / "state.json"))

    def test_null_is_no_state_written(self) -> None:
        """A file holding JSON's null was not written by the gateway (it writes objects): a
        ValueError that says so, which callers set aside and tell, not None, which they take
        for no file and pass over in silence."""
        path = Path(self.mktemp())
        path.write_bytes(b" null\n")
        with self.assertRaises(ValueError) as raised:
            read_json(path)
        self.assertEqual(str(raised.exception), "it holds null, not the gateway's state")

    def test_a_symbolic_link_to_nothing_is_a_value_error(self) -> None:
        """A symbolic link to nothing in the file's place is damage from outside, told as such
        (with its target), not taken for a file never written."""
        path = Path(self.mktemp())
        path.symlink_to("nowhere")
        with self.assertRaises(ValueError) as raised:
            read_json(path)
        self.assertEqual(str(raised.exception), "it is a symbolic link to 'nowhere', which does not exist")
