"""The HTTP link's uplink and long-poll loops go on after any failure: each is logged and
retried with backoff, none ends a loop for good."""

from __future__ import annotations

import errno
from typing import Any

from twisted.internet.defer import fail
from twisted.logger import capturedLogs, formatEvent

from gateway.links.http_settings import AliasDownlinkSettings
from tests.links.test_httplink import HTTPLinkCase


class LoopFailureTests(HTTPLinkCase):
    """Failures inside the loops' own handling of a failure."""

    def refuse_forget(self) -> None:
        """The link's CIK file cannot be removed (immutable, or in a read-only directory; the
        refusal injected: tests run as root), nor written."""
        def refused(*_: Any, **__: Any) -> Any:
            return fail(PermissionError(errno.EPERM, "Operation not permitted", str(self.cik_path)))

        self.link.cik_file.forget = refused  # type: ignore[method-assign]
        self.link.cik_file.save = refused  # type: ignore[method-assign]

    def stored_cik(self) -> None:
        self.cik_path.parent.mkdir(parents=True)
        self.server.ciks["b" * 40] = "gw1"
        self.cik_path.write_text("b" * 40 + "\n")

    def test_a_refused_cik_whose_file_cannot_be_removed_is_not_used_again(self) -> None:
        """A 401 whose CIK file cannot be removed: one line naming the link and the file says
        so, the refused CIK is not used again (the file's is not taken back as "written
        meanwhile"), the link activates once and the data goes up with the new CIK. The
        removal's error was raised in the loop's own 401 handling: the uplink stopped for good,
        nothing more sent, nothing said but an unhandled error."""
        self.stored_cik()
        self.write("temp", "1")
        link = self.start()
        self.pass_time(2)
        self.refuse_forget()
        self.server.revoke()
        self.write("temp", "2")
        with capturedLogs() as events:
            self.pass_time(10)
        self.assertEqual(self.flushLoggedErrors(), [])
        self.assertEqual(self.server.sequence("temp"), ["1", "2"])
        self.assertEqual(self.server.activations, 1)
        self.assertIn(link.cik, self.server.ciks)
        self.assertEqual(self.statuses[-1], (True, ""))
        lines = [formatEvent(e) for e in events if "cannot be removed" in formatEvent(e)]
        self.assertEqual(lines, [f"link cloud: the CIK the platform refused cannot be removed from {self.cik_path}"
                                 " (Operation not permitted): it is not used again; the link activates"])

    def test_a_long_poll_s_401_whose_cik_file_cannot_be_removed_goes_on(self) -> None:
        """The same on a long-poll's 401, with nothing going up: the poll goes on with a new CIK."""
        self.stored_cik()
        link = self.start(downlink=(AliasDownlinkSettings("reboot"),), poll_timeout_ms=2000)
        self.pass_time(2)
        self.refuse_forget()
        self.server.revoke()
        self.pass_time(10)
        self.assertEqual(self.flushLoggedErrors(), [])
        self.assertEqual(self.server.activations, 1)
        self.assertIn(link.cik, self.server.ciks)
        self.server.set_value("reboot", "{}")
        self.pass_time(3)
        self.assertEqual(self.published, [("command//gw1/req//reboot", b"{}")])

    def test_a_status_listener_that_fails_does_not_stop_the_uplink(self) -> None:
        """A status listener that raises (a bug in it) is logged with its traceback; the
        uplink backs off and sends as if it had not. Its error, raised while the loop
        handled a failed request (the link going down), ended the loop for good: nothing more
        was sent, nothing logged but an unhandled error at garbage collection."""
        self.stored_cik()
        link = self.make()

        def broken(name: str, up: bool, cause: str) -> None:
            self.statuses.append((up, cause))
            raise RuntimeError("a bug in the status listener")

        link.on_status = broken  # type: ignore[method-assign]
        self.link = link
        with capturedLogs() as events:  # (from the start: a callback's first failure has the traceback)
            self.successResultOf(link.start())
            self.addCleanup(link.stop)
            self.server.fail("500")
            self.write("temp", "1")
            self.pass_time(10)
        self.assertEqual(self.server.sequence("temp"), ["1"])
        self.assertEqual(self.statuses[-1], (True, ""))
        self.assertTrue(self.flushLoggedErrors(RuntimeError))
        self.assertIn("link cloud: telling its status failed", [formatEvent(e) for e in events])

    def test_a_long_poll_goes_on_after_its_status_listener_failed(self) -> None:
        """The same for a long-poll that fails: the poll goes on."""
        self.stored_cik()
        link = self.make(downlink=(AliasDownlinkSettings("reboot"),), poll_timeout_ms=2000)

        def broken(name: str, up: bool, cause: str) -> None:
            raise RuntimeError("a bug in the status listener")

        link.on_status = broken  # type: ignore[method-assign]
        self.link = link
        self.successResultOf(link.start())
        self.addCleanup(link.stop)
        self.pass_time(1)
        self.server.enabled = False
        self.server.revoke()  # the poll's 401, then activations refused: the link goes down
        self.pass_time(10)
        self.server.enabled = True
        self.pass_time(10)
        self.server.set_value("reboot", "{}")
        self.pass_time(3)
        self.assertTrue(self.flushLoggedErrors(RuntimeError))
        self.assertEqual(self.published, [("command//gw1/req//reboot", b"{}")])

    def test_a_cloud_value_listener_that_fails_does_not_hold_the_downlink(self) -> None:
        """A listener of the cloud's values (the ingest's last values) that raises is logged;
        the value is published locally all the same, and the link stays connected. Its error
        made the long-poll say "internal error" and back off without publishing the value,
        then poll for the same value again, and fail on it again, for ever."""
        self.stored_cik()

        def broken(alias: str, value: str, when: float) -> None:
            raise RuntimeError("a bug in the value listener")

        self.start(downlink=(AliasDownlinkSettings("reboot"),), poll_timeout_ms=2000, on_cloud_value=broken)
        self.pass_time(1)
        self.server.set_value("reboot", "{}")
        with capturedLogs() as events:
            self.pass_time(3)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertIn("link cloud: telling a value from the cloud failed", [formatEvent(e) for e in events])
        self.assertEqual(self.published, [("command//gw1/req//reboot", b"{}")])
        self.assertEqual(self.statuses[-1], (True, ""))

    def test_a_cursor_save_that_fails_is_retried(self) -> None:
        """A cursor save the journal fails (a full disk) is retried every second, without
        sending the batch again, and logged as an MQTT link's forwarder logs it: one line at
        the first failure, then once a minute, and one when a save works again; no traceback,
        and the status stays the cloud's. It was a traceback ("forwarding failed") at every
        failure, and the status "internal error: [Errno 28] ..."."""
        self.stored_cik()
        self.write("temp", "1")
        ack = self.stream.ack
        failures = [OSError(errno.ENOSPC, "No space left on device")] * 70

        def failing_ack(*args: Any) -> Any:
            return fail(failures.pop()) if failures else ack(*args)

        self.stream.ack = failing_ack  # type: ignore[method-assign]
        with capturedLogs() as events:
            link = self.start()
            self.pass_time(75)
        self.assertEqual(self.flushLoggedErrors(), [])
        self.assertEqual([formatEvent(e) for e in events if "cursor" in formatEvent(e)], [
            "link cloud: cursor cloud: saving it failed (1 in a row): [Errno 28] No space left on device; tried"
            " again every 1 s, logged once a minute",
            "link cloud: cursor cloud: saving it failed (61 in a row): [Errno 28] No space left on device; tried"
            " again every 1 s, logged once a minute",
            "link cloud: cursor cloud: saved again after 70 failed saves"])
        self.assertEqual(self.stream.acked["cloud"], 1)
        self.assertEqual(self.server.values["temp"], [(self.server.values["temp"][0][0], "1")])
        self.assertEqual((link.sent, link.pending), (1, 0))
        self.assertEqual(self.statuses, [(True, "")])
        self.write("temp", "2")
        self.pass_time(3)
        self.assertEqual(self.server.sequence("temp"), ["1", "2"])

    def test_a_journal_read_that_fails_is_retried(self) -> None:
        """A read of the stream that fails (an I/O error) is tried again every second and logged
        as an MQTT link's forwarder logs it (readretry: one line, then at most once a minute,
        and one once it reads again); no traceback, the status stays the cloud's. It was a
        traceback at every failure and the status "internal error: [Errno 5] ..."."""
        self.stored_cik()
        self.write("temp", "1")
        read = self.stream.read
        failures = [OSError(errno.EIO, "Input/output error")] * 3

        def failing_read(*args: Any) -> Any:
            return fail(failures.pop()) if failures else read(*args)

        self.stream.read = failing_read  # type: ignore[method-assign]
        with capturedLogs() as events:
            self.start()
            self.pass_time(10)
        self.assertEqual(self.flushLoggedErrors(), [])
        self.assertEqual([formatEvent(e) for e in events if "journal stream" in formatEvent(e)], [
            "link cloud: reading its journal stream failed (1 in a row; tried again every 1 s, logged at most once"
            " a minute): [Errno 5] Input/output error",
            "link cloud: its journal stream is read again, after 3 failed reads"])
        self.assertEqual(self.server.sequence("temp"), ["1"])
        self.assertEqual(self.stream.acked["cloud"], 1)
        self.assertEqual(self.statuses, [(True, "")])

    def test_a_stop_while_a_failed_read_waits_ends_the_uplink(self) -> None:
        """A link stopped while its failed read waits to be tried again stops there: nothing
        is read after the stop."""
        self.stored_cik()
        reads: list[Any] = []

        def failing_read(*args: Any) -> Any:
            reads.append(args)
            return fail(OSError(errno.EIO, "Input/output error"))

        self.stream.read = failing_read  # type: ignore[method-assign]
        link = self.start()
        self.pass_time(2)
        count = len(reads)
        self.successResultOf(link.stop())
        self.pass_time(5)
        self.assertEqual(len(reads), count)
