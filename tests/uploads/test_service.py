"""The upload service's message flow, driven synchronously: Kanto's answers, statuses
persisted then published, retries, changes, cancel, concurrency, resume after a restart."""

from __future__ import annotations

import errno
import glob
import json
import os
import pwd
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.logger import Logger, LogLevel, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from gateway import config
from gateway.errors import ConfigError
from gateway.uploads.errors import ProviderRefused, TransferFailed
from gateway.uploads.messages import OPERATIONS
from gateway.uploads.operation import Upload
from gateway.uploads.service import KEEP_FINISHED, UploadService
from gateway.operations.store import RecordStore
from gateway.payloadlimits import REQUEST_BYTES
from gateway.shown import shown
from gateway.uploads.settings import PeriodicSettings, UploadsSettings
from tests.logevents import assert_one_line_then_summary, capture_log_events
from tests.test_filelayer import record_calls, record_fsyncs
from tests.uploads.fakes import body, fake_service
from tests.uploads.realservers import StatusWatcher


class FlowTests(SynchronousTestCase):
    """trigger -> request per file -> start -> UPLOADING -> SUCCESS, as Kanto's backend sees it."""

    def setUp(self) -> None:
        self.dir = Path(self.mktemp()).absolute()
        self.dir.mkdir()
        for name in ("a.log", "b.log", "c.log"):
            (self.dir / name).write_bytes(name.encode() * 100)
        self.state = Path(self.mktemp())
        self.settings = UploadsSettings(files=(str(self.dir / "*.log"),), concurrency=1)
        self.service, self.watcher, self.clock, self.sends = fake_service(self.state, self.settings)
        self.successResultOf(self.service.startService())
        self.addCleanup(lambda: self.service.running and self.service.stopService())

    def handle(self, operation: str, value: Any) -> tuple[int, dict[str, Any]]:
        result: tuple[int, dict[str, Any]] = self.successResultOf(self.service.handle(operation, body(value)))
        return result

    def persisted(self, cid: str) -> Upload:
        [upload] = [u for u in RecordStore(self.state / "uploads" / "operations", Upload.from_json).load_all()
                    if u.correlation_id == cid]
        return upload

    def trigger(self, cid: str = "t1") -> list[dict[str, Any]]:
        self.assertEqual(self.handle("trigger", {"correlationId": cid}), (204, {}))
        return [r for r in self.watcher.requests() if r["correlationId"].startswith(cid + "#")]

    def test_trigger_sends_one_request_per_file_with_kantos_options(self) -> None:
        """Each configured file gets ``<id>#<n>`` and a request naming its path and size."""
        requests = self.trigger()
        self.assertEqual([r["correlationId"] for r in requests], ["t1#1", "t1#2", "t1#3"])
        self.assertEqual(requests[0]["options"]["file.path"], str(self.dir / "a.log"))
        self.assertEqual(requests[0]["options"]["file.size"], "500")
        self.assertEqual(requests[0]["options"]["storage.providers"], "aws, azure, generic")
        [topic] = {t for t, v, _ in self.watcher.messages if t.endswith("/request")}
        envelope = [v for t, v, _ in self.watcher.messages if t == topic][0]
        self.assertEqual(envelope["path"], "/features/AutoUploadable/outbox/messages/request")
        self.assertEqual(envelope["topic"], "ns/gw/things/live/messages/request")
        self.assertEqual(self.watcher.statuses()[-1]["state"], "PENDING")
        self.assertEqual(self.persisted("t1").state.value, "PENDING")

    def test_start_uploads_and_success_carries_digests(self) -> None:
        """All files stored: SUCCESS, progress 100, each file's MD5 and SHA-256, persisted."""
        requests = self.trigger()
        for request in requests:
            self.assertEqual(self.handle("start", {"correlationId": request["correlationId"],
                                                   "options": {"https.url": "x", "info.k": "v"}}), (204, {}))
        self.assertEqual(self.persisted("t1").state.value, "UPLOADING")
        for _ in range(3):
            self.sends[-1][2].callback(None)
        status = self.watcher.statuses()[-1]
        self.assertEqual((status["state"], status["progress"], status["info"]), ("SUCCESS", 100, {"k": "v"}))
        self.assertEqual(len(status["files"][0]["sha256"]), 64)
        self.assertEqual(self.persisted("t1").state.value, "SUCCESS")

    def test_a_file_whose_name_is_not_utf8_is_left_out_and_said_so(self) -> None:
        """A file named in Latin-1 on disk (``caf\\xe9.log``) was taken: its request named it with
        a lone surrogate (``caf\\udce9.log``, which a strict JSON reader refuses), and the
        upload's record, written so, was refused when read back: after a restart the whole
        upload was gone. It is now left out of the trigger, with a warning naming it; the
        other files go, and their record reads back."""
        with open(os.fsencode(self.dir) + b"/caf\xe9.log", "wb") as latin1:
            latin1.write(b"latin-1")
        events = capture_log_events(self)
        requests = self.trigger()
        self.assertEqual([r["options"]["file.path"] for r in requests],
                         [str(self.dir / name) for name in ("a.log", "b.log", "c.log")])
        [line] = [formatEvent(e) for e in events if "leaves out" in e.get("log_format", "")]
        self.assertEqual(line, f"upload t1 leaves out {self.dir}/caf\\udce9.log: its name is not UTF-8, and the "
                               "cloud's request, the upload's record and the storage name files in UTF-8 (rename it)")
        self.assertEqual([f.path for f in self.persisted("t1").files], [r["options"]["file.path"] for r in requests])
        for name in ("a.log", "b.log", "c.log"):
            (self.dir / name).unlink()
        status, error = self.handle("trigger", {"correlationId": "t2"})
        self.assertEqual((status, error["message"]),
                         (500, f"no file matches {self.dir}/*.log (1 left out: their names are not UTF-8)"))

    def refuse_access(self, *refused: Path) -> None:
        """Make ``os.access`` say no for ``refused``, as it does to the packaged gateway's user
        (``gateway``) for a file root keeps to itself: the suite runs as root, whom no mode refuses."""
        real_access = os.access

        def access(path: Any, mode: int, *args: Any, **kwargs: Any) -> bool:
            return Path(path) not in refused and real_access(path, mode, *args, **kwargs)

        self.patch(os, "access", access)

    def test_a_file_the_gateways_user_may_not_read_is_left_out_and_said_so(self) -> None:
        """A file the gateway's user may not read (root's, mode 0600, under the packaged
        gateway's user ``gateway``) was requested from the cloud all the same, and its upload
        failed only once the cloud had answered; a trigger naming it alone was "PENDING". It is
        now left out, with a warning naming it, its owner and mode; a trigger that matches only
        it is refused, saying why."""
        self.service.settings = replace(self.settings, mode="lax")
        (self.dir / "b.log").chmod(0o600)
        self.refuse_access(self.dir / "b.log")
        events = capture_log_events(self)
        requests = self.trigger()
        self.assertEqual([r["options"]["file.path"] for r in requests], [str(self.dir / n) for n in ("a.log", "c.log")])
        user = pwd.getpwuid(os.geteuid()).pw_name
        owner = pwd.getpwuid((self.dir / "b.log").stat().st_uid).pw_name
        why = f"the gateway's user {user} may not read it (owner {owner}, mode 0600)"
        [line] = [formatEvent(e) for e in events if "leaves out" in e.get("log_format", "")]
        self.assertEqual(line, f"upload t1 leaves out {self.dir}/b.log: {why}")
        status, error = self.handle("trigger", {"correlationId": "t2", "options": {"upload.files": str(self.dir / "b.log")}})
        self.assertEqual((status, error["message"]), (500, f"no file matches {shown(str(self.dir / 'b.log'))} ({self.dir}/b.log: {why})"))
        self.refuse_access(self.dir / "a.log", self.dir / "b.log", self.dir / "c.log")
        status, error = self.handle("trigger", {"correlationId": "t3"})
        self.assertEqual((status, error["message"]), (500, f"no file matches {self.dir}/*.log (3 left out: the gateway's"
                                                           " user may not read them (the log names each))"))

    def test_a_directory_the_gateways_user_may_not_look_into_is_named(self) -> None:
        """A glob into a directory the gateway's user may not list (root's, mode 0700) matched
        nothing, and the trigger was refused with "no file matches", as if the files were not
        there. The refusal now names the directory, its owner and mode; so does a warning."""
        self.service.settings = replace(self.settings, mode="lax")
        self.dir.chmod(0o700)
        self.addCleanup(self.dir.chmod, 0o755)
        self.refuse_access(self.dir)
        self.patch(glob, "glob", lambda pattern, recursive=False: [])  # (what glob sees there)
        events = capture_log_events(self)
        user = pwd.getpwuid(os.geteuid()).pw_name
        owner = pwd.getpwuid(self.dir.stat().st_uid).pw_name
        why = f"the gateway's user {user} may not look into {self.dir} (owner {owner}, mode 0700)"
        for cid, asked in (("t1", f"{self.dir}/*.log"), ("t2", f"{self.dir}/a.log")):
            status, error = self.handle("trigger", {"correlationId": cid, "options": {"upload.files": asked}})
            self.assertEqual((status, error["message"]), (500, f"no file matches {shown(asked)} ({why})"))
            [line] = [formatEvent(e) for e in events if f"upload {cid} cannot look" in formatEvent(e)]
            self.assertEqual(line, f"upload {cid} cannot look for {asked}: {why}")

    def test_a_utf8_name_the_locale_cannot_decode_is_not_called_not_utf8(self) -> None:
        """Under a locale that is not UTF-8 (``LC_ALL=C`` with ``PYTHONUTF8=0``) a file named in
        UTF-8 (``donn\xc3\xa9es.log``) reaches Python as ``donn\udcc3\udca9es.log`` and is
        left out; the warning said "its name is not UTF-8", which is false: it says the locale
        cannot decode it and what to do; a Latin-1 name is still "not UTF-8 (rename it)"."""
        import glob

        real_glob = glob.glob
        # What os gives under an ascii file system encoding: each byte past ASCII escaped.
        self.patch(glob, "glob", lambda pattern, recursive=False: [
            os.fsencode(p).decode("ascii", "surrogateescape") for p in real_glob(pattern, recursive=recursive)])
        self.patch(sys, "getfilesystemencoding", lambda: "ascii")
        for name in ("a.log", "b.log", "c.log"):
            (self.dir / name).unlink()
        with open(os.fsencode(self.dir) + b"/donn\xc3\xa9es.log", "wb") as utf8:
            utf8.write(b"utf-8")
        events = capture_log_events(self)
        status, error = self.handle("trigger", {"correlationId": "t1"})
        [line] = [formatEvent(e) for e in events if "leaves out" in e.get("log_format", "")]
        self.assertEqual(line, (
            f"upload t1 leaves out {self.dir}/donn\\udcc3\\udca9es.log: its name is UTF-8 that Python's file "
            "system encoding (ascii) cannot decode (the locale is not UTF-8, or PYTHONUTF8=0): run the gateway "
            "with PYTHONUTF8=1 or under a UTF-8 locale (LANG=C.UTF-8)"))
        self.assertEqual((status, error["message"]), (500, (
            f"no file matches {self.dir}/*.log (1 left out: their names are UTF-8 that Python's file system "
            "encoding (ascii) cannot decode)")))
        with open(os.fsencode(self.dir) + b"/caf\xe9.log", "wb") as latin1:
            latin1.write(b"latin-1")
        status, error = self.handle("trigger", {"correlationId": "t2"})
        self.assertEqual((status, error["message"]), (500, (
            f"no file matches {self.dir}/*.log (2 left out: their names are not UTF-8 or UTF-8 that Python's file "
            "system encoding (ascii) cannot decode)")))

    def test_a_glob_the_locale_cannot_encode_is_a_clear_500(self) -> None:
        """Under a locale that is not UTF-8 (``LC_ALL=C`` with ``PYTHONUTF8=0``) a trigger's
        ``upload.files`` holding text its encoding cannot hold crashed the trigger in the glob
        (``'ascii' codec can't encode character``, logged with a traceback, and that as the
        500's message). It is refused as the configuration refuses such text, saying what to do."""
        self.successResultOf(self.service.stopService())
        self.service, self.watcher, _, _ = fake_service(Path(self.mktemp()), UploadsSettings(mode="lax"))
        self.successResultOf(self.service.startService())
        self.addCleanup(self.service.stopService)
        self.patch(sys, "getfilesystemencoding", lambda: "ascii")
        events = capture_log_events(self)
        status, error = self.handle("trigger", {"options": {"upload.files": f"{self.dir}/donn\u00e9es/*.log"}})
        self.assertEqual((status, error["message"]), (500, (
            "upload.files holds '\u00e9': this system cannot pass it on: Python's file system encoding is ascii (the "
            "locale is not UTF-8, or PYTHONUTF8=0): run the gateway with PYTHONUTF8=1 or under a UTF-8 locale "
            "(LANG=C.UTF-8)")))
        self.assertEqual([e for e in events if e.get("log_level") == LogLevel.critical], [])

    def test_a_file_name_with_a_newline_is_logged_on_one_line(self) -> None:
        """A file name may hold a newline: it is uploaded, and the log lines naming it show it
        escaped, so that it cannot end a line and forge the next."""
        (self.dir / "new\n2026-12-06T19:00:00+0000 [gateway] forged.log").write_bytes(b"x")
        events = capture_log_events(self)
        requests = self.trigger()
        self.assertEqual(len(requests), 4)
        for request in requests:
            self.handle("start", {"correlationId": request["correlationId"], "options": {}})
        for _ in range(4):
            self.sends[-1][2].callback(None)
        lines = [formatEvent(e) for e in events if "uploaded" in e.get("log_format", "")]
        self.assertEqual(len(lines), 4)
        self.assertTrue(all("\n" not in line for line in lines), lines)
        self.assertIn(f"uploaded {self.dir}/new\\n2026-12-06T19:00:00+0000 [gateway] forged.log (1 bytes", lines[-1])

    def test_many_finished_uploads_leave_nothing_behind_beyond_those_kept(self) -> None:
        """A gateway triggers uploads for months (periodic triggers, one id each): the finished
        ones beyond the last 20 are forgotten (docs/uploads.md), in memory too. Each upload that
        sent a byte left its progress throttle's entry in memory for good, one per upload."""
        for n in range(KEEP_FINISHED + 10):
            for request in self.trigger(f"u{n}"):
                self.handle("start", {"correlationId": request["correlationId"], "options": {}})
            for _ in range(3):
                self.sends[-1][1].on_bytes(10)
                self.sends[-1][2].callback(None)
            self.clock.advance(1)
        self.assertEqual(len(self.service.uploads), KEEP_FINISHED)
        self.assertLessEqual(set(self.service._last_progress), set(self.service.uploads))

    def test_the_last_to_end_are_kept_whatever_the_clock_said(self) -> None:
        """A gateway without a real-time clock restarts at 1970 after 20 uploads ended at the
        right time: the uploads it ends then are the newest, kept; the oldest go (they were
        sorted by end time, so each new one was forgotten as it ended)."""
        def run(cid: str) -> None:
            for request in self.trigger(cid):
                self.handle("start", {"correlationId": request["correlationId"], "options": {}})
            for _ in range(3):
                self.sends[-1][2].callback(None)

        self.clock.advance(1_700_000_000)
        for n in range(KEEP_FINISHED):
            run(f"old{n}")
            self.clock.advance(1)
        self.successResultOf(self.service.stopService())
        self.service, self.watcher, self.clock, self.sends = fake_service(self.state, self.settings)
        self.successResultOf(self.service.startService())
        self.clock.advance(100)
        for n in range(5):
            run(f"new{n}")
            self.clock.advance(1)
        self.assertEqual(sorted(self.service.uploads),
                         sorted([f"old{n}" for n in range(5, KEEP_FINISHED)] + [f"new{n}" for n in range(5)]))

    def test_persisted_credentials_are_not_world_readable(self) -> None:
        """The start options are persisted to resume after a restart, credentials and SAS with
        them (docs/uploads.md); install.md: files that hold secrets should not be world-readable.
        Each upload's file is 0600, as a link's CIK file is; it was 0644."""
        requests = self.trigger()
        self.handle("start", {"correlationId": requests[0]["correlationId"], "options": {
            "storage.provider": "azure", "azure.storage.endpoint": "https://acct.blob.core.windows.net/",
            "azure.blob.container": "c", "azure.shared.access.signature": "sv=1&sig=SECRET"}})
        [path] = (self.state / "uploads" / "operations").glob("*.json")
        self.assertIn("sig=SECRET", path.read_text())
        self.assertEqual(path.stat().st_mode & 0o777, 0o600)

    def test_concurrency_limit(self) -> None:
        """With concurrency 1, the second file is sent only once the first is done."""
        for request in self.trigger():
            self.handle("start", {"correlationId": request["correlationId"], "options": {}})
        self.assertEqual(len(self.sends), 1)
        self.sends[0][2].callback(None)
        self.assertEqual(len(self.sends), 2)

    def test_a_burst_of_bad_messages_is_one_line_then_one_summary(self) -> None:
        """docs/uploads.md: a local client sending bad inbox messages in a loop wrote a warning
        for each. The first is logged at once, then at most one line per 10 s saying how many
        were refused since; each is still answered as before."""
        events = capture_log_events(self)

        def burst(messages: int) -> list[str]:
            del events[:]
            for _ in range(messages):
                status, error = self.handle("cancel", {"correlationId": "nope"})
                self.assertEqual(status, 404)
            return [formatEvent(e) for e in events if "refused upload operation" in e.get("log_format", "")]

        line = ("refused upload operation cancel: upload with correlation ID 'nope' not found ({count} refused since"
                " the last such line; logged at most once every 10 s while they go on)")
        assert_one_line_then_summary(self, burst, line, self.clock)

    def test_answers_follow_kanto(self) -> None:
        """400 for a malformed message, 404 for an unknown id, 500 for a second start or a bad provider."""
        status, error = self.successResultOf(self.service.handle("start", b"{nope"))
        self.assertEqual((status, error["error"]), (400, "messages:parameter.invalid"))
        status, error = self.handle("start", {"correlationId": "nope#1", "options": {}})
        self.assertEqual((status, error["status"]), (404, 404))
        self.trigger()
        status, error = self.handle("start", {"correlationId": "t1#1", "options": {"storage.provider": "bad"}})
        self.assertEqual((status, error["error"]), (500, "messages:execution.failed"))
        self.handle("start", {"correlationId": "t1#1", "options": {}})
        status, error = self.handle("start", {"correlationId": "t1#1", "options": {}})
        self.assertEqual((status, error["message"]), (500, "upload 't1#1' already started"))

    def test_a_start_whose_record_cannot_be_written_may_be_sent_again(self) -> None:
        """A start whose UPLOADING record the disk refuses (full) is answered 500 saying why and
        sends nothing; the upload stays PENDING, so the start sent again once the disk has room
        is carried out. It stayed UPLOADING in memory with no transfer: the start sent again
        was refused (500, already started) and the upload never ended until a restart."""
        self.trigger()
        save = self.service.store.save

        def full(upload: Upload) -> None:
            raise OSError(28, "No space left on device")
        self.service.store.save = full  # type: ignore[method-assign]
        status, error = self.handle("start", {"correlationId": "t1#1", "options": {"info.k": "v"}})
        self.assertEqual(status, 500)
        # (it said only "[Errno 28] No space left on device": not what, nor where)
        self.assertEqual(error["message"], f"upload 't1#1' not started: its record {self.service.store.path_for('t1')}"
                                           " cannot be written: No space left on device; it is still PENDING: send"
                                           " the start again once the disk takes it")
        self.assertEqual(self.sends, [])
        self.assertEqual(self.service.uploads["t1"].status_payload()["state"], "PENDING")
        self.service.store.save = save  # type: ignore[method-assign]
        self.assertEqual(self.handle("start", {"correlationId": "t1#1", "options": {}}), (204, {}))
        self.assertEqual(len(self.sends), 1)
        self.assertEqual(self.persisted("t1").state.value, "UPLOADING")

    def refuse_records(self, service: Any) -> None:
        """Every record ``service`` writes from now on meets a full disk."""
        def full(*args: Any) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.patch(service.store, "save", full)

    def test_a_success_whose_record_cannot_be_written_is_published(self) -> None:
        """The transfers succeed but their records meet a full disk: each file's SUCCESS and
        the upload's are published all the same, the message saying the record cannot be
        written, and the upload has ended (a cancel of it is 404, nothing waits); no error is
        left unhandled. It crashed without publishing anything, and stayed UPLOADING until a
        restart. The end that the disk still refuses removes the upload's record, so that a
        restart resumes nothing (it sent the files of an upload reported SUCCESS again)."""
        for request in self.trigger():
            self.handle("start", {"correlationId": request["correlationId"], "options": {}})
        self.refuse_records(self.service)
        self.sends[0][2].callback(None)
        status = self.watcher.statuses()[-1]
        self.assertEqual((status["state"], [f["state"] for f in status["files"]]),
                         ("UPLOADING", ["SUCCESS", "UPLOADING", "UPLOADING"]))
        self.assertEqual(status["message"], "the upload's record cannot be written: No space left on device")
        for _ in range(2):
            self.sends[-1][2].callback(None)
        self.assertEqual(len(self.sends), 3)
        status = self.watcher.statuses()[-1]
        self.assertEqual((status["state"], status["progress"], status["message"]),
                         ("SUCCESS", 100, "the upload's record cannot be written: No space left on device"))
        self.assertEqual(self.handle("cancel", {"correlationId": "t1"})[0], 404)
        self.assert_not_resumed()

    def test_the_listing_shows_what_was_published_while_the_record_is_behind(self) -> None:
        """GET /uploads (the service's snapshot) shows the message the last status carried while
        the upload's record is behind, its note that the record cannot be written included; once
        a later write records the upload, the note goes from the listing too. The listing showed
        ``message: ""`` for an upload published as unrecorded (the note was only in the status)."""
        for request in self.trigger():
            self.handle("start", {"correlationId": request["correlationId"], "options": {}})
        save = self.service.store.save
        self.refuse_records(self.service)
        self.sends[0][2].callback(None)
        published = self.watcher.statuses()[-1]["message"]
        self.assertEqual(published, "the upload's record cannot be written: No space left on device")
        self.assertEqual(self.service.snapshot()["uploads"][0]["message"], published)
        self.sends[1][2].callback(None)
        self.assertEqual(self.service.snapshot()["uploads"][0]["message"], published)
        self.patch(self.service.store, "save", save)  # room again
        self.sends[2][2].callback(None)
        self.assertEqual([self.watcher.statuses()[-1]["message"], self.service.snapshot()["uploads"][0]["message"]],
                         ["", ""])

    def assert_not_resumed(self) -> None:
        """The service is left without a record of its upload: started again on its state, it
        resumes nothing."""
        self.assertEqual(self.service.store.load_all(), [])
        self.successResultOf(self.service.stopService())
        again, watcher, clock, sends = fake_service(self.state, self.settings)
        self.successResultOf(again.startService())
        self.addCleanup(again.stopService)
        self.assertEqual((sends, watcher.statuses(), watcher.requests()), ([], [], []))

    def started_deleting_upload(self) -> tuple[UploadService, StatusWatcher, list[Any]]:
        """A service with ``delete: true`` whose upload ``d`` of ``a.log`` is started, its file
        being sent: the service, its watcher and its sends (fire ``sends[0][2]`` to store it)."""
        service, watcher, clock, sends = fake_service(Path(self.mktemp()), UploadsSettings(
            files=(str(self.dir / "a.log"),), delete=True))
        self.successResultOf(service.startService())
        self.addCleanup(service.stopService)
        self.successResultOf(service.handle("trigger", body({"correlationId": "d"})))
        self.successResultOf(service.handle("start", body({"correlationId": "d#1", "options": {}})))
        return service, watcher, sends

    def test_a_file_to_delete_whose_success_cannot_be_recorded_is_kept(self) -> None:
        """delete: true, and the file's SUCCESS meets a full disk: the upload ends SUCCESS,
        published, but the file is not deleted (a restart sends it again, as its record says),
        its message says why."""
        service, watcher, sends = self.started_deleting_upload()
        self.refuse_records(service)
        sends[0][2].callback(None)
        status = watcher.statuses()[-1]
        self.assertEqual((status["state"], status["files"][0]["state"]), ("SUCCESS", "SUCCESS"))
        self.assertEqual(status["files"][0]["message"],
                         "uploaded, not deleted: the upload's record cannot be written: No space left on device")
        self.assertTrue((self.dir / "a.log").exists())

    def test_a_failure_whose_record_cannot_be_written_is_published(self) -> None:
        """A transfer that fails on a full disk: FAILED is published with the provider's reason
        and the record's; it crashed without a status, and the upload stayed UPLOADING."""
        self.trigger()
        self.handle("start", {"correlationId": "t1#1", "options": {}})
        self.refuse_records(self.service)
        self.sends[0][2].errback(ProviderRefused(403, "AccessDenied"))
        status = self.watcher.statuses()[-1]
        self.assertEqual(status["state"], "FAILED")
        self.assertTrue(status["message"].endswith(
            "HTTP 403: AccessDenied; the upload's record cannot be written: No space left on device"), status)
        self.assert_not_resumed()

    def test_a_cancel_whose_record_cannot_be_written_is_not_resumed(self) -> None:
        """A cancel while the disk is full: CANCELED is published, and the upload's record (still
        UPLOADING) is removed as its end cannot be written. It stayed, so the next start sent
        the canceled upload's files again and reported it UPLOADING anew."""
        for request in self.trigger():
            self.handle("start", {"correlationId": request["correlationId"], "options": {}})
        self.refuse_records(self.service)
        self.assertEqual(self.handle("cancel", {"correlationId": "t1"}), (204, {}))
        self.assertEqual(self.watcher.statuses()[-1]["state"], "CANCELED")
        self.assert_not_resumed()

    def upload_with_a_bundle(self) -> Path:
        """Replace the service by one that adds the diagnostics bundle to ``a.log``; trigger
        ``t1`` and start both its files (a.log's send first); return the bundles' directory."""
        from gateway.uploads.diagnostics import DiagnosticsBundle

        self.settings = UploadsSettings(files=(str(self.dir / "a.log"),), diagnostics=True)
        self.service, self.watcher, self.clock, self.sends = fake_service(self.state, self.settings)
        self.service.diagnostics = DiagnosticsBundle(self.state, {}, {}, (), self.service.run_blocking)
        self.successResultOf(self.service.startService())
        for request in self.trigger():
            self.handle("start", {"correlationId": request["correlationId"], "options": {}})
        return self.service.root / "bundles"

    def test_a_bundle_made_at_the_same_clock_time_after_a_restart_has_its_own_name(self) -> None:
        """A gateway without a real-time clock restarts at 1970 each boot, so its clock reads
        the same times again: a bundle made after a restart at the time an earlier one was made
        (whose upload is still pending) gets a name of its own. It took the earlier one's
        name, diagnostics-<ms>-1.tar.gz, and replaced that bundle under its pending upload."""
        from gateway.uploads.diagnostics import DiagnosticsBundle

        bundles = self.upload_with_a_bundle()
        [first] = list(bundles.iterdir())
        content = first.read_bytes()
        self.successResultOf(self.service.stopService())
        self.service, self.watcher, self.clock, self.sends = fake_service(self.state, self.settings)
        self.service.diagnostics = DiagnosticsBundle(self.state, {"other": "boot"}, {}, (), self.service.run_blocking)
        self.successResultOf(self.service.startService())
        self.trigger("t2")
        self.assertEqual(len(list(bundles.iterdir())), 2)
        self.assertEqual(first.read_bytes(), content)

    def test_an_end_the_disk_takes_once_the_bundle_is_removed_is_recorded(self) -> None:
        """The disk full until the upload's diagnostics bundle is removed: the upload's end is
        written once it is, and the bundle, kept while the file's SUCCESS could not be
        recorded, is removed as the upload ends (nothing resumes it then)."""
        bundles = self.upload_with_a_bundle()
        save = self.service.store.save

        def full_while_a_bundle(upload: Upload) -> None:
            if any(bundles.iterdir()):
                raise OSError(errno.ENOSPC, "No space left on device")
            save(upload)
        self.patch(self.service.store, "save", full_while_a_bundle)
        self.sends[1][2].callback(None)  # the bundle is stored: its SUCCESS is not recorded, it is kept
        self.assertEqual(len(list(bundles.iterdir())), 1)
        self.sends[0][2].errback(ProviderRefused(403, "AccessDenied"))
        self.assertEqual(self.watcher.statuses()[-1]["state"], "FAILED")
        self.assertIn("cannot be written", self.watcher.statuses()[-1]["message"])
        self.assertEqual(list(bundles.iterdir()), [])
        # the end written at last: the listing no longer says it is not
        listed = self.service.snapshot()["uploads"][0]["message"]
        self.assertEqual((listed, "cannot be written" in listed), (self.service.uploads["t1"].message, False))
        upload = self.persisted("t1")
        self.assertEqual((upload.state.value, [f.state.value for f in upload.files], upload.files[1].message),
                         ("FAILED", ["FAILED", "SUCCESS"], ""))

    def test_a_bundle_kept_for_want_of_its_record_goes_when_its_upload_ends(self) -> None:
        """The disk refuses the record of the stored bundle's SUCCESS (so it is kept: a restart
        would send it again), then takes the upload's end: the bundle is removed as the
        upload ends. It stayed under uploads/bundles/ for good (nothing resumes an ended
        upload), one more on a disk that had been full."""
        bundles = self.upload_with_a_bundle()
        save = self.service.store.save
        self.refuse_records(self.service)
        self.sends[1][2].callback(None)
        self.assertEqual(len(list(bundles.iterdir())), 1)
        self.patch(self.service.store, "save", save)  # room again
        self.sends[0][2].callback(None)
        self.assertEqual(self.watcher.statuses()[-1]["state"], "SUCCESS")
        self.assertEqual(self.persisted("t1").state.value, "SUCCESS")
        self.assertEqual(list(bundles.iterdir()), [])

    def test_uploads_the_cloud_never_starts_are_canceled_past_a_bound(self) -> None:
        """docs/uploads.md: at most MAX_UNANSWERED uploads wait for the cloud's start; a trigger
        past it cancels the oldest (its bundle removed, its status published). A cloud that
        never answered kept every periodic trigger's upload for good, each with its bundle."""
        from gateway.uploads.diagnostics import DiagnosticsBundle
        from gateway.uploads.service import MAX_UNANSWERED

        self.settings = UploadsSettings(files=(str(self.dir / "a.log"),), diagnostics=True)
        self.service, self.watcher, self.clock, self.sends = fake_service(self.state, self.settings)
        self.service.diagnostics = DiagnosticsBundle(self.state, {}, {}, (), self.service.run_blocking)
        self.successResultOf(self.service.startService())
        ids = [f"t{n:02}" for n in range(MAX_UNANSWERED + 2)]
        for cid in ids:
            self.clock.advance(1)
            self.trigger(cid)
        states = {cid: upload.state.value for cid, upload in self.service.uploads.items()}
        self.assertEqual(states, {cid: "CANCELED" if cid in ids[:2] else "PENDING" for cid in ids})
        canceled = [s for s in self.watcher.statuses() if s["state"] == "CANCELED"]
        self.assertEqual([(s["correlationId"], s["message"]) for s in canceled],
                         [(cid, f"canceled: more than {MAX_UNANSWERED} uploads waited for the cloud's start")
                          for cid in ids[:2]])
        self.assertEqual(len(list((self.service.root / "bundles").iterdir())), MAX_UNANSWERED)
        self.assertEqual(self.persisted("t00").state.value, "CANCELED")

    def test_bundles_no_upload_names_are_removed_at_start(self) -> None:
        """docs/uploads.md: a bundle a gateway killed before its upload's record named it (or
        while it wrote it: its temporary file) is removed at the next start; the bundle of an
        upload resumed stays. Nothing ever removed them: one more on the disk with each such
        kill, for good."""
        bundles = self.upload_with_a_bundle()
        [named] = [path.name for path in bundles.iterdir()]
        self.successResultOf(self.service.stopService())
        (bundles / "diagnostics-1-1.tar.gz").write_bytes(b"written, not recorded")
        (bundles / ".diagnostics-2-1.tar.gz.tmp").write_bytes(b"half written")
        service, watcher, clock, sends = fake_service(self.state, self.settings)
        events = capture_log_events(self)
        self.successResultOf(service.startService())
        self.addCleanup(service.stopService)
        self.assertEqual([path.name for path in bundles.iterdir()], [named])
        self.assertIn(f"uploads: removed 2 diagnostics bundle file(s) no upload names from {bundles}",
                      [formatEvent(event) for event in events])
        self.assertEqual(len(sends), 2)  # the upload goes on, its bundle with it

    def test_an_old_record_that_cannot_be_removed_is_a_warning_and_tried_again(self) -> None:
        """docs/uploads.md: only the last 20 finished uploads are kept. An older one's record
        that a read-only disk refuses to remove is logged once as a warning naming the file,
        the upload that ended meanwhile is unaffected (SUCCESS, no error), and the removal
        is tried again when the next upload ends. It logged an 'upload crashed' traceback."""
        events: list[dict[str, Any]] = []
        self.patch(self.service, "log", Logger(observer=events.append))
        for n in range(20):
            self.trigger(f"old{n}")
            self.assertEqual(self.handle("cancel", {"correlationId": f"old{n}"}), (204, {}))
        oldest = self.service.store.path_for("old0")
        remove = self.service.store.remove

        def read_only(correlation_id: str) -> None:
            raise OSError(errno.EROFS, "Read-only file system", str(self.service.store.path_for(correlation_id)))

        self.patch(self.service.store, "remove", read_only)
        for request in self.trigger():
            self.handle("start", {"correlationId": request["correlationId"], "options": {}})
        for _ in range(3):
            self.sends[-1][2].callback(None)
        self.assertEqual(self.watcher.statuses()[-1]["state"], "SUCCESS")
        self.assertEqual(self.persisted("t1").state.value, "SUCCESS")
        self.assertNotIn("old0", self.service.uploads)
        warnings = [e for e in events if e["log_level"] >= LogLevel.warn]
        self.assertEqual([formatEvent(e) for e in warnings],
                         [f"cannot remove {oldest}, the record of finished upload old0 (Read-only file system):"
                          " tried again when the next upload ends"])
        self.trigger("t2")
        self.handle("cancel", {"correlationId": "t2"})  # old1 goes too: still refused, logged once
        self.assertEqual(len([e for e in events if e["log_level"] >= LogLevel.warn]), 2)
        self.patch(self.service.store, "remove", remove)
        self.trigger("t3")
        self.handle("cancel", {"correlationId": "t3"})
        self.assertFalse(oldest.exists())
        self.assertEqual(len(self.service.store.load_all()), 20)
        self.assertEqual(len([e for e in events if e["log_level"] >= LogLevel.warn]), 2)

    def test_correlation_id_not_a_string_is_named_as_such(self) -> None:
        """``{"correlationId": 5}`` is a 400 saying the id must be a string (not that it is
        required, which it was given); a missing one is still "required"."""
        for operation in ("trigger", "start", "cancel"):
            status, error = self.handle(operation, {"correlationId": 5, "options": {}})
            self.assertEqual((status, error["error"], error["message"]),
                             (400, "messages:parameter.invalid",
                              f"invalid '{operation}' operation parameters: correlationId must be a string, not 5"))
        status, error = self.handle("cancel", {})
        self.assertEqual((status, error["message"]), (400, "invalid 'cancel' operation parameters: correlationId is required"))

    def test_a_trigger_id_that_cannot_be_shown_whole_is_a_400(self) -> None:
        """A trigger's ``correlationId`` of over 100 characters, or with a character that is
        not printable, is a 400 and nothing is selected, stored or requested: a 70 KB id
        started an upload repeated whole in each status and request, and one with a newline
        forged log lines (docs/uploads.md)."""
        for cid, problem in (("y" * 70_000, "at most 100 characters, not 70000"),
                             ("a\nb", "printable characters only, not 'a\\nb'")):
            status, error = self.handle("trigger", {"correlationId": cid})
            self.assertEqual((status, error["message"]),
                             (400, f"invalid 'trigger' operation parameters: correlationId: {problem}"))
        self.assertEqual((self.service.uploads, self.watcher.requests()), ({}, []))
        self.assertEqual(RecordStore(self.state / "uploads" / "operations", Upload.from_json).load_all(), [])

    def test_a_message_over_the_request_limit_is_a_400_unread(self) -> None:
        """A trigger of REQUEST_BYTES is read (its over-long id refused as such); one byte more
        is a 400 by its size, before it is parsed, and nothing is selected or stored."""
        text = json.dumps({"correlationId": "y" * 70_000}).encode().ljust(REQUEST_BYTES)
        status, error = self.successResultOf(self.service.handle("trigger", text))
        self.assertEqual((status, error["message"]), (400, "invalid 'trigger' operation parameters: correlationId:"
                                                           " at most 100 characters, not 70000"))
        status, error = self.successResultOf(self.service.handle("trigger", text + b" "))
        self.assertEqual((status, error["message"]), (400, f"invalid 'trigger' operation parameters: the message is"
                                                           f" {REQUEST_BYTES + 1} bytes, more than the {REQUEST_BYTES}"
                                                           " bytes a request may have"))
        self.assertEqual((self.service.uploads, self.watcher.requests()), ({}, []))

    @settings(derandomize=True, max_examples=60, deadline=None)
    @given(st.sampled_from(OPERATIONS), st.sampled_from(["correlationId", "from", "path", "https.url",
                                                         "storage.provider", "https.method"]),
           st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=300),
                        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=20), inner,
                                                                                     max_size=4), max_leaves=20))
    def test_no_value_is_repeated_unbounded(self, operation: str, where: str, value: Any) -> None:
        """Whatever value a message holds where a field belongs (padded to 100 KB), the answer
        is a few hundred bytes: a value is quoted by its first 100 characters and its length,
        a list or object by a few of its items (a 70 KB id came back whole in the 404, a 1 MB
        time or URL in the 400 or 500)."""
        padded = [value, "z" * 100_000] if not isinstance(value, str) else value + "z" * 100_000
        message: dict[str, Any] = {"correlationId": "t1#1" if operation == "start" else "t1", "options": {}}
        if where == "path":
            message = {"topic": "a/b/things/live/messages/x", "path": padded, "value": message}
        elif where in ("correlationId", "from"):
            message[where] = padded
        else:
            message["options"] = {where: padded if isinstance(padded, str) else "z" * 100_000}
        self.service.uploads.clear()  # (the upload of the example before, whatever became of it)
        self.trigger("t1")
        status, answer = self.handle(operation, message)
        self.assertLess(len(json.dumps(answer)), 700, (status, answer))

    def test_json_nested_too_deeply_is_a_400_as_other_bad_json(self) -> None:
        """A message nested deeper than the parser goes gets the 400 of any message that is not JSON."""
        status, error = self.successResultOf(self.service.handle("start", b"[" * 100000))
        self.assertEqual((status, error["error"]), (400, "messages:parameter.invalid"))
        self.assertIn("nested too deeply", error["message"])

    def test_a_message_that_is_not_rfc_8259_json_is_a_400(self) -> None:
        """docs/uploads.md: a message holding NaN, Infinity, 1e400, a 5000-digit integer or a
        key given twice gets the 400 of any message that is not JSON, as the admin API refuses
        it (a key given twice was one of two values, taken silently)."""
        for message, why in ((b'{"correlationId": NaN}', "NaN is not JSON"), (b'{"x": Infinity}', "Infinity is not JSON"),
                             (b'{"x": 1e400}', "the number 1e400 is too large"),
                             (b'{"x": %s}' % (b"9" * 5000), "an integer of 5000 digits"),
                             (b'{"correlationId": "a", "correlationId": "b"}', "key 'correlationId' given twice")):
            status, error = self.successResultOf(self.service.handle("cancel", message))
            self.assertEqual((status, error["error"]), (400, "messages:parameter.invalid"))
            self.assertIn(f"invalid 'cancel' operation parameters: {why}", error["message"])

    def test_ditto_envelopes_are_answered_on_the_outbox_path(self) -> None:
        """A message in a Ditto envelope gets a Ditto envelope back, with the status."""
        envelope = {"topic": "ns/gw/things/live/messages/cancel", "headers": {"correlation-id": "c-9"},
                    "path": "/features/AutoUploadable/inbox/messages/cancel", "value": {"correlationId": "zzz"}}
        status, reply = self.successResultOf(self.service.handle("cancel", body(envelope)))
        self.assertEqual(status, 404)
        self.assertEqual(reply["path"], "/features/AutoUploadable/outbox/messages/cancel")
        self.assertEqual((reply["status"], reply["headers"]["correlation-id"]), (404, "c-9"))

    def test_cancel_while_running(self) -> None:
        """cancel aborts the send in flight and the queued files; CANCELED with the code given."""
        for request in self.trigger():
            self.handle("start", {"correlationId": request["correlationId"], "options": {}})
        provider = self.sends[0][0]
        self.assertEqual(self.handle("cancel", {"correlationId": "t1", "statusCode": "499", "message": "stop"}),
                         (204, {}))
        self.assertEqual(provider.canceled, 1)
        status = self.watcher.statuses()[-1]
        self.assertEqual((status["state"], status["statusCode"], status["message"]), ("CANCELED", "499", "stop"))
        self.assertEqual({f["state"] for f in status["files"]}, {"CANCELED"})
        self.assertEqual(len(self.sends), 1)  # the queued ones never started
        self.assertEqual(self.handle("cancel", {"correlationId": "t1"})[0], 404)

    def test_a_cancel_and_the_services_stop_in_one_turn_is_answered_before_it_has_stopped(self) -> None:
        """A cancel being handled when the service stops (a configuration change, SIGTERM) is
        carried out and answered before the stop ends: the stop ended at once, its thread pool
        stopped under the cancel's record write, which never ran, and the cancel was never answered."""
        for request in self.trigger():
            self.handle("start", {"correlationId": request["correlationId"], "options": {}})
        self.service.run_blocking = lambda f, *a, **k: deferLater(self.clock, 0.1, f, *a, **k)  # as a thread
        answer = self.service.handle("cancel", body({"correlationId": "t1", "statusCode": "499"}))
        stopped = self.service.stopService()
        self.assertNoResult(stopped)
        self.clock.advance(1)
        self.assertEqual(self.successResultOf(answer), (204, {}))
        self.successResultOf(stopped)
        self.assertEqual((self.persisted("t1").state.value, self.persisted("t1").status_code), ("CANCELED", "499"))

    def test_a_cancel_of_a_trigger_still_selecting_its_files_cancels_it(self) -> None:
        """A cancel that comes while its trigger still selects (and hashes) its files waits for
        them, then ends the upload CANCELED: it was answered 404 "not found", and the upload went
        on PENDING, its requests sent, as if the cancel had never come (with ``checksum`` a large
        file is hashed for seconds before the trigger is answered)."""
        self.service.run_blocking = lambda f, *a, **k: deferLater(self.clock, 0.1, f, *a, **k)  # as a thread
        triggered = self.service.handle("trigger", body({"correlationId": "t1"}))
        canceled = self.service.handle("cancel", body({"correlationId": "t1", "statusCode": "499"}))
        self.assertNoResult(canceled)
        self.clock.pump([0.1] * 100)
        self.assertEqual(self.successResultOf(triggered), (204, {}))
        self.assertEqual(self.successResultOf(canceled), (204, {}))
        status = self.watcher.statuses()[-1]
        self.assertEqual((status["state"], status["statusCode"]), ("CANCELED", "499"))
        self.assertEqual(self.persisted("t1").state.value, "CANCELED")

    def test_a_cancel_of_a_trigger_that_selects_nothing_is_not_found(self) -> None:
        """A cancel waiting for a trigger that then fails (no file matches) is answered 404, as
        for any upload that does not exist."""
        for name in ("a.log", "b.log", "c.log"):
            (self.dir / name).unlink()
        self.service.run_blocking = lambda f, *a, **k: deferLater(self.clock, 0.1, f, *a, **k)  # as a thread
        triggered = self.service.handle("trigger", body({"correlationId": "t1"}))
        canceled = self.service.handle("cancel", body({"correlationId": "t1"}))
        self.clock.pump([0.1] * 100)
        self.assertEqual(self.successResultOf(triggered)[0], 500)
        self.assertEqual(self.successResultOf(canceled)[0], 404)

    def test_a_message_once_the_service_stops_is_answered_that_it_stops(self) -> None:
        """A cancel that comes once the service's stop has begun is answered 500 saying the service
        is stopping (nothing done: the upload goes on after the restart), not left unanswered."""
        self.trigger()
        self.successResultOf(self.service.stopService())
        status, answer = self.handle("cancel", {"correlationId": "t1"})
        self.assertEqual(status, 500)
        self.assertIn("the uploads service is stopping", answer["message"])
        self.assertEqual(self.persisted("t1").state.value, "PENDING")

    def test_a_trigger_id_with_a_hash_is_found_by_its_own_id(self) -> None:
        """cancel takes the trigger's id, also one holding '#' (its files are '<id>#<n>'); it
        was taken for a file of upload 'a' and answered 404."""
        self.trigger("a#b")
        self.assertEqual(self.handle("start", {"correlationId": "a#b#1", "options": {}}), (204, {}))
        self.assertEqual(self.handle("cancel", {"correlationId": "a#b"}), (204, {}))
        self.assertEqual(self.watcher.statuses()[-1]["state"], "CANCELED")

    def test_retries_with_backoff_then_final_refusal(self) -> None:
        """A cut is retried after the policy's delay; a 403 is final, with the reason."""
        self.handle("start", {"correlationId": self.trigger()[0]["correlationId"], "options": {}})
        self.sends[0][2].errback(TransferFailed("cut"))
        self.assertEqual(len(self.sends), 1)
        self.clock.advance(10)
        self.assertEqual(len(self.sends), 2)
        self.sends[1][2].errback(ProviderRefused(403, "AccessDenied: Request has expired"))
        self.clock.advance(100)
        self.assertEqual(len(self.sends), 2)
        status = self.watcher.statuses()[-1]
        self.assertEqual(status["state"], "FAILED")
        self.assertIn("HTTP 403: AccessDenied: Request has expired", status["message"])

    def test_progress_across_a_step_back_of_the_wall_clock(self) -> None:
        """NTP steps the clock back an hour during a transfer: UPLOADING statuses with the
        progress go on once a second (none came for the hour)."""
        request = self.trigger()[0]
        self.handle("start", {"correlationId": request["correlationId"], "options": {}})
        transfer = self.sends[0][1]
        uploading = lambda: [s for s in self.watcher.statuses() if s["state"] == "UPLOADING"]  # noqa: E731
        transfer.on_bytes(100)
        before = len(uploading())
        self.clock.step(-3600.0)
        self.clock.advance(1)
        transfer.on_bytes(100)
        self.assertEqual(len(uploading()), before + 1)

    def test_a_transfer_with_no_byte_moving_is_aborted_after_the_idle_timeout(self) -> None:
        """A server that accepts and never answers no longer holds the transfer slot until a
        cancel: an attempt with no byte sent and no answer for ``idle_timeout`` seconds is
        aborted and retried like a cut connection; a byte moving restarts the count; once
        attempts run out the upload is FAILED, saying why, and the slot is free again."""
        self.successResultOf(self.service.stopService())
        self.state = Path(self.mktemp())
        self.service, self.watcher, self.clock, self.sends = fake_service(
            self.state, UploadsSettings(files=self.settings.files, concurrency=1, idle_timeout=30,
                                                 max_attempts=2))
        self.successResultOf(self.service.startService())
        for request in self.trigger()[:2]:
            self.handle("start", {"correlationId": request["correlationId"], "options": {}})
        provider, transfer, _ = self.sends[0]
        self.clock.advance(20)
        transfer.on_bytes(100)  # progress: the count starts again
        self.clock.advance(20)
        self.assertEqual((len(self.sends), provider.canceled), (1, 0))
        self.clock.advance(10)
        self.assertEqual(provider.canceled, 1)
        self.clock.advance(10)  # the retry policy's delay
        self.assertEqual(len(self.sends), 2)
        self.clock.advance(30)
        status = self.watcher.statuses()[-1]
        self.assertEqual((status["state"], [f["state"] for f in status["files"]]),
                         ("FAILED", ["FAILED", "CANCELED", "CANCELED"]))
        self.assertIn("a.log: no byte sent and no answer for 30s (idle_timeout)", status["message"])
        self.assertEqual(self.persisted("t1").state.value, "FAILED")
        self.assertEqual(len(self.sends), 2)
        self.trigger("t2")
        self.handle("start", {"correlationId": "t2#1", "options": {}})
        self.assertEqual(len(self.sends), 3)  # the slot was given back

    def test_an_unexpected_error_fails_the_upload(self) -> None:
        """An error that is not the provider's nor the connection's (the HTTP client refusing a
        header name with a space) fails the upload with what it was, persisted; it crashed
        the transfer and left the upload UPLOADING for good."""
        self.handle("start", {"correlationId": self.trigger()[0]["correlationId"], "options": {}})
        self.sends[0][2].errback(ValueError("b'X A' is not a valid header name"))
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        status = self.watcher.statuses()[-1]
        self.assertEqual((status["state"], [f["state"] for f in status["files"]]),
                         ("FAILED", ["FAILED", "CANCELED", "CANCELED"]))
        self.assertIn("ValueError: b'X A' is not a valid header name", status["message"])
        self.assertEqual(self.persisted("t1").state.value, "FAILED")
        self.clock.advance(1000)
        self.assertEqual(len(self.sends), 1)

    def test_a_file_changed_while_uploading_is_sent_again(self) -> None:
        """size/mtime differ after the send: the attempt does not count as stored; sent again."""
        self.handle("start", {"correlationId": self.trigger()[0]["correlationId"], "options": {}})
        path = self.dir / "a.log"
        with open(path, "ab") as f:
            f.write(b"more")
        os.utime(path, ns=(1, 1))
        self.sends[0][2].callback(None)
        self.clock.advance(10)
        self.assertEqual(len(self.sends), 2)
        self.assertEqual(self.sends[1][1].size, 504)
        self.sends[1][2].callback(None)
        self.assertEqual(self.watcher.statuses()[-1]["files"][0]["state"], "SUCCESS")

    def test_a_file_removed_while_it_was_sent_fails_the_upload_saying_so(self) -> None:
        """A file removed mid-upload (a rotated log deleted) is FAILED, not sent again, with a
        message saying what happened rather than that it could not be read."""
        self.handle("start", {"correlationId": self.trigger()[0]["correlationId"], "options": {}})
        (self.dir / "a.log").unlink()
        self.sends[0][2].callback(None)
        status = self.watcher.statuses()[-1]
        self.assertEqual((status["state"], status["message"]),
                         ("FAILED", f"{self.dir / 'a.log'}: the file was removed while it was sent"))
        self.clock.advance(1000)
        self.assertEqual(len(self.sends), 1)

    def test_a_file_removed_before_its_start_fails_the_upload(self) -> None:
        """A file gone between the trigger and the start: FAILED, the path named once."""
        cid = self.trigger()[0]["correlationId"]
        (self.dir / "a.log").unlink()
        self.handle("start", {"correlationId": cid, "options": {}})
        status = self.watcher.statuses()[-1]
        self.assertEqual((status["state"], status["message"]),
                         ("FAILED", f"{self.dir / 'a.log'}: cannot read the file: No such file or directory"))
        self.assertEqual(self.sends, [])

    def test_unfinished_uploads_resume_after_a_restart(self) -> None:
        """A file UPLOADING when the gateway stopped is sent again; a PENDING one is requested again."""
        requests = self.trigger()
        self.handle("start", {"correlationId": requests[0]["correlationId"], "options": {"https.url": "u"}})
        self.successResultOf(self.service.stopService())
        service, watcher, clock, sends = fake_service(self.state, self.settings)
        self.successResultOf(service.startService())
        self.addCleanup(service.stopService)
        self.assertEqual(len(sends), 1)
        self.assertEqual(sends[0][0].options, {"https.url": "u"})
        self.assertEqual([r["correlationId"] for r in watcher.requests()], ["t1#2", "t1#3"])
        self.assertEqual(watcher.statuses()[0]["message"], "resumed after restart")

    def test_ids_it_makes_are_new_after_a_restart_with_the_clock_behind(self) -> None:
        """docs/uploads.md: without an id the gateway makes one (upload-id-<n>). A gateway
        without a real-time clock starts again at the same time of day (1970 after every boot):
        the ids it makes do not repeat those of the uploads it keeps. They counted from the
        clock's seconds at the start, so the first trigger after the restart got the id of a
        stored upload, refused as already PENDING (or, had that ended, took its place)."""
        self.assertEqual(self.handle("trigger", {}), (204, {}))
        [first] = [u["correlationId"] for u in self.service.snapshot()["uploads"]]
        self.successResultOf(self.service.stopService())
        service, _, clock, _ = fake_service(self.state, self.settings)
        self.assertEqual(clock.seconds(), self.clock.seconds())  # the same time of day again
        self.successResultOf(service.startService())
        self.addCleanup(service.stopService)
        self.assertEqual(self.successResultOf(service.handle("trigger", body({}))), (204, {}))
        ids = {u["correlationId"] for u in service.snapshot()["uploads"]}
        self.assertEqual(len(ids), 2, ids)
        self.assertIn(first, ids)
        self.assertNotEqual(service.new_correlation_id(), first)

    def test_ids_of_other_scripts_digits_do_not_move_the_ids_it_makes(self) -> None:
        """Only an id ``upload-id-<ASCII digits>`` is one the gateway made: a cloud's
        ``upload-id-٩٩٩٩٩٩٩٩٩٩٩٩`` (Arabic-Indic), which ``isdecimal()`` and ``int()`` took for
        999999999999,
        made the next ids count on from it after a restart."""
        eastern = "upload-id-" + "\u0669" * 12
        self.assertEqual(self.handle("trigger", {"correlationId": eastern}), (204, {}))
        self.successResultOf(self.service.stopService())
        service, _, clock, _ = fake_service(self.state, self.settings)
        self.successResultOf(service.startService())
        self.addCleanup(service.stopService)
        self.assertIn(eastern, {u["correlationId"] for u in service.snapshot()["uploads"]})
        self.assertEqual(service.new_correlation_id(), f"upload-id-{int(clock.seconds()) + 1}")

    def test_snapshot_is_newest_first_across_restarts_and_retriggers(self) -> None:
        """GET /uploads' list (docs/admin.md): newest first, also once the service was rebuilt
        from disk (a restart, a configuration change) and for a finished id triggered again."""
        ids = ["t1", "t2", "t3", "t4", "t5"]
        for cid in ids:
            self.trigger(cid)
            self.clock.advance(1)
        self.assertEqual(self.handle("cancel", {"correlationId": "t2"}), (204, {}))

        def order(service: Any) -> list[str]:
            return [u["correlationId"] for u in service.snapshot()["uploads"]]

        self.assertEqual(order(self.service), ids[::-1])
        self.successResultOf(self.service.stopService())
        service, _, clock, _ = fake_service(self.state, self.settings)
        clock.advance(self.clock.seconds() - clock.seconds())
        self.successResultOf(service.startService())
        self.addCleanup(lambda: service.running and service.stopService())
        self.assertEqual(order(service), ids[::-1])
        clock.advance(1)
        self.assertEqual(self.successResultOf(service.handle("trigger", body({"correlationId": "t2"}))), (204, {}))
        self.assertEqual(order(service), ["t2", "t5", "t4", "t3", "t1"])

    def test_a_file_that_cannot_be_deleted_still_ends_the_upload(self) -> None:
        """delete: true on a file the gateway may read but not remove (a directory it cannot
        write): the storage has it, so the upload ends SUCCESS, persisted; the failed delete is
        said in the file's message. The upload stayed UPLOADING for good, sent again after every
        restart."""
        service, watcher, clock, sends = fake_service(Path(self.mktemp()), UploadsSettings(
            files=(str(self.dir / "a.log"),), delete=True))
        self.successResultOf(service.startService())
        self.addCleanup(service.stopService)
        real_unlink = os.unlink

        def unlink(path: Any, *args: Any, **kwargs: Any) -> None:
            if str(path) == str(self.dir / "a.log"):
                raise PermissionError(13, "Permission denied", str(path))
            real_unlink(path, *args, **kwargs)

        self.patch(os, "unlink", unlink)
        self.successResultOf(service.handle("trigger", body({"correlationId": "d"})))
        self.successResultOf(service.handle("start", body({"correlationId": "d#1", "options": {}})))
        sends[0][2].callback(None)
        status = watcher.statuses()[-1]
        self.assertEqual((status["state"], status["files"][0]["state"]), ("SUCCESS", "SUCCESS"))
        self.assertIn("not deleted", status["files"][0]["message"])
        [upload] = RecordStore(service.store.directory, Upload.from_json).load_all()
        self.assertEqual(upload.state.value, "SUCCESS")
        self.assertTrue((self.dir / "a.log").exists())

    def test_a_deleted_file_stays_deleted_after_a_power_cut(self) -> None:
        """delete: true removes the stored file durably: its directory is fsynced after the
        removal. It was not, and a power cut brought the file back, for the next trigger (a
        periodic one) to send it again."""
        service, watcher, sends = self.started_deleting_upload()
        events = record_fsyncs(self)
        record_calls(self, events, os, "unlink")
        sends[0][2].callback(None)
        self.assertEqual(watcher.statuses()[-1]["state"], "SUCCESS")
        self.assertFalse((self.dir / "a.log").exists())
        removed = events.index(f"unlink {self.dir / 'a.log'}")
        self.assertIn(str(self.dir), events[removed + 1:])

    def test_a_deleted_file_whose_directory_cannot_be_fsynced_is_a_warning(self) -> None:
        """delete: true in a directory the gateway may write but not read: the file is gone, so
        the upload ends SUCCESS with no "not deleted" message; that a power cut may bring it
        back is a warning."""
        from gateway.uploads import service as service_module

        service, watcher, sends = self.started_deleting_upload()

        def refused(directory: Path) -> None:
            raise PermissionError(13, "Permission denied", str(directory))

        self.patch(service_module, "fsync_directory", refused)
        events = capture_log_events(self)
        sends[0][2].callback(None)
        status = watcher.statuses()[-1]
        self.assertEqual((status["state"], status["files"][0].get("message", "")), ("SUCCESS", ""))
        self.assertFalse((self.dir / "a.log").exists())
        self.assertIn(f"deleted {self.dir / 'a.log'}, but cannot fsync its directory {self.dir} (Permission denied):"
                      " a power cut may bring it back",
                      [formatEvent(e) for e in events if e["log_level"] == LogLevel.warn])

    def test_a_crash_after_a_file_was_deleted_does_not_fail_its_upload(self) -> None:
        """delete: true (docs/uploads.md: each file is removed once the storage has it): the file's
        SUCCESS is on disk before the file goes, so a gateway that died right after removing it
        ends the upload SUCCESS at the next start. The file was still UPLOADING on disk: the
        restart sent it again, and the upload FAILED as it could not be read."""
        self.crash_at_the_removal(removed=True)

    def test_a_crash_before_a_stored_file_was_deleted_deletes_it_at_the_next_start(self) -> None:
        """delete: true, the gateway dying once the file's SUCCESS is on disk and before it is
        removed: the next start removes it and ends the upload SUCCESS."""
        self.crash_at_the_removal(removed=False)

    def crash_at_the_removal(self, removed: bool) -> None:
        """Upload ``a.log`` with delete: true, the process dying at its removal (after it when
        ``removed``), then start again on the same state: SUCCESS, the file gone, nothing sent."""
        from gateway.uploads.service import _remove

        state = Path(self.mktemp())
        settings = UploadsSettings(files=(str(self.dir / "a.log"),), delete=True)
        service, watcher, clock, sends = fake_service(state, settings)
        self.successResultOf(service.startService())
        inline = service.run_blocking

        def dies_at_the_removal(f: Any, *args: Any) -> Any:
            if f is _remove:
                if removed:
                    f(*args)
                return Deferred()  # the process is gone: nothing after it happens
            return inline(f, *args)

        service.run_blocking = dies_at_the_removal
        self.successResultOf(service.handle("trigger", body({"correlationId": "d"})))
        self.successResultOf(service.handle("start", body({"correlationId": "d#1", "options": {}})))
        sends[0][2].callback(None)
        self.assertEqual((self.dir / "a.log").exists(), not removed)
        again, watcher, clock, sends = fake_service(state, settings)
        self.successResultOf(again.startService())
        self.addCleanup(again.stopService)
        self.assertEqual(sends, [])
        [upload] = RecordStore(again.store.directory, Upload.from_json).load_all()
        self.assertEqual((upload.state.value, upload.files[0].state.value), ("SUCCESS", "SUCCESS"))
        self.assertEqual(watcher.statuses()[-1]["state"], "SUCCESS")
        self.assertFalse((self.dir / "a.log").exists())

    def test_diagnostics_setting_adds_the_bundle_only_to_triggers_without_upload_files(self) -> None:
        """``diagnostics: true`` adds the bundle to every trigger that names no ``upload.files``
        (uploads.md, its configuration table); a trigger naming files gets the bundle only with
        ``upload.diagnostics: "true"``."""
        from gateway.uploads.diagnostics import DiagnosticsBundle

        service, watcher, _, _ = fake_service(Path(self.mktemp()), UploadsSettings(
            files=self.settings.files, diagnostics=True, mode="lax"))
        service.diagnostics = DiagnosticsBundle(service.root.parent, {}, {}, (), service.run_blocking)
        self.successResultOf(service.startService())
        self.addCleanup(service.stopService)
        named = {"upload.files": str(self.dir / "a.log")}
        for cid, options, bundled in (("all", {}, True), ("named", named, False),
                                      ("asked", {**named, "upload.diagnostics": "true"}, True)):
            self.assertEqual(self.successResultOf(service.handle("trigger", body(
                {"correlationId": cid, "options": options}))), (204, {}))
            paths = [r["options"]["file.path"] for r in watcher.requests() if r["correlationId"].startswith(cid + "#")]
            self.assertEqual(any("/bundles/diagnostics-" in path for path in paths), bundled, (cid, paths))

    def test_a_refused_trigger_leaves_no_bundle_behind(self) -> None:
        """A trigger refused once its bundle was written (a file rotated away between the glob
        and its stat) removes the bundle: it was left under uploads/bundles/ for good, one
        more with every such trigger."""
        from gateway.uploads.diagnostics import DiagnosticsBundle
        from gateway.uploads.service import select_files

        service, watcher, clock, sends = fake_service(Path(self.mktemp()), UploadsSettings(
            files=self.settings.files, diagnostics=True))
        service.diagnostics = DiagnosticsBundle(service.root.parent, {}, {}, (), service.run_blocking)
        inline = service.run_blocking

        def rotating(f: Any, *args: Any) -> Any:
            result = inline(f, *args)
            if f is select_files:
                (self.dir / "b.log").unlink()  # rotated away
            return result

        service.run_blocking = rotating
        self.successResultOf(service.startService())
        self.addCleanup(service.stopService)
        status, error = self.successResultOf(service.handle("trigger", body({"correlationId": "r"})))
        self.assertEqual(status, 500)
        self.assertIn("cannot read", error["message"])
        self.assertEqual(list((service.root / "bundles").iterdir()), [])

    def test_a_trigger_whose_record_cannot_be_written_is_500_and_leaves_nothing(self) -> None:
        """A trigger whose upload record the disk refuses (full) is answered 500 saying why and
        sends no request (uploads.md: every change is persisted first, then published); its
        bundle is removed and the same trigger sent again once the disk has room is carried
        out. The upload stayed PENDING in memory: every retry of the trigger was refused (400,
        already PENDING) until a restart, and its bundle stayed on the full disk."""
        from gateway.uploads.diagnostics import DiagnosticsBundle

        service, watcher, clock, sends = fake_service(Path(self.mktemp()), UploadsSettings(
            files=self.settings.files, diagnostics=True))
        service.diagnostics = DiagnosticsBundle(service.root.parent, {}, {}, (), service.run_blocking)
        self.successResultOf(service.startService())
        self.addCleanup(service.stopService)
        save = service.store.save

        def full(upload: Upload) -> None:
            raise OSError(28, "No space left on device")
        service.store.save = full  # type: ignore[method-assign]
        status, error = self.successResultOf(service.handle("trigger", body({"correlationId": "r"})))
        self.assertEqual(status, 500)
        self.assertEqual(error["message"], f"upload 'r' not made: its record {service.store.path_for('r')} cannot be"
                                           " written: No space left on device; nothing was kept: send the trigger"
                                           " again once the disk takes it")
        self.assertEqual(watcher.requests(), [])
        self.assertEqual(list((service.root / "bundles").iterdir()), [])
        service.store.save = save  # type: ignore[method-assign]
        self.assertEqual(self.successResultOf(service.handle("trigger", body({"correlationId": "r"}))), (204, {}))
        self.assertEqual(len(watcher.requests()), 4)

    def test_two_triggers_in_the_same_millisecond_get_a_bundle_each(self) -> None:
        """Each trigger with the bundle writes its own file: two in the same millisecond (a
        periodic one and the cloud's) shared one name, the second overwriting the first's bundle
        and the first's end removing the second's."""
        from gateway.uploads.diagnostics import DiagnosticsBundle

        service, watcher, clock, sends = fake_service(Path(self.mktemp()), UploadsSettings(
            files=self.settings.files, diagnostics=True))
        service.diagnostics = DiagnosticsBundle(service.root.parent, {}, {}, (), service.run_blocking)
        self.successResultOf(service.startService())
        self.addCleanup(service.stopService)
        for cid in ("p", "q"):
            self.assertEqual(self.successResultOf(service.handle("trigger", body({"correlationId": cid}))), (204, {}))
        bundles = {r["correlationId"]: r["options"]["file.path"] for r in watcher.requests()
                   if r["correlationId"].endswith("#4")}
        self.assertEqual(len(set(bundles.values())), 2)
        self.assertEqual(self.successResultOf(service.handle("cancel", body({"correlationId": "p"}))), (204, {}))
        self.assertEqual((os.path.exists(bundles["p#4"]), os.path.exists(bundles["q#4"])), (False, True))

    def hold_blocking(self) -> Callable[[], None]:
        """Hold the service's blocking calls (file selection, bundles, records) until the
        returned function runs them, in order, and puts the service back to running them at once."""
        held: list[tuple[Deferred[Any], Any, tuple[Any, ...]]] = []
        inline = self.service.run_blocking

        def later(f: Any, *args: Any) -> Deferred[Any]:
            d: Deferred[Any] = Deferred()
            held.append((d, f, args))
            return d

        def release() -> None:
            self.service.run_blocking = inline
            while held:
                d, f, args = held.pop(0)
                d.callback(f(*args))

        self.service.run_blocking = later
        return release

    def test_two_triggers_with_one_id_at_once_make_one_upload(self) -> None:
        """A second trigger with the id of one still selecting its files (a QoS 1 command
        delivered again, a retry while the bundle is built) is refused as that upload's
        (docs/uploads.md: 204 for one, the other refused) and sends no request: both passed
        the check before either was recorded, so each sent a request per file and the second
        replaced the first's upload, whose files' starts then went to the second's."""
        release = self.hold_blocking()
        first = self.service.handle("trigger", body({"correlationId": "t1"}))
        second = self.service.handle("trigger", body({"correlationId": "t1"}))
        release()
        self.assertEqual(self.successResultOf(first), (204, {}))
        status, error = self.successResultOf(second)
        self.assertEqual(status, 400, error)
        self.assertIn("upload 't1' is already", error["message"])
        self.assertEqual([r["correlationId"] for r in self.watcher.requests()], ["t1#1", "t1#2", "t1#3"])

    def test_a_trigger_selecting_its_files_when_the_service_stops_is_answered_and_kept(self) -> None:
        """The service stopping (a configuration change, SIGTERM) while a trigger selects its
        files (the glob, the stats, the digests, the bundle run off the reactor) waits for it:
        it is answered 204 and its upload is recorded PENDING, so the next start sends its
        requests again (docs/uploads.md: after a restart a file still PENDING gets its request
        again). The stop did not wait: the service's threads stopped under the trigger, which was
        never answered nor recorded."""
        release = self.hold_blocking()
        answer = self.service.handle("trigger", body({"correlationId": "t1"}))
        stopped = self.service.stopService()
        self.assertNoResult(stopped)
        release()
        self.successResultOf(stopped)
        self.assertEqual(self.successResultOf(answer), (204, {}))
        self.assertEqual(self.persisted("t1").state.value, "PENDING")

    def test_single_upload_refuses_a_second_trigger_unless_forced(self) -> None:
        """single_upload: 500 while one runs; force=true goes through."""
        service, watcher, clock, sends = fake_service(Path(self.mktemp()), UploadsSettings(
            files=self.settings.files, single_upload=True))
        self.successResultOf(service.startService())
        self.addCleanup(service.stopService)
        self.successResultOf(service.handle("trigger", body({"correlationId": "a"})))
        self.successResultOf(service.handle("start", body({"correlationId": "a#1", "options": {}})))
        status, _ = self.successResultOf(service.handle("trigger", body({"correlationId": "b"})))
        self.assertEqual(status, 500)
        status, _ = self.successResultOf(service.handle("trigger", body({"correlationId": "b", "options": {
            "force": "true"}})))
        self.assertEqual(status, 204)

    def test_single_upload_counts_only_an_upload_that_is_uploading(self) -> None:
        """single_upload refuses a trigger while an upload is UPLOADING, as Kanto's singleUpload
        does: an upload whose requests wait for the cloud's start (PENDING) does not hold back
        the next trigger (the cloud may never answer it)."""
        service, watcher, clock, sends = fake_service(Path(self.mktemp()), UploadsSettings(
            files=self.settings.files, single_upload=True))
        self.successResultOf(service.startService())
        self.addCleanup(service.stopService)
        self.successResultOf(service.handle("trigger", body({"correlationId": "a"})))
        status, _ = self.successResultOf(service.handle("trigger", body({"correlationId": "p"})))
        self.assertEqual(status, 204)

    def test_upload_files_is_limited_by_the_mode(self) -> None:
        """strict: only the configured globs may be asked for."""
        status, error = self.handle("trigger", {"options": {"upload.files": "/etc/*"}})
        self.assertEqual(status, 500)
        self.assertIn("with mode 'strict' is not permitted", error["message"])

    def test_a_long_upload_files_is_repeated_cut(self) -> None:
        """docs/topics.md: an error repeats a path whole up to 100 characters, else its first
        100 and its length (a glob of 150 characters came back whole, refused or matching
        nothing)."""
        asked = "/" + "x" * 149
        status, error = self.handle("trigger", {"options": {"upload.files": asked}})
        self.assertEqual((status, error["message"]),
                         (500, f"uploading '{asked[:100]}... (150 characters)' with mode 'strict' is not permitted"))
        service, watcher, clock, sends = fake_service(Path(self.mktemp()), UploadsSettings(mode="lax"))
        self.successResultOf(service.startService())
        self.addCleanup(service.stopService)
        status, error = self.successResultOf(service.handle("trigger", body({"options": {"upload.files": asked}})))
        self.assertEqual((status, error["message"]), (500, f"no file matches {asked[:100]}... (150 characters)"))

    def test_scoped_mode_keeps_upload_files_within_the_globs(self) -> None:
        """scoped: upload.files must be a glob one of ``files`` matches as a path: its ``*``
        stays in one directory, and a ``..`` cannot climb out (fnmatch's ``*`` matched both)."""
        outside = self.dir.parent / "secret.log"
        outside.write_bytes(b"secret")
        (self.dir / "sub").mkdir()
        (self.dir / "sub" / "d.log").write_bytes(b"d")
        service, watcher, clock, sends = fake_service(Path(self.mktemp()), UploadsSettings(
            files=self.settings.files, mode="scoped"))
        self.successResultOf(service.startService())
        self.addCleanup(service.stopService)
        for asked in (f"{self.dir}/../secret.log", f"{self.dir}/sub/d.log", f"{self.dir}/*/*.log"):
            value = body({"options": {"upload.files": asked}})
            status, error = self.successResultOf(service.handle("trigger", value))
            self.assertEqual(status, 500, asked)
            self.assertIn("with mode 'scoped' is not permitted", error["message"])
        self.assertEqual(watcher.requests(), [])
        for asked in (f"{self.dir}/b.log", f"{self.dir}/[ab].log", f"{self.dir}/./*.log"):
            value = body({"options": {"upload.files": asked}})
            status, _ = self.successResultOf(service.handle("trigger", value))
            self.assertEqual(status, 204, asked)
        self.assertEqual([os.path.basename(r["options"]["file.path"]) for r in watcher.requests()],
                         ["b.log", "a.log", "b.log", "a.log", "b.log", "c.log"])

    def test_a_symlink_a_glob_matches_is_followed(self) -> None:
        """docs/uploads.md: a glob matches names; a symlink it matches is followed, in every
        mode, and the request names the link (the file it names is what is sent); a ``..``
        through a linked directory is resolved as written, so it selects nothing outside."""
        outside = self.dir.parent / "elsewhere"
        outside.mkdir()
        (outside / "target.log").write_bytes(b"linked")
        (self.dir / "linked.log").symlink_to(outside / "target.log")
        (self.dir / "linkdir").symlink_to(outside)
        (self.dir.parent / "x.log").write_bytes(b"above")
        service, watcher, clock, sends = fake_service(Path(self.mktemp()), UploadsSettings(
            files=(str(self.dir / "**" / "*.log"),), mode="scoped"))
        self.successResultOf(service.startService())
        self.addCleanup(service.stopService)
        status, _ = self.successResultOf(service.handle("trigger", body({"options": {
            "upload.files": str(self.dir / "linked.log")}})))
        self.assertEqual(status, 204)
        [request] = watcher.requests()
        self.assertEqual((request["options"]["file.path"], request["options"]["file.size"]),
                         (str(self.dir / "linked.log"), "6"))
        # linkdir/.. is the link's parent as written (self.dir), not elsewhere's parent
        status, error = self.successResultOf(service.handle("trigger", body({"options": {
            "upload.files": f"{self.dir}/linkdir/../x.log"}})))
        self.assertEqual((status, error["message"]), (500, f"no file matches {shown(f'{self.dir}/linkdir/../x.log')}"))

    def test_activate_triggers_periodically_until_deactivated(self) -> None:
        """activate: a trigger every period (from/to honoured); deactivate stops them; persisted."""
        self.assertEqual(self.handle("activate", {"from": "2000-01-01T00:00:00Z", "to": "2100-01-01T00:00:00Z"}),
                         (204, {}))
        self.clock.advance(self.settings.periodic.period)
        self.assertEqual(len(self.watcher.requests()), 3)
        self.assertEqual(self.handle("deactivate", {}), (204, {}))
        self.clock.advance(self.settings.periodic.period)
        self.assertEqual(len(self.watcher.requests()), 3)
        status, error = self.handle("activate", {"from": "2001-01-01T00:00:00Z", "to": "2000-01-01T00:00:00Z"})
        self.assertEqual(status, 400)
        auto = [v for t, v, _ in self.watcher.messages if t.endswith("/autoUpload")]
        self.assertEqual([a["active"] for a in auto], [False, True, False])  # the first: at start

    def test_the_activation_is_published_at_start_as_kanto_does_on_connect(self) -> None:
        """Kanto sends its feature, autoUpload included, when it connects: the activation in
        force (the persisted one, else ``periodic.active``) is published retained at every
        start, beside lastUpload. It was published only by activate/deactivate, so periodic
        uploads switched on by the configuration were never reported."""
        self.successResultOf(self.service.stopService())
        settings = UploadsSettings(periodic=PeriodicSettings(active=True))
        service, watcher, _, _ = fake_service(Path(self.mktemp()), settings)
        self.successResultOf(service.startService())
        self.assertEqual(watcher.messages, [("edge/gateway/uploads/autoUpload",
                                             {"active": True, "startTime": None, "endTime": None}, True)])
        self.successResultOf(service.handle("activate", body({"from": "2027-01-01T00:00:00Z"})))
        self.successResultOf(service.stopService())
        service, watcher, _, _ = fake_service(service.root.parent, settings)
        self.successResultOf(service.startService())
        self.assertEqual(watcher.messages, [("edge/gateway/uploads/autoUpload", {
            "active": True, "startTime": "2027-01-01T00:00:00.000Z", "endTime": None}, True)])
        self.successResultOf(service.stopService())

    def test_an_activation_file_it_cannot_use_is_set_aside_and_the_service_starts(self) -> None:
        """activation.json emptied, of random bytes, of the wrong shape (a time that is no
        number, no ``active``), or a directory in its place: it is logged as an error and moved
        aside to ``activation.json.damaged``, and the service starts with ``periodic.active``.
        The start failed with the JSON parser's message alone ('Expecting value...'), which
        stopped the whole gateway; a time that is no number failed it too."""
        self.successResultOf(self.service.stopService())
        settings = UploadsSettings(periodic=PeriodicSettings(active=True))
        for damage in (b"", b"\xf5\x9c\x00garbage", b"[]", b'{"active": true, "start": "x"}',
                       b'{"start": null}', b'{"active": true, "end": 1e999}', None):
            state = Path(self.mktemp())
            saved = state / "uploads" / "activation.json"
            saved.parent.mkdir(parents=True)
            if damage is None:
                saved.mkdir()
            else:
                saved.write_bytes(damage)
            events = capture_log_events(self)
            service, watcher, _, _ = fake_service(state, settings)
            self.successResultOf(service.startService())
            self.assertEqual(watcher.messages, [("edge/gateway/uploads/autoUpload",
                                                 {"active": True, "startTime": None, "endTime": None}, True)])
            [error] = [formatEvent(e) for e in events if e.get("log_level") == LogLevel.error]
            self.assertIn(f"uploads: unusable {saved} (", error)
            self.assertIn(f"; moved to {saved}.damaged); periodic uploads start as periodic.active says", error)
            self.assertFalse(saved.exists(), damage)
            self.assertTrue(saved.with_name("activation.json.damaged").exists(), damage)
            self.successResultOf(service.handle("activate", body({})))  # a fresh file is written
            self.assertEqual(json.loads(saved.read_text())["active"], True)
            self.successResultOf(service.stopService())

    def test_auto_upload_goes_beside_the_status_topic(self) -> None:
        """autoUpload and lastUpload are properties of one feature in Kanto, so the topic of
        the first is a sibling of status_topic's, also for a status topic of one level (it
        went below it, to 'lastUpload/autoUpload')."""
        topics = {"edge/gateway/uploads/lastUpload": "edge/gateway/uploads/autoUpload",
                  "site/uploads/status": "site/uploads/autoUpload", "lastUpload": "autoUpload",
                  "/lastUpload": "/autoUpload"}
        self.assertEqual({t: UploadsSettings(status_topic=t).auto_upload_topic for t in topics}, topics)


class NoFilesTests(SynchronousTestCase):
    """A trigger that finds nothing is answered 500, and nothing is persisted."""

    def test_no_files(self) -> None:
        service, watcher, clock, sends = fake_service(Path(self.mktemp()))
        self.successResultOf(service.startService())
        status, error = self.successResultOf(service.handle("trigger", body({})))
        self.assertEqual(status, 500)
        self.assertIn("no file matches", error["message"])
        self.assertEqual([t for t, _, _ in watcher.messages], ["edge/gateway/uploads/autoUpload"])  # at start
        self.successResultOf(service.stopService())

    def test_a_trigger_with_no_files_configured_says_what_to_do(self) -> None:
        """The default configuration (``uploads.files: []``, mode strict) uploads nothing: a
        trigger without ``upload.files`` (``gatewayctl uploads trigger`` as the README shows
        it) was refused with only ``no file matches the configured files (none)``, leaving a
        newcomer to guess the key; it now says which key to set, and the diagnostics bundle."""
        service, watcher, clock, sends = fake_service(Path(self.mktemp()))
        self.successResultOf(service.startService())
        status, error = self.successResultOf(service.handle("trigger", body({})))
        self.assertEqual((status, error["message"]), (
            500, "no file matches the configured files (none): uploads.files is empty; list the globs of the files"
                 " to upload there, or ask for the diagnostics bundle alone (the trigger's upload.diagnostics:"
                 " gatewayctl uploads trigger --diagnostics)"))
        self.successResultOf(service.stopService())



class ConfigTests(SynchronousTestCase):
    """The uploads: section's topics are checked with the configuration."""

    def test_topics_must_be_topic_names(self) -> None:
        """status_topic and request_topic are published to: a wildcard or an empty level is a
        configuration error at its key (statuses were lost, each publish only logged)."""
        path = Path(self.mktemp())
        path.write_text("uploads:\n  status_topic: 'edge/+/lastUpload'\n  request_topic: '#'\n")
        errors = self.assertRaises(ConfigError, config.load, path).errors
        self.assertEqual([e.split(": ", 2)[1] for e in errors], ["uploads.status_topic", "uploads.request_topic"])
        self.assertIn("not a valid topic name", errors[0])
        path.write_text("uploads:\n  status_topic: 'up/autoUpload'\n  request_topic: 'x/autoUpload'\n")
        errors = self.assertRaises(ConfigError, config.load, path).errors
        self.assertEqual(errors, [f"{path}: uploads.status_topic: 'up/autoUpload' is where the autoUpload "
                                  "property goes (beside status_topic)"])
        path.write_text("uploads:\n  request_topic: 'edge/gateway/uploads/autoUpload'\n")
        errors = self.assertRaises(ConfigError, config.load, path).errors
        self.assertEqual(errors, [f"{path}: uploads.request_topic: 'edge/gateway/uploads/autoUpload' is where "
                                  "the autoUpload property goes (beside status_topic)"])

    def test_ca_file_and_aws_endpoint_are_checked_at_load(self) -> None:
        """The CA file is read and parsed, and aws_endpoint must be https://host[:port] (http
        with allow_http), at load as every section is (docs/configuration.md); both passed
        --check-config, then every upload was tried max_attempts times and failed, or every
        start with AWS credentials was answered 500."""
        directory = Path(self.mktemp())
        directory.mkdir()
        (directory / "empty.pem").write_text("not a certificate\n")
        cases = {f"ca_file: {directory / 'missing.pem'}": "uploads.ca_file: cannot read",
                 f"ca_file: {directory / 'empty.pem'}": "uploads.ca_file: no PEM certificate",
                 "aws_endpoint: 'localhost:4566'": "uploads.aws_endpoint: must be https://host[:port]",
                 "aws_endpoint: 'https://s3.local/bucket'": "uploads.aws_endpoint: must be https://host[:port]",
                 "aws_endpoint: 'https://:4566'": "uploads.aws_endpoint: must be https://host[:port]",
                 "aws_endpoint: 'http://s3.local:4566'":
                     "uploads.aws_endpoint: http:// is refused unless allow_http is set",
                 # (these passed: the bucket and key went into the fragment, or the start was a 500)
                 "aws_endpoint: 'https://s3.local#x'": "uploads.aws_endpoint: must be https://host[:port]",
                 "aws_endpoint: 'https://s3.local?'": "uploads.aws_endpoint: must be https://host[:port]",
                 "aws_endpoint: 'https://me:secret@s3.local'":
                     "uploads.aws_endpoint: must be https://host[:port], without a user name or password"}
        for line, problem in cases.items():
            path = directory / "gateway.yaml"
            path.write_text(f"uploads:\n  {line}\n")
            errors = self.assertRaises(ConfigError, config.load, path).errors
            self.assertEqual(len(errors), 1, errors)
            self.assertIn(problem, errors[0])
            self.assertNotIn("secret", errors[0])
        for good in ("{aws_endpoint: 'https://s3.local:4566/'}",
                     "{aws_endpoint: 'http://127.0.0.1:4566', allow_http: true}"):
            path.write_text(f"uploads: {good}\n")
            config.load(path)

    def test_feature_id_is_one_path_segment(self) -> None:
        """feature_id is a segment of every message's path (``/features/<feature_id>/...``):
        an empty one or one holding ``/`` was taken, and the gateway answered every Ditto
        envelope the backend sent with a path mismatch and sent its requests on a path no
        Kanto backend reads. It is a configuration error at its key."""
        for value in ("''", "'Auto/Uploadable'", "' '"):
            path = Path(self.mktemp())
            path.write_text(f"uploads:\n  feature_id: {value}\n")
            errors = self.assertRaises(ConfigError, config.load, path).errors
            self.assertEqual([e.split(": ", 2)[1] for e in errors], ["uploads.feature_id"], errors)
            self.assertIn("one segment of the messages' path", errors[0])
        path = Path(self.mktemp())
        path.write_text("uploads:\n  feature_id: Diagnostics.Upload-1\n")
        self.assertEqual(config.load(path).uploads.feature_id, "Diagnostics.Upload-1")

    def test_idle_timeout_is_checked_at_load(self) -> None:
        """idle_timeout is a number of seconds, at least 1, named with its key when it is not."""
        path = Path(self.mktemp())
        for value, problem in (("0", "must be at least 1.0, not 0.0"), ("soon", "must be a number, not the text 'soon'")):
            path.write_text(f"uploads:\n  idle_timeout: {value}\n")
            errors = self.assertRaises(ConfigError, config.load, path).errors
            self.assertEqual(errors, [f"{path}: uploads.idle_timeout: {problem}"])
        path.write_text("uploads:\n  idle_timeout: 45\n")
        self.assertEqual(config.load(path).uploads.idle_timeout, 45.0)

    def test_diagnostics_logs_are_globs_under_the_state_dir(self) -> None:
        """An absolute or empty diagnostics_logs glob is refused at load: the bundle is built
        with pathlib's glob under the state dir, which raises on both, so every trigger with
        the bundle was answered 500 (and every periodic one only logged)."""
        path = Path(self.mktemp())
        path.write_text("uploads:\n  diagnostics_logs: ['/var/log/gateway/*.log', '', 'logs/apps/*.log*']\n")
        errors = self.assertRaises(ConfigError, config.load, path).errors
        self.assertEqual(len(errors), 2, errors)
        self.assertIn("uploads.diagnostics_logs: '/var/log/gateway/*.log' is not a glob relative to", errors[0])
        self.assertIn("uploads.diagnostics_logs: '' is not a glob relative to", errors[1])
