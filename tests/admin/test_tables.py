"""gatewayctl's formatting: durations, sizes, tables, the progress bar, a pending change."""

from __future__ import annotations

import io

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from gateway.admin.client import app_path, query_string, quote
from gateway.admin.tables import ProgressBar, duration, pending_change, previous_stop, size, table


class TerminalStream(io.StringIO):
    """A StringIO that says it is a terminal."""

    def isatty(self) -> bool:
        return True


class FormattingTests(SynchronousTestCase):
    """What an operator reads."""

    def test_duration_and_size(self) -> None:
        """Durations and byte counts in a person's units; unknown is '-'."""
        self.assertEqual([duration(v) for v in (0, 59.9, 61, 3700, 90000, None, -1, True)],
                         ["0s", "59s", "1m 1s", "1h 1m", "1d 1h", "-", "-", "-"])
        self.assertEqual([size(v) for v in (0, 1023, 1536, 3 * 2**20, 5 * 2**40, None)],
                         ["0 B", "1023 B", "1.5 KiB", "3.0 MiB", "5120.0 GiB", "-"])

    def test_table(self) -> None:
        """Columns padded to their widest cell; None shows as '-'; no rows: (none)."""
        self.assertEqual(table(("a", "bb"), [("xxx", None), ("y", 2)]), "a    bb\nxxx  -\ny    2")
        self.assertEqual(table(("a",), []), "(none)")

    def test_a_cell_of_several_lines_shows_its_first(self) -> None:
        """A row is one line: a cell of several lines (an operation's message with the install
        log's tail, as ``gatewayctl ops`` lists it) shows its first line and `` ...``; its
        other lines once ran into the next rows, unaligned (``--json`` has the whole text)."""
        rows = [("rb", "did not start healthy\n--- install log (tail) ---\nbad start"), ("ok", "done")]
        self.assertEqual(table(("op", "message"), rows),
                         "op  message\nrb  did not start healthy ...\nok  done")
        self.assertEqual(table(("a",), [("x\r\n",), ("y\rz",)]), "a\nx\ny ...")

    def test_progress_bar_only_on_a_terminal(self) -> None:
        """The bar is drawn on a terminal, once per percent, and ends its line; elsewhere nothing."""
        tty = TerminalStream()
        bar = ProgressBar("up", tty)
        for done in (0, 10, 11, 500, 504, 1000):  # of 1000: 0%, 1%, 1%, 50%, 50%, 100%
            bar.update(done, 1000)
        bar.close()
        frames = tty.getvalue().split("\r")[1:]
        self.assertEqual(len(frames), 4)
        self.assertTrue(frames[-1].endswith("100%\n"))
        plain = io.StringIO()
        bar = ProgressBar("up", plain)
        bar.update(5, 10)
        bar.close()
        self.assertEqual(plain.getvalue(), "")

    def test_pending_change(self) -> None:
        """Keys, origin, time left and what confirms it, in one line: the links that were up
        when it was made (``required_links``), every one up again; none named (none was up):
        any one link up."""
        self.assertEqual(pending_change({"keys": ["a.b", "c"], "origin": "cloud", "deadline": 190.0,
                                         "required_links": []}, 100.0),
                         "a.b, c (by cloud) waits for confirmation: reverted in 1m 30s unless a cloud link is up")
        self.assertEqual(pending_change({"keys": ["a"], "origin": "admin", "deadline": 190.0,
                                         "required_links": ["hono"]}, 100.0),
                         "a (by admin) waits for confirmation: reverted in 1m 30s unless link hono is up again")
        self.assertEqual(pending_change({"keys": ["a"], "origin": "admin", "deadline": 190.0,
                                         "required_links": ["aws", "hono"]}, 100.0),
                         "a (by admin) waits for confirmation: reverted in 1m 30s"
                         " unless links aws, hono are all up again")

    def test_previous_stop(self) -> None:
        """How the previous run ended, in one line: none for a first start; a clean stop's time,
        with the count of unclean stops and the latest one when there were some; an unclean
        one's cause, pid and last time alive."""
        self.assertIsNone(previous_stop({"kind": "none", "unclean_stops": 0}))
        self.assertIsNone(previous_stop(None))
        self.assertEqual(previous_stop({"kind": "clean", "at": 1796211823.0, "unclean_stops": 0}),
                         "previous run: stopped cleanly at 2026-12-02T11:43:43Z")
        self.assertEqual(previous_stop({"kind": "clean", "at": 1796211823.0, "unclean_stops": 2,
                                        "last_unclean_at": 1796200000.0}),
                         "previous run: stopped cleanly at 2026-12-02T11:43:43Z; unclean stops on this state"
                         " directory: 2, the last known alive 2026-12-02T08:26:40Z")
        self.assertEqual(previous_stop({"kind": "unclean", "at": 1796211823.0, "pid": 4107, "cause": "killed",
                                        "unclean_stops": 1}),
                         "previous run: did not stop cleanly (killed): pid 4107, last known alive"
                         " 2026-12-02T11:43:43Z; unclean stops on this state directory: 1")
        # (a record without a pid, as the start's line says it: not Python's None)
        self.assertEqual(previous_stop({"kind": "unclean", "at": None, "pid": None, "cause": "killed",
                                        "unclean_stops": 1}),
                         "previous run: did not stop cleanly (killed): pid unknown, last known alive -; unclean"
                         " stops on this state directory: 1")

    def test_quoting(self) -> None:
        """Names and query values are percent-encoded."""
        self.assertEqual(quote("a b/ü"), "a%20b%2F%C3%BC")
        self.assertEqual(app_path("my app", "logs"), "/apps/my%20app/logs")
        self.assertEqual(query_string({"key": "a.b", "x": "1&2"}), "?key=a.b&x=1%262")
        self.assertEqual(query_string({}), "")


class DefaultSocketTests(SynchronousTestCase):
    """Where gatewayctl looks without --socket."""

    def test_environment_then_package_then_checkout(self) -> None:
        """$GATEWAY_ADMIN_SOCKET first, then --state-dir's socket; the .deb's venv means
        /run/gateway/admin.sock (the packaged config's admin.socket); anything else is a
        checkout's var/run/admin.sock."""
        import os
        import sys

        from gateway.admin import paths
        self.patch(os, "environ", {})
        self.patch(sys, "prefix", "/opt/venvs/gateway")
        self.assertEqual(paths.default_socket(), "/run/gateway/admin.sock")
        self.patch(sys, "prefix", "/home/me/gateway/.venv")
        self.assertEqual(paths.default_socket(), "var/run/admin.sock")
        self.assertEqual(paths.default_socket("/srv/gw"), "/srv/gw/run/admin.sock")
        self.patch(os, "environ", {"GATEWAY_ADMIN_SOCKET": "/tmp/x.sock"})
        self.assertEqual(paths.default_socket(), "/tmp/x.sock")
        self.assertEqual(paths.default_socket("/srv/gw"), "/tmp/x.sock")

    def test_packaged_config_names_the_same_socket(self) -> None:
        """debian/etc-config writes admin.socket as the packaged gatewayctl expects it."""
        import runpy
        from pathlib import Path

        from gateway.admin.paths import PACKAGED_SOCKET
        root = Path(__file__).resolve().parents[2]
        if not (root / "debian" / "etc-config").exists():
            raise SkipTest("no debian/ beside these tests (a copy of tests/ without the package files)")
        etc_config = runpy.run_path(str(root / "debian" / "etc-config"))
        text = etc_config["packaged"]((root / "conf" / "gateway.yaml").read_text())
        self.assertIn("\nadmin:\n", text)
        self.assertIn(f"  socket: {PACKAGED_SOCKET}\n", text)
        self.assertIn("  state_dir: /var/lib/gateway\n", text)

    def test_packaged_config_sets_only_keys_the_gateway_section_has(self) -> None:
        """Every path debian/etc-config writes into the ``gateway:`` section is a key of it (a key
        the schema does not have would never be found there, so never written: ``log_dir`` and
        ``run_dir`` were so)."""
        import dataclasses
        import runpy
        from pathlib import Path

        from gateway.config import GatewaySettings
        root = Path(__file__).resolve().parents[2]
        if not (root / "debian" / "etc-config").exists():
            raise SkipTest("no debian/ beside these tests (a copy of tests/ without the package files)")
        etc_config = runpy.run_path(str(root / "debian" / "etc-config"))
        keys = {f.name for f in dataclasses.fields(GatewaySettings)}
        self.assertEqual(sorted(set(etc_config["PATHS"]) - keys), [])
