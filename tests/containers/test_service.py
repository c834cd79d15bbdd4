"""The containers service's start: podman's own service not answering does not stop the gateway."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from gateway.apps.logs import AppLogWriter
from gateway.apps.settings import AppsSettings
from gateway.containers.errors import RuntimeUnavailable
from gateway.containers.service import ContainersService
from gateway.containers.settings import ContainersSettings


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
