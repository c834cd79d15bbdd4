"""ContainersService: container apps in the gateway's tree, beside the hosted processes."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from treq.client import HTTPClient
from twisted.application.service import Service
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.logger import Logger

from gateway.apps.logs import AppLogWriter
from gateway.apps.settings import AppsSettings
from gateway.blocking import in_reactor_threads
from gateway.containers.errors import RuntimeUnavailable
from gateway.containers.images import ImageFetcher
from gateway.containers.operations import ContainerOperations
from gateway.containers.podman import PodmanRuntime, container_oom_score_adj, unix_http_client
from gateway.containers.podman_service import PodmanService
from gateway.containers.settings import ContainersSettings, podman_socket
from gateway.containers.snapshot import ContainersSnapshot
from gateway.containers.store import ContainerStore
from gateway.containers.supervisor import ContainerSupervisor

log = Logger()


class ContainersService(Service):
    """Runs container apps through podman; they share the apps' logs, backoff and health window.

    ``startService`` starts podman's API service (``start_service``), follows the
    runtime's events and reconciles the containers with the desired state. ``stopService``
    stops following and stops the API service; the containers themselves keep running (the
    gateway adopts them again when it starts).

    :param settings: the ``containers`` section.
    :param apps: the ``apps`` section (backoff, health window).
    :param state_dir: the gateway's state directory.
    :param reactor: an IReactorProcess, IReactorTime, IReactorUNIX and IReactorThreads.
    :param writer: the apps' log writer.
    :param taken: says whether a name is a hosted program's.
    :param client: the HTTP client that reaches podman (default: over its unix socket).
    :param blocking: runs a blocking callable off the reactor thread.
    """

    def __init__(self, settings: ContainersSettings, apps: AppsSettings, state_dir: Path, reactor: Any,
                 writer: AppLogWriter, taken: Callable[[str], bool] = lambda name: False,
                 client: HTTPClient | None = None,
                 blocking: Callable[[Callable[[], Any]], Deferred[Any]] | None = None) -> None:
        if blocking is None:
            blocking = in_reactor_threads(reactor)
        socket = podman_socket(settings, state_dir)
        self.runtime = PodmanRuntime(client or unix_http_client(reactor, str(socket)), reactor,
                                     settings.api_version, settings.request_timeout, settings.pull_timeout,
                                     container_oom_score_adj())
        logs_dir = state_dir / "logs" / "apps"
        self.podman = None if not settings.start_service else PodmanService(
            settings.podman_command, socket, self.runtime, reactor, writer, logs_dir,
            apps.backoff_initial, apps.backoff_max)
        self.supervisor = ContainerSupervisor(self.runtime, reactor, writer, logs_dir, apps.backoff_initial,
                                              apps.backoff_max, settings.startretries)
        fetcher = ImageFetcher(self.runtime, blocking, settings.insecure_registries,
                               Path(settings.credentials_file) if settings.credentials_file else None)
        self.operations = ContainerOperations(self.runtime, self.supervisor, fetcher, ContainerStore(state_dir),
                                              reactor, blocking, apps.health_window, settings.containers, taken)

    @inlineCallbacks
    def startService(self) -> Any:
        """Start podman's service if the gateway runs it, then load and reconcile (in the
        background: the start does not wait for an image to be pulled); a service that does not
        answer in time is logged and left supervised, and the containers are taken in hand once
        it answers (the gateway's start does not fail for it)."""
        Service.startService(self)
        if self.podman is not None:
            try:
                yield self.podman.start()
            except RuntimeUnavailable as exc:
                # The rest of the gateway does not wait on podman: its service stays supervised
                # (restarted when it dies), and the containers follow once it answers.
                log.error("containers: podman's service does not answer yet ({error}); the gateway goes on "
                          "without it, and takes the containers in hand once it answers (its output: "
                          "podman-service.log)", error=str(exc))
            except Exception:
                yield self.podman.stop()
                raise
        yield self.operations.load()

    def snapshot(self) -> ContainersSnapshot:
        """Whether the service reaches podman now (no I/O)."""
        return ContainersSnapshot(self.supervisor.runtime_failing.now)

    @inlineCallbacks
    def stopService(self) -> Any:
        """Stop following the runtime and stop podman's service, then wait for the operation
        under way to end where it stands (see :meth:`ContainerOperations.close`); containers keep
        running."""
        Service.stopService(self)
        self.operations.close()
        yield self.supervisor.unfollow()
        for name in list(self.supervisor.units):
            self.supervisor.forget(name)
        if self.podman is not None:
            yield self.podman.stop()
        yield self.operations.settled()
