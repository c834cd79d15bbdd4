"""``podman system service`` run by the gateway, when no runtime socket is configured.

Supervised like a hosted program (:class:`gateway.apps.process.ProgramProcess`: restarted with
the same backoff when it dies), under ``setpriv --pdeathsig TERM`` so it ends with the gateway
even when the gateway is killed. Containers do not depend on it: podman's ``conmon`` keeps
each one running in its own session, and the gateway reattaches when the service is back.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, TimeoutError as PingTimeout, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.logger import Logger

from gateway.apps.logs import AppLogWriter
from gateway.apps.names import PODMAN_SERVICE
from gateway.apps.process import ProcessLauncher, ProgramProcess, ProgramSpec
from gateway.apps.settings import ProgramSettings
from gateway.clockstep import steady_seconds
from gateway.containers.errors import RuntimeUnavailable
from gateway.containers.runtime import ContainerRuntime
from gateway.errors import AppError
from gateway.filelayer import makedirs
from gateway.unixsocket import listened_on

log = Logger()


class PodmanService:
    """Runs ``podman system service --time=0 unix://<socket>`` and waits until it answers.

    :param podman_command: podman and its global flags.
    :param socket: the API socket to create.
    :param runtime: used to ask whether the service answers.
    :param reactor: an IReactorProcess and IReactorTime.
    :param writer: the apps' log writer (its output goes to ``<logs>/podman-service.log``).
    :param logs_dir: ``<state>/logs/apps``.
    :param backoff_initial: first restart delay.
    :param backoff_max: restart delay cap.
    :param ready_timeout: seconds to wait for the socket to answer.
    :param launcher: spawns it and signals its process group (tests pass one whose signals a
        fake reactor records: the real one would signal the real process groups of fake pids).
    """

    def __init__(self, podman_command: tuple[str, ...], socket: Path, runtime: ContainerRuntime,
                 reactor: Any, writer: AppLogWriter, logs_dir: Path, backoff_initial: float,
                 backoff_max: float, ready_timeout: float = 30.0, launcher: ProcessLauncher | None = None) -> None:
        self._socket = socket
        self._runtime = runtime
        self._reactor = reactor
        self._ready_timeout = ready_timeout
        # (startretries: no end to its tries, for as long as it stays down: a FATAL service would
        # leave the containers unsupervised until the gateway restarts)
        settings = ProgramSettings(command="", autorestart="true", startsecs=0.5, startretries=sys.maxsize,
                                   stopwaitsecs=10.0, redirect_stderr=True)
        argv = ("setpriv", "--pdeathsig", "TERM", *podman_command, "system", "service", "--time=0",
                f"unix://{socket}")
        spec = ProgramSpec(PODMAN_SERVICE, "containers", "runtime", settings, argv, socket.parent,
                           dict(os.environ), logs_dir / f"{PODMAN_SERVICE}.log", None, listed=False)
        self.process = ProgramProcess(spec, launcher or ProcessLauncher(reactor), reactor, writer, backoff_initial,
                                      backoff_max)

    @inlineCallbacks
    def start(self) -> Any:
        """Start the service; fires once its socket answers. A socket file left in its place
        (by a service that ended) is replaced; one that answers is another process's (another
        gateway's podman service on the same ``containers.socket``, systemd's ``podman.socket``)
        and stays as it is.

        :raises RuntimeUnavailable: when it does not answer in ``ready_timeout`` seconds.
        :raises AppError: when a process listens on the socket already.
        """
        makedirs(str(self._socket.parent))
        if listened_on(self._socket):
            raise AppError(f"containers: a process listens on podman's socket {self._socket} already (another"
                           " gateway's podman service, or systemd's podman.socket): give each gateway its own"
                           " containers.socket, or set containers.start_service: false to use the one that runs")
        self._socket.unlink(missing_ok=True)
        self.process.start()
        # The whole wait is bounded, each ping's time included: a service that accepts but
        # answers slowly (a ping waits up to the runtime's request timeout) held the start
        # past ready_timeout when only the pauses between pings were counted.
        # (On the steady clock: NTP may step the wall clock by years while the service comes up.)
        deadline = steady_seconds(self._reactor) + self._ready_timeout
        while True:
            left = deadline - steady_seconds(self._reactor)
            try:
                yield self._runtime.ping().addTimeout(max(left, 0.0), self._reactor)
                log.info("containers: podman service answers on {socket}", socket=str(self._socket))
                return
            except RuntimeUnavailable:
                if steady_seconds(self._reactor) >= deadline:
                    raise
            except PingTimeout:
                raise RuntimeUnavailable(f"podman's service did not answer on {self._socket} within"
                                         f" {self._ready_timeout:g} s") from None
            # Waiting for a service to come up, once at start: not polling for state.
            yield deferLater(self._reactor, 0.1, lambda: None)

    def stop(self) -> Deferred[None]:
        """Stop the service (containers keep running); fires once it has exited."""
        def closed(_: None) -> None:
            self.process.close()

        return self.process.stop().addCallback(closed)
