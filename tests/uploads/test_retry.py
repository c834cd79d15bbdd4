"""How hard a file's transfer tries: ``max_attempts`` counts the failed attempts in a row that
made no progress, so a large block upload over a link cut every few minutes finishes, while a
transfer that can never progress still fails after ``max_attempts``."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit
from xml.etree import ElementTree

from treq.testing import StubTreq
from twisted.internet.defer import CancelledError, Deferred, fail, maybeDeferred
from twisted.internet.error import ConnectionLost
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import ResponseFailed
from twisted.web.resource import Resource
from twisted.web.server import Request

from gateway.uploads.azure import AzureBlob
from gateway.uploads.errors import FileChanged, TransferFailed
from gateway.uploads.providers import Transfer
from gateway.uploads.transfer import FileTransfer

BLOCK = 1024
MAX_ATTEMPTS = 2


class ThreadlessClock(Clock):
    """A ``task.Clock`` whose ``callFromThread`` calls at once: blocking work runs inline."""

    def callFromThread(self, f: Any, *args: Any, **kwargs: Any) -> None:
        f(*args, **kwargs)


class BlobStore(Resource):
    """Azure Blob's block API in memory: Get Block List (uncommitted), Put Block, Put Block List."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.uncommitted: dict[str, bytes] = {}
        self.committed: bytes | None = None
        self.put_blocks = 0

    def render_GET(self, request: Request) -> bytes:
        blocks = "".join(f"<Block><Name>{name}</Name><Size>{len(data)}</Size></Block>"
                         for name, data in self.uncommitted.items())
        return f"<BlockList><UncommittedBlocks>{blocks}</UncommittedBlocks></BlockList>".encode()

    def render_PUT(self, request: Request) -> bytes:
        query = parse_qs(urlsplit(request.uri.decode()).query)
        data = request.content.read() if request.content is not None else b""
        if query["comp"] == ["block"]:
            md5 = base64.b64encode(hashlib.md5(data).digest()).decode()
            assert request.getHeader("content-md5") == md5
            self.uncommitted[query["blockid"][0]] = data
            self.put_blocks += 1
        else:
            ids = [e.text or "" for e in ElementTree.fromstring(data).iter("Latest")]
            self.committed = b"".join(self.uncommitted.pop(i) for i in ids)
        request.setResponseCode(201)
        return b""


class Collector:
    """An HTTP body's consumer that hands each write to ``write``."""

    def __init__(self, write: Any) -> None:
        self.write = write


class CuttingLink:
    """An HTTP client over a link whose connection is reset once ``every`` blocks went
    through it (0: before every block); ``lost_answers`` resets come after the storage took
    the block, so the client never learns it did.

    :param test_case: checks that each body was produced at once.
    :param http: the client the requests that get through go to.
    """

    def __init__(self, test_case: SynchronousTestCase, http: Any, every: int, lost_answers: int = 0) -> None:
        self.test_case = test_case
        self.http = http
        self.every = every
        self.lost_answers = lost_answers
        self.through = 0
        self.cuts = 0

    def request(self, method: str, url: str, **kwargs: Any) -> Deferred[Any]:
        if kwargs.get("data") is not None:  # StubTreq takes bytes: the body is produced at once
            written: list[bytes] = []
            produced = kwargs["data"].startProducing(Collector(written.append))
            self.test_case.successResultOf(produced)
            kwargs["data"] = b"".join(written)
        if method != "PUT" or "comp=block&" not in url:
            return self.http.request(method, url, **kwargs)
        if self.through < self.every:
            self.through += 1
            return self.http.request(method, url, **kwargs)
        self.through, self.cuts = 0, self.cuts + 1
        reset = ResponseFailed([Failure(ConnectionLost("Connection reset by peer"))])
        if self.lost_answers:
            self.lost_answers -= 1
            return self.http.request(method, url, **kwargs).addCallback(lambda _: fail(reset))
        return fail(reset)


class BlockUploadRetryTests(SynchronousTestCase):
    """An Azure block upload through a link that cuts, driven synchronously end to end
    (FileTransfer, AzureBlob, treq's StubTreq, a task.Clock)."""

    def setUp(self) -> None:
        self.path = Path(self.mktemp())
        self.data = bytes(range(256)) * (7 * BLOCK // 256) + b"tail"  # 8 blocks, the last short
        self.path.write_bytes(self.data)
        self.store = BlobStore()
        self.clock = ThreadlessClock()
        self.delays: list[int] = []

    def transfer(self, link: CuttingLink) -> FileTransfer:
        blob = AzureBlob(link, "https://acct.blob.core.windows.net/", "c", "sv=1&sig=x", 1, BLOCK)

        def policy(fruitless: int) -> float:
            self.delays.append(fruitless)
            return 5.0

        return FileTransfer(str(self.path), "u#1", blob, self.clock, lambda f, *a, **k: maybeDeferred(f, *a, **k),
                            policy, MAX_ATTEMPTS, 4096, 120, lambda identity: None, lambda count: None)

    def test_a_block_upload_cut_after_every_two_blocks_finishes(self) -> None:
        """A link reset after every 2 blocks: each attempt leaves Azure 2 more blocks, so none
        counts against max_attempts (2 here) and the file is stored whole; the backoff starts
        over after each. Every attempt counted, and the upload failed after the second cut
        with half of its blocks staged."""
        link = CuttingLink(self, StubTreq(self.store), every=2)
        transfer = self.transfer(link)
        result = transfer.run()
        for _ in range(10):
            self.clock.advance(5)
        digests = self.successResultOf(result)
        self.assertEqual(self.store.committed, self.data)
        self.assertEqual(digests.sha256, hashlib.sha256(self.data).hexdigest())
        self.assertEqual((link.cuts, transfer.attempts, self.store.put_blocks), (3, 4, 8))
        self.assertEqual(self.delays, [1, 1, 1])

    def test_a_block_the_storage_took_before_the_cut_is_progress(self) -> None:
        """A link reset each time just after the storage took a block, before its answer: no
        attempt sees a block taken, but each finds one more staged (Get Block List) than the
        one before, and that is progress."""
        link = CuttingLink(self, StubTreq(self.store), every=0, lost_answers=8)
        transfer = self.transfer(link)
        result = transfer.run()
        for _ in range(10):
            self.clock.advance(5)
        self.successResultOf(result)
        self.assertEqual(self.store.committed, self.data)
        self.assertEqual((link.cuts, transfer.attempts), (8, 9))

    def test_a_block_upload_that_never_progresses_fails_after_max_attempts(self) -> None:
        """A link reset before any block goes: max_attempts attempts, then FAILED with the cut."""
        link = CuttingLink(self, StubTreq(self.store), every=0)
        transfer = self.transfer(link)
        result = transfer.run()
        self.clock.advance(5)
        failure = self.failureResultOf(result, TransferFailed)
        self.assertIn("PUT acct.blob.core.windows.net: ", failure.getErrorMessage())
        self.assertEqual((transfer.attempts, transfer.fruitless, self.delays), (MAX_ATTEMPTS, MAX_ATTEMPTS, [1]))
        self.assertEqual(self.store.committed, None)

    def test_blocks_staged_before_a_restart_are_no_progress_of_the_first_attempt(self) -> None:
        """After a restart the first attempt finds blocks staged (by the gateway before it):
        they are no progress of that attempt, so attempts that take none still fail after
        max_attempts."""
        first = self.transfer(CuttingLink(self, StubTreq(self.store), every=3))
        result = first.run()
        first.cancel()  # the gateway stops in the backoff after the first cut
        self.failureResultOf(result, CancelledError)
        self.assertEqual(len(self.store.uncommitted), 3)
        again = self.transfer(CuttingLink(self, StubTreq(self.store), every=0))
        result = again.run()
        self.clock.advance(5)
        self.failureResultOf(result, TransferFailed)
        self.assertEqual(again.attempts, MAX_ATTEMPTS)


class NoProgress:
    """A provider whose every send fails after setting what the storage holds, as a script says.

    :param script: per attempt, ``(found, held, error)``.
    """

    name = "scripted"

    def __init__(self, script: list[tuple[int | None, int, Exception]]) -> None:
        self.script = script
        self.sends = 0

    def digests_first(self, size: int) -> tuple[bool, int | None]:
        return False, None

    def send(self, transfer: Transfer) -> Deferred[None]:
        transfer.found, transfer.held, error = self.script[self.sends]
        self.sends += 1
        return fail(error)


class ProgressRuleTests(SynchronousTestCase):
    """Which failed attempts count against max_attempts."""

    def run_script(self, script: list[tuple[int | None, int, Exception]]) -> tuple[FileTransfer, Failure]:
        path = Path(self.mktemp())
        path.write_bytes(b"x" * 100)
        clock = ThreadlessClock()
        transfer = FileTransfer(str(path), "u#1", NoProgress(script), clock,
                                lambda f, *a, **k: maybeDeferred(f, *a, **k), lambda n: 1.0, 3, 4096, 120,
                                lambda identity: None, lambda count: None)
        result = transfer.run()
        clock.pump([1.0] * len(script))
        return transfer, self.failureResultOf(result)

    def test_a_single_put_never_progresses(self) -> None:
        """A provider that keeps nothing of a failed attempt (one PUT: found None) fails after
        max_attempts, whatever it sent."""
        transfer, failure = self.run_script([(None, 0, TransferFailed("cut"))] * 5)
        failure.trap(TransferFailed)
        self.assertEqual(transfer.attempts, 3)

    def test_a_changed_file_is_no_progress(self) -> None:
        """Blocks taken by an attempt that found the file changed are of another version:
        the attempt counts."""
        transfer, failure = self.run_script([(0, 2, FileChanged("changed")), (2, 4, FileChanged("changed")),
                                             (4, 6, FileChanged("changed")), (6, 8, TransferFailed("cut"))])
        failure.trap(FileChanged)
        self.assertEqual(transfer.attempts, 3)

    def test_progress_is_more_than_at_every_earlier_failure(self) -> None:
        """A file that changed between attempts starts over with new block ids: its blocks
        count as progress only once there are more than the storage held at a failure before."""
        transfer, failure = self.run_script([(0, 4, TransferFailed("cut")), (0, 2, TransferFailed("cut")),
                                             (2, 4, TransferFailed("cut")), (4, 5, TransferFailed("cut")),
                                             (5, 5, TransferFailed("cut")), (5, 5, TransferFailed("cut")),
                                             (5, 5, TransferFailed("cut"))])
        failure.trap(TransferFailed)
        self.assertEqual((transfer.attempts, transfer.fruitless), (7, 3))
