"""The downloads kept for a later install: bounded by ``updates.keep_downloads``, oldest first."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from treq.testing import StubTreq
from twisted.logger import formatEvent
from twisted.trial.unittest import SynchronousTestCase

from gateway.updates import service as service_module
from gateway.updates.operation import Status
from gateway.updates.service import UpdateService
from gateway.updates.settings import UpdatesSettings
from gateway.updates.store import OperationStore
from tests.logevents import capture_log_events
from tests.steppingclock import SteppingClock
from tests.updates.resources import RangeFile
from tests.updates.test_downloader import run_inline
from tests.updates.test_service import ARCHIVE, FakeInstaller, request


class KeptDownloadsTests(SynchronousTestCase):
    """Download-only operations over an in-memory server, a fake clock and a fake app installer."""

    def setUp(self) -> None:
        self.state = Path(self.mktemp())
        self.clock = SteppingClock()
        self.resource = RangeFile(ARCHIVE)
        self.installer = FakeInstaller()
        self.published: list[dict[str, Any]] = []

    def service(self, keep: int) -> UpdateService:
        """A started service keeping at most ``keep`` downloads."""
        self.stub = StubTreq(self.resource)

        def publish(topic: str, payload: bytes, qos: int, retain: bool) -> None:
            self.published.append(json.loads(payload))

        service = UpdateService(UpdatesSettings(keep_downloads=keep), self.state, self.clock, self.stub, publish,
                                self.installer, run_inline, lambda attempt: 1.0)
        self.successResultOf(service.startService())
        return service

    def settle(self) -> None:
        for _ in range(10):
            self.stub.flush()
            self.clock.advance(1)

    def kept_files(self) -> set[str]:
        """The correlation ids whose artifacts are on disk."""
        named = {hashlib.sha256(cid.encode()).hexdigest()[:32]: cid for cid in [f"dl-{n}" for n in range(10)] + ["later"]}
        return {named[d.name] for d in (self.state / "updates" / "artifacts").iterdir() if any(d.rglob("*.tar.gz"))}

    def test_the_oldest_kept_download_beyond_the_bound_loses_its_files_and_says_why(self) -> None:
        """With keep_downloads N, the N+1th download that ends removes the files of the oldest one
        to end (logged); its operation stays FINISHED_SUCCESS with a message saying why, is no longer
        a kept download, and goes as any ended operation does once KEEP_ENDED others ended after it;
        the N newest keep their files, also after a restart."""
        self.patch(service_module, "KEEP_ENDED", 5)
        service = self.service(keep=3)
        events = capture_log_events(self)
        for n in range(4):
            service.submit("download", request(f"dl-{n}"))
            self.settle()
        self.assertEqual(self.kept_files(), {"dl-1", "dl-2", "dl-3"})
        oldest = service.operations["dl-0"]
        self.assertEqual(oldest.status, Status.FINISHED_SUCCESS)
        self.assertEqual(oldest.message, "downloaded; its files were removed: more than 3 downloads were kept for a "
                                         "later install (updates.keep_downloads), the oldest go first; an install "
                                         "of it downloads again")
        [saved] = [op for op in OperationStore(self.state / "updates" / "operations").load_all()
                   if op.correlation_id == "dl-0"]
        self.assertEqual((saved.message, saved.files_removed), (oldest.message, True))
        self.assertIn(f"operation dl-0: {oldest.message}",
                      [formatEvent(e) for e in events if e.get("id") == "dl-0"])
        self.assertEqual(self.published[-1]["correlationId"], "dl-3")  # lastOperation stays the real last one
        self.successResultOf(service.stopService())
        service = self.service(keep=3)
        for n in range(4, 10):
            service.submit("download", request(f"dl-{n}"))
            self.settle()
        self.assertEqual(self.kept_files(), {"dl-7", "dl-8", "dl-9"})
        # the kept ones stay; of those whose files went, the last KEEP_ENDED (5) - 3 kept ones
        self.assertEqual(set(service.operations), {"dl-5", "dl-6", "dl-7", "dl-8", "dl-9"})
        self.assertEqual({op.correlation_id for op in OperationStore(self.state / "updates" / "operations").load_all()},
                         {"dl-5", "dl-6", "dl-7", "dl-8", "dl-9"})

    def test_one_kept_download_is_said_in_the_singular(self) -> None:
        """With keep_downloads 1 the message of a download whose files went says ``more than 1
        download was kept`` (it said ``1 downloads were``)."""
        service = self.service(keep=1)
        for n in range(2):
            service.submit("download", request(f"dl-{n}"))
            self.settle()
        self.assertEqual(service.operations["dl-0"].message,
                         "downloaded; its files were removed: more than 1 download was kept for a later install"
                         " (updates.keep_downloads), the oldest go first; an install of it downloads again")

    def test_a_kept_download_installs_from_its_files_after_others_were_kept(self) -> None:
        """An install of a download still kept, after others ended, takes its files without
        fetching them again; one whose files went downloads them again and installs too."""
        service = self.service(keep=2)
        for cid in ["dl-0", "later", "dl-1"]:
            service.submit("download", request(cid))
            self.settle()
        self.assertEqual(self.kept_files(), {"later", "dl-1"})
        served = self.resource.served
        service.submit("install", request("later"))
        self.settle()
        self.assertEqual(service.operations["later"].status, Status.FINISHED_SUCCESS)
        self.assertEqual(self.resource.served, served)  # not fetched again
        self.assertEqual(self.installer.archives, [ARCHIVE])
        service.submit("install", request("dl-0"))
        self.settle()
        self.assertEqual(service.operations["dl-0"].status, Status.FINISHED_SUCCESS)
        self.assertEqual(self.resource.served, served + len(ARCHIVE))
        self.assertEqual(self.installer.archives, [ARCHIVE, ARCHIVE])
        self.assertEqual(self.kept_files(), {"dl-1"})


    def test_a_discarded_download_keeps_nothing_and_is_forgotten_in_its_turn(self) -> None:
        """A download whose files discard removed (its fleet action canceled) keeps its status and
        message, is recorded as keeping no files, counts no more among the kept downloads (the
        others keep theirs), and is forgotten once KEEP_ENDED operations ended after it."""
        self.patch(service_module, "KEEP_ENDED", 3)
        service = self.service(keep=2)
        for cid in ["dl-0", "dl-1"]:
            service.submit("download", request(cid))
            self.settle()
        self.successResultOf(service.discard("dl-1"))
        [saved] = [op for op in OperationStore(self.state / "updates" / "operations").load_all()
                   if op.correlation_id == "dl-1"]
        self.assertEqual((saved.status, saved.message, saved.files_removed), (Status.FINISHED_SUCCESS, "done", True))
        service.submit("download", request("dl-2"))
        self.settle()
        self.assertEqual(self.kept_files(), {"dl-0", "dl-2"})
        self.assertEqual(service.operations["dl-0"].message, "done")
        for cid in ["dl-3", "dl-4"]:
            service.submit("install", request(cid))
            self.settle()
        self.assertEqual(set(service.operations), {"dl-0", "dl-2", "dl-3", "dl-4"})
        self.assertEqual({op.correlation_id for op in OperationStore(self.state / "updates" / "operations").load_all()},
                         {"dl-0", "dl-2", "dl-3", "dl-4"})
