"""One container app kept in the state its operator asked for, with the hosted processes' states.

The runtime runs the container; this object follows its events, restarts it by the
description's policy with the same doubling backoff as a hosted process
(:class:`gateway.apps.process.ProgramProcess`), and copies its output into the app's rotated
logs.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.apps.logs import AppLogWriter, RotatingLog
from gateway.apps.process import ProgramState
from gateway.apps.restarts import CrashLoopLog, RestartSchedule
from gateway.clockstep import steady_seconds
from gateway.containers.description import ContainerDescription, parse_size
from gateway.containers.runtime import ContainerState, ContainerRuntime, RuntimeEvent

log = Logger()


@dataclass(frozen=True)
class ContainerStatus:
    """A container app now, as ``status``, snapshots and ``engine_report`` show it.

    :param name: the app (a container app has one "program", named like it).
    :param app: the app again (the shape of a hosted program's status).
    :param version: its version (``config`` when declared in the gateway's config).
    :param state: one of the hosted programs' states.
    :param pid: its main process (in the host's pid namespace) while it runs.
    :param uptime: whole seconds since it started, to the nearest (0 when not running).
    :param exitstatus: how it last ended (128 + signal when killed), or None.
    :param restarts: automatic restarts since the containers service started.
    :param image: the image reference.
    :param image_digest: the image's manifest digest.
    :param error: why it is FATAL or backing off (a start the runtime refused, an exit before
        ``startsecs``, the restart policy's ``max_retries`` reached), if it is.
    """

    name: str
    app: str
    version: str
    state: ProgramState
    pid: int | None
    uptime: int
    exitstatus: int | None
    restarts: int
    image: str
    image_digest: str
    error: str = ""


def log_paths(logs_dir: Path, name: str) -> tuple[Path, Path]:
    """Where container app ``name``'s stdout and stderr go, in ``<state>/logs/apps``."""
    return logs_dir / f"{name}.log", logs_dir / f"{name}.err.log"


class ContainerUnit:
    """One container of one version of a container app.

    :param name: the app's name.
    :param version: its version.
    :param description: what runs.
    :param container_id: the runtime's container (already created).
    :param image_digest: the image's digest, for reports.
    :param runtime: the container runtime.
    :param clock: an IReactorTime.
    :param writer: the apps' log writer (shared rotation and global cap).
    :param logs_dir: ``<state>/logs/apps``.
    :param backoff_initial: first restart delay.
    :param backoff_max: the delay's cap.
    :param startretries: failed retries of a start before FATAL.
    :param on_change: called with this unit after every state change.
    """

    def __init__(self, name: str, version: str, description: ContainerDescription, container_id: str,
                 image_digest: str, runtime: ContainerRuntime, clock: Any, writer: AppLogWriter,
                 logs_dir: Path, backoff_initial: float, backoff_max: float, startretries: int,
                 on_change: Callable[[ContainerUnit], None]) -> None:
        self.name = name
        self.version = version
        self.description = description
        self.container_id = container_id
        self.image_digest = image_digest
        self.state = ProgramState.STOPPED
        self.pid: int | None = None
        self.exitstatus: int | None = None
        self.error = ""
        self._runtime = runtime
        self._clock = clock
        self._writer = writer
        self._schedule = RestartSchedule(clock, backoff_initial, backoff_max)
        # (a crash loop restarts it every backoff_max seconds, for ever: a line each time)
        self._exit_lines = CrashLoopLog(self._schedule, lambda: steady_seconds(clock))
        self._startretries = startretries
        self._on_change = on_change
        self._started_at = 0.0
        self._run = 0
        self._seen_start = False
        #: a stop was answered before its ``died`` event came (it comes after a restart's start).
        self._stop_end_due = False
        self._stop_uptime = 0.0  # (how long the run that stop ended ran)
        self._log_stream: Any = None
        self._log_request: Deferred[Any] | None = None
        self._since = ""
        self._stop_waiters: list[Deferred[None]] = []
        self._closed = False  # forgotten (:meth:`close`): never started again
        limits = description.log
        self.stdout_log, self.stderr_log = log_paths(logs_dir, name)
        self._stdout: RotatingLog = writer.open(self.stdout_log, parse_size(limits.max_size), limits.max_files)
        self._stderr: RotatingLog = writer.open(self.stderr_log, parse_size(limits.max_size), limits.max_files)

    # -- operator ---------------------------------------------------------------------
    @property
    def restarts(self) -> int:
        """Automatic restarts since the containers service started (a configuration change starts a new one)."""
        return self._schedule.restarts

    def status(self) -> ContainerStatus:
        """A snapshot of the unit."""
        running = self.state in (ProgramState.RUNNING, ProgramState.STOPPING)
        # (whole seconds, as GET /apps and the engine_report show it: an operator reads 2, not 1.95)
        uptime = round(steady_seconds(self._clock) - self._started_at) if running else 0
        return ContainerStatus(self.name, self.name, self.version, self.state, self.pid, uptime,
                               self.exitstatus, self.restarts, self.description.image,
                               self.image_digest, self.error)

    def start(self) -> None:
        """Start it now (an operator's start resets the retry counters)."""
        if self.state in (ProgramState.STARTING, ProgramState.RUNNING, ProgramState.STOPPING):
            return
        self._schedule.cancel()
        self._schedule.reset()
        self._exit_lines.reset()
        self._launch()

    def stop(self) -> Deferred[None]:
        """Stop it: SIGTERM, SIGKILL after the description's ``stop_timeout`` (by the runtime).

        :return: fires once it has stopped; fails with the runtime's error when the runtime does
            not finish the stop (its service died): it is STOPPED then all the same, and the next
            look at the runtime's states stops it again (see ``ContainerState.stopping``).
        """
        self._schedule.cancel()
        if self.state in (ProgramState.STARTING, ProgramState.RUNNING):
            self._set_state(ProgramState.STOPPING)
            run = self._run
            waiter: Deferred[None] = Deferred()
            self._stop_waiters.append(waiter)

            def stopped(result: Any) -> None:
                if isinstance(result, Failure):
                    log.error("containers: cannot stop {name}: {error}", name=self.name,
                              error=result.getErrorMessage())
                if run == self._run and self.state is ProgramState.STOPPING:
                    # (its end is recorded and logged when its died event comes, also after a
                    # restart's start: a died before that start's own start event is this stop's)
                    self._stop_end_due = self._seen_start and not isinstance(result, Failure)
                    self._stop_uptime = steady_seconds(self._clock) - self._started_at
                    self._stopped(result if isinstance(result, Failure) else None)

            self._runtime.stop(self.container_id, self.description.stop_timeout).addBoth(stopped)
            return waiter
        if self.state is ProgramState.STOPPING:
            waiter = Deferred()
            self._stop_waiters.append(waiter)
            return waiter
        if self.state is not ProgramState.STOPPED:
            self._set_state(ProgramState.STOPPED)
        return succeed(None)

    def attach(self, found: ContainerState) -> None:
        """Adopt the runtime's container as it is now (after a gateway restart): a running one
        keeps its uptime, counted from the runtime's ``started_at`` (from the adoption when the
        runtime does not say, or says a time after now: the wall clock stepped back)."""
        if found.running:
            self._run += 1
            self._seen_start = True
            self.pid = found.pid
            self._started_at = steady_seconds(self._clock) - _seconds_since(found.started_at, self._clock.seconds())
            self._follow_logs(self._run, _rfc3339(self._clock.seconds()))
            self._set_state(ProgramState.RUNNING)
        else:
            self.exitstatus = found.exit_code

    def drained(self, timeout: float = 2.0) -> Deferred[None]:
        """Fires once the output stream being read has ended (all output read), or after
        ``timeout`` seconds."""
        waiter: Deferred[None] = Deferred()
        request, stream = self._log_request, self._log_stream
        if request is None and stream is None:
            waiter.callback(None)
            return waiter

        def done(_: Any = None) -> None:
            if not waiter.called:
                waiter.callback(None)

        def ended(result: Any) -> Any:
            done()
            return result

        def responded(result: Any) -> Any:
            if hasattr(result, "done"):
                result.done.addBoth(ended)
            else:
                done()
            return result

        if stream is not None:
            stream.done.addBoth(ended)
        else:
            assert request is not None
            request.addBoth(responded)
        timer = self._clock.callLater(timeout, done)

        def stop_timer(result: Any) -> Any:
            if timer.active():
                timer.cancel()
            return result

        return waiter.addBoth(stop_timer)

    def resume_logs(self) -> None:
        """Follow its output again from now if the stream was lost (the runtime's service restarted)."""
        if self.state is ProgramState.RUNNING and self._log_stream is None and self._log_request is None:
            self._follow_logs(self._run, _rfc3339(self._clock.seconds()))

    def close(self) -> None:
        """Stop following its output and release its log files (the unit is forgotten); a
        :meth:`stop` under way is no longer waited for: its waiters fire now."""
        self._closed = True
        self._schedule.cancel()
        self._run += 1
        self._stop_following()
        self._writer.release(self._stdout)
        self._writer.release(self._stderr)
        waiters, self._stop_waiters = self._stop_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    # -- runtime events -----------------------------------------------------------------
    def on_event(self, event: RuntimeEvent) -> None:
        """Follow one of the runtime's events about this container."""
        if event.action == "start":
            self._seen_start = True
            self._stop_end_due = False
            if self.state in (ProgramState.EXITED, ProgramState.BACKOFF, ProgramState.STOPPED, ProgramState.FATAL) \
                    and self.description.restart_policy.delegate:
                # The runtime restarted it by its own policy (also when the gateway thought it would not).
                self._since = _rfc3339(self._clock.seconds() - 1.0)
                self._run += 1
                self._schedule.restarts += 1
                self._started(self._run, delegated=True)
        elif event.action == "died" and self._seen_start:
            self._seen_start = False
            self._exited(event.exit_code)
        elif event.action == "died" and self._stop_end_due:
            self._stop_end_due = False
            self._stop_ended(event.exit_code)

    def missed_exit(self, code: int | None) -> None:
        """The container ended while no event stream was open (found by a reconcile): what its
        ``died`` event would have done, restarts included.

        :param code: its exit code, None when the runtime does not say."""
        self._seen_start = False
        self._exited(code)

    def _stop_ended(self, code: int | None) -> None:
        """The ``died`` event of a stop answered before it came, after a restart's start: the
        end is recorded and logged, as a stop's always was; the new run is not touched."""
        self.exitstatus = code
        self._log_end(code, self._stop_uptime)

    def _log_end(self, code: int | None, uptime: float, loop: str = "") -> None:
        """Log its end with exit code ``code`` after ``uptime`` seconds (``loop``: what the crash
        loop's throttle adds)."""
        log.info("containers: {name} exited {how} after {uptime:.1f}s{loop}", name=self.name, how=_how_ended(code),
                 uptime=uptime, loop=loop)

    def _exited(self, code: int | None) -> None:
        """It ended with exit code ``code`` (None: unknown, a ``died`` event without one, which
        is recorded as such, not as a code it did not have)."""
        self._stop_end_due = False
        self.exitstatus = code
        self.pid = None
        self._schedule.cancel()
        uptime = steady_seconds(self._clock) - self._started_at
        how = _how_ended(code)
        # An end on its own that its policy restarts may be one of a crash loop: throttled.
        restarted = self.state is ProgramState.RUNNING and self._should_restart(code)
        delegated = self.description.restart_policy.delegate
        runtime_restarts = delegated and self._runtime_restarts(code)
        loop = self._exit_lines.note(uptime) if restarted or (
            runtime_restarts and self.state in (ProgramState.RUNNING, ProgramState.STARTING)) else ""
        if loop is not None:
            self._log_end(code, uptime, loop)
        if self.state is ProgramState.STOPPING:
            self._stopped()
        elif self.state is ProgramState.STARTING and delegated:
            self._died_starting(f"exited {how} before {self.description.startsecs:g}s", runtime_restarts,
                                logged=loop is not None)
        elif self.state is ProgramState.STARTING:
            self._start_failed(f"exited {how} before {self.description.startsecs:g}s")
        elif self.state is ProgramState.RUNNING:
            self._set_state(ProgramState.EXITED)
            if restarted:
                delay = self._schedule.exited(uptime)
                retries = self.description.restart_policy.max_retries
                if retries and self._schedule.quick_exits > retries:
                    log.error("containers: {name} exited {count} times in a row: FATAL",
                              name=self.name, count=self._schedule.quick_exits)
                    self.error = (f"exited {how}: {self._schedule.quick_exits} ends in a row, each within "
                                  f"{self._schedule.maximum:g}s of its start (restart_policy.max_retries: {retries})")
                    self._set_state(ProgramState.FATAL)
                    return
                self._restart_later(delay)

    def _restart_later(self, delay: float) -> None:
        """Start it again after ``delay`` seconds, once it is EXITED or BACKOFF, unless the
        observers told of that change stopped, started or forgot it meanwhile (the health watch
        of an install stops it to read its logs, then rolls it back), as a hosted program's
        restart is (:class:`~gateway.apps.process.ProgramProcess`)."""
        if not self._closed and self.state in (ProgramState.EXITED, ProgramState.BACKOFF):
            self._schedule.restart_later(delay, self._launch)

    def _should_restart(self, code: int | None) -> bool:
        """Whether the gateway restarts it after an end with ``code`` while RUNNING."""
        return not self.description.restart_policy.delegate and self._policy_restarts(code)

    def _policy_restarts(self, code: int | None) -> bool:
        """Whether its restart policy's ``type`` restarts an end with ``code``."""
        policy = self.description.restart_policy
        if policy.type == "no":
            return False
        if policy.type == "on-failure":
            return code != 0  # (an unknown status is not a success)
        return True

    def _runtime_restarts(self, code: int | None) -> bool:
        """Whether the runtime's policy (``delegate: true``) starts it again after an end with
        ``code`` before ``startsecs``: by its type, and for ``on-failure`` until the failed
        starts in a row pass ``max_retries`` (the runtime's ``restart_tries``)."""
        policy = self.description.restart_policy
        if policy.type == "on-failure" and policy.max_retries and self._schedule.failures >= policy.max_retries:
            return False
        return self._policy_restarts(code)

    # -- internals ----------------------------------------------------------------------
    def _launch(self) -> None:
        self._schedule.fired()
        self._run += 1
        run = self._run
        self._seen_start = False
        self._started_at = steady_seconds(self._clock)
        # The output of this run is what comes after the start request: the runtime's own
        # StartedAt is set after the process has begun writing.
        self._since = _rfc3339(self._clock.seconds())  # (the runtime's times are the wall clock's)
        self._set_state(ProgramState.STARTING)

        def failed(failure: Failure) -> None:
            if run == self._run and self.state is ProgramState.STARTING:
                self._start_failed(failure.getErrorMessage())

        self._runtime.start(self.container_id).addCallbacks(lambda _: self._started(run), failed)

    def _started(self, run: int, delegated: bool = False) -> None:
        if run != self._run:
            return  # stopped or started again meanwhile
        if not delegated and self.state is not ProgramState.STARTING:
            # It already died (its event came before the answer): keep what it printed.
            if self.state is not ProgramState.STOPPING:
                self._follow_logs(run, self._since)
            return
        self._started_at = steady_seconds(self._clock)
        if self.state is not ProgramState.STARTING:
            self._set_state(ProgramState.STARTING)

        # Follow its output now, not once the inspect below answers: a container that dies at
        # once may be failed and rolled back before then, and the rollback's report carries
        # the tail of what it printed (drained() waits only for a follow already asked for).
        self._follow_logs(run, self._since)

        def inspected(found: ContainerState) -> None:
            if run != self._run:
                return
            self.pid = found.pid if found.running else None

        self._runtime.inspect(self.container_id).addCallbacks(
            inspected, lambda f: log.warn("containers: cannot inspect {name}: {error}",
                                          name=self.name, error=f.getErrorMessage()))
        if self.description.startsecs <= 0:
            self._running()
        else:
            self._schedule.later(self.description.startsecs, self._running)

    def _running(self) -> None:
        self._schedule.fired()
        if self.state is ProgramState.STARTING:
            self._schedule.started()
            self._set_state(ProgramState.RUNNING)

    def _stop_following(self) -> None:
        request, self._log_request = self._log_request, None
        if request is not None and not request.called:
            request.cancel()  # podman sends no headers before the first output line
        if self._log_stream is not None:
            self._log_stream.cancel()
            self._log_stream = None

    def _follow_logs(self, run: int, since: str) -> None:
        self._stop_following()

        def output(stream: int, data: bytes) -> None:
            self._writer.write(self._stderr if stream == 2 else self._stdout, data)

        def following(stream: Any) -> None:
            self._log_request = None
            if run != self._run:
                stream.cancel()
                return
            self._log_stream = stream
            stream.done.addBoth(lambda _: setattr(self, "_log_stream", None)
                                if self._log_stream is stream else None)

        def failed(failure: Failure) -> None:
            self._log_request = None
            if not failure.check(CancelledError) and run == self._run:
                log.warn("containers: cannot follow the output of {name}: {error}", name=self.name,
                         error=failure.getErrorMessage())

        request = self._runtime.logs(self.container_id, since, output)
        self._log_request = request
        request.addCallbacks(following, failed)

    def _died_starting(self, why: str, restarts: bool, logged: bool) -> None:
        """It died before ``startsecs`` under ``delegate: true``: the runtime's policy starts it
        again (its ``start`` event makes it STARTING), never the gateway as well. BACKOFF with
        ``why`` until then; FATAL when that policy does not start it again.

        :param restarts: whether the runtime's policy starts it again.
        :param logged: whether its end was logged (a crash loop's are throttled).
        """
        self.error = why
        self._schedule.start_failed()
        if logged:
            log.error("containers: {name} failed to start: {why}", name=self.name, why=why)
        if not restarts:
            log.error("containers: {name} failed to start and its runtime's restart policy does not start it"
                      " again: FATAL", name=self.name)
        self._set_state(ProgramState.BACKOFF if restarts else ProgramState.FATAL)

    def _start_failed(self, why: str) -> None:
        self.error = why
        delay = self._schedule.start_failed()
        log.error("containers: {name} failed to start: {why}", name=self.name, why=why)
        if self._schedule.failures > self._startretries:
            log.error("containers: {name} failed to start {count} time{s}: FATAL", name=self.name,
                      count=self._schedule.failures, s="" if self._schedule.failures == 1 else "s")
            self._set_state(ProgramState.FATAL)
            return
        self._set_state(ProgramState.BACKOFF)
        self._restart_later(delay)

    def _stopped(self, failure: Failure | None = None) -> None:
        self.pid = None
        self._set_state(ProgramState.STOPPED)
        waiters, self._stop_waiters = self._stop_waiters, []
        for waiter in waiters:
            if failure is None:
                waiter.callback(None)
            else:
                waiter.errback(failure)

    def _set_state(self, state: ProgramState) -> None:
        if state in (ProgramState.RUNNING, ProgramState.STOPPED):
            # a start that succeeded, or a stop, ends the failure (it stays while it starts again)
            self.error = ""
        self.state = state
        self._on_change(self)


def _how_ended(code: int | None) -> str:
    """How a container ended, as its log line and ``error`` say it: ``with 3``, or ``with an
    unknown exit status`` (a ``died`` event without a code)."""
    return "with an unknown exit status" if code is None else f"with {code}"


def _rfc3339(seconds: float) -> str:
    moment = datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _seconds_since(started_at: str, now: float) -> float:
    """How long ago ``started_at`` (the runtime's RFC 3339 time, nanoseconds and all) was, on
    the wall clock that reads ``now``; 0 when it is not a time or is after ``now``."""
    try:
        moment = datetime.datetime.fromisoformat(started_at)
    except ValueError:
        return 0.0
    if moment.tzinfo is None:
        return 0.0  # (podman always gives its offset: a time without one is not podman's)
    return max(0.0, now - moment.timestamp())
