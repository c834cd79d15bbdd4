"""The set of container units, fed by the runtime's event stream (no polling).

The stream is followed for as long as the service runs; when it ends (podman restarted,
its socket went away) it is opened again with backoff and the owner reconciles, so an
event missed meanwhile is made up for by reading every container's state once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from twisted.application.internet import backoffPolicy
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.apps.logs import AppLogWriter
from gateway.clockstep import steady_seconds
from gateway.containers.runtime import ContainerRuntime, RuntimeEvent
from gateway.containers.store import Deployed
from gateway.containers.unit import ContainerStatus, ContainerUnit, log_paths
from gateway.degraded import Failing
from gateway.logthrottle import LogThrottle
from gateway.netfailures import describe

log = Logger()
#: Seconds after the event stream is opened again until the one second look at the containers.
LATE_LOOK = 2.0
#: Seconds between two lines saying the event stream ended, or that the runtime still does not
#: answer (tried again with backoff, every 30 s at most, for as long as it is down), at least:
#: a podman service that keeps dying, or one that stays down, repeats them for ever.
DOWN_LOG_INTERVAL = 600.0
#: The :class:`~gateway.degraded.Degraded` reason of a containers service that does not reach podman.
UNREACHABLE = "podman-unreachable"


def _since(count: int, what: str) -> str:
    """What ends a throttled line standing for ``count`` events (``what``: their plural)."""
    return "" if count == 1 else (f" ({count} {what} since the last such line; logged at most once every"
                                  f" {DOWN_LOG_INTERVAL / 60:g} minutes while it goes on)")


class ContainerSupervisor:
    """Runs every container app's unit; names are unique (and distinct from hosted programs).

    :param runtime: the container runtime.
    :param clock: an IReactorTime.
    :param writer: the apps' log writer.
    :param logs_dir: ``<state>/logs/apps``.
    :param backoff_initial: first restart delay (the hosted processes' setting).
    :param backoff_max: restart delay cap.
    :param startretries: failed retries of a start before FATAL.
    :param retry: delay before opening the event stream again, by attempt.
    """

    def __init__(self, runtime: ContainerRuntime, clock: Any, writer: AppLogWriter, logs_dir: Path,
                 backoff_initial: float, backoff_max: float, startretries: int,
                 retry: Callable[[int], float] = backoffPolicy(maxDelay=30.0)) -> None:
        self._runtime = runtime
        self._clock = clock
        self._writer = writer
        self._logs_dir = logs_dir
        self._initial = backoff_initial
        self._max = backoff_max
        self._startretries = startretries
        self._retry = retry
        self.units: dict[str, ContainerUnit] = {}
        self.observers: list[Callable[[ContainerUnit], None]] = []
        self.on_reconnect: Callable[[], Any] | None = None
        self._stream: Any = None
        self._following = False
        self._attempt = 0
        self._timer: Any = None
        self._late_look: Any = None
        self._down_lines = LogThrottle(DOWN_LOG_INTERVAL, lambda: steady_seconds(clock))
        self._ended_lines = LogThrottle(DOWN_LOG_INTERVAL, lambda: steady_seconds(clock))
        self._quiet = False  # the stream's last end was held back, and so is the line when it is open again
        self.events_seen = 0
        #: Failing while the event stream is not open (podman does not answer): noted at each
        #: open that fails and at the stream's end, cleared once it is open again.
        self.runtime_failing = Failing()

    def add(self, deployed: Deployed, container_id: str) -> ContainerUnit:
        """Supervise ``deployed``'s container (STOPPED until started or attached)."""
        unit = ContainerUnit(deployed.name, deployed.version, deployed.description, container_id,
                             deployed.image_digest, self._runtime, self._clock, self._writer,
                             self._logs_dir, self._initial, self._max, self._startretries, self._notify)
        self.units[deployed.name] = unit
        return unit

    def forget(self, name: str) -> None:
        """Stop supervising ``name`` (its container is left as it is)."""
        unit = self.units.pop(name, None)
        if unit is not None:
            unit.close()

    def _notify(self, unit: ContainerUnit) -> None:
        for observer in list(self.observers):
            observer(unit)

    def log_files(self, name: str) -> list[Path]:
        """The log files of container app ``name`` (supervised or not)."""
        return list(log_paths(self._logs_dir, name))

    def flush_logs(self) -> Deferred[None]:
        """Fires once every output received so far is in the log files."""
        return self._writer.flush()

    def statuses(self) -> list[ContainerStatus]:
        """Every unit's status, in name order."""
        return [u.status() for _, u in sorted(self.units.items())]

    # -- the event stream ----------------------------------------------------------------
    def follow(self) -> Deferred[None]:
        """Open the event stream; fires once subscribed (errback when the runtime is down)."""
        self._following = True
        return self._runtime.events(self._event).addCallbacks(self._subscribed, self._not_reached)

    def _not_reached(self, failure: Failure) -> Failure:
        """An open of the event stream failed: podman does not answer (passed on)."""
        self.runtime_failing.failed(UNREACHABLE, failure.getErrorMessage(), self._clock.seconds())
        return failure

    def _subscribed(self, stream: Any) -> None:
        self._stream = stream
        self._attempt = 0
        self.runtime_failing.recovered()
        stream.done.addBoth(self._ended, stream)

    def _ended(self, result: Any, stream: Any) -> None:
        if stream is not self._stream:
            return
        self._stream = None
        if not self._following:
            return
        why = describe(result) if isinstance(result, Failure) else "closed"
        self.runtime_failing.failed(UNREACHABLE, f"its event stream ended ({why})", self._clock.seconds())
        count = self._ended_lines.note()
        self._quiet = count is None
        if count is not None:
            log.warn("containers: the runtime's event stream ended ({why}); following it again{since}", why=why,
                     since=_since(count, "times"))
        self._again()

    @property
    def subscribed(self) -> bool:
        """Whether the runtime's event stream is open now."""
        return self._stream is not None

    def retry_later(self) -> None:
        """Open the event stream after a backoff delay, then reconcile (the runtime was down)."""
        self._following = True
        self._again()

    def _again(self) -> None:
        self._attempt += 1
        self._timer = self._clock.callLater(self._retry(self._attempt), self._reopen)

    def _reopen(self) -> None:
        self._timer = None
        if not self._following:
            return

        def reopened(_: None) -> Any:
            if not self._quiet:
                log.info("containers: following the runtime's events again")
            if self.on_reconnect is None:
                return None
            # podman answers the events request before it follows its event log: what
            # happens in that moment after a restart of the service is in no stream. One more
            # look, once, a little later, catches it (this is no polling: only after a reopen).
            self._late_look = self._clock.callLater(LATE_LOOK, self._look_again)
            return self.on_reconnect()

        def failed(failure: Failure) -> None:
            count = self._down_lines.note()
            if count is not None:
                log.warn("containers: the runtime does not answer: {why}{since}", why=failure.getErrorMessage(),
                         since=_since(count, "tries"))
            self._again()

        self._runtime.events(self._event).addCallbacks(self._subscribed, self._not_reached).addCallbacks(
            reopened, failed)

    def _look_again(self) -> None:
        self._late_look = None
        if self._following and self.on_reconnect is not None:
            d = maybeDeferred(self.on_reconnect)
            d.addErrback(lambda f: log.warn("containers: the second look after a reopen failed: {why}",
                                            why=f.getErrorMessage()))

    def unfollow(self) -> Deferred[None]:
        """Close the event stream; fires once it is closed."""
        self._following = False
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        if self._late_look is not None and self._late_look.active():
            self._late_look.cancel()
        self._late_look = None
        stream, self._stream = self._stream, None
        if stream is None:
            return succeed(None)
        stream.cancel()
        return stream.done.addBoth(lambda _: None)

    def _event(self, event: RuntimeEvent) -> None:
        self.events_seen += 1
        for unit in list(self.units.values()):
            if unit.container_id == event.container_id:
                unit.on_event(event)
