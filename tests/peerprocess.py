"""A real peer program the integration tests start (mosquitto, ministack, Prometheus): what
it printed, when it ended, waiting for its port, stopping it."""

from __future__ import annotations

from typing import Any

from twisted.internet import error, protocol
from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.internet.task import deferLater

from tests.ports import listened_by

#: Bytes of a peer's output kept for error messages (the last ones).
OUTPUT_KEPT = 20000


class PeerOutput(protocol.ProcessProtocol):
    """Keeps the last :data:`OUTPUT_KEPT` bytes a peer printed (stdout and stderr) and fires
    ``ended`` when it exits."""

    def __init__(self) -> None:
        self.ended: Deferred[None] = Deferred()
        self.output = b""

    def outReceived(self, data: bytes) -> None:
        self.output = (self.output + data)[-OUTPUT_KEPT:]

    errReceived = outReceived

    def processEnded(self, reason: Any) -> None:
        self.ended.callback(None)


class PeerProcess:
    """One peer program on ``127.0.0.1:port``, started with :meth:`spawn`.

    :param reactor: the reactor that runs it.
    :param port: the TCP port it listens on.
    """

    def __init__(self, reactor: Any, port: int) -> None:
        self.reactor = reactor
        self.port = port
        self.proto: PeerOutput | None = None
        self.process: Any = None

    def spawn(self, executable: str, args: list[str], env: dict[str, str] | None = None) -> PeerOutput:
        """Start ``executable`` with ``args`` (``args[0]`` included); ``env=None``: the tests' environment."""
        self.proto = PeerOutput()
        self.process = self.reactor.spawnProcess(self.proto, executable, args, env=env)
        return self.proto

    @inlineCallbacks
    def wait_for_port(self, name: str, timeout: float, step: float) -> Any:
        """Poll every ``step`` s until the program itself listens on its port (not merely
        until a connection succeeds: another run's server may hold the port, and the program
        then fails to bind it).

        :raises RuntimeError: naming ``name`` with the end of its output, when the program
            exits first (a port already in use) or ``timeout`` s pass.
        """
        for _ in range(int(timeout / step)):
            if self.proto is None or self.proto.ended.called:
                break
            if listened_by(self.process.pid, self.port):
                return
            yield deferLater(self.reactor, step, lambda: None)
        output = self.proto.output[-2000:] if self.proto is not None else b""
        raise RuntimeError(f"{name} did not start: {output!r}")

    def stop(self) -> Deferred[None]:
        """SIGTERM, and wait for it to exit."""
        if self.proto is None or self.proto.ended.called:
            return succeed(None)
        try:
            self.process.signalProcess("TERM")
        except error.ProcessExitedAlready:
            pass
        return self.proto.ended
