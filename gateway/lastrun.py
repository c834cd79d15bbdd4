"""Whether the gateway's previous run on its state directory stopped cleanly: the record of
each run (``run.json`` in the state directory), written when it starts and again when it has
stopped cleanly, its modification time set now and then to tell the last time the run was
known alive.

A run that ends without a clean stop (SIGKILL, the OOM killer, a power cut, a kernel panic, a
watchdog reset) leaves its record saying it runs: the next start tells it (one log line, the
gateway's status, ``/metrics``) and counts it in the record, so the count outlives the restarts.
Both writes are atomic and durable (temporary file, fsync, rename, fsync of the directory),
one at the start and one at the stop; the mark of life in between is a change of the file's
modification time, with no fsync: the filesystem writes it with its next commit (ext4's every
5 s), so the time a power cut leaves is at most :data:`ALIVE_INTERVAL` seconds and one commit
old. These calls block (a few system calls and the fsyncs): the state directory's service
makes them as it starts and, last of all, as it stops.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from twisted.logger import Logger

from gateway.atomic import read_json_object, remove_quietly, set_aside, write_json_atomically
from gateway.clockstep import boot_id
from gateway.journal.snapshot import JournalSnapshot
from gateway.utctext import utc_text

#: The run's record in the state directory.
RUN_FILE = "run.json"
#: Seconds between two marks of life (the record's modification time).
ALIVE_INTERVAL = 60.0

#: The previous run stopped cleanly (SIGTERM, ``systemctl stop``, a restart).
CLEAN = "clean"
#: The previous run ended without a clean stop.
UNCLEAN = "unclean"
#: No previous run is known: a first start on an empty state directory (or one an older
#: version of the gateway left, which kept no record).
NONE = "none"

#: Why a run ended without a clean stop (:attr:`PreviousStop.cause`): its stop began (a SIGTERM)
#: but did not end (its services hung and the gateway's exit deadline ended it, systemd's SIGKILL
#: after ``TimeoutStopSec``, the machine going down meanwhile).
STOP_CUT_SHORT = "stop-cut-short"
#: The machine has started again since, while the gateway ran: a power cut, a kernel panic, a
#: watchdog reset (or a reboot that did not stop the gateway first).
REBOOT = "reboot"
#: The machine ran on: the process was killed (SIGKILL, the kernel's OOM killer) or crashed.
KILLED = "killed"

_CAUSES = {
    STOP_CUT_SHORT: "its stop began but did not end (the process ended while stopping)",
    REBOOT: "the machine has started again since (a power cut, a kernel panic, a watchdog reset)",
    KILLED: "the machine ran on: the process was killed (SIGKILL, the OOM killer) or crashed",
}

log = Logger()


@dataclass(frozen=True)
class PreviousStop:
    """How the previous gateway run on this state directory ended.

    :param kind: :data:`CLEAN`, :data:`UNCLEAN` or :data:`NONE`.
    :param at: when it stopped (clean), or the last time it was known alive (unclean); ``None``
        when no previous run is known.
    :param pid: its process id (``None``: no previous run known).
    :param started_at: when it started (``None``: no previous run known).
    :param cause: why it ended (unclean only, else ``""``): :data:`STOP_CUT_SHORT`,
        :data:`REBOOT` or :data:`KILLED`.
    :param unclean_stops: the runs on this state directory that ended without a clean stop, this
        previous one included (counted since the first start of a gateway that keeps the record).
    :param last_unclean_at: the last time the latest of those was known alive (``None``: none).
    """

    kind: str = NONE
    at: float | None = None
    pid: int | None = None
    started_at: float | None = None
    cause: str = ""
    unclean_stops: int = 0
    last_unclean_at: float | None = None


class RunRecord:
    """The record of this run in the state directory (:data:`RUN_FILE`).

    :param state_dir: the state directory (locked by this gateway).
    :param now: the wall clock (seconds since the epoch).
    :param boot: this boot's id (:func:`~gateway.clockstep.boot_id`; ``""`` where the kernel has
        none: a reboot is then not told from a kill).
    """

    def __init__(self, state_dir: Path, now: Callable[[], float] = time.time, boot: str | None = None) -> None:
        self.path = state_dir / RUN_FILE
        self.now = now
        self.boot = boot_id() if boot is None else boot
        self._record: dict[str, Any] | None = None  # this run's, once begun
        self._written = False  # (the disk took it: there is a record to mark alive)
        self._alive_refused = False  # (said once)

    def begin(self, pid: int, stopping_pid: str | None = None) -> PreviousStop:
        """Read how the previous run ended, then record this one as running.

        :param pid: this process's id.
        :param stopping_pid: the pid the state directory's lock file named as stopping before
            this run took the lock (``None``: it named none): a previous run of that pid whose
            record says it ran began its stop and did not end it.
        :return: how the previous run ended.
        :raises StateAccessError: when the gateway's user may not read or move the record.
        """
        previous = self._previous(stopping_pid)
        self._record = {"pid": pid, "started_at": self.now(), "boot_id": self.boot, "stopped_at": None,
                        "unclean_stops": previous.unclean_stops, "last_unclean_at": previous.last_unclean_at}
        self._write("this run's start")
        return previous

    def alive(self) -> None:
        """Mark the run as alive now: the record's modification time (no fsync)."""
        if not self._written:
            return  # (not begun, or its write refused: said then)
        try:
            os.utime(self.path)
        except OSError as exc:
            if not self._alive_refused:
                self._alive_refused = True
                log.warn("cannot mark this run alive in {path} ({error}): an unclean stop will say it was"
                         " last known alive earlier", path=str(self.path), error=exc.strerror or str(exc))

    def end(self) -> None:
        """Record that this run has stopped cleanly (once every other service has stopped)."""
        if self._record is None:
            return
        self._record = {**self._record, "stopped_at": self.now()}
        self._write("this run's clean stop")
        self._record, self._written = None, False

    def _write(self, what: str) -> None:
        """Replace the record with :attr:`_record`; when the disk refuses it, remove the old one
        (a next start then knows no previous run rather than tells a wrong one)."""
        try:
            write_json_atomically(self.path, self._record, mode=0o640)
            self._written = True
        except OSError as exc:
            self._written = False
            remove_quietly(self.path)
            log.warn("cannot record {what} in {path} ({error}): the next start cannot tell how this run ended",
                     what=what, path=str(self.path), error=exc.strerror or str(exc))

    def _previous(self, stopping_pid: str | None) -> PreviousStop:
        """How the run that left the record ended (blocking)."""
        try:
            record = read_json_object(self.path)
            if record is None:
                return PreviousStop()
            alive = os.stat(self.path).st_mtime
        except (ValueError, OSError) as exc:
            if isinstance(exc, FileNotFoundError):
                return PreviousStop()  # (gone between the read and the stat)
            where = set_aside(self.path)  # (raises StateAccessError: the user may not read it)
            log.warn("{path} holds no run record ({error}): {where}; how the previous run ended is unknown,"
                     " and the count of unclean stops starts again", path=str(self.path), error=str(exc), where=where)
            return PreviousStop()
        pid, started = _number(record.get("pid")), _number(record.get("started_at"))
        count, last = max(0, int(_number(record.get("unclean_stops")) or 0)), _number(record.get("last_unclean_at"))
        stopped = _number(record.get("stopped_at"))
        pid = int(pid) if pid is not None else None
        if stopped is not None:
            return PreviousStop(CLEAN, stopped, pid, started, "", count, last)
        if stopping_pid is not None and stopping_pid == str(pid):
            cause = STOP_CUT_SHORT
        elif self.boot and record.get("boot_id") and record.get("boot_id") != self.boot:
            cause = REBOOT
        else:
            cause = KILLED
        if started is not None:
            # The record's modification time is the kernel's coarse clock, a tick (a few ms)
            # behind the one that wrote started_at: a run killed soon after its start would
            # seem last alive before it started.
            alive = max(alive, started)
        return PreviousStop(UNCLEAN, alive, pid, started, cause, count + 1, alive)


def unclean_line(previous: PreviousStop, recovery: str = "") -> str | None:
    """The one line a start logs when the previous run ended without a clean stop (``None``
    otherwise).

    :param previous: how it ended.
    :param recovery: what the start's recovery found of its traces (the journal's torn tails),
        ``""`` for nothing.
    """
    if previous.kind != UNCLEAN:
        return None
    started, alive = (utc_text(seconds) if seconds is not None else "unknown"
                      for seconds in (previous.started_at, previous.at))
    times = "once" if previous.unclean_stops == 1 else f"{previous.unclean_stops} times"
    pid = previous.pid if previous.pid is not None else "unknown"
    return (f"the previous run did not stop cleanly (pid {pid}, started {started}, last known alive"
            f" {alive}): {_CAUSES.get(previous.cause, previous.cause)}"
            + (f"; {recovery}" if recovery else "")
            + f"; this state directory has seen that {times}")


def journal_recovery(journal: JournalSnapshot) -> str:
    """What the journal's recovery at this start found of a run that ended unclean, for
    :func:`unclean_line`: the streams whose torn tail it cut (a write the end interrupted, never
    acknowledged) and the records damaged data took (each stream's losses since it opened,
    reasons ``torn`` and ``corrupt``).

    :param journal: the journal's snapshot once it has opened its streams.
    """
    torn = [stream.name for stream in journal.streams if any(loss.reason == "torn" for loss in stream.losses)]
    corrupt = sum(loss.records for stream in journal.streams for loss in stream.losses if loss.reason == "corrupt")
    found = []
    if torn:
        found.append(f"the journal cut a torn tail from {', '.join(torn)}")
    if corrupt:
        found.append(f"the journal lost {corrupt} record{'s' if corrupt != 1 else ''} to damaged data")
    return "; ".join(found) or "the journal found no torn or damaged data"


def _number(value: Any) -> float | None:
    """``value`` when it is a finite number (not a boolean: JSON's ``Infinity`` and ``NaN`` are
    read too), else ``None``."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    number = float(value)
    return number if math.isfinite(number) else None
