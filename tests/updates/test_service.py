"""The update service: operation steps, statuses, persistence, cancel and resume (in memory)."""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from treq.testing import StubTreq
from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail, inlineCallbacks, succeed
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase, TestCase

from gateway.apps.operations import InstallResult
from gateway.payloadlimits import REQUEST_BYTES
from gateway.updates.errors import InvalidOperation
from gateway.updates.operation import Operation, Status
from gateway.updates import service as service_module
from gateway.updates.service import UpdateService
from gateway.updates.settings import UpdatesSettings
from gateway.updates.store import OperationStore
from tests.logevents import assert_one_line_then_summary
from tests.steppingclock import SteppingClock
from tests.updates.resources import RangeFile
from tests.heldthreads import HeldThreads
from tests.updates.test_downloader import run_inline
from tests.test_filelayer import record_calls, record_fsyncs

ARCHIVE = b"app archive " * 5000
URL = "https://updates.example/app.v2.tar.gz"


def request(cid: str = "op-1", digest: str | None = None, target: str | None = None,
            checksums: bool = True) -> dict[str, Any]:
    """A Kanto install/download request for one app module (``checksums=False``: none announced)."""
    artifact: dict[str, Any] = {"filename": "app.v2.tar.gz", "download": {"HTTPS": {"url": URL}},
                                "size": len(ARCHIVE)}
    if checksums:
        artifact["checksums"] = {"SHA256": digest or hashlib.sha256(ARCHIVE).hexdigest()}
    module: dict[str, Any] = {"softwareModule": {"name": "app", "version": "2"}, "artifacts": [artifact]}
    if target:
        module["metadata"] = {"target": target}
    return {"correlationId": cid, "softwareModules": [module]}


class FakeInstaller:
    """Records archives; answers with the Deferreds the test queues (success by default)."""

    def __init__(self) -> None:
        self.archives: list[bytes] = []
        self.answers: list[Deferred[Any]] = []

    def install(self, archive: Path) -> Deferred[Any]:
        self.archives.append(archive.read_bytes())
        if self.answers:
            return self.answers.pop(0)
        return succeed(InstallResult(True, "installed", "app", "2", None, "app 2 installed"))


class UpdateServiceTests(SynchronousTestCase):
    """Operations over an in-memory server, a fake clock and a fake app installer."""

    def setUp(self) -> None:
        self.state = Path(self.mktemp())
        self.clock = SteppingClock()
        self.resource = RangeFile(ARCHIVE)
        self.installer = FakeInstaller()
        self.published: list[tuple[str, dict[str, Any], int, bool]] = []

    def service(self, run_blocking: Any = run_inline) -> UpdateService:
        """A started service on this test's server, clock, installer and ``run_blocking``."""
        self.stub = StubTreq(self.resource)

        def publish(topic: str, payload: bytes, qos: int, retain: bool) -> None:
            self.published.append((topic, json.loads(payload), qos, retain))

        service = UpdateService(UpdatesSettings(), self.state, self.clock, self.stub, publish, self.installer,
                                run_blocking, lambda attempt: 1.0)
        self.successResultOf(service.startService())
        return service

    def statuses(self) -> list[str]:
        return [payload["status"] for _, payload, _, _ in self.published]

    def settle(self) -> None:
        for _ in range(10):
            self.stub.flush()
            self.clock.advance(1)

    def test_install_goes_through_every_status(self) -> None:
        """An install reports every Kanto status in order, retained at QoS 1, and installs the archive."""
        service = self.service()
        service.submit("install", request())
        self.settle()
        self.assertEqual(self.statuses(), ["STARTED", "DOWNLOADING", "DOWNLOADED", "INSTALLING", "INSTALLED",
                                           "FINISHED_SUCCESS"])
        self.assertEqual(self.installer.archives, [ARCHIVE])
        topic, payload, qos, retain = self.published[-1]
        self.assertEqual((topic, qos, retain), ("edge/gateway/updates/lastOperation", 1, True))
        self.assertEqual(payload["correlationId"], "op-1")
        self.assertEqual(payload["softwareModules"], [{"name": "app", "version": "2"}])
        saved = OperationStore(self.state / "updates" / "operations").load_all()
        self.assertEqual([op.status for op in saved], [Status.FINISHED_SUCCESS])
        self.assertFalse((self.state / "updates" / "artifacts").exists() and
                         any((self.state / "updates" / "artifacts").iterdir()))

    def test_the_artifacts_removed_at_the_end_stay_removed_after_a_power_cut(self) -> None:
        """An ended install's artifacts directory is removed, then its parent fsynced. It was
        not: a power cut brought the artifacts back, left on the disk for good once the
        operation's record was forgotten (a start removes only those of a record it reads)."""
        service = self.service()
        events = record_fsyncs(self)
        record_calls(self, events, shutil, "rmtree")
        service.submit("install", request())
        self.settle()
        self.assertEqual(self.statuses()[-1], "FINISHED_SUCCESS")
        artifacts = self.state / "updates" / "artifacts"
        [removed] = [n for n, event in enumerate(events) if event.startswith(f"rmtree {artifacts}")]
        self.assertIn(str(artifacts.absolute()), events[removed + 1:])

    def test_a_command_name_with_a_newline_is_logged_on_one_line(self) -> None:
        """A command's name is the last level of a cloud command's topic and may hold a newline:
        a refused command's line shows it escaped, so that it cannot end the line and forge the
        next (it was written raw); an install's lines stay one line each too."""
        service = self.service()
        with capturedLogs() as events:
            service.submit("install", request())
            self.settle()
            service.handle_command("install\n2026-12-06T19:00:00+0000 [gateway] forged", b"{}")
        lines = [formatEvent(e) for e in events if e.get("log_namespace", "").startswith("gateway.updates")]
        self.assertEqual([line for line in lines if "\n" in line], [])
        self.assertEqual(lines[-1], "refused update command install\\n2026-12-06T19:00:00+0000 [gateway] forged: "
                                    "unknown command 'install\\n2026-12-06T19:00:00+0000 [gateway] forged' ("
                                    "logged at most once every 10 s while they go on)")

    def test_a_burst_of_bad_commands_is_one_line_then_one_summary(self) -> None:
        """docs/updates.md: a local client sending bad update commands in a loop wrote a warning
        for each. The first is logged at once, then at most one line per 10 s saying how many
        were refused since; each is still answered (refused) as before."""
        service = self.service()

        def burst(commands: int) -> list[str]:
            with capturedLogs() as events:
                for _ in range(commands):
                    self.assertEqual(service.handle_command("install", b"nope"),
                                     "the request is not JSON: Expecting value: line 1 column 1 (char 0)")
            return [formatEvent(e) for e in events if "refused update command" in e.get("log_format", "")]

        line = ("refused update command install: the request is not JSON: Expecting value: line 1 column 1 (char 0)"
                " ({count} refused since the last such line; logged at most once every 10 s while they go on)")
        assert_one_line_then_summary(self, burst, line, self.clock)

    def test_download_only_keeps_the_artifact(self) -> None:
        """A download request ends after DOWNLOADED and installs nothing."""
        service = self.service()
        service.handle_command("download", json.dumps(request()).encode())
        self.settle()
        self.assertEqual(self.statuses(), ["STARTED", "DOWNLOADING", "DOWNLOADED", "FINISHED_SUCCESS"])
        self.assertEqual(self.installer.archives, [])
        self.assertEqual(len(list((self.state / "updates" / "artifacts").rglob("app.v2.tar.gz"))), 1)

    def test_discard_removes_what_an_ended_download_kept(self) -> None:
        """discard (the fleet's, for a canceled action) removes a finished download's files and
        leaves its status; an operation still running keeps its files and is refused."""
        service = self.service()
        service.handle_command("download", json.dumps(request()).encode())
        self.settle()
        self.successResultOf(service.discard("op-1"))
        self.assertEqual(list((self.state / "updates" / "artifacts").rglob("app.v2.tar.gz")), [])
        self.assertEqual(service.operations["op-1"].status, Status.FINISHED_SUCCESS)
        self.resource.stall = True
        service.handle_command("download", json.dumps(request("op-2")).encode())
        self.settle()
        self.assertEqual(service.operations["op-2"].status, Status.DOWNLOADING)
        self.assertRaises(InvalidOperation, service.discard, "op-2")
        self.assertRaises(InvalidOperation, service.discard, "op-3")

    def test_only_the_last_ended_operations_are_kept(self) -> None:
        """Ended operations beyond the last KEEP_ENDED to end are forgotten, records and read side,
        in the order they ended (across a restart too); never one still running, one that keeps
        its files for a later install, or one a keeper holds; an id forgotten can be used again."""
        self.patch(service_module, "KEEP_ENDED", 2)
        operations = self.state / "updates" / "operations"
        service = self.service()
        service.hold(lambda op: op.correlation_id == "held")
        service.submit("download", request("downloaded"))
        self.settle()
        self.installer.answers.append(Deferred())  # installs until the end of the test
        service.submit("install", request("running"))
        self.settle()
        for cid in ["held", "old-1", "old-2", "new-1", "new-2"]:
            service.submit("install", request(cid))
            self.settle()
        kept = {"downloaded", "running", "held", "new-1", "new-2"}
        self.assertEqual(set(service.operations), kept)
        self.assertEqual({op.correlation_id for op in service.snapshot().operations}, kept)
        self.assertEqual({op.correlation_id for op in OperationStore(operations).load_all()}, kept)
        self.assertEqual(service.operations["running"].status, Status.INSTALLING)
        self.successResultOf(service.stopService())
        self.installer.answers.append(Deferred())  # the install resumed at the start: running still
        service = self.service()
        service.submit("install", request("old-1"))  # a forgotten id: a new operation
        self.settle()
        self.assertEqual(service.operations["old-1"].status, Status.FINISHED_SUCCESS)
        # held is not held any more: with new-1 it is older than the last two to end
        self.assertEqual(set(service.operations), {"downloaded", "running", "new-2", "old-1"})
        self.assertEqual({op.correlation_id for op in OperationStore(operations).load_all()},
                         {"downloaded", "running", "new-2", "old-1"})

    def test_an_id_being_forgotten_is_recorded_after_its_old_record_goes(self) -> None:
        """A new operation with the id of one whose record is being removed (in its thread) is
        recorded only once that removal is done: the old removal never deletes the new record."""
        self.patch(service_module, "KEEP_ENDED", 1)
        removals: list[Deferred[None]] = []

        def run_blocking(f: Any, *args: Any) -> Any:
            if getattr(f, "__name__", "") != "remove":
                return run_inline(f, *args)
            removal: Deferred[None] = Deferred()
            removals.append(removal)
            return removal.addCallback(lambda _: f(*args))

        self.stub = StubTreq(self.resource)
        service = UpdateService(UpdatesSettings(), self.state, self.clock, self.stub, lambda *a: None,
                                self.installer, run_blocking, lambda attempt: 1.0)
        self.successResultOf(service.startService())
        for cid in ["op-1", "op-2"]:
            service.submit("install", request(cid))
            self.settle()
        self.assertEqual((set(service.operations), len(removals)), ({"op-2"}, 1))
        service.submit("install", request("op-1"))
        self.settle()
        self.assertEqual(service.operations["op-1"].status, Status.STARTED)  # waiting for the removal
        removals.pop(0).callback(None)
        self.settle()
        self.assertEqual(service.operations["op-1"].status, Status.FINISHED_SUCCESS)
        self.assertEqual(len(removals), 1)  # op-2's, forgotten in its turn
        removals.pop(0).callback(None)
        self.assertEqual([op.correlation_id for op in OperationStore(self.state / "updates" / "operations").load_all()],
                         ["op-1"])

    def test_wrong_digest_fails_and_installs_nothing(self) -> None:
        """A digest mismatch ends in FINISHED_ERROR naming it; the running app is not touched."""
        service = self.service()
        service.submit("install", request(digest="0" * 64))
        self.settle()
        self.assertEqual(self.statuses()[-1], "FINISHED_ERROR")
        self.assertIn("sha256 is", self.published[-1][1]["message"])
        self.assertEqual(self.installer.archives, [])

    def test_installer_failure_is_reported(self) -> None:
        """When the app installer fails, the operation ends in FINISHED_ERROR with its reason."""
        self.installer.answers.append(fail(RuntimeError("did not start healthy; rolled back")))
        service = self.service()
        service.submit("install", request())
        self.settle()
        self.assertEqual(self.statuses()[-2:], ["INSTALLING", "FINISHED_ERROR"])
        self.assertIn("rolled back", self.published[-1][1]["message"])

    def test_rolled_back_app_is_an_error(self) -> None:
        """An app the installer rolled back (a result with ok=False, not an error) ends in FINISHED_ERROR
        with the installer's reason and its log's tail; it is never reported INSTALLED."""
        self.installer.answers.append(succeed(InstallResult(
            False, "rolled-back", "app", "2", "1", "program app exited with 4 in its health window",
            "preparing v2\n--- app.log ---\nboom: no config")))
        service = self.service()
        service.submit("install", request())
        self.settle()
        self.assertEqual(self.statuses()[-2:], ["INSTALLING", "FINISHED_ERROR"])
        self.assertNotIn("INSTALLED", self.statuses())
        message = self.published[-1][1]["message"]
        self.assertIn("app 'app' 2 did not start healthy and was rolled back to 1", message)
        self.assertIn("exited with 4 in its health window", message)
        self.assertIn("boom: no config", message)
        [saved] = OperationStore(self.state / "updates" / "operations").load_all()
        self.assertEqual((saved.status, saved.installed), (Status.FINISHED_ERROR, 0))

    def test_refused_package_without_checksums_is_an_error(self) -> None:
        """A request without checksums is accepted; a download the installer then refuses (garbage,
        not a tarball) ends in FINISHED_ERROR saying it was refused and why."""
        self.installer.answers.append(succeed(InstallResult(
            False, "refused", None, None, None, "refused: not a readable tar archive: bad gzip")))
        service = self.service()
        service.submit("install", request(checksums=False))
        self.settle()
        self.assertEqual(self.statuses()[-2:], ["INSTALLING", "FINISHED_ERROR"])
        message = self.published[-1][1]["message"]
        self.assertIn("refused by the app installer", message)
        self.assertIn("not a readable tar archive", message)

    def test_downloaded_says_what_no_digest_verified(self) -> None:
        """DOWNLOADED says ``all artifacts verified`` only when each artifact had a digest to
        check; a request without checksums is downloaded, and its DOWNLOADED names the files
        nothing verified (it said ``all artifacts verified`` before: docs/updates.md, checksums)."""
        self.installer.answers.append(succeed(InstallResult(True, "installed", "sensor", "2.1.0", "2.0.0", "")))
        service = self.service()
        with capturedLogs() as logged:
            service.submit("install", request(checksums=False))
            self.settle()
        downloaded = [m for _, m, _, _ in self.published if m.get("status") == "DOWNLOADED"]
        self.assertEqual([m["message"] for m in downloaded],
                         ["all artifacts downloaded; not verified, as no digest was announced for them: "
                          + request()["softwareModules"][0]["artifacts"][0]["filename"]])
        lines = [formatEvent(e) for e in logged if str(e.get("log_format", "")).startswith("downloaded ")]
        self.assertEqual(len(lines), 1)
        self.assertIn("not verified: no digest was announced", lines[0])
        self.assertNotIn("sha256 verified", lines[0])

    def test_a_download_the_disk_refuses_ends_the_operation_with_the_reason(self) -> None:
        """An artifact that cannot be written at all (here: the artifacts directory cannot be
        made; a full disk alike) ends the operation in FINISHED_ERROR with the system's words,
        persisted, and the same correlation id may be sent again (docs/updates.md: FINISHED_ERROR
        with the reason in message); the OSError crashed the operation, which stayed DOWNLOADING
        for good and refused every later request with its id as already running."""
        (self.state / "updates").mkdir(parents=True)
        (self.state / "updates" / "artifacts").write_bytes(b"not a directory")
        service = self.service()
        service.submit("install", request())
        self.settle()
        self.assertEqual(self.statuses(), ["STARTED", "DOWNLOADING", "FINISHED_ERROR"])
        self.assertIn("artifacts", self.published[-1][1]["message"])
        [saved] = OperationStore(self.state / "updates" / "operations").load_all()
        self.assertEqual(saved.status, Status.FINISHED_ERROR)
        self.assertEqual(self.installer.archives, [])
        (self.state / "updates" / "artifacts").unlink()
        service.submit("install", request())
        self.settle()
        self.assertEqual(self.statuses()[-1], "FINISHED_SUCCESS")

    def test_a_download_that_fails_names_its_own_module(self) -> None:
        """When the artifact of the second module fails its download (here its digest), the
        FINISHED_ERROR's ``softwareModule`` names that module, the one that failed
        (docs/updates.md), not the first one; the record keeps it across a restart."""
        second = request(digest="0" * 64)["softwareModules"][0]
        second["softwareModule"] = {"name": "other", "version": "3"}
        two = request()
        two["softwareModules"].append(second)
        service = self.service()
        service.submit("install", two)
        self.settle()
        self.assertEqual(self.statuses()[-1], "FINISHED_ERROR")
        self.assertEqual(self.published[-1][1]["softwareModule"], {"name": "other", "version": "3"})
        [saved] = OperationStore(self.state / "updates" / "operations").load_all()
        self.assertEqual(saved.status_payload(0)["softwareModule"], {"name": "other", "version": "3"})

    def test_cancel_while_downloading(self) -> None:
        """Cancel during the download ends in Kanto's FINISHED_CANCELED (its SoftwareUpdatable has no
        CANCELED: a backend that maps its statuses did not see the operation end) and removes the
        partial files."""
        self.resource.stall = True
        service = self.service()
        service.submit("install", request())
        self.stub.flush()
        service.handle_command("cancel", b'{"correlationId": "op-1"}')
        self.stub.flush()
        self.assertEqual(self.statuses()[-1], "FINISHED_CANCELED")
        self.assertEqual(list((self.state / "updates").rglob("*.part")), [])

    def test_a_refusal_does_not_publish_a_status_not_yet_recorded(self) -> None:
        """A request refused while its operation's next step (DOWNLOADED) is still being written
        does not repeat that step: every status published is a step persisted first. The
        refusal published DOWNLOADED (saying the install was refused) before the step itself
        was recorded; the step is published once it is, the refusal is answered all the same."""
        held: list[tuple[Any, tuple[Any, ...], Deferred[Any]]] = []

        def holds_the_downloaded_step(f: Any, *args: Any) -> Any:
            if getattr(f, "__name__", "") == "save" and args[0].status == Status.DOWNLOADED and not held:
                held.append((f, args, Deferred()))
                return held[-1][2]
            return run_inline(f, *args)

        self.installer.answers.append(Deferred())
        service = self.service(holds_the_downloaded_step)
        service.submit("install", request())
        self.stub.flush()
        self.assertEqual((len(held), self.statuses()), (1, ["STARTED", "DOWNLOADING"]))
        refused = service.handle_command("install", json.dumps(request()).encode())
        self.assertEqual(refused, "operation op-1 is already DOWNLOADED")
        self.assertEqual(self.statuses(), ["STARTED", "DOWNLOADING"])
        f, args, saved = held[0]
        f(*args)
        saved.callback(None)
        self.assertEqual(self.statuses(), ["STARTED", "DOWNLOADING", "DOWNLOADED", "INSTALLING"])
        self.assertEqual(self.published[2][1]["message"], "all artifacts verified")

    def test_cancel_refused_while_installing(self) -> None:
        """An install in progress is not canceled; the answer repeats INSTALLING and says why."""
        self.installer.answers.append(Deferred())
        service = self.service()
        service.submit("install", request())
        self.settle()
        with self.assertRaises(InvalidOperation) as caught:
            service.cancel({"correlationId": "op-1"})
        self.assertIn("INSTALLING", str(caught.exception))
        service.handle_command("cancel", b'{"correlationId": "op-1"}')
        self.assertEqual(self.published[-1][1]["status"], "INSTALLING")
        self.assertIn("cancel refused", self.published[-1][1]["message"])

    def test_late_cancel_does_not_turn_a_finished_operation_into_an_error(self) -> None:
        """A cancel that arrives after the operation finished (it crossed the last status on
        the way) is refused and publishes nothing: the retained status still says how the last
        operation really ended. Repeating the ended operation's status replaced that of any
        operation published after it (lastOperation is one retained topic for all of them)."""
        service = self.service()
        service.submit("install", request())
        self.settle()
        service.submit("download", request("op-2"))
        self.settle()
        published = list(self.published)
        self.assertEqual(published[-1][1]["correlationId"], "op-2")
        refused = service.handle_command("cancel", b'{"correlationId": "op-1"}')
        self.assertIn("no running operation", refused or "")
        self.assertEqual(self.published, published)
        saved = OperationStore(self.state / "updates" / "operations").load_all()
        self.assertEqual([op.status for op in saved], [Status.FINISHED_SUCCESS] * 2)

    def test_a_cancel_of_an_unknown_operation_publishes_nothing(self) -> None:
        """A cancel whose ``correlationId`` names no operation the gateway knows (never sent,
        mistyped, or forgotten) is refused with the reason and publishes no status: it has no
        operation to report under, and a retained FINISHED_ERROR for that id on lastOperation
        would replace the status of the real last operation (Kanto's agent publishes nothing
        for such a cancel either)."""
        service = self.service()
        service.submit("install", request())
        self.settle()
        published = list(self.published)
        self.assertEqual(published[-1][1]["status"], "FINISHED_SUCCESS")
        refused = service.handle_command("cancel", b'{"correlationId": "op-typo"}')
        self.assertEqual(refused, "no running operation 'op-typo' to cancel")
        self.assertEqual(self.published, published)
        self.assertNotIn("op-typo", service.operations)

    def test_an_id_sent_again_as_its_operation_ends_keeps_its_new_files(self) -> None:
        """An install sent again with the id of an operation that has just ended (its
        FINISHED_ERROR published, its files still being removed) starts once that removal is
        done: the ended operation's removal of their common artifacts directory took the new
        operation's download with it."""
        removals: list[tuple[Any, tuple[Any, ...], Deferred[Any]]] = []

        def holds_removals(f: Any, *args: Any) -> Any:
            if f is service_module.remove_tree_durably:
                removals.append((f, args, Deferred()))
                return removals[-1][2]
            return run_inline(f, *args)

        service = self.service(holds_removals)
        service.submit("install", request(digest="0" * 64))
        self.settle()
        self.assertEqual(self.statuses()[-1], "FINISHED_ERROR")
        self.assertEqual(len(removals), 1)
        self.resource.cuts = [30000]  # (were it not waiting, the removal would run mid-download)
        service.submit("install", request())
        self.stub.flush()
        self.assertEqual(self.statuses()[-1], "FINISHED_ERROR")  # (it waits for the removal)
        f, args, held = removals.pop(0)
        f(*args)
        held.callback(None)
        for _ in range(10):
            self.settle()
            while removals:
                f, args, held = removals.pop(0)
                f(*args)
                held.callback(None)
        self.assertEqual(self.statuses()[-1], "FINISHED_SUCCESS", self.published[-1][1]["message"])
        self.assertEqual(self.installer.archives, [ARCHIVE])

    def test_files_left_by_a_crash_after_the_last_step_go_at_the_next_start(self) -> None:
        """An install that ended (success, error or cancel) keeps no artifacts (docs/updates.md,
        On disk): when the gateway died after persisting its last step and before removing its
        files, the next start removes them; a download-only operation's files stay."""
        never: Deferred[Any] = Deferred()

        def dies_before_removing(f: Any, *args: Any) -> Any:
            return never if f is service_module.remove_tree_durably else run_inline(f, *args)

        stub = StubTreq(self.resource)
        first = UpdateService(UpdatesSettings(), self.state, self.clock, stub, lambda *a: None,
                              self.installer, dies_before_removing, lambda attempt: 1.0)
        self.successResultOf(first.startService())
        first.submit("install", request("installed"))
        self.installer.answers.append(succeed(InstallResult(False, "failed", "app", "2", "1", "refused")))
        first.submit("install", request("failed"))
        first.submit("download", request("downloaded"))
        for _ in range(10):
            stub.flush()
            self.clock.advance(1)
        artifacts = self.state / "updates" / "artifacts"
        self.assertEqual(len(list(artifacts.rglob("app.v2.tar.gz"))), 3)
        self.service()
        self.assertEqual({op.status for op in OperationStore(self.state / "updates" / "operations").load_all()},
                         {Status.FINISHED_SUCCESS, Status.FINISHED_ERROR})
        [kept] = list(artifacts.rglob("app.v2.tar.gz"))
        self.assertEqual(kept.parent.parent.name, hashlib.sha256(b"downloaded").hexdigest()[:32])

    def stop_mid_download_and_restart(self) -> None:
        """An install cut at 30,000 bytes by a stop; a new service started (what it publishes
        from there on in :attr:`published`) and settled."""
        self.resource.cuts = [30000]
        first = self.service()
        first.submit("install", request())
        self.stub.flush()
        self.successResultOf(first.stopService())
        self.published.clear()
        self.service()
        self.settle()

    def test_restart_resumes_a_half_download(self) -> None:
        """After a stop mid-download, a new service resumes from the part with a Range request."""
        self.stop_mid_download_and_restart()
        self.assertEqual(self.statuses()[0], "DOWNLOADING")
        self.assertEqual(self.statuses()[-1], "FINISHED_SUCCESS")
        self.assertEqual(self.resource.requests[-1], ("bytes=30000-", '"v1"'))
        self.assertEqual(self.installer.archives, [ARCHIVE])

    def test_a_stop_while_a_resumed_download_opens_its_part_sends_no_request(self) -> None:
        """A service stopped right after it resumed a half download, while the part file opens
        in its thread (a configuration change at start, say), sends no GET once the open returns,
        and its stop leaves nothing pending: the download's request went out after the stop
        (trial saw the connection attempt pending, a DirtyReactor)."""
        self.resource.cuts = [30000]
        first = self.service()
        first.submit("install", request())
        self.stub.flush()
        self.successResultOf(first.stopService())
        asked = len(self.resource.requests)
        disk = HeldThreads()
        second = UpdateService(UpdatesSettings(), self.state, self.clock, self.stub, lambda *a: None,
                               self.installer, disk, lambda attempt: 1.0)
        started = second.startService()
        for _ in range(20):
            if disk.next_name() == "open":
                break
            disk.run_next()
        self.assertEqual(disk.next_name(), "open")  # the resumed download's part
        self.successResultOf(started)
        stopped = second.stopService()
        disk.release_all()
        self.stub.flush()
        self.successResultOf(stopped)
        self.assertEqual((len(self.resource.requests), self.clock.getDelayedCalls()), (asked, []))
        self.assertEqual(OperationStore(self.state / "updates" / "operations").load_all()[0].status,
                         Status.DOWNLOADING)  # resumed by the next start

    def test_an_install_after_a_resumed_download_is_not_said_resumed(self) -> None:
        """An operation resumed mid-download says so at its DOWNLOADING (docs/updates.md); the
        install that follows its download is a first one, and its INSTALLING says only which
        module it is: it said ``app 2 resumed after restart`` too, as for an install the restart
        had cut short."""
        self.stop_mid_download_and_restart()
        messages = [(body["status"], body["message"]) for _, body, _, _ in self.published
                     if body["status"] in ("DOWNLOADING", "INSTALLING")]
        self.assertEqual((messages[0], messages[-1]),
                         (("DOWNLOADING", "resumed after restart"), ("INSTALLING", "app 2")))

    def test_operations_are_listed_in_the_order_received_across_a_restart(self) -> None:
        """docs/readside.md: operations are listed oldest first. After a restart they came in the
        order of their record files' names (hashes of their ids): jumbled. An id used again
        (its operation ended) is a new operation, received last."""
        ids = [f"op-{n}" for n in range(8)]
        self.assertNotEqual(sorted(ids, key=lambda cid: OperationStore(Path("x")).path_for(cid).name), ids)
        first = self.service()
        for cid in ids:
            first.submit("download", request(cid))
            self.settle()
        first.submit("download", request("op-0"))
        self.settle()
        received = ids[1:] + ["op-0"]
        self.assertEqual([op.correlation_id for op in first.snapshot().operations], received)
        self.successResultOf(first.stopService())
        self.assertEqual([op.correlation_id for op in self.service().snapshot().operations], received)

    def test_records_from_before_the_order_come_first_by_their_end(self) -> None:
        """Records written before operations had a ``received`` order come first, in the order
        they ended, the unfinished ones after them."""
        store = OperationStore(self.state / "updates" / "operations")
        for cid, status, ended, received in (("new", Status.FINISHED_SUCCESS, 4, 1), ("b", Status.FINISHED_ERROR, 2, 0),
                                             ("a", Status.FINISHED_SUCCESS, 3, 0), ("c", Status.FINISHED_CANCELED, 1, 0)):
            store.save(Operation(cid, "download", [], status, ended=ended, received=received))
        self.assertEqual([op.correlation_id for op in self.service().snapshot().operations], ["c", "b", "a", "new"])

    def test_an_operation_accepted_as_the_service_stops_starts_no_download(self) -> None:
        """An operation whose first step was still being written when the service stopped does not
        begin its download after the stop (which waits for it: a download begun then held the
        stop until it ended), and the next service resumes it."""
        held: list[tuple[Any, tuple[Any, ...], Deferred[Any]]] = []

        def holds_the_first_save(f: Any, *args: Any) -> Any:
            if getattr(f, "__name__", "") == "save" and not first_saved:
                first_saved.append(True)
                held.append((f, args, Deferred()))
                return held[-1][2]
            return run_inline(f, *args)

        first_saved: list[bool] = []
        self.resource.stall = True
        first = self.service(holds_the_first_save)
        first.submit("install", request())
        stopped = first.stopService()
        f, args, saved = held.pop()
        f(*args)
        saved.callback(None)
        self.stub.flush()
        self.successResultOf(stopped)
        self.assertEqual(self.resource.requests, [])
        self.resource.stall = False
        self.published.clear()
        self.service()
        self.settle()
        self.assertEqual(self.statuses()[-1], "FINISHED_SUCCESS")

    def restart_mid_install(self) -> None:
        """Stop a service while its install runs and start a new one on the same state."""
        first = self.service()
        first.submit("install", request())
        self.settle()
        self.successResultOf(first.stopService())
        self.published.clear()
        self.service()
        self.settle()

    def test_install_interrupted_by_restart_is_run_again_for_apps(self) -> None:
        """An app install that a restart interrupted is announced again, installed again and reported."""
        self.installer.answers.append(Deferred())
        self.restart_mid_install()
        self.assertEqual(self.statuses(), ["INSTALLING", "INSTALLED", "FINISHED_SUCCESS"])
        self.assertIn("after a restart", self.published[1][1]["message"])
        self.assertEqual(len(self.installer.archives), 2)

    def test_an_install_the_stop_interrupted_is_run_again_not_ended(self) -> None:
        """A configuration change (or SIGTERM) stops the updates service, then the apps service,
        whose stop ends the install under way (rolled back, saying the apps service stopped): the
        stopped updates service leaves the operation INSTALLING, and the next one runs it again
        (docs/updates.md: an app install that was interrupted is run again). The stopped service
        ended it FINISHED_ERROR when its record could still be written, and it was never installed."""
        interrupted: Deferred[Any] = Deferred()
        self.installer.answers.append(interrupted)
        first = self.service()
        first.submit("install", request())
        self.settle()
        self.successResultOf(first.stopService())
        interrupted.callback(InstallResult(False, "rolled-back", "app", "2", "1",
                                           "the apps service stopped during the health window"))
        self.published.clear()
        self.service()
        self.settle()
        self.assertEqual(self.statuses(), ["INSTALLING", "INSTALLED", "FINISHED_SUCCESS"])
        self.assertEqual(len(self.installer.archives), 2)

    def test_an_operation_downloaded_when_the_service_stops_starts_no_install(self) -> None:
        """An operation that reaches DOWNLOADED while the service stops installs nothing then (the
        apps service stops next and would cut it short): the next service installs it, resumed
        from DOWNLOADED. The stopping service went on to install it."""
        first = self.service()
        stopping: list[Deferred[None]] = []

        def stop_at_downloaded(operation: Operation) -> None:
            if operation.status == Status.DOWNLOADED and not stopping:
                stopping.append(first.stopService())

        first.watch(stop_at_downloaded)
        first.submit("install", request())
        self.settle()
        self.successResultOf(stopping[0])
        self.assertEqual(self.installer.archives, [])
        self.published.clear()
        self.service()
        self.settle()
        self.assertEqual(self.statuses()[-1], "FINISHED_SUCCESS")
        self.assertEqual(len(self.installer.archives), 1)

    def test_a_cancel_just_before_a_stop_is_not_lost(self) -> None:
        """A cancel accepted while the download winds down (its part is closed off the reactor)
        and the service stops meanwhile (a configuration change, SIGTERM): the operation ends
        CANCELED, persisted and published, and the next service does not resume it (docs/updates.md:
        cancel is honoured while the operation is STARTED or DOWNLOADING). The stopping service
        took the cancellation for its own stop's: the operation stayed DOWNLOADING, and the next
        start downloaded and installed what had been canceled."""
        self.resource.cuts = [30000]
        first = self.service()
        first.submit("install", request())
        self.stub.flush()
        held: list[tuple[Deferred[Any], Any, tuple[Any, ...]]] = []
        inline = first.run_blocking

        def later(f: Any, *args: Any) -> Deferred[Any]:
            d: Deferred[Any] = Deferred()
            held.append((d, f, args))
            return d

        first.run_blocking = first.downloader.run_blocking = later
        first.cancel({"correlationId": "op-1"})
        stopped = first.stopService()
        first.run_blocking = first.downloader.run_blocking = inline
        while held:
            d, f, args = held.pop(0)
            d.callback(f(*args))
        self.successResultOf(stopped)
        self.assertEqual(self.statuses()[-1], "FINISHED_CANCELED")
        self.assertEqual([op.status for op in OperationStore(self.state / "updates" / "operations").load_all()],
                         [Status.FINISHED_CANCELED])
        self.published.clear()
        self.service()
        self.settle()
        self.assertEqual((self.statuses(), self.installer.archives), ([], []))

    def test_interrupted_install_that_had_switched_versions(self) -> None:
        """After a restart, an app install that had already made its version current (the installer
        now refuses it as current, with previous == version) is reported INSTALLED, saying so."""
        self.installer.answers.extend([Deferred(), succeed(InstallResult(
            False, "failed", "app", "2", "2", "app 2 is already the current version"))])
        self.restart_mid_install()
        self.assertEqual(self.statuses(), ["INSTALLING", "INSTALLED", "FINISHED_SUCCESS"])
        self.assertIn("already current when the gateway came back", self.published[1][1]["message"])

    def test_installing_the_current_version_again_is_an_error(self) -> None:
        """Outside a restart, the installer's refusal of the current version ends in FINISHED_ERROR."""
        self.installer.answers.append(succeed(InstallResult(
            False, "failed", "app", "2", "2", "app 2 is already the current version")))
        service = self.service()
        service.submit("install", request())
        self.settle()
        self.assertEqual(self.statuses()[-1], "FINISHED_ERROR")
        self.assertIn("app 'app' 2 install failed", self.published[-1][1]["message"])
        self.assertIn("already the current version", self.published[-1][1]["message"])

    def test_install_interrupted_by_restart_is_announced_before_its_result(self) -> None:
        """After a restart mid-install, INSTALLING is published (and persisted) again at once,
        while the install's result is still pending: the retained status may not have survived."""
        self.installer.answers.extend([Deferred(), Deferred()])
        self.restart_mid_install()
        self.assertEqual(self.statuses(), ["INSTALLING"])
        self.assertEqual(self.published[0][1]["message"], "app 2 resumed after restart")
        [saved] = OperationStore(self.state / "updates" / "operations").load_all()
        self.assertEqual(saved.status, Status.INSTALLING)

    def test_install_resumed_after_its_download_says_so(self) -> None:
        """An install a restart found DOWNLOADED (verified, not installing yet) announces
        ``resumed after restart`` at once, as every resumed operation does (docs/updates.md)."""
        self.installer.answers.append(Deferred())
        first = self.service()
        first.submit("install", request())
        self.settle()
        self.successResultOf(first.stopService())
        store = OperationStore(self.state / "updates" / "operations")
        [saved] = store.load_all()
        saved.status = Status.DOWNLOADED  # as if the restart came before INSTALLING was persisted
        store.save(saved)
        self.published.clear()
        self.service()
        self.settle()
        self.assertEqual(self.statuses(), ["INSTALLING", "INSTALLED", "FINISHED_SUCCESS"])
        self.assertEqual(self.published[0][1]["message"], "app 2 resumed after restart")
        self.assertEqual(len(self.installer.archives), 2)

    def test_malformed_request_is_answered_with_an_error(self) -> None:
        """A request with a bad field gets FINISHED_ERROR naming the field, without the modules it
        could not read (no ``softwareModule``, ``softwareModules``: updates.md); bad JSON is only logged."""
        service = self.service()
        bad = request()
        bad["softwareModules"][0]["artifacts"][0]["download"] = {}
        service.handle_command("install", json.dumps(bad).encode())
        service.handle_command("install", b"{not json")
        self.assertIn("nested too deeply", service.handle_command("install", b"[" * 100000) or "")
        self.assertEqual(self.statuses(), ["FINISHED_ERROR"])
        self.assertIn("artifacts[0].download", self.published[0][1]["message"])
        self.assertEqual(sorted(self.published[0][1]), ["correlationId", "message", "status", "timestamp"])

    def test_correlation_id_not_a_string_is_named_as_such(self) -> None:
        """``{"correlationId": 5}`` is refused saying the id must be a string (not that it is
        required, which it was given); a missing or empty one is still "required"."""
        service = self.service()
        for command in ("install", "download", "cancel"):
            refused = service.handle_command(command, json.dumps({**request(), "correlationId": 5}).encode())
            self.assertEqual(refused, "correlationId: must be a string, not 5", command)
        refused = service.handle_command("install", json.dumps({**request(), "correlationId": ""}).encode())
        self.assertEqual(refused, "correlationId: a non-empty string is required")

    def test_a_request_in_a_ditto_envelope_is_its_value(self) -> None:
        """Kanto's install message in the Ditto envelope its backends send (topic
        .../things/live/messages/install, path /features/SoftwareUpdatable/inbox/messages/install)
        is handled as its value: parsed once, here (the local topics and the cloud commands
        hand it over as it came)."""
        service = self.service()
        envelope = {"topic": "acme/gw-1/things/live/messages/install",
                    "headers": {"content-type": "application/json", "correlation-id": "demo-id-123"},
                    "path": "/features/SoftwareUpdatable/inbox/messages/install", "value": request("y" * 70_000)}
        self.assertEqual(service.handle_command("install", json.dumps(envelope).encode()),
                         "correlationId: at most 100 characters, not 70000")
        self.assertEqual(service.handle_command("cancel", json.dumps({**envelope, "value": {}}).encode()),
                         "correlationId: a non-empty string is required")

    def test_a_request_over_the_request_limit_is_refused_unread(self) -> None:
        """A request of REQUEST_BYTES is read (its over-long id refused as such); one byte more
        is refused by its size before it is parsed: no id of it is known, so nothing is published."""
        service = self.service()
        text = json.dumps(request("y" * 70_000)).encode()
        at_limit = text.ljust(REQUEST_BYTES)
        self.assertEqual(service.handle_command("install", at_limit), "correlationId: at most 100 characters, not 70000")
        refused = service.handle_command("install", at_limit + b" ")
        self.assertEqual(refused, f"the message is {REQUEST_BYTES + 1} bytes, more than the {REQUEST_BYTES}"
                                  " bytes a request may have")
        self.settle()
        self.assertEqual((dict(service.operations), self.published), ({}, []))

    def test_an_id_that_cannot_be_shown_whole_names_no_operation(self) -> None:
        """A ``correlationId`` of over 100 characters, or with a character that is not
        printable (a newline forged log lines), is refused as a request without an id to report
        under: nothing starts, nothing is stored, no status is published, and the reason quotes
        at most 100 characters of it; a 70 KB id was accepted and repeated in every status, and
        refused ones in a FINISHED_ERROR (docs/updates.md)."""
        service = self.service()
        for cid, reason in (("y" * 70_000, "correlationId: at most 100 characters, not 70000"),
                            ("a\nb\x1b[31m", "correlationId: printable characters only, not 'a\\nb\\x1b[31m'")):
            for command in ("install", "download"):
                self.assertEqual(service.handle_command(command, json.dumps(request(cid)).encode()), reason)
            refused = service.handle_command("cancel", json.dumps({"correlationId": cid}).encode())
            self.assertLess(len(refused or ""), 200)
        for where in ("name", "version"):
            bad = request()
            bad["softwareModules"][0]["softwareModule"][where] = "v" * 1_000_000
            self.assertEqual(service.handle_command("install", json.dumps(bad).encode()),
                             f"softwareModules[0].softwareModule.{where}: at most 100 characters, not 1000000")
        self.settle()
        self.assertEqual(dict(service.operations), {})
        self.assertEqual([(p["correlationId"], p["status"]) for _, p, _, _ in self.published],
                         [("op-1", "FINISHED_ERROR")] * 2)
        self.assertEqual(OperationStore(self.state / "updates" / "operations").load_all(), [])

    @settings(derandomize=True, max_examples=60, deadline=None)
    @given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=300),
                        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=20), inner,
                                                                                     max_size=4), max_leaves=20),
           st.sampled_from(["correlationId", "softwareModules", "version", "checksums", "target"]),
           st.sampled_from(["install", "download", "cancel"]))
    def test_no_value_is_repeated_unbounded(self, value: Any, where: str, command: str) -> None:
        """Whatever value a request holds where a field belongs (padded to 100 KB), the refusal
        and any status are a few hundred bytes: a value is quoted by its first 100 characters
        and its length, a list or object by a few of its items."""
        self.published.clear()
        service = self.service()
        body = request("p" + "q" * 20)
        module = body["softwareModules"][0]
        padded = [value, "z" * 100_000] if not isinstance(value, str) else value + "z" * 100_000
        if where in ("correlationId", "softwareModules"):
            body[where] = padded
        elif where == "version":
            module["softwareModule"]["version"] = padded
        elif where == "checksums":
            module["artifacts"][0]["checksums"] = {"SHA256": padded}
        else:
            module["metadata"] = {"target": padded}
        refused = service.handle_command(command, json.dumps(body).encode())
        self.assertLess(len(refused or ""), 500)
        self.assertLess(max([len(json.dumps(p)) for _, p, _, _ in self.published] or [0]), 1000)
        self.successResultOf(service.stopService())

    def test_a_cancel_without_its_id_is_named_as_such(self) -> None:
        """A cancel without a ``correlationId`` (or with an empty one) is refused saying the id is
        required, as an install is, not that operation ``None`` is not running; one that is not
        an object, or not JSON at all, says so for every command."""
        service = self.service()
        for body in (b"{}", b'{"correlationId": ""}'):
            self.assertEqual(service.handle_command("cancel", body), "correlationId: a non-empty string is required")
        for command in ("install", "download", "cancel"):
            self.assertEqual(service.handle_command(command, b"[1]"), "the request must be a JSON object", command)
            refused = service.handle_command(command, b"not json")
            self.assertTrue(refused is not None and refused.startswith("the request is not JSON: "), (command, refused))

    def test_a_request_that_is_not_rfc_8259_json_is_refused(self) -> None:
        """docs/updates.md: a request holding NaN, Infinity, 1e400, a 5000-digit integer or a
        key given twice is refused as not JSON, as the admin API refuses it, for every command
        (a NaN went on into the operation, a key given twice was one of two values)."""
        service = self.service()
        for body, why in ((b'{"correlationId": "a", "x": NaN}', "NaN is not JSON"),
                          (b'{"correlationId": "a", "x": -Infinity}', "-Infinity is not JSON"),
                          (b'{"correlationId": "a", "x": 1e400}', "the number 1e400 is too large"),
                          (b'{"correlationId": "a", "x": %s}' % (b"9" * 5000), "an integer of 5000 digits"),
                          (b'{"correlationId": "a", "correlationId": "b"}', "key 'correlationId' given twice")):
            for command in ("install", "download", "cancel"):
                refused = service.handle_command(command, body)
                self.assertTrue((refused or "").startswith(f"the request is not JSON: {why}"), (command, refused))

    def test_a_wrong_target_is_named_with_its_module(self) -> None:
        """A ``metadata.target`` the gateway has not, or a ``metadata`` that is not an object, is
        a malformed request whose FINISHED_ERROR names the field with its module
        (``softwareModules[1].metadata.target``), as every other malformed field is named; the
        target's error named no module, and a ``metadata`` string was ignored (the module went
        to the target guessed from its file name)."""
        service = self.service()
        for cid, metadata, field in (("target", {"target": "firmware"}, "softwareModules[1].metadata.target"),
                                     ("metadata", "container", "softwareModules[1].metadata")):
            bad = request(cid)
            second = json.loads(json.dumps(bad["softwareModules"][0]))
            second["metadata"] = metadata
            bad["softwareModules"].append(second)
            refused = service.handle_command("install", json.dumps(bad).encode())
            self.assertTrue((refused or "").startswith(f"{field}: "), refused)
            self.assertEqual(self.published[-1][1]["status"], "FINISHED_ERROR", cid)
            self.assertTrue(self.published[-1][1]["message"].startswith(f"{field}: "), cid)
        self.settle()
        self.assertEqual(self.statuses(), ["FINISHED_ERROR", "FINISHED_ERROR"])
        self.assertEqual(self.installer.archives, [])

    def test_artifact_file_names_no_file_can_have_are_refused(self) -> None:
        """A file name with a NUL, or too long for the file system once ``.part.json`` is added,
        is a malformed request: FINISHED_ERROR naming the field (the download used to crash on
        it and leave the operation DOWNLOADING for good)."""
        service = self.service()
        for cid, filename in (("nul", "app\x00.v2.tar.gz"), ("long", "a" * 240 + ".v2.tar.gz")):
            bad = request(cid)
            bad["softwareModules"][0]["artifacts"][0]["filename"] = filename
            refused = service.handle_command("install", json.dumps(bad).encode())
            self.assertIn("softwareModules[0].artifacts[0].filename", refused or "", cid)
            self.assertEqual(self.published[-1][1]["status"], "FINISHED_ERROR", cid)
        self.settle()
        self.assertEqual(self.statuses(), ["FINISHED_ERROR", "FINISHED_ERROR"])
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_two_artifacts_of_one_module_with_one_file_name_are_refused(self) -> None:
        """Two artifacts of a module go to one directory, so one file name twice is a malformed
        request naming the second (docs/updates.md); both were downloaded into the same part
        file at once, and whichever wrote last won (or the operation failed on a part file the
        other had renamed away)."""
        service = self.service()
        bad = request("twice")
        artifacts = bad["softwareModules"][0]["artifacts"]
        artifacts.append(dict(artifacts[0], download={"HTTPS": {"url": URL + "?other"}}))
        refused = service.handle_command("install", json.dumps(bad).encode())
        self.assertTrue((refused or "").startswith("softwareModules[0].artifacts[1].filename: "), refused)
        self.settle()
        self.assertEqual(self.statuses(), ["FINISHED_ERROR"])
        self.assertEqual(self.installer.archives, [])

    def test_module_name_or_version_with_a_nul_is_refused(self) -> None:
        """A module's name and version reach file names and a script's environment: a NUL in
        either (as any character that is not printable) is a malformed request naming the field
        (it hung the operation at INSTALLING)."""
        service = self.service()
        for key in ("name", "version"):
            bad = request(f"nul-{key}")
            bad["softwareModules"][0]["softwareModule"][key] = "a\x00b"
            refused = service.handle_command("install", json.dumps(bad).encode())
            self.assertEqual(refused, f"softwareModules[0].softwareModule.{key}: printable characters only, not 'a\\x00b'")
        self.settle()
        self.assertEqual(self.statuses(), ["FINISHED_ERROR", "FINISHED_ERROR"])

    def test_an_artifact_size_that_is_not_a_byte_count_is_refused(self) -> None:
        """``size`` is a whole number of bytes: a boolean (JSON's ``true``, an int to Python),
        a string, a fraction or a negative number is a malformed request naming the field;
        ``true`` was taken as 1 byte, and the download failed with 'announced True'."""
        service = self.service()
        for size in (True, False, "3", 1.5, -1):
            bad = request(f"size-{size}")
            bad["softwareModules"][0]["artifacts"][0]["size"] = size
            refused = service.handle_command("download", json.dumps(bad).encode())
            self.assertEqual(refused, "softwareModules[0].artifacts[0].size: a byte count is required", size)

    def test_a_module_version_that_is_not_a_string_is_refused(self) -> None:
        """A module's version is text: a JSON number (``2.10`` reads as 2.1), boolean, null or
        object is a malformed request naming the field; it was made text (version '2.1' for
        2.10, 'None' for null) and reached the script's UPDATE_MODULE_VERSION and the statuses."""
        service = self.service()
        for version, written in ((2.10, "2.1"), (True, "true"), (None, "null"), ({"v": 1}, '{"v": 1}')):
            bad = request(f"version-{written}")
            bad["softwareModules"][0]["softwareModule"]["version"] = version
            refused = service.handle_command("install", json.dumps(bad).encode())
            self.assertEqual(refused, f"softwareModules[0].softwareModule.version: a string is required, not {written}")

    def test_a_digest_that_is_not_a_string_is_refused_in_words(self) -> None:
        """A known digest whose value is not a string is a malformed request saying so; the
        error read "'int' object has no attribute 'strip'"."""
        service = self.service()
        for value in (5, None, ["ab"]):
            bad = request(f"digest-{value}")
            bad["softwareModules"][0]["artifacts"][0]["checksums"] = {"SHA256": value}
            refused = service.handle_command("install", json.dumps(bad).encode())
            self.assertEqual(refused, "softwareModules[0].artifacts[0].checksums: SHA256 digest must be a string"
                                      f" of hex digits, not {value!r}")

    def test_duplicate_running_request_is_refused(self) -> None:
        """The same correlation id cannot run twice at once."""
        self.resource.stall = True
        service = self.service()
        service.submit("install", request())
        self.assertRaises(InvalidOperation, service.submit, "install", request())

    def test_progress_is_published_at_most_once_a_second(self) -> None:
        """DOWNLOADING statuses carry a percentage, no more than one a second."""
        self.resource.cuts = [10000, 10000, 10000, 10000]
        service = self.service()
        service.submit("download", request())
        for _ in range(20):
            self.stub.flush()
            self.clock.advance(0.5)
        progress = [p for _, p, _, _ in self.published if "progress" in p]
        self.assertTrue(progress)
        stamps = [p["timestamp"] for p in progress]
        self.assertTrue(all(b - a >= 1000 for a, b in zip(stamps, stamps[1:])), stamps)
        self.assertTrue(all(0 <= p["progress"] <= 99 for p in progress))
        self.assertEqual(self.statuses()[-1], "FINISHED_SUCCESS")

    def test_every_downloading_status_has_progress(self) -> None:
        """Every DOWNLOADING status carries ``progress`` (docs/updates.md), the first one too
        (0: nothing received yet), and they come at most once a second, the first included;
        so does a refused command's repeat of the status."""
        self.resource.cuts = [10000, 10000, 10000, 10000]
        service = self.service()
        service.submit("download", request())
        self.assertEqual(self.statuses(), ["STARTED", "DOWNLOADING"])
        self.assertEqual(self.published[-1][1]["progress"], 0)
        for _ in range(6):
            self.stub.flush()
            self.clock.advance(0.5)
        service.handle_command("install", json.dumps(request()).encode())
        self.assertEqual(self.published[-1][1]["status"], "DOWNLOADING")
        self.assertIn("install refused", self.published[-1][1]["message"])
        for _ in range(14):
            self.stub.flush()
            self.clock.advance(0.5)
        downloading = [p for _, p, _, _ in self.published if p["status"] == "DOWNLOADING"]
        self.assertGreater(len(downloading), 2)
        self.assertTrue(all(0 <= p.get("progress", -1) <= 99 for p in downloading), downloading)
        reports = [p["timestamp"] for p in downloading if "refused" not in p["message"]]
        self.assertTrue(all(b - a >= 1000 for a, b in zip(reports, reports[1:])), reports)
        self.assertEqual(self.statuses()[-1], "FINISHED_SUCCESS")

    def test_progress_across_a_step_back_of_the_wall_clock(self) -> None:
        """NTP steps the clock back an hour during a download: DOWNLOADING statuses go on once
        a second (none came for the hour), stamped with the time of day."""
        self.resource.cuts = [10000, 10000, 10000, 10000]
        service = self.service()
        service.submit("download", request())
        progress = lambda: [p for _, p, _, _ in self.published if "progress" in p]  # noqa: E731
        while not progress():
            self.stub.flush()
            self.clock.advance(0.5)
        self.clock.step(-3600.0)
        for _ in range(10):
            self.stub.flush()
            self.clock.advance(0.5)
        after = progress()[1:]
        self.assertGreaterEqual(len(after), 2)
        self.assertLess(after[0]["timestamp"], 0)  # (ms since the epoch: the clock stepped back before it)

    def test_snapshot_shows_status_and_download_progress(self) -> None:
        """snapshot() shows each operation's status, modules and bytes received of the total."""
        from gateway.updates.snapshot import ModuleSnapshot

        self.resource.cuts = [10000, 10000, 10000, 10000]
        service = self.service()
        self.assertEqual(service.snapshot().operations, ())
        service.submit("download", request())
        seen = []
        for _ in range(20):
            self.stub.flush()
            self.clock.advance(0.5)
            [op] = service.snapshot().operations
            seen.append((op.status, op.received_bytes, op.progress_percent))
        [op] = service.snapshot().operations
        self.assertEqual((op.correlation_id, op.action, op.status, op.active), ("op-1", "download",
                                                                              "FINISHED_SUCCESS", False))
        self.assertEqual(op.modules, (ModuleSnapshot("app", "2", "app"),))
        self.assertEqual((op.received_bytes, op.total_bytes, op.progress_percent), (len(ARCHIVE), len(ARCHIVE), 100))
        partial = [s for s in seen if s[0] == "DOWNLOADING" and 0 < s[1] < len(ARCHIVE)]
        self.assertTrue(partial, seen)
        self.assertTrue(all(0 < p < 100 for _, _, p in partial), partial)

    def test_snapshot_counts_a_quick_download_of_unannounced_size(self) -> None:
        """readside.md: the byte fields count this run. A download whose request gives no
        ``size`` and that ends before its first once-a-second progress report still shows
        every byte of it, of that total, 100%: it showed 0, null and null."""
        service = self.service()
        body = request()
        del body["softwareModules"][0]["artifacts"][0]["size"]
        service.submit("download", body)
        for _ in range(6):
            self.stub.flush()
            self.clock.advance(0.1)
        [op] = service.snapshot().operations
        self.assertEqual(op.status, "FINISHED_SUCCESS")
        self.assertEqual((op.received_bytes, op.total_bytes, op.progress_percent), (len(ARCHIVE), len(ARCHIVE), 100))

    def test_operation_round_trips_through_json(self) -> None:
        """The persisted form rebuilds the same operation."""
        service = self.service()
        operation = service.submit("download", request(target="script"))
        self.assertEqual(Operation.from_json(json.loads(json.dumps(operation.to_json()))), operation)
        self.assertEqual(operation.modules[0].target, "script")

    def test_a_record_of_an_unknown_action_is_no_operation(self) -> None:
        """A persisted operation whose action is not download or install (a list, a huge
        text: damaged from outside) or whose message is no text is refused as unreadable
        (its store sets it aside and says so), not resumed as a download."""
        service = self.service()
        saved = service.submit("download", request()).to_json()
        for key, bad in (("action", ["download"]), ("action", "x" * 100000), ("action", None), ("message", 7)):
            with self.assertRaises(ValueError) as raised:
                Operation.from_json({**saved, key: bad})
            self.assertTrue(str(raised.exception).startswith(f"{key}: "), raised.exception)
            self.assertLess(len(str(raised.exception)), 200)

    def full_disk(self, service: UpdateService, after: int = 0) -> list[bool]:
        """Make the operation record's writes fail after ``after`` of them; the list holds
        whether the disk is full (clear it to give the space back)."""
        save = service.store.save
        full, count = [True], [0]

        def refuse(operation: Operation) -> None:
            count[0] += 1
            if full and full[0] and count[0] > after:
                raise OSError(28, "No space left on device")
            save(operation)
        service.store.save = refuse  # type: ignore[method-assign]
        return full

    def test_an_operation_whose_record_cannot_be_written_ends_saying_so(self) -> None:
        """An install whose STARTED record cannot be written ends FINISHED_ERROR saying why,
        published all the same (updates.md: FINISHED_ERROR with the reason in message), and the
        same request sent again once the disk has room is carried out. The operation crashed:
        nothing was published, it stayed STARTED in memory, and every retry of it was refused
        as already STARTED until a restart."""
        service = self.service()
        full = self.full_disk(service)
        service.submit("install", request())
        self.settle()
        self.assertEqual(self.statuses(), ["FINISHED_ERROR"])
        self.assertIn("No space left on device", self.published[-1][1]["message"])
        self.assertEqual(self.installer.archives, [])
        full[0] = False
        service.submit("install", request())
        self.settle()
        self.assertEqual(self.statuses()[-1], "FINISHED_SUCCESS")
        self.assertEqual(self.installer.archives, [ARCHIVE])
        self.flushLoggedErrors(OSError)

    def test_a_step_that_cannot_be_recorded_removes_the_artifacts(self) -> None:
        """A step past the download that cannot be recorded (DOWNLOADED) ends the operation
        FINISHED_ERROR and removes its artifacts, as any failed operation's (updates.md: On
        disk); they were left under updates/artifacts/, on the full disk."""
        service = self.service()
        self.full_disk(service, after=2)  # STARTED, DOWNLOADING written; DOWNLOADED refused
        service.submit("install", request())
        self.settle()
        self.assertEqual(self.statuses(), ["STARTED", "DOWNLOADING", "FINISHED_ERROR"])
        self.assertEqual(self.installer.archives, [])
        self.assertEqual(list((self.state / "updates" / "artifacts").rglob("*.tar.gz*")), [])
        self.flushLoggedErrors(OSError)

    def assertNotResumed(self, service: UpdateService) -> None:
        """Stopped and started again on its state, the service resumes no operation."""
        self.successResultOf(service.stopService())
        self.published.clear()
        self.service()
        self.settle()
        self.assertEqual(self.statuses(), [])
        self.flushLoggedErrors(OSError)

    def test_an_end_recorded_once_the_artifacts_freed_their_space(self) -> None:
        """A disk filled by the operation's own artifacts takes its FINISHED_ERROR once they are
        removed: the next start finds the operation ended as published. Its record stayed at
        its last step before (DOWNLOADING), so every start resumed an operation the cloud had
        been told was over."""
        service = self.service()
        artifacts = self.state / "updates" / "artifacts"
        save = service.store.save

        def refuse_while_artifacts(operation: Operation) -> None:
            if operation.status != Status.STARTED and any(artifacts.rglob("*.tar.gz")):
                raise OSError(28, "No space left on device")
            save(operation)
        service.store.save = refuse_while_artifacts  # type: ignore[method-assign]
        service.submit("install", request())
        self.settle()
        self.assertEqual(self.statuses(), ["STARTED", "DOWNLOADING", "FINISHED_ERROR"])
        [saved] = OperationStore(self.state / "updates" / "operations").load_all()
        self.assertEqual((saved.status, saved.message), (Status.FINISHED_ERROR, self.published[-1][1]["message"]))
        self.assertNotResumed(service)

    def test_an_end_the_disk_never_takes_is_not_resumed(self) -> None:
        """When the disk still refuses the FINISHED_ERROR once the artifacts are gone, the
        record of the step before is removed: the next start does not resume the operation
        (updates.md: it ended, and may be sent again)."""
        service = self.service()
        self.full_disk(service, after=2)  # STARTED, DOWNLOADING written; the rest refused
        service.submit("install", request())
        self.settle()
        self.assertEqual(self.statuses()[-1], "FINISHED_ERROR")
        self.assertEqual(OperationStore(self.state / "updates" / "operations").load_all(), [])
        self.assertNotResumed(service)


class ThreadTests(TestCase):
    """The service's own blocking threads."""

    timeout = 10

    @inlineCallbacks
    def test_pool_threads_are_daemons(self) -> None:
        """The updates pool's threads are daemon threads: a stopService that raised before the
        pool was stopped cannot hang the interpreter's exit."""
        service = UpdateService(UpdatesSettings(), Path(self.mktemp()), reactor, StubTreq(RangeFile(ARCHIVE)),
                                lambda *args: None)
        yield service.startService()
        self.addCleanup(service.stopService)
        daemon = yield service.run_blocking(lambda: threading.current_thread().daemon)
        self.assertTrue(daemon)

