"""Run ``twistd gateway`` as a real child process in trial tests."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from twisted.internet import protocol
from twisted.internet.defer import Deferred

TWISTD = str(Path(sys.executable).parent / "twistd")



class GatewayProcess(protocol.ProcessProtocol):
    """Collects a twistd process's output; fires ``ended`` with its status and ``ready`` when it is up."""

    def __init__(self, ready_line: bytes = b"gateway started") -> None:
        self.output = b""
        self.ready_line = ready_line
        self.ready: Deferred[None] = Deferred()
        self.ended: Deferred[object] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.output += data
        if self.ready_line in self.output and not self.ready.called:
            self.ready.callback(None)

    errReceived = outReceived

    def processEnded(self, reason) -> None:
        if not self.ready.called:
            self.ready.errback(reason)
        self.ended.callback(reason.value)


def spawn_gateway(test: Any, reactor: Any, *args: str, ready_line: bytes = b"gateway started") -> GatewayProcess:
    """Start ``twistd <args>`` (through this interpreter); killed and waited for on cleanup."""
    proc = GatewayProcess(ready_line)
    # Through this interpreter: a venv's twistd script may name another one in its shebang
    # (the .deb's build venv lives elsewhere than where it is installed).
    transport = reactor.spawnProcess(proc, sys.executable, [sys.executable, TWISTD, *args], env=os.environ.copy())
    # Cleanups run last-in first-out: kill a process still running, then wait for its end.
    test.addCleanup(lambda: proc.ended)
    test.addCleanup(lambda: proc.ended.called or transport.signalProcess("KILL"))
    proc.transport = transport
    return proc
