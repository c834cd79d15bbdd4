"""The spool folder files every package away, whatever its install did (in memory, fake clock)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.apps.operations import InstallResult
from gateway.apps.spool import SpoolWatcher


def inline(work: Callable[[], Any]) -> Deferred[Any]:
    """Run blocking work at once (the tests own the file system)."""
    return maybeDeferred(work)


class SpoolTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.incoming = Path(self.mktemp())
        self.clock = Clock()
        self.calls: list[str] = []

    def watcher(self, install: Callable[[Path], Deferred[InstallResult]]) -> SpoolWatcher:
        def record(archive: Path) -> Deferred[InstallResult]:
            self.calls.append(archive.name)
            return install(archive)

        spool = SpoolWatcher(self.incoming, record, self.clock, inline, 1.0)
        spool.start()
        self.addCleanup(spool.stop)
        return spool

    def test_unexpected_error_goes_to_failed_with_its_traceback(self) -> None:
        """An install that raises instead of answering moves its file to failed/ with the traceback
        in its log, once: the next looks do not try it again."""
        self.watcher(lambda archive: fail(RuntimeError("the installer tripped")))
        self.incoming.joinpath("bad.v1.tar.gz").write_bytes(b"x")
        self.clock.advance(1.0)
        self.clock.advance(1.0)
        self.assertEqual(self.calls, ["bad.v1.tar.gz"])
        self.assertFalse((self.incoming / "bad.v1.tar.gz").exists())
        self.assertTrue((self.incoming / "failed" / "bad.v1.tar.gz").exists())
        report = (self.incoming / "failed" / "bad.v1.tar.gz.log").read_text()
        self.assertTrue(report.startswith("failed: unexpected error: the installer tripped"), report)
        self.assertIn("Traceback", report)
        self.assertIn("RuntimeError", report)
        self.flushLoggedErrors(RuntimeError)

    def test_results_are_filed_by_outcome(self) -> None:
        """A success goes to done/, a refusal to failed/, each with its outcome and message."""
        results = {"good.v1.tar.gz": InstallResult(True, "installed", "good", "1", None, "good 1 installed"),
                   "evil.v1.tar.gz": InstallResult(False, "refused", None, None, None, "refused: link out")}
        self.watcher(lambda archive: succeed(results[archive.name]))
        self.incoming.mkdir(exist_ok=True)
        for name in results:
            (self.incoming / name).write_bytes(b"x")
        self.clock.advance(1.0)
        self.assertEqual((self.incoming / "done" / "good.v1.tar.gz.log").read_text().split("\n")[0],
                         "installed: good 1 installed")
        self.assertEqual((self.incoming / "failed" / "evil.v1.tar.gz.log").read_text().split("\n")[0],
                         "refused: refused: link out")
