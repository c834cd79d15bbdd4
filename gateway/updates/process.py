"""Running a short-lived child process with a time limit, keeping the tail of its output."""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.internet import protocol
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessExitedAlready
from twisted.python.failure import Failure

_TAIL = 4096


@dataclass(frozen=True)
class ProcessResult:
    """How a child process ended.

    :param exit_code: its exit status; None when a signal (or the time limit) ended it.
    :param output: the last 4 KiB of its stdout and stderr together.
    :param timed_out: True when the time limit killed it.
    """

    exit_code: int | None
    output: str
    timed_out: bool = False


class _Collector(protocol.ProcessProtocol):
    def __init__(self, done: Deferred[ProcessResult]) -> None:
        self.done = done
        self.output = bytearray()
        self.timed_out = False

    def outReceived(self, data: bytes) -> None:
        self.output += data
        del self.output[:-_TAIL]

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        code = 0 if reason.check(ProcessDone) else getattr(reason.value, "exitCode", None)
        self.done.callback(ProcessResult(code, self.output.decode("utf-8", "replace"), self.timed_out))


def run_process(
    reactor: Any, argv: Sequence[str], cwd: Path, timeout: float, env: Mapping[str, str] | None = None
) -> Deferred[ProcessResult]:
    """Run ``argv`` in ``cwd`` in a session of its own; when it runs longer than ``timeout``
    seconds, its whole process group is killed (SIGKILL), children included.

    :param reactor: provides ``spawnProcess`` and ``callLater``.
    :param argv: the command; ``argv[0]`` must be a path.
    :param cwd: its working directory.
    :param timeout: seconds before it is killed.
    :param env: extra environment variables (added to the gateway's own).
    :return: fires with a :class:`ProcessResult` when it has exited.
    """
    done: Deferred[ProcessResult] = Deferred()
    collector = _Collector(done)
    environment = {**os.environ, **(env or {})}
    setsid = shutil.which("setsid")
    command = [setsid, *argv] if setsid else list(argv)
    transport = reactor.spawnProcess(collector, command[0], command, env=environment, path=str(cwd))

    def kill() -> None:
        collector.timed_out = True
        try:
            if setsid:
                os.killpg(transport.pid, signal.SIGKILL)
            else:
                transport.signalProcess("KILL")
        except (ProcessExitedAlready, ProcessLookupError):
            pass

    timer = reactor.callLater(timeout, kill)

    def stop_timer(result: ProcessResult) -> ProcessResult:
        if timer.active():
            timer.cancel()
        return result

    return done.addCallback(stop_timer)
