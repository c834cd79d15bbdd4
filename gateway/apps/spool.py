"""The spool folder ``<state>/incoming/``: packages dropped there are installed.

Writers put a file there under a temporary name (a leading dot, or ``.tmp``/``.part``)
and rename it when it is complete; only complete ``*.tar.gz``/``*.tgz`` names are taken.
Each is installed, then moved to ``incoming/done/`` or ``incoming/failed/`` with
``<file>.log`` beside it; one whose install raised an unexpected error goes to
``failed/`` too, with the traceback in its log. One whose install the apps service's stop
cut short stays for the next look.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.apps.operations import InstallResult
from gateway.atomic import write_atomically

if TYPE_CHECKING:
    from gateway.apps.installer import Blocking

log = Logger()


def _ready(directory: Path) -> list[Path]:
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir()
                  if p.is_file() and not p.name.startswith(".")
                  and p.name.endswith((".tar.gz", ".tgz")))


def _file_away(archive: Path, result: InstallResult) -> None:
    target = archive.parent / ("done" if result.ok else "failed")
    target.mkdir(exist_ok=True)
    report = f"{result.outcome}: {result.message}\n\n{result.log}"
    try:
        # The log first, so that whoever sees the file moved finds its log beside it.
        write_atomically(target / f"{archive.name}.log", report.encode())
    finally:
        # Moved even when the log cannot be written (a full disk): the next look must not
        # install the same file again.
        os.replace(archive, target / archive.name)


def _unexpected(failure: Failure) -> InstallResult:
    """The result for a spool file whose install raised instead of answering."""
    return InstallResult(False, "failed", None, None, None,
                         f"unexpected error: {failure.getErrorMessage()}", failure.getTraceback())


class SpoolWatcher:
    """Looks at the spool every ``interval`` seconds and installs what it finds, in order.

    :param directory: the spool folder (created if missing).
    :param install: the operations' ``install``.
    :param clock: an IReactorTime.
    :param blocking: runs a blocking callable off the reactor thread.
    :param interval: seconds between looks.
    """

    def __init__(self, directory: Path, install: Callable[[Path], Deferred[InstallResult]],
                 clock: Any, blocking: Blocking[Any], interval: float) -> None:
        self.directory = directory
        self._install = install
        self._blocking = blocking
        self._interval = interval
        self._loop = LoopingCall(self._scan)
        self._loop.clock = clock
        self._busy: Deferred[None] | None = None

    def start(self) -> None:
        """Make the folder and start looking."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self._loop.start(self._interval, now=True)

    def stop(self) -> Deferred[Any]:
        """Stop looking; fires once an install in progress has finished."""
        if self._loop.running:
            self._loop.stop()
        if self._busy is None:
            return succeed(None)
        waiter: Deferred[None] = Deferred()

        def release(result: object) -> object:
            waiter.callback(None)
            return result

        self._busy.addBoth(release)
        return waiter

    def _scan(self) -> Deferred[None]:
        self._busy = self._scan_once()

        def idle(result: object) -> object:
            self._busy = None
            return result

        return self._busy.addBoth(idle)

    @inlineCallbacks
    def _scan_once(self) -> Any:
        found = yield self._blocking(lambda: _ready(self.directory))
        for archive in found:
            if not self._loop.running:
                break
            log.info("apps: installing {file} from the spool", file=archive.name)
            try:
                result = yield self._install(archive)
            except Exception:
                # One bad file must neither stop the spool nor be retried forever: it goes to
                # failed/ with the traceback in its log.
                failure = Failure()
                log.failure("apps: spool {file} failed unexpectedly", failure, file=archive.name)
                result = _unexpected(failure)
            else:
                if not result.ok and not self._loop.running:
                    # The apps service stopped under it (the gateway stops, or restarts for a
                    # configuration change): it is installed at the next look, as after a restart.
                    log.info("apps: spool {file}: {message}; left for the next look", file=archive.name,
                             message=result.message)
                    break
            try:
                yield self._blocking(lambda: _file_away(archive, result))
            except Exception:
                log.failure("apps: spool {file}: cannot file it away in done/ or failed/",
                            file=archive.name)
                continue
            log.info("apps: spool {file}: {outcome}", file=archive.name,
                     outcome=result.outcome)

