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
