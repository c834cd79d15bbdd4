"""Test doubles: a process reactor that spawns nothing, a recorder of group signals, and a
process table that knows the fake processes."""

from __future__ import annotations

from typing import Any, Iterator

from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor
from twisted.python.failure import Failure

from gateway.apps.leftovers import ProcessInfo, ProcessTable
from gateway.apps.launch import LAUNCH

#: How many arguments the launcher puts before the command
#: (python -I -S launch.py <pid> <user> <max-processes> <cgroup.procs> <nft> <rules> <directory>).
LAUNCHER_ARGS = 11


class FakeProcessTable(ProcessTable):
    """The fake reactor's live processes, as /proc would show them (start time: 10 x pid)."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, dict[str, str]] = {}

    def boot_id(self) -> str:
        return "fake-boot"

    def info(self, pid: int) -> ProcessInfo | None:
        return ProcessInfo(pid, pid, 10 * pid, False) if pid in self.live else None

    def processes(self) -> Iterator[ProcessInfo]:
        for pid in sorted(self.live):
            yield ProcessInfo(pid, pid, 10 * pid, False)

    def variables(self, pid: int) -> frozenset[bytes] | None:
        return frozenset(f"{name}={value}".encode() for name, value in self.live.get(pid, {}).items())


class FakeProcess:
    """What spawnProcess returns: a pid, a protocol, and a way to end it."""

    def __init__(self, protocol: Any, args: list[str], env: dict[str, str], path: str | None,
                 uid: int | None, pid: int) -> None:
        self.protocol = protocol
        self.args = args
        self.env = env
        self.path = path
        self.uid = uid
        self.pid = pid
        self.stdin_closed = False
        self.table: FakeProcessTable | None = None

    @property
    def command(self) -> list[str]:
        """The command behind the launcher (``args`` without ``python -I -S launch.py <pid> <user> <max-processes> <cgroup.procs> <nft> <rules> <directory>``)."""
        if len(self.args) >= LAUNCHER_ARGS and self.args[3] == LAUNCH:
            return self.args[LAUNCHER_ARGS:]
        return self.args

    def closeStdin(self) -> None:
        self.stdin_closed = True

    def exit(self, code: int | None = 0, signal: int | None = None) -> None:
        """End the process with an exit code or a signal."""
        if self.table is not None:
            self.table.live.pop(self.pid, None)
        if code == 0 and signal is None:
            reason = Failure(ProcessDone(0))
        else:
            reason = Failure(ProcessTerminated(code, signal))
        self.protocol.processExited(reason)
        self.protocol.processEnded(reason)


class FakeProcessReactor(MemoryReactor, Clock):
    """MemoryReactor + Clock with a spawnProcess that records fake processes."""

    def __init__(self) -> None:
        MemoryReactor.__init__(self)
        Clock.__init__(self)
        self.processes: list[FakeProcess] = []
        self.table = FakeProcessTable()
        self.signals: list[tuple[int, int]] = []
        self.spawn_error: Exception | None = None
        self.exit_during_spawn: int | None = None
        self._next_pid = 1000

    def spawnProcess(self, protocol: Any, executable: str, args: list[str] = (),  # type: ignore[assignment]
                     env: dict[str, str] | None = None, path: str | None = None,
                     uid: int | None = None, gid: int | None = None, **kwargs: Any) -> FakeProcess:
        if self.spawn_error is not None:
            raise self.spawn_error
        self._next_pid += 1
        process = FakeProcess(protocol, list(args), dict(env or {}), path, uid,
                              self._next_pid)
        process.table = self.table
        self.table.live[process.pid] = process.env
        protocol.makeConnection(process)
        self.processes.append(process)
        if self.exit_during_spawn is not None:
            # Twisted reaps a child that already exited inside spawnProcess.
            protocol.processExited(Failure(ProcessTerminated(self.exit_during_spawn)))
        return process

    def kill_group(self, pid: int, signum: int) -> None:
        """Record a signal sent to a process group."""
        self.signals.append((pid, signum))

    @property
    def last(self) -> FakeProcess:
        return self.processes[-1]
