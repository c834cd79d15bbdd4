"""The body sink: batching, the two lanes, pausing the transport, and ending."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import ResponseDone

from gateway.updates.body import BodySink
from gateway.updates.errors import SizeExceeded
from gateway.updates.partfile import PartFile, PartMeta
from tests.heldthreads import HeldThreads


class BodySinkTests(SynchronousTestCase):
    """A sink over a real part file, with blocking calls held by the test."""

    def setUp(self) -> None:
        self.part = PartFile(Path(self.mktemp()), PartMeta("https://x/a"), checkpoint_bytes=1 << 20)
        self.part.open()
        self.threads = HeldThreads()
        self.transport = StringTransport()

    def sink(self, limit: float = 1e9) -> BodySink:
        sink = BodySink(self.part, self.threads, 4, limit, lambda: SizeExceeded("u", "too big"))
        sink.makeConnection(self.transport)
        return sink

    def test_the_resume_metadata_is_not_world_readable(self) -> None:
        """``<file>.part.json`` keeps the download URL, which may carry a credential (a
        presigned URL's signature): 0600, as the operation record that holds it (it was 0644)."""
        self.assertEqual(self.part.meta_path.stat().st_mode & 0o777, 0o600)

    def test_the_artifact_is_not_world_readable(self) -> None:
        """The part (renamed to the artifact once verified) is 0600 from its first byte: an
        artifact may hold secrets, a container description's ``env`` (it was 0644)."""
        before = os.umask(0o022)
        try:
            part = PartFile(Path(self.mktemp()), PartMeta("https://x/b"), checkpoint_bytes=1 << 20)
            part.open()
        finally:
            os.umask(before)
        self.assertEqual(part.path.stat().st_mode & 0o777, 0o600)

    def test_a_part_an_older_version_left_readable_is_resumed_not_world_readable(self) -> None:
        """A part an older version wrote 0644 (before the upgrade) is narrowed to 0600 as it is
        resumed: the artifact it becomes is not world-readable either (O_CREAT's mode is the
        new file's alone)."""
        part = PartFile(Path(self.mktemp()), PartMeta("https://x/c"), checkpoint_bytes=1 << 20)
        part.open()
        part.close()
        os.chmod(part.path, 0o644)
        PartFile(part.destination, PartMeta("https://x/c"), checkpoint_bytes=1 << 20).open()
        self.assertEqual(part.path.stat().st_mode & 0o777, 0o600)

    def test_pauses_while_three_batches_are_unfinished(self) -> None:
        """Three unfinished batches pause the transport; finishing them resumes it."""
        sink = self.sink()
        for _ in range(3):
            sink.dataReceived(b"abcd")
        self.assertEqual(self.transport.producerState, "paused")
        self.assertEqual(len(self.threads.calls), 2)  # one hash and one write in flight
        self.threads.release_all()
        self.assertEqual(self.transport.producerState, "producing")
        sink.connectionLost(Failure(ResponseDone()))
        self.threads.release_all()
        self.successResultOf(sink.done)
        self.part.close()
        self.assertEqual(self.part.path.read_bytes(), b"abcd" * 3)
        self.assertEqual(self.part.checker.hexdigest(), hashlib.sha256(b"abcd" * 3).hexdigest())

    def test_done_waits_for_the_last_write(self) -> None:
        """The end of the body fires done only after the leftover bytes are written."""
        sink = self.sink()
        sink.dataReceived(b"ab")
        sink.connectionLost(Failure(ResponseDone()))
        self.assertNoResult(sink.done)
        self.threads.release_all()
        self.successResultOf(sink.done)
        self.assertEqual(self.part.written, 2)

    def test_disk_error_is_reported(self) -> None:
        """A failing write stops the body and done reports the disk error."""
        sink = self.sink()
        sink.dataReceived(b"abcd")
        for d, _, _ in self.threads.calls:
            d.errback(OSError(28, "No space left on device"))
        self.threads.calls.clear()
        self.assertTrue(self.transport.disconnecting or self.transport.producerState == "stopped")
        sink.connectionLost(Failure(ResponseDone()))
        self.failureResultOf(sink.done, OSError)

    def test_over_the_limit_aborts(self) -> None:
        """Passing the limit stops the transport and done reports the size error."""
        sink = self.sink(limit=6)
        sink.dataReceived(b"abcd")
        sink.dataReceived(b"efgh")
        self.assertEqual(self.transport.producerState, "stopped")
        sink.connectionLost(Failure(ResponseDone()))
        self.threads.release_all()
        self.failureResultOf(sink.done, SizeExceeded)
