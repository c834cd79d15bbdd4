"""The containers service's start: podman's own service not answering does not stop the gateway."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import tempfile
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from gateway.apps.logs import AppLogWriter
from gateway.apps.process import ProcessLauncher
from gateway.apps.settings import AppsSettings
from gateway.containers.errors import RuntimeUnavailable
from gateway.containers.podman_service import PodmanService
from gateway.containers.service import ContainersService
from gateway.containers.settings import ContainersSettings
from gateway.errors import AppError
from tests.apps.fakes import FakeProcessReactor
from tests.containers.fakes import FakeRuntime
from tests.steppingclock import SteppingClock


def recording_launcher(reactor: FakeProcessReactor) -> ProcessLauncher:
    """A launcher for the fake reactor whose signals to process groups the reactor records
    (the fake processes' pids are no real processes' to signal)."""
    return ProcessLauncher(reactor, kill_group=reactor.kill_group, kill=reactor.kill_group)


class SilentPodman:
    """A podman service that was started but never answered within its ready timeout."""

    def __init__(self) -> None:
        self.stopped = False

    def start(self) -> Deferred[None]:
        return fail(RuntimeUnavailable("podman's socket does not answer: connection refused"))

    def stop(self) -> Deferred[None]:
        self.stopped = True
        return succeed(None)


class LoadRecorder:
    def __init__(self) -> None:
        self.loads = 0

    def load(self) -> Deferred[None]:
        self.loads += 1
        return succeed(None)


class StartTests(SynchronousTestCase):
    def test_a_podman_service_that_does_not_answer_does_not_fail_the_start(self) -> None:
        """The gateway starts without podman: its service stays supervised (not stopped), the
        error is logged, and the containers' state is loaded, to follow the runtime once it
        answers (the load retries the runtime by itself)."""
        state = Path(self.mktemp())
        client: Any = object()  # (never used: podman is replaced below)
        service = ContainersService(ContainersSettings(enabled=True), AppsSettings(), state, Clock(),
                                    AppLogWriter(1 << 20), client=client)
        podman, operations = SilentPodman(), LoadRecorder()
        service.podman, service.operations = podman, operations  # type: ignore[assignment]
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        self.successResultOf(service.startService())
        self.assertEqual((podman.stopped, operations.loads), (False, 1))
        [logged] = [formatEvent(e) for e in events if e.get("log_level") == LogLevel.error]
        self.assertIn("podman's service does not answer yet (podman's socket does not answer", logged)


class PodmanServiceSocketTests(SynchronousTestCase):
    """What ``PodmanService.start`` finds in its socket's place."""

    def service(self, socket_path: Path) -> tuple[PodmanService, FakeProcessReactor]:
        reactor = FakeProcessReactor()
        return PodmanService(("podman",), socket_path, FakeRuntime(), reactor, AppLogWriter(1 << 20),
                             socket_path.parent / "logs", 1.0, 8.0, launcher=recording_launcher(reactor)), reactor

    def short_directory(self) -> Path:
        directory = Path(tempfile.mkdtemp(prefix="gwpod-"))  # short: the test binds the socket itself
        self.addCleanup(shutil.rmtree, directory, True)
        return directory

    def test_a_socket_another_process_listens_on_stays(self) -> None:
        """A socket a process listens on (another gateway's podman service on the same
        containers.socket) is left as it is and the start fails saying so; it was unlinked, and
        the other gateway's podman service, running on, could be reached no more."""
        path = self.short_directory() / "podman.sock"
        with socket.socket(socket.AF_UNIX) as listener:
            listener.bind(str(path))
            listener.listen()
            podman, reactor = self.service(path)
            failure = self.failureResultOf(podman.start(), AppError)
            self.assertEqual(str(failure.value),
                             f"containers: a process listens on podman's socket {path} already (another gateway's"
                             " podman service, or systemd's podman.socket): give each gateway its own"
                             " containers.socket, or set containers.start_service: false to use the one that runs")
            self.assertTrue(stat.S_ISSOCK(os.stat(path).st_mode))
            self.assertEqual(reactor.processes, [])

    def test_a_socket_left_by_a_service_that_ended_is_replaced(self) -> None:
        """A socket file nobody listens on (its service ended) is removed and the service started."""
        path = self.short_directory() / "podman.sock"
        with socket.socket(socket.AF_UNIX) as left:
            left.bind(str(path))
        podman, reactor = self.service(path)
        self.successResultOf(podman.start())
        self.assertFalse(path.exists())
        [spawned] = reactor.processes
        self.assertIn(f"unix://{path}", spawned.args)


    def test_an_end_on_its_own_names_the_log_file(self) -> None:
        """The warning of a podman service that died names podman-service.log, where its output
        is (docs/containers.md). It said 'see why in its log (gatewayctl apps logs
        podman-service)', which answers "no app or program 'podman-service'": the service is
        no app the admin API lists."""
        path = self.short_directory() / "podman.sock"
        podman, reactor = self.service(path)
        self.successResultOf(podman.start())
        reactor.advance(1)  # (up past its startsecs)
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        reactor.last.exit(None, signal.SIGKILL)
        [line] = [formatEvent(e) for e in events if "on its own" in formatEvent(e)]
        self.assertEqual(line, "apps: podman-service killed by signal 9 (SIGKILL) after 1.0s, on its own: see why"
                               f" in its log ({path.parent / 'logs' / 'podman-service.log'})")


    def test_a_service_that_keeps_failing_to_start_is_tried_for_ever(self) -> None:
        """docs/containers.md: the podman service is restarted for as long as it stays down.
        One that kept ending before its startsecs (a broken podman) was FATAL after 1000 tries
        (about 17 hours at the 60 s cap), never tried again until the gateway restarted: its
        containers were left unsupervised."""
        from gateway.apps.process import ProgramState

        path = self.short_directory() / "podman.sock"
        podman, reactor = self.service(path)
        self.successResultOf(podman.start())
        for _ in range(1500):
            reactor.last.exit(1)
            reactor.advance(8)  # (the restart delay's cap here)
        self.assertIs(podman.process.state, ProgramState.STARTING)
        self.assertEqual(len(reactor.processes), 1501)
        # Each end's group is killed in the fake alone: the real os.killpg on the fake pids 1001
        # to 2500 SIGKILLed whatever real process groups had those ids (the test run's shell).
        self.assertEqual(reactor.signals, [(pid, signal.SIGKILL) for pid in range(1001, 2501)])


class PodmanServiceReadyTests(SynchronousTestCase):
    """``PodmanService.start`` waits ``ready_timeout`` seconds in all for the service to answer."""

    def test_a_service_that_answers_slowly_fails_the_start_in_time(self) -> None:
        """docs/containers.md: the gateway waits up to 30 s at its start. A ping that hangs (a
        service that accepts and does not answer) is given up when the 30 s are over: only the
        pauses between pings were counted, and each ping could wait the runtime's request
        timeout (60 s) more."""
        reactor = FakeProcessReactor()
        runtime = FakeRuntime()
        pings: list[Deferred[None]] = []

        def ping() -> Deferred[None]:
            pings.append(Deferred())
            return pings[-1]

        runtime.ping = ping  # type: ignore[method-assign]
        directory = Path(tempfile.mkdtemp(prefix="gwpod-"))
        self.addCleanup(shutil.rmtree, directory, True)
        socket_path = directory / "podman.sock"
        podman = PodmanService(("podman",), socket_path, runtime, reactor, AppLogWriter(1 << 20),
                               directory / "logs", 1.0, 8.0, launcher=recording_launcher(reactor))
        started = podman.start()
        self.assertNoResult(started)
        reactor.advance(29.9)
        self.assertNoResult(started)
        reactor.advance(0.1)
        failure = self.failureResultOf(started, RuntimeUnavailable)
        self.assertEqual(str(failure.value), f"podman's service did not answer on {socket_path} within 30 s")
        self.assertEqual(len(pings), 1)

    def test_a_step_of_the_wall_clock_does_not_end_the_wait(self) -> None:
        """The 30 s are counted on a clock that does not step: NTP stepping the clock of a
        gateway booted at 1970 forward by years while the service comes up does not fail the
        start at the next refused ping (it did: the deadline was the wall clock's), and a step
        back does not stretch the wait."""

        class SteppingProcessReactor(FakeProcessReactor, SteppingClock):
            pass

        for step in (56 * 365 * 86400.0, -3600.0):
            reactor = SteppingProcessReactor()
            runtime = FakeRuntime()
            pings: list[float] = []

            def ping() -> Deferred[None]:
                pings.append(reactor.steady_seconds())  # (it started at 0)
                return fail(RuntimeUnavailable("not up yet"))

            runtime.ping = ping  # type: ignore[method-assign]
            directory = Path(tempfile.mkdtemp(prefix="gwpod-"))
            self.addCleanup(shutil.rmtree, directory, True)
            podman = PodmanService(("podman",), directory / "podman.sock", runtime, reactor, AppLogWriter(1 << 20),
                                   directory / "logs", 1.0, 8.0, launcher=recording_launcher(reactor))
            started = podman.start()
            reactor.advance(0.1)
            reactor.step(step)
            reactor.advance(0.1)
            self.assertNoResult(started)
            reactor.pump([0.1] * 290)  # (29.2 s in all)
            self.assertNoResult(started)
            reactor.pump([0.1] * 10)
            self.failureResultOf(started, RuntimeUnavailable)
            self.assertGreaterEqual(pings[-1], 30.0)
