"""An Exosite link's CIK file on a file system held in memory (tmpfs: ``/run``, ``/dev/shm``) is a
warning at the configuration's check and at start: a reboot loses the CIK, and Exosite activates a
serial once (docs/exosite.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from twisted.internet.defer import Deferred, succeed
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from gateway import config as gateway_config
from gateway.links import cikplace
from gateway.links.http_settings import HTTPLinkSettings, HTTPLinksSettings
from gateway.links.service import LinksService
from gateway.links.settings import LinksSettings
from tests.links.memory import MemoryJournal
from tests.links.test_service import RecordingBus
from tests.logevents import capture_log_events


def mount_tmpfs(test: SynchronousTestCase, directory: Path) -> None:
    """Make the links take ``directory`` for a tmpfs mounted there, and every other path for a disk
    (the mount table's side is tests/test_virtualfs.py's: a test's directories are all on one)."""
    def memory_fs_at(path: Path) -> tuple[str, str] | None:
        return ("tmpfs", str(directory)) if directory in (path, *path.parents) else None
    test.patch(cikplace, "memory_fs_at", memory_fs_at)


class VolatileCIKTests(SynchronousTestCase):
    """Where a reboot would lose the CIK, the check and the start say so; elsewhere, nothing."""

    def setUp(self) -> None:
        self.work = Path(self.mktemp()).resolve()
        (self.work / "run").mkdir(parents=True)
        (self.work / "state").mkdir()
        mount_tmpfs(self, self.work / "run")

    def load(self, links: str) -> gateway_config.Config:
        path = self.work / "gateway.yaml"
        path.write_text(f"gateway:\n  state_dir: '{self.work / 'state'}'\nhttp_links:\n  links:\n{links}")
        return gateway_config.load(path)

    def test_the_check_warns_of_a_cik_file_on_tmpfs(self) -> None:
        """A cik_file on tmpfs is one warning naming the link, the file, the mount and the remedy
        (it passed without a word, and the CIK was gone at the next boot); a json link, and an
        exosite link keeping its CIK on a disk, have none."""
        cik = self.work / "run" / "gateway" / "murano.cik"  # (its directory made at start)
        loaded = self.load(f"    murano:\n      url: 'https://h'\n      cik_file: '{cik}'\n"
                           f"    disk:\n      url: 'https://h'\n"
                           f"    batches:\n      mode: json\n      url: 'https://h'\n")
        self.assertEqual(loaded.warnings(), [
            f"link murano: its CIK file {cik} is on tmpfs (mounted on {self.work / 'run'}), which keeps nothing"
            " across a reboot: the CIK is lost at the next boot, and Exosite activates a serial once, so the link"
            " could not activate again until the device is re-enabled on the platform; name a cik_file on a disk,"
            " or leave it out (<state_dir>/links/<name>.cik) with the state directory on a disk (exosite.md)"])

    def test_the_default_place_under_a_state_directory_on_tmpfs(self) -> None:
        """The default ``<state_dir>/links/<name>.cik`` and a relative cik_file are where the link
        keeps them, under the state directory: on tmpfs, the same warning."""
        loaded = self.load("    a:\n      url: 'https://h'\n    b:\n      url: 'https://h'\n      cik_file: b.cik\n")
        self.assertEqual(loaded.warnings(), [])
        state = self.work / "run" / "state"
        path = self.work / "gateway.yaml"
        path.write_text(path.read_text().replace(str(self.work / "state"), str(state)))
        warnings = gateway_config.load(path).warnings()
        self.assertEqual([w.split(" is on ")[0] for w in warnings],
                         [f"link a: its CIK file {state / 'links' / 'a.cik'}", f"link b: its CIK file {state / 'b.cik'}"])

    def test_the_start_warns_once(self) -> None:
        """The links' start logs the check's warning once (the link runs all the same), the
        check run off the reactor thread (it stats the file system and reads the mount table)."""
        from gateway.links.httplink import HTTPLink

        self.patch(HTTPLink, "start", lambda link: succeed(None))
        self.patch(HTTPLink, "stop", lambda link: succeed(None))
        cik = self.work / "run" / "murano.cik"
        http = HTTPLinksSettings(links={"murano": HTTPLinkSettings(url="https://h", cik_file=str(cik))})
        events = capture_log_events(self)
        jobs: list[tuple[Deferred[Any], Callable[..., Any], tuple[Any, ...]]] = []

        def in_a_thread(work: Callable[..., Any], *args: Any) -> Deferred[Any]:
            jobs.append((Deferred(), work, args))
            return jobs[-1][0]
        service = LinksService(LinksSettings(), MemoryReactorClock(), RecordingBus(), MemoryJournal(),
                               identity=("default", "box-17"), http_links=http, http_client=lambda s: object(),
                               state_dir=self.work / "state", run_blocking=in_a_thread)
        self.successResultOf(service.startService())
        self.addCleanup(service.stopService)
        self.assertEqual([e for e in events if e.get("log_level") == LogLevel.warn], [])
        self.assertEqual([work for _, work, _ in jobs], [cikplace.volatile_cik_warnings])
        for done, work, args in jobs:
            done.callback(work(*args))
        warnings: list[Any] = [formatEvent(e) for e in events if e.get("log_level") == LogLevel.warn]
        self.assertEqual(len(warnings), 1, warnings)
        self.assertTrue(warnings[0].startswith(f"link murano: its CIK file {cik} is on tmpfs"), warnings)
