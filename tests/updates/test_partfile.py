"""The part file of one download: its descriptor is never kept past the download."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any

from twisted.logger import LogLevel, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from gateway.updates import partfile
from gateway.updates.partfile import PartFile, PartMeta
from tests.logevents import capture_log_events
from tests.unreadable import refuse_reading
from tests.test_filelayer import record_calls, record_fsyncs


class PartFileTests(SynchronousTestCase):
    """A real part file whose metadata the disk refuses once it is full."""

    def setUp(self) -> None:
        self.destination = Path(self.mktemp()) / "a.bin"
        self.part = PartFile(self.destination, PartMeta(url="https://example.com/a.bin"), 4096)
        self.part.open()
        self.part.write_chunks([b"x" * 10000])
        self.fd = self.part._fd
        self.patch(partfile, "write_json_atomically", self.disk_full)

    @staticmethod
    def disk_full(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def assertClosed(self, fd: int | None) -> None:
        """``fd`` is no longer open (in this process)."""
        assert fd is not None
        error = self.assertRaises(OSError, os.fstat, fd)
        self.assertEqual(error.errno, errno.EBADF)

    def test_a_close_whose_checkpoint_fails_still_closes(self) -> None:
        """On a full disk the last checkpoint fails, and says so, but the part is closed all
        the same: a descriptor kept open holds the space of a part deleted afterwards (the
        failed operation's artifacts are removed), so a full disk stayed full until the
        gateway's restart."""
        self.assertRaises(OSError, self.part.close)
        self.assertClosed(self.fd)
        self.part.close()  # nothing left to close

    def test_a_discard_on_a_full_disk_closes_and_deletes(self) -> None:
        """A discarded part (a digest that did not match) is closed and deleted, its metadata
        too, however the disk answers: what is thrown away is not checkpointed first."""
        self.part.discard()
        self.assertClosed(self.fd)
        self.assertEqual(sorted(p.name for p in self.destination.parent.iterdir()), [])


class DamagedMetadataTests(SynchronousTestCase):
    """A ``.part.json`` the gateway did not write so (damaged from outside, by a person): the
    resume raised inside the downloader (``int()`` of a ``durable`` that is no number; an
    ``ftruncate`` to a negative one; an ``IsADirectoryError``), or went on with an ETag or
    size of another type. It is set aside as the other state files are, logged, and the
    download starts over from byte 0 (docs/updates.md)."""

    URL = "https://example.com/a.bin"

    def saved(self, **changes: Any) -> bytes:
        return json.dumps({"url": self.URL, "size": 20000, "digests": {}, "etag": '"v1"',
                           "last_modified": None, "durable": 8192, **changes}).encode()

    def resume(self, content: bytes | None) -> tuple[int, list[str], PartFile]:
        """Open a part of 10000 bytes whose metadata holds ``content`` (None: a directory)."""
        destination = Path(self.mktemp()) / "a.bin"
        destination.parent.mkdir()
        part = PartFile(destination, PartMeta(url=self.URL), 4096)
        part.path.write_bytes(b"x" * 10000)
        if content is None:
            part.meta_path.mkdir()
        else:
            part.meta_path.write_bytes(content)
        events = capture_log_events(self)
        offset = part.open()
        self.addCleanup(part.close)
        return offset, [formatEvent(e) for e in events if e.get("log_level") == LogLevel.error], part

    def test_damaged_metadata_is_set_aside_and_the_download_starts_over(self) -> None:
        for content in (self.saved(durable="abc"), self.saved(durable=None), self.saved(durable=-5),
                        self.saved(durable=True), self.saved(durable=1.5), self.saved(durable=[1]),
                        self.saved(etag=5), self.saved(size="big"), self.saved(size=-1), self.saved(url=7),
                        self.saved(digests=[]), b'["a list"]', b"\x00\xff random bytes \x80", None):
            offset, errors, part = self.resume(content)
            self.assertEqual(offset, 0, content)
            self.assertEqual((part.meta.etag, part.meta.size, part.meta.durable), (None, None, 0), content)
            [error] = errors
            self.assertTrue(error.startswith(f"download: cannot resume from {part.meta_path}: "), error)
            self.assertTrue(error.endswith(f"; moved to {part.meta_path}.damaged; starting over"), error)
            self.assertTrue(os.path.lexists(f"{part.meta_path}.damaged"), content)
            self.assertEqual(json.loads(part.meta_path.read_bytes())["durable"], 0)
            self.assertEqual(part.path.stat().st_size, 0)

    def test_metadata_the_user_may_not_read_is_left_and_the_open_fails(self) -> None:
        """A ``.part.json`` the gateway's user may not read (root's; the refusal injected: tests
        run as root) is not damaged: the open fails, the file stays. It was set aside and the
        download started over."""
        from gateway.stateaccess import StateAccessError

        destination = Path(self.mktemp()) / "a.bin"
        destination.parent.mkdir()
        part = PartFile(destination, PartMeta(url=self.URL), 4096)
        part.meta_path.write_bytes(self.saved())
        saved = part.meta_path.read_bytes()
        refuse_reading(self, part.meta_path)
        self.assertRaises(StateAccessError, part.open)
        self.assertEqual(saved, self.saved())
        self.assertFalse(Path(f"{part.meta_path}.damaged").exists())

    def test_sound_metadata_resumes_and_another_url_starts_over_quietly(self) -> None:
        """The control: sound metadata resumes at its durable point; metadata of another URL
        (the announced artifact changed) starts over without an error, nothing set aside."""
        offset, errors, part = self.resume(self.saved())
        self.assertEqual((offset, part.meta.etag, part.meta.size, errors), (8192, '"v1"', 20000, []))
        offset, errors, part = self.resume(self.saved(url="https://example.com/other.bin"))
        self.assertEqual((offset, errors), (0, []))
        self.assertFalse(os.path.lexists(f"{part.meta_path}.damaged"))


class DurableDirectoryTests(SynchronousTestCase):
    """The directory a part is made in survives a power cut."""

    def test_the_directory_made_for_a_part_is_fsynced_in_its_parent(self) -> None:
        """The download's directory, made when its part is opened, is fsynced in its parent: a
        power cut could take it with the part's fsynced bytes and their resume point."""
        base = Path(self.mktemp()).absolute()
        base.mkdir()
        fsynced = record_fsyncs(self)
        part = PartFile(base / "op" / "a.bin", PartMeta(url="https://example.com/a.bin"), 4096)
        part.open()
        self.addCleanup(part.close)
        self.assertIn(str(base), fsynced)

    def test_a_finished_download_stays_finished_after_a_power_cut(self) -> None:
        """A verified part is renamed to its destination, its metadata removed, then their
        directory fsynced (pins it: a power cut must not bring back the part, to be downloaded
        again, in place of the file an install may already use)."""
        base = Path(self.mktemp()).absolute()
        base.mkdir()
        part = PartFile(base / "a.bin", PartMeta(url="https://example.com/a.bin"), 4096)
        part.open()
        part.write_chunks([b"x" * 100])
        events = record_fsyncs(self)
        record_calls(self, events, os, "replace")
        self.assertTrue(part.finish())
        self.assertEqual((base / "a.bin").read_bytes(), b"x" * 100)
        self.assertFalse(part.path.exists() or part.meta_path.exists())
        moved = events.index(f"replace {part.path}")
        self.assertEqual(events[-1], str(base))
        self.assertGreater(len(events) - 1, moved)
