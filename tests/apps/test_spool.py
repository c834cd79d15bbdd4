"""The spool folder files every package away, whatever its install did (in memory, fake clock)."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any, Callable

from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from gateway.apps.operations import InstallResult
from gateway.apps.spool import SpoolWatcher
from tests.test_filelayer import record_calls, record_fsyncs


def inline(work: Callable[[], Any]) -> Deferred[Any]:
    """Run blocking work at once (the tests own the file system)."""
    return maybeDeferred(work)



def refuse_looks(test: SynchronousTestCase) -> list[bool]:
    """Make a look at the spool fail as out of file descriptors (EMFILE on listing the folder)
    while the returned switch's one item is True (it starts True)."""
    import gateway.apps.spool as spool_module
    iterdir = Path.iterdir
    out_of_fds = [True]

    def refuse(path: Path) -> Any:
        if out_of_fds[0]:
            raise OSError(errno.EMFILE, "Too many open files", str(path))
        return iterdir(path)
    test.patch(spool_module.Path, "iterdir", refuse)
    return out_of_fds

class SpoolTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.incoming = Path(self.mktemp())
        self.incoming.mkdir()  # (as the apps service makes it before it starts the watcher)
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

    def test_the_directory_a_result_is_filed_in_is_fsynced_in_its_parent(self) -> None:
        """failed/ (and done/), made for the first file it takes, is fsynced in the spool: a
        power cut could take it with the package moved there and its log."""
        self.incoming = self.incoming.absolute()
        self.watcher(lambda archive: fail(RuntimeError("the installer tripped")))
        self.incoming.joinpath("bad.v1.tar.gz").write_bytes(b"x")
        fsynced = record_fsyncs(self)
        self.clock.advance(1.0)
        self.assertTrue((self.incoming / "failed" / "bad.v1.tar.gz").exists())
        self.assertEqual(fsynced.count(str(self.incoming)), 2, fsynced)  # failed/ made, the package moved
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
                         "refused: link out")

    def test_done_and_failed_keep_the_last_packages_filed(self) -> None:
        """docs/apps.md: done/ and failed/ keep the last KEEP_FILED packages filed in each, with
        their logs; filing one more removes the oldest (and a log write's leftover temporary
        file). Every package ever dropped (a whole tarball each) stayed on the disk for good."""
        from gateway.apps.spool import KEEP_FILED

        self.watcher(lambda archive: succeed(
            InstallResult(archive.name.startswith("ok"), "installed", "x", "1", None, "x 1")))
        self.incoming.mkdir(exist_ok=True)
        count = KEEP_FILED + 2
        (self.incoming / "done").mkdir()
        (self.incoming / "done" / ".ok00.v1.tar.gz.log.tmp").write_bytes(b"cut short")
        for n in range(count):
            (self.incoming / f"ok{n:02}.v1.tar.gz").write_bytes(b"x")
            (self.incoming / f"no{n:02}.v1.tar.gz").write_bytes(b"x")
            self.clock.advance(1.0)
        for folder, prefix in (("done", "ok"), ("failed", "no")):
            kept = [f"{prefix}{n:02}.v1.tar.gz" for n in range(count - KEEP_FILED, count)]
            self.assertEqual(sorted(p.name for p in (self.incoming / folder).iterdir()),
                             sorted(kept + [f"{name}.log" for name in kept]))

    def test_packages_removed_from_done_stay_removed_after_a_power_cut(self) -> None:
        """Filing a package past KEEP_FILED removes the oldest from done/ and then fsyncs done/.
        It did not: a power cut brought them back, and with a cut after each filing done/
        grew by one package (a whole tarball) each time."""
        from gateway.apps.spool import KEEP_FILED

        self.incoming = self.incoming.absolute()
        self.watcher(lambda archive: succeed(InstallResult(True, "installed", "x", "1", None, "x 1")))
        for n in range(KEEP_FILED):
            (self.incoming / f"ok{n:02}.v1.tar.gz").write_bytes(b"x")
            self.clock.advance(1.0)
        events = record_fsyncs(self)
        record_calls(self, events, os, "unlink")
        (self.incoming / "ok99.v1.tar.gz").write_bytes(b"x")
        self.clock.advance(1.0)
        done = self.incoming / "done"
        self.assertFalse((done / "ok00.v1.tar.gz").exists())
        removed = max(events.index(f"unlink {done / name}") for name in ("ok00.v1.tar.gz", "ok00.v1.tar.gz.log"))
        self.assertIn(str(done), events[removed + 1:])

    def test_odd_file_names_are_logged_on_one_line(self) -> None:
        """A package named with a newline, or in Latin-1 on disk, is refused and filed away as
        any other; the spool's log lines show its name escaped (``nl\\nx``, ``caf\\udce9``): it
        was written raw, a newline splitting the line and a Latin-1 byte making it no UTF-8."""
        refused = InstallResult(False, "refused", None, None, None, "refused: bad name")
        self.watcher(lambda archive: succeed(refused))
        for name in (b"nl\nx.v1.tar.gz", b"caf\xe9.v1.tar.gz"):
            with open(bytes(self.incoming) + b"/" + name, "wb") as package:
                package.write(b"x")
        with capturedLogs() as events:
            self.clock.advance(1.0)
        said = sorted(formatEvent(e) for e in events if e.get("log_namespace") == "gateway.apps.spool")
        self.assertEqual(said, ["apps: installing caf\\udce9.v1.tar.gz from the spool",
                                "apps: installing nl\\nx.v1.tar.gz from the spool",
                                "apps: spool caf\\udce9.v1.tar.gz: refused", "apps: spool nl\\nx.v1.tar.gz: refused"])
        self.assertEqual(sorted(p.name for p in (self.incoming / "failed").iterdir()),
                         ["caf\udce9.v1.tar.gz", "caf\udce9.v1.tar.gz.log", "nl\nx.v1.tar.gz", "nl\nx.v1.tar.gz.log"])

    def test_a_symbolic_link_is_refused_without_reading_its_target(self) -> None:
        """A symbolic link named like a package is refused and filed away in failed/ (the
        link, not its target); its target is never installed (the link was followed, so a
        package still being written elsewhere could be installed half-way). A dangling link
        is filed away too, not ignored for ever."""
        self.watcher(lambda archive: succeed(InstallResult(True, "installed", "x", "1", None, "x 1 installed")))
        self.incoming.mkdir(exist_ok=True)
        target = Path(self.mktemp())
        target.write_bytes(b"a package being written")
        (self.incoming / "linked.v1.tar.gz").symlink_to(target.absolute())
        (self.incoming / "dangling.v1.tar.gz").symlink_to("/nonexistent/x.tar.gz")
        self.clock.advance(1.0)
        self.assertEqual(self.calls, [])
        for name in ("linked.v1.tar.gz", "dangling.v1.tar.gz"):
            self.assertTrue((self.incoming / "failed" / name).is_symlink(), name)
            report = (self.incoming / "failed" / f"{name}.log").read_text()
            self.assertTrue(report.startswith(f"refused: {name} is a symbolic link;"), report)
        self.assertEqual(target.read_bytes(), b"a package being written")

    def test_what_is_not_a_file_is_refused_without_reading_it(self) -> None:
        """A directory or a named pipe named like a package is refused and filed away in
        failed/ with a log saying what it is, never opened (a pipe would wait for a writer):
        it was left where it was for ever, without a word."""
        import os
        import stat

        self.watcher(lambda archive: succeed(InstallResult(True, "installed", "x", "1", None, "x 1 installed")))
        self.incoming.mkdir(exist_ok=True)
        (self.incoming / "unpacked.v1.tar.gz").mkdir()
        (self.incoming / "unpacked.v1.tar.gz" / "install.sh").write_text("echo hi\n")
        os.mkfifo(self.incoming / "pipe.v1.tgz")
        self.clock.advance(1.0)
        self.assertEqual(self.calls, [])
        self.assertTrue((self.incoming / "failed" / "unpacked.v1.tar.gz" / "install.sh").is_file())
        self.assertTrue(stat.S_ISFIFO((self.incoming / "failed" / "pipe.v1.tgz").lstat().st_mode))
        report = (self.incoming / "failed" / "unpacked.v1.tar.gz.log").read_text()
        self.assertTrue(report.startswith("refused: unpacked.v1.tar.gz is a directory, not a package file;"
                                          " put the package file itself in the spool"), report)
        report = (self.incoming / "failed" / "pipe.v1.tgz.log").read_text()
        self.assertTrue(report.startswith("refused: pipe.v1.tgz is a named pipe, not a package file;"), report)

    def test_an_install_the_stop_cut_short_is_left_for_the_next_look(self) -> None:
        """A package whose install the apps service's stop cut short (a configuration change, or
        SIGTERM: rolled back, or never begun) stays in the spool, installed at the next look, as
        an update's install is run again after a restart (docs/apps.md); it was filed in failed/
        and never installed unless dropped again."""
        installing: Deferred[InstallResult] = Deferred()
        spool = self.watcher(lambda archive: installing)
        self.incoming.mkdir(exist_ok=True)
        (self.incoming / "q.v2.tar.gz").write_bytes(b"x")
        self.clock.advance(1.0)
        stopped = spool.stop()
        installing.callback(InstallResult(False, "rolled-back", "q", "2", "1",
                                          "the apps service stopped during the health window"))
        self.successResultOf(stopped)
        self.assertTrue((self.incoming / "q.v2.tar.gz").exists())
        self.assertFalse((self.incoming / "failed").exists())

    def test_a_package_that_cannot_be_filed_away_is_not_installed_again(self) -> None:
        """A package installed whose move to done/ the disk refuses (done/ cannot be created on
        a full disk, a read-only remount) is not installed again at the next looks (docs/apps.md:
        no file is tried twice), logged once; it is filed away once the disk has room. It
        stayed in the spool and was installed again at every look, a traceback each time."""
        import gateway.apps.spool as spool_module
        self.watcher(lambda archive: succeed(InstallResult(True, "installed", "p", "1", None, "p 1 installed")))
        self.incoming.mkdir(exist_ok=True)
        (self.incoming / "p.v1.tar.gz").write_bytes(b"x")
        makedirs = spool_module.makedirs_durably
        full = [True]

        def refuse(path: str, *args: Any, **kwargs: Any) -> None:
            if full[0]:
                raise OSError(errno.ENOSPC, "No space left on device", path)
            makedirs(path, *args, **kwargs)
        self.patch(spool_module, "makedirs_durably", refuse)
        self.clock.advance(1.0)
        self.clock.advance(1.0)
        self.clock.advance(1.0)
        self.assertEqual(self.calls, ["p.v1.tar.gz"])
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1, "logged once")
        full[0] = False
        self.clock.advance(1.0)
        self.assertEqual(self.calls, ["p.v1.tar.gz"])
        self.assertFalse((self.incoming / "p.v1.tar.gz").exists())
        self.assertEqual((self.incoming / "done" / "p.v1.tar.gz.log").read_text().split("\n")[0],
                         "installed: p 1 installed")

    def test_a_new_package_under_an_unfiled_name_is_installed(self) -> None:
        """A package dropped again under the name of one that could not be filed away (a new
        file, renamed over it) is installed: only the file that was tried is not tried again."""
        import gateway.apps.spool as spool_module
        self.watcher(lambda archive: succeed(InstallResult(False, "failed", "p", "1", None, "install.sh exit 1")))
        self.incoming.mkdir(exist_ok=True)
        (self.incoming / "p.v1.tar.gz").write_bytes(b"x")
        replace = spool_module.os.replace
        full = [True]

        def refuse(source: Any, target: Any) -> None:
            if full[0]:
                raise OSError(errno.EROFS, "Read-only file system", str(source))
            replace(source, target)
        self.patch(spool_module.os, "replace", refuse)
        self.clock.advance(1.0)
        self.flushLoggedErrors(OSError)
        (self.incoming / ".p.part").write_bytes(b"yy")
        replace(self.incoming / ".p.part", self.incoming / "p.v1.tar.gz")
        full[0] = False
        self.clock.advance(1.0)
        self.assertEqual(self.calls, ["p.v1.tar.gz", "p.v1.tar.gz"])
        self.assertEqual((self.incoming / "failed" / "p.v1.tar.gz").read_bytes(), b"yy")

    def test_a_look_the_system_refuses_is_tried_again(self) -> None:
        """A look at the spool that the system refuses (the process out of file descriptors:
        EMFILE on opening the folder) is logged once, as a warning, and the next looks go on;
        the first look that works again says so and installs what waited. The watcher
        stopped for good at the first refusal ("Unhandled error in Deferred"), and no package
        dropped later was ever installed."""
        self.watcher(lambda archive: succeed(InstallResult(True, "installed", "p", "1", None, "p 1 installed")))
        out_of_fds = refuse_looks(self)
        events: list[dict[str, Any]] = []
        from twisted.logger import globalLogPublisher
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        (self.incoming / "p.v1.tar.gz").write_bytes(b"x")
        self.clock.advance(1.0)
        self.clock.advance(1.0)
        self.clock.advance(1.0)
        self.assertEqual(self.calls, [])
        out_of_fds[0] = False
        self.clock.advance(1.0)
        self.assertEqual(self.calls, ["p.v1.tar.gz"])
        self.assertTrue((self.incoming / "done" / "p.v1.tar.gz").exists())
        said = [formatEvent(e) for e in events if e.get("log_namespace") == "gateway.apps.spool"]
        self.assertEqual(said[:2], [
            f"apps: cannot look at the spool {self.incoming}: [Errno 24] Too many open files: "
            f"'{self.incoming}'; looked at again every 1 s",
            f"apps: the spool {self.incoming} can be looked at again"])
