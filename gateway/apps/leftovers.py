"""Programs a previous gateway run left running: recorded at each spawn, stopped at the next start.

A gateway killed with SIGKILL (or by the OOM killer) cannot stop its programs. The direct
child of each dies with it (see :mod:`gateway.apps.launch`), but what that child started
lives on in its process group. So every program's group is recorded in
``<state>/apps/processes.json`` while it runs, and the next start stops whatever is left
of those groups before it starts anything.

A pid alone proves nothing: after the gateway died the number may have been given to an
unrelated process. A process counts as a leftover only when the machine has not rebooted
since (``/proc/sys/kernel/random/boot_id``), it is in a recorded group, and either it is the
group's leader with the recorded start time (``/proc/<pid>/stat``, field 22) or its
environment carries the run id the gateway gave every program (``GATEWAY_RUN_ID``). A group
with such a member is the gateway's: Linux does not reuse a group's number while any of its
members lives, so it is signalled as a whole.
"""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.atomic import read_json_object, set_aside, write_json_atomically
from gateway.clockstep import boot_id, steady_seconds

log = Logger()

#: The variable that tells a program (and whatever it starts) which gateway run started it.
RUN_ID_VARIABLE = "GATEWAY_RUN_ID"
#: Seconds leftovers get between SIGTERM and SIGKILL.
LEFTOVER_GRACE = 3.0
_POLL = 0.1


@dataclass(frozen=True)
class ProcessInfo:
    """What ``/proc/<pid>/stat`` says about one process.

    :param pid: its id.
    :param group: its process group id.
    :param start: its start time in clock ticks since boot.
    :param zombie: it has exited and waits to be reaped.
    """

    pid: int
    group: int
    start: int
    zombie: bool


class ProcessTable:
    """Reads the kernel's process table under ``/proc`` (Linux).

    :param proc: where procfs is mounted.
    """

    def __init__(self, proc: Path = Path("/proc")) -> None:
        self.proc = proc

    def boot_id(self) -> str:
        """This boot's random id; "" where the kernel has none."""
        return boot_id(self.proc)

    def info(self, pid: int) -> ProcessInfo | None:
        """The process ``pid``, or None when there is none."""
        try:
            # (bytes: the command name is any bytes, cut at 15 by the kernel, in the middle of
            # a character too: as text, such a process was not there)
            stat = (self.proc / str(pid) / "stat").read_bytes()
        except OSError:
            return None
        # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
        fields = stat.rsplit(b")", 1)[-1].split()
        try:
            return ProcessInfo(pid, int(fields[2]), int(fields[19]), fields[0] == b"Z")
        except (IndexError, ValueError):
            return None

    def processes(self) -> Iterator[ProcessInfo]:
        """Every process now."""
        try:
            names = os.listdir(self.proc)
        except OSError:
            return
        for name in names:
            if name.isdigit():
                found = self.info(int(name))
                if found is not None:
                    yield found

    def has_variable(self, pid: int, assignment: bytes) -> bool | None:
        """Whether process ``pid``'s environment holds ``NAME=value``; None when it cannot be read."""
        variables = self.variables(pid)
        return None if variables is None else assignment in variables

    def variables(self, pid: int) -> frozenset[bytes] | None:
        """Process ``pid``'s environment (its ``NAME=value`` entries); None when it cannot be
        read (another user's), empty when the process is gone."""
        try:
            environ = (self.proc / str(pid) / "environ").read_bytes()
        except PermissionError:
            return None
        except OSError:
            return frozenset()
        return frozenset(environ.split(b"\0"))


@dataclass(frozen=True)
class GroupRecord:
    """One running program's process group, as recorded.

    :param group: the group id (the program's main process, its leader).
    :param start: the leader's start time (clock ticks since boot).
    :param boot: the boot id at the time.
    :param run: the gateway run's id (``GATEWAY_RUN_ID``).
    """

    group: int
    start: int
    boot: str
    run: str


class GroupRecords:
    """The groups of the programs running now, persisted atomically after every change.

    Changes come from the reactor thread; the reads of a spawned program's start time go
    through ``blocking``, and so do the writes, one at a time (a change during a write is
    written right after it).

    :param path: the record file.
    :param table: the process table.
    :param blocking: runs a blocking callable off the reactor thread.
    """

    def __init__(self, path: Path, table: ProcessTable,
                 blocking: Callable[[Callable[[], Any]], Deferred[Any]]) -> None:
        self.path = path
        self.table = table
        self.run_id = uuid.uuid4().hex
        self._blocking = blocking
        self._boot = table.boot_id()
        self._groups: dict[str, GroupRecord] = {}
        self._reading: dict[str, int] = {}  # program -> the group whose start time is being read
        self._reads = 0  # start times being read
        self._writing: Deferred[None] | None = None
        self._dirty = False
        self._failures = 0  # writes failed in a row
        self._idle: list[Deferred[None]] = []
        #: :meth:`escaped` questions for the next look at the processes, and whether one is under way
        self._asked: list[tuple[int | None, list[bytes], Deferred[set[int]]]] = []
        self._looking = False

    def spawned(self, name: str, pid: int) -> None:
        """Record that program ``name`` now runs as group ``pid`` (call right after the spawn,
        before its exit can be handled, so the pid is still its own).

        Its start time is read off the reactor thread; an :meth:`ended` (or another spawn of
        ``name``) that comes first drops the record: the reactor reaps a child and calls
        :meth:`ended` in one turn, so a read that was not dropped read the program itself."""
        self._reading[name] = pid
        self._reads += 1
        table = self.table
        reading = self._blocking(lambda: table.info(pid)).addCallback(self._read, name, pid)
        reading.addErrback(lambda failure: log.failure("apps: cannot record {name}'s group", failure, name=name))
        reading.addBoth(self._read_done)

    def _read(self, info: ProcessInfo | None, name: str, pid: int) -> None:
        if self._reading.get(name) != pid:
            return
        del self._reading[name]
        if info is not None:
            self._groups[name] = GroupRecord(pid, info.start, self._boot, self.run_id)
            self._save()

    def _read_done(self, _: object) -> None:
        self._reads -= 1
        self._when_idle()

    def ended(self, name: str, pid: int) -> None:
        """Forget program ``name``'s group ``pid`` (its group has been killed)."""
        if self._reading.get(name) == pid:
            del self._reading[name]
        record = self._groups.get(name)
        if record is not None and record.group == pid:
            del self._groups[name]
            self._save()

    def escaped(self, group: int | None, marks: list[bytes]) -> Deferred[set[int]]:
        """The process groups, other than ``group``, of the live processes whose environment holds
        every ``NAME=value`` of ``marks``: what a program started that left its group with
        ``setsid()`` (a daemon). Read off the reactor thread, in one look at every process for
        all the questions asked until it begins (the programs that stop together: a stop, a
        configuration change); a question asked while a look is under way waits for the next.
        A look for each program read every process's environment once per program: with
        many programs, work growing with their square."""
        answer: Deferred[set[int]] = Deferred()
        self._asked.append((group, marks, answer))
        if not self._looking:
            self._look()
        return answer

    def _look(self) -> None:
        asked, self._asked = self._asked, []
        self._looking = True
        table, questions = self.table, [(group, marks) for group, marks, _ in asked]
        looked = self._blocking(lambda: escaped_groups(table, questions))

        def answer(found: list[set[int]]) -> None:
            for (_, _, waiting), groups in zip(asked, found):
                waiting.callback(groups)

        def failed(failure: Failure) -> None:
            for _, _, waiting in asked:
                waiting.errback(failure)

        def next_look(_: object) -> None:
            self._looking = False
            if self._asked:
                self._look()

        looked.addCallbacks(answer, failed).addBoth(next_look)

    def _save(self) -> None:
        if self._writing is not None:
            self._dirty = True
            return
        snapshot = {name: asdict(record) for name, record in sorted(self._groups.items())}
        self._dirty = False
        self._writing = self._blocking(lambda: write_json_atomically(self.path, snapshot))
        self._writing.addCallbacks(self._recorded, self._not_recorded)
        self._writing.addBoth(self._written)

    def _recorded(self, _: object) -> None:
        if self._failures:
            log.info("apps: the running programs are recorded in {path} again, after {count} failed writes",
                     path=str(self.path), count=self._failures)
            self._failures = 0

    def _not_recorded(self, failure: Failure) -> None:
        """A write the disk refuses (full, read-only) is one error line until a write works
        again (a crash-looping program on a full disk fails two a cycle); the next change
        writes the whole record again. Anything else is a bug's traceback."""
        if not failure.check(OSError):
            log.failure("apps: cannot record running programs", failure)
            return
        self._failures += 1
        if self._failures == 1:
            log.error("apps: cannot record running programs in {path}: {error}; tried again at each start and exit"
                      " of a program, logged again once it works (until then a SIGKILL of the gateway may leave"
                      " what the programs started running)", path=str(self.path), error=failure.getErrorMessage())

    def _written(self, _: object) -> None:
        self._writing = None
        if self._dirty:
            self._save()
        else:
            self._when_idle()

    def _when_idle(self) -> None:
        """Fire :meth:`flush`'s waiters once nothing is being read or written."""
        if self._writing is None and not self._reads:
            waiters, self._idle = self._idle, []
            for waiter in waiters:
                waiter.callback(None)

    def flush(self) -> Deferred[None]:
        """Fires once every change so far is on disk (a spawn's too, whose start time is
        being read)."""
        waiter: Deferred[None] = Deferred()
        self._idle.append(waiter)
        self._when_idle()
        return waiter

    def load(self) -> dict[str, GroupRecord]:
        """The groups recorded by the previous run (blocking)."""
        try:
            raw = read_json_object(self.path)
            if raw is None:
                return {}
        except (OSError, ValueError) as exc:
            # (set aside: a directory in its place would refuse every write of the record)
            where = set_aside(self.path)  # (raises StateAccessError: the user may not read it)
            log.warn("apps: cannot read {path} ({error}): {where}; not looking for leftovers",
                     path=str(self.path), error=str(exc), where=where)
            return {}
        found = {}
        for name, value in raw.items():
            try:
                found[str(name)] = GroupRecord(int(value["group"]), int(value["start"]),
                                               str(value["boot"]), str(value["run"]))
            except (KeyError, TypeError, ValueError):
                log.warn("apps: ignoring a malformed entry {name} in {path}", name=name,
                         path=str(self.path))
        return found

    @inlineCallbacks
    def stop_leftovers(self, clock: Any, kill_group: Callable[[int, int], None],
                       grace: float = LEFTOVER_GRACE) -> Any:
        """Stop what the previous run left of its programs' groups, then forget that run.

        SIGTERM to each leftover group, SIGKILL after ``grace`` seconds to what remains; fires
        once they are gone (or after one more second of waiting for a killed group). Call it
        before starting any program.

        :param clock: an IReactorTime.
        :param kill_group: ``os.killpg``.
        :param grace: seconds between SIGTERM and SIGKILL.
        :return: a Deferred firing with the names of the programs whose leftovers were stopped.
        """
        previous = yield self._blocking(self.load)
        table = self.table
        groups: dict[str, int] = yield self._blocking(lambda: leftover_groups(previous, table))
        for name, group in sorted(groups.items()):
            log.warn("apps: {name} still runs from before the gateway's last stop (group {group}); "
                     "stopping it", name=name, group=group)
            _signal(kill_group, group, signal.SIGTERM)
        remaining: dict[str, int] = yield self._wait_gone(groups, clock, grace)
        for name, group in sorted(remaining.items()):
            log.warn("apps: {name}'s leftover group {group} ignored SIGTERM; killing it",
                     name=name, group=group)
            _signal(kill_group, group, signal.SIGKILL)
        yield self._wait_gone(remaining, clock, 1.0)
        if previous:
            yield self._blocking(lambda: write_json_atomically(self.path, {}))
        return sorted(groups)

    @inlineCallbacks
    def _wait_gone(self, groups: dict[str, int], clock: Any, limit: float) -> Any:
        deadline, remaining, table = steady_seconds(clock) + limit, groups, self.table
        while remaining and steady_seconds(clock) < deadline:
            yield deferLater(clock, _POLL, lambda: None)
            remaining = yield self._blocking(lambda: _alive(remaining, table))
        return remaining


def _signal(kill_group: Callable[[int, int], None], group: int, signum: int) -> None:
    try:
        kill_group(group, signum)
    except ProcessLookupError:
        pass


def leftover_groups(records: dict[str, GroupRecord], table: ProcessTable) -> dict[str, int]:
    """The recorded groups that still have a member of the gateway's (blocking).

    :return: program name -> group id, for the groups to stop.
    """
    boot = table.boot_id()
    wanted = {record.group: (name, record) for name, record in records.items()
              if record.boot == boot and boot}
    found: dict[str, int] = {}
    if not wanted:
        return found
    for info in table.processes():
        if info.group not in wanted or info.zombie:
            continue
        name, record = wanted[info.group]
        if name in found:
            continue
        variable = f"{RUN_ID_VARIABLE}={record.run}".encode()
        if info.pid == record.group:
            # (its environment, when readable, must agree: a program that replaced its own
            # environment is still found by its start time)
            ours = info.start == record.start and table.has_variable(info.pid, variable) is not False
        else:
            ours = info.start >= record.start and table.has_variable(info.pid, variable) is True
        if ours:
            found[name] = info.group
    return found


def escaped_groups(table: ProcessTable, questions: list[tuple[int | None, list[bytes]]]) -> list[set[int]]:
    """See :meth:`GroupRecords.escaped` (blocking): for each ``(group, marks)``, the groups
    found; each process's environment is read once. An environment that cannot be read
    (another user's, to a gateway that is not root) is not the gateway's."""
    found: list[set[int]] = [set() for _ in questions]
    for info in table.processes():
        if info.zombie:
            continue
        variables: frozenset[bytes] | None = None
        for (group, marks), groups in zip(questions, found):
            if info.group == group:
                continue
            if variables is None:
                variables = table.variables(info.pid) or frozenset()
            if all(mark in variables for mark in marks):
                groups.add(info.group)
    return found


def _alive(groups: dict[str, int], table: ProcessTable) -> dict[str, int]:
    members = {info.group for info in table.processes() if not info.zombie}
    return {name: group for name, group in groups.items() if group in members}
