"""Runs a one-off command (``install.sh``, a health check) in its own process group, bounded;
like a program, it is killed when the gateway dies (see :mod:`gateway.apps.launch`), and a
recorded one's group is stopped at the next start (see :mod:`gateway.apps.leftovers`); what a
recorded one started that left its group (a daemon) is killed when it ends."""

from __future__ import annotations

import signal
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

from gateway.apps.execsize import check_exec_size
from gateway.apps.launch import launch_command
from gateway.apps.process import ProcessLauncher, exit_status

MAX_OUTPUT = 1024 * 1024
#: The variable that marks what one run of a recorded command (and everything it starts)
#: belongs to: a fresh id each run, beside the gateway run's ``GATEWAY_RUN_ID``.
COMMAND_ID_VARIABLE = "GATEWAY_COMMAND_ID"


@dataclass(frozen=True)
class CommandResult:
    """How a command ended.

    :param exitstatus: its exit code, minus the signal that killed it, or None on timeout.
    :param output: stdout and stderr interleaved (the last ``MAX_OUTPUT`` bytes).
    """

    exitstatus: int | None
    output: bytes

    @property
    def ok(self) -> bool:
        """Whether it exited 0 in time."""
        return self.exitstatus == 0


class _Collect(ProcessProtocol):
    def __init__(self, done: Deferred[CommandResult], launcher: ProcessLauncher, name: str | None,
                 env: dict[str, str]) -> None:
        self._done = done
        self._launcher = launcher
        self._name = name
        self._env = env
        self._looked: Deferred[None] = succeed(None)  # the look for its daemons, once it has exited
        self._output = bytearray()
        self.timed_out = False
        self.pid: int | None = None
        self._status: int | None = None

    def connectionMade(self) -> None:
        transport: Any = self.transport
        self.pid = transport.pid
        transport.closeStdin()

    def outReceived(self, data: bytes) -> None:
        self._output += data
        del self._output[:-MAX_OUTPUT]

    errReceived = outReceived

    def processExited(self, reason: Failure) -> None:
        self._status = None if self.timed_out else exit_status(reason)
        # Whatever it left running in its group goes with it.
        if self.pid is not None:
            self._launcher.signal_group(self.pid, signal.SIGKILL)
            if self._name is not None:
                self._launcher.ended(self._name, self.pid)
                # ... and what it started that left the group (setsid(): a daemon).
                self._looked = self._launcher.sweep(self._name, self.pid, self._env, COMMAND_ID_VARIABLE)

    def processEnded(self, reason: Failure) -> None:
        # Output can still arrive between processExited and here: read it all first.
        result = CommandResult(self._status, bytes(self._output))

        def report(_: object) -> None:
            if not self._done.called:  # (a cancelled run has failed already)
                self._done.callback(result)

        self._looked.addCallback(report)


def run_command(reactor: Any, launcher: ProcessLauncher, argv: tuple[str, ...], cwd: Path,
                env: dict[str, str], timeout: float, name: str | None = None) -> Deferred[CommandResult]:
    """Run ``argv`` in ``cwd``; kill its whole group after ``timeout`` seconds or at its end.

    :param reactor: an IReactorProcess and IReactorTime.
    :param launcher: signals the process group.
    :param argv: the command.
    :param cwd: its working directory.
    :param env: its complete environment.
    :param timeout: seconds it may run.
    :param name: what its group is recorded as while it runs, as a program's is (the
        launcher's records: the next start stops what a killed gateway left of it), and what
        its daemons are killed as when it ends (found by :data:`COMMAND_ID_VARIABLE`); None:
        neither.
    :return: fires with a CommandResult once the group is gone, its pipes are closed and (a
        named one's) daemons are killed; cancelling it kills the group at once (it fails with
        CancelledError).
    """
    started: list[int] = []
    if name is not None:
        env = launcher.with_run_id({**env, COMMAND_ID_VARIABLE: uuid.uuid4().hex})

    def cancel(_: Deferred[CommandResult]) -> None:
        if started:
            protocol.timed_out = True
            launcher.signal_group(started[0], signal.SIGKILL)

    done: Deferred[CommandResult] = Deferred(cancel)
    protocol = _Collect(done, launcher, name, env)
    try:
        executable, args = launch_command(argv, max_processes=launcher.max_processes, directory=str(cwd))
        check_exec_size(executable, args, env)
        transport = reactor.spawnProcess(protocol, executable, args, env=env)
    except OSError as exc:
        done.callback(CommandResult(127, f"cannot run {argv[0]}: {exc}\n".encode()))
        return done
    pid = transport.pid
    started.append(pid)
    if name is not None:
        launcher.spawned(name, pid)

    def expire() -> None:
        protocol.timed_out = True
        launcher.signal_group(pid, signal.SIGKILL)
        # A daemon that left the group may hold our pipes: stop waiting for them.
        transport.loseConnection()

    timer = reactor.callLater(timeout, expire)

    def finish(result: CommandResult | Failure) -> CommandResult | Failure:
        if timer.active():
            timer.cancel()
        return result

    return done.addBoth(finish)
