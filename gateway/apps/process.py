"""One supervised program: supervisord's state machine on a Twisted ProcessProtocol."""

from __future__ import annotations

import enum
import errno
import os
import pwd
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from twisted.internet.defer import Deferred, DeferredLock, inlineCallbacks, maybeDeferred, succeed
from twisted.internet.interfaces import IProcessTransport
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.apps.execsize import check_exec_size
from gateway.apps.launch import CgroupJoin, launch_command
from gateway.apps.leftovers import RUN_ID_VARIABLE, GroupRecords
from gateway.apps.logs import AppLogWriter, RotatingLog
from gateway.apps.restarts import CrashLoopLog, RestartSchedule
from gateway.clockstep import steady_seconds
from gateway.logthrottle import LogThrottle, since_last_line
from gateway.apps.settings import ProgramSettings
from gateway.blocking import RunBlocking
from gateway.shown import shown_repr
from gateway.stateaccess import user_name

log = Logger()

#: What a spawn fails with when the gateway, not the program, is short of something: file
#: descriptors (its own, or the system's), processes, memory. No failed start of the program.
SPAWN_SHORTAGES = frozenset({errno.EMFILE, errno.ENFILE, errno.EAGAIN, errno.ENOMEM})

#: Seconds between two log lines about a program that cannot be spawned for such a shortage.
SHORTAGE_LOG_INTERVAL = 60.0

#: What a failed start's ``error`` adds to ``killed by signal 9`` when the kernel's OOM killer
#: took the program (:mod:`gateway.apps.oomkills`).
OOM_KILLED = " (the kernel's OOM killer: out of memory)"


def exit_status(reason: Failure) -> int:
    """A finished process's exit code, or minus the signal that killed it."""
    code = getattr(reason.value, "exitCode", None)
    if code is not None:
        return int(code)
    return -int(getattr(reason.value, "signal", None) or 0)


class ProgramState(enum.Enum):
    """supervisord's process states."""

    STOPPED = "STOPPED"
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    BACKOFF = "BACKOFF"
    STOPPING = "STOPPING"
    EXITED = "EXITED"
    FATAL = "FATAL"


@dataclass(frozen=True)
class ProgramSpec:
    """Everything needed to run one program, resolved.

    :param name: the program's name (unique in the gateway).
    :param app: the app it belongs to.
    :param version: the app's version ("config" for programs from the gateway config).
    :param settings: supervisord-style knobs.
    :param argv: the command, split.
    :param cwd: the working directory.
    :param env: the complete environment.
    :param stdout_log: where stdout goes (None: discarded).
    :param stderr_log: where stderr goes (None: discarded or redirected).
    :param listed: whether the admin API lists it, so that ``gatewayctl apps logs <name>`` reads its
        log (False for the podman service the gateway runs for its containers, which is no app).
    """

    name: str
    app: str
    version: str
    settings: ProgramSettings
    argv: tuple[str, ...]
    cwd: Path
    env: dict[str, str]
    stdout_log: Path | None
    stderr_log: Path | None
    listed: bool = True

    def where_logged(self) -> str:
        """Where an operator reads its output: ``gatewayctl apps logs <name>``, or the file of
        one the admin API does not list."""
        return f"gatewayctl apps logs {self.name}" if self.listed or self.stdout_log is None else str(self.stdout_log)

    @property
    def logs(self) -> list[Path]:
        """The log files it writes: its stdout's, then its stderr's (those it keeps)."""
        return [path for path in (self.stdout_log, self.stderr_log) if path is not None]


@dataclass(frozen=True)
class ProgramStatus:
    """A snapshot of one program, as ``status`` and the engine report show it.

    :ivar error: why its last start failed (an exit before ``startsecs``, a spawn refused),
        while it backs off, starts again or is FATAL; ``""`` once a start succeeds, after a
        stop, and before any failure.
    """

    name: str
    app: str
    version: str
    state: ProgramState
    pid: int | None
    uptime: int
    exitstatus: int | None
    restarts: int
    error: str = ""


@dataclass(frozen=True)
class SpawnPlan:
    """What a program's spawn needs that its :meth:`ProcessLauncher.prepare` found off the
    reactor thread.

    :param user: the user it runs as (None: the gateway's).
    :param cgroup: the cgroup it joins, made (None: the gateway's own).
    """

    user: str | None
    cgroup: CgroupJoin | None


def spawn_checks(spec: ProgramSpec) -> str | None:
    """The user ``spec`` runs as (None: the gateway's), once its directory is found (blocking:
    a ``stat``, and the user database, which may be a network service).

    :raises NotADirectoryError: its directory does not exist (the child's chdir would fail,
        saying it with a traceback).
    :raises KeyError: its user is unknown (only root switches users: otherwise ignored).
    """
    if not os.path.isdir(spec.cwd):
        raise NotADirectoryError(f"its directory {spec.cwd} does not exist")
    if spec.settings.user and os.getuid() == 0:
        pwd.getpwnam(spec.settings.user)
        return spec.settings.user
    return None


class ProcessLauncher:
    """Spawns each program in its own session and process group and signals the group.

    ``spawnProcess`` has no preexec hook, so the command runs behind
    :mod:`gateway.apps.launch`, which calls setsid(), arranges to be killed when the
    gateway dies, and execs in place: the pid Twisted sees is the group id.

    :param reactor: an IReactorProcess.
    :param kill_group: ``os.killpg`` (tests pass a recorder).
    :param kill: ``os.kill``, for a child that has no group of its own yet.
    :param records: where running programs' groups are recorded (so that the next start
        can stop what a crashed gateway left); None records nothing.
    :param prepare_cgroup: ``app -> Deferred of CgroupJoin or None``, called before each spawn
        (per-app byte accounting, :mod:`gateway.telemetry.appbytes`: it makes the cgroup off
        the reactor thread): the launcher moves the program into that cgroup before it
        switches user and execs.
    :param oom_kills: ``CgroupJoin or None -> count or None``: how many processes the kernel's
        OOM killer took in the memory cgroup a program so spawned runs in
        (:meth:`gateway.apps.oomkills.OomKillCounts.count`); None tells nothing.
    :param max_processes: the ``RLIMIT_NPROC`` every program and command runs with
        (:mod:`gateway.apps.processlimit`); None: the gateway's.
    :param blocking: runs :func:`spawn_checks` off the reactor thread (the apps service passes
        the reactor's thread pool); None: inline (a fake reactor's tests; a launcher of one
        process).
    """

    def __init__(self, reactor: Any, kill_group: Callable[[int, int], None] = os.killpg,
                 kill: Callable[[int, int], None] = os.kill,
                 records: GroupRecords | None = None,
                 prepare_cgroup: Callable[[str], Deferred[CgroupJoin | None]] | None = None,
                 oom_kills: Callable[[CgroupJoin | None], int | None] | None = None,
                 max_processes: int | None = None,
                 blocking: RunBlocking | None = None) -> None:
        self._reactor = reactor
        self._blocking: RunBlocking = blocking if blocking is not None else maybeDeferred
        # (one preparation at a time, in the order asked: programs spawn in the order started)
        self._preparing = DeferredLock()
        #: the ``RLIMIT_NPROC`` of what it spawns (None: the gateway's).
        self.max_processes = max_processes
        self._kill_group = kill_group
        self._kill = kill
        self._records = records
        self._prepare_cgroup = prepare_cgroup
        self._oom_kills = oom_kills
        self._joins: dict[str, CgroupJoin | None] = {}  # app -> the cgroup its last spawn joined

    def prepare(self, spec: ProgramSpec) -> Deferred[SpawnPlan]:
        """Find what ``spec``'s spawn needs, off the reactor thread: its directory and user
        (:func:`spawn_checks`), its app's cgroup made. Preparations run one at a time, in the
        order asked, so programs spawn in the order they are started.

        :return: fires with the plan for :meth:`spawn`, or fails with what
            :func:`spawn_checks` raises.
        """
        return self._preparing.run(self._prepare, spec)

    @inlineCallbacks
    def _prepare(self, spec: ProgramSpec) -> Any:
        user = yield self._blocking(lambda: spawn_checks(spec))
        cgroup = None
        if self._prepare_cgroup is not None:
            cgroup = yield self._prepare_cgroup(spec.app)
        return SpawnPlan(user, cgroup)

    def spawn(self, protocol: ProcessProtocol, spec: ProgramSpec, plan: SpawnPlan) -> IProcessTransport:
        """Start ``spec``'s command as ``plan`` (from :meth:`prepare`) says; raises OSError (a
        command line and environment larger than Linux takes: ``E2BIG``; the gateway short of
        descriptors or processes)."""
        env = self.with_run_id(spec.env)
        self._joins[spec.app] = plan.cgroup
        # The launcher joins the cgroup and switches the user itself (see gateway.apps.launch).
        executable, args = launch_command(spec.argv, plan.user, plan.cgroup, self.max_processes, str(spec.cwd))
        check_exec_size(executable, args, env)
        return self._reactor.spawnProcess(protocol, executable, args, env=env)

    def oom_kill_count(self, app: str) -> int | None:
        """How many processes the kernel's OOM killer has taken in the memory cgroup the
        programs of ``app`` run in (as of its last spawn), or None where that cannot be told."""
        return None if self._oom_kills is None else self._oom_kills(self._joins.get(app))

    def with_run_id(self, env: dict[str, str]) -> dict[str, str]:
        """``env`` with this gateway run's ``GATEWAY_RUN_ID``, which marks what a program (or a
        recorded command) and everything it starts belong to (unchanged when nothing is recorded)."""
        return {**env, RUN_ID_VARIABLE: self._records.run_id} if self._records is not None else env

    def spawned(self, name: str, pid: int) -> None:
        """Program ``name`` runs as group ``pid``: record it (call before its exit can be handled)."""
        if self._records is not None:
            self._records.spawned(name, pid)

    def ended(self, name: str, pid: int) -> None:
        """Program ``name``'s group ``pid`` is gone (its main process exited, its group was killed)."""
        if self._records is not None:
            self._records.ended(name, pid)

    def sweep(self, name: str, group: int | None, env: dict[str, str],
              variable: str = "GATEWAY_PROGRAM_NAME", quiet: bool = False) -> Deferred[None]:
        """Kill (SIGKILL) what program ``name``, whose environment was ``env``, started in this
        gateway run that left its process group ``group`` (a daemon that called ``setsid()``):
        the processes whose environment still holds its ``GATEWAY_RUN_ID`` and its
        ``variable`` (``GATEWAY_PROGRAM_NAME``; a recorded command's
        :data:`~gateway.apps.commands.COMMAND_ID_VARIABLE`), each with its group. Fires once
        they are signalled (at once when nothing is recorded).

        :param quiet: kill them without the warning that says so (a crash loop's end whose
            own line is held back: one line per cause, not one per restart)."""
        if self._records is None:
            return succeed(None)
        marks = [os.fsencode(f"{RUN_ID_VARIABLE}={self._records.run_id}"),
                 os.fsencode(f"{variable}={env.get(variable, name)}")]

        def kill(groups: set[int]) -> None:
            if groups and not quiet:
                log.warn("apps: {name} left {count} process group{s} outside its own (setsid(): a daemon);"
                         " killing {them}", name=name, count=len(groups), s="" if len(groups) == 1 else "s",
                         them="it" if len(groups) == 1 else "them")
            for escaped in sorted(groups):
                self.signal_group(escaped, signal.SIGKILL)

        def failed(failure: Failure) -> None:
            log.failure("apps: cannot look for what {name} left outside its process group", failure, name=name)

        return self._records.escaped(group, marks).addCallback(kill).addErrback(failed)

    def signal_group(self, pid: int, signum: int) -> None:
        """Send ``signum`` to the process group led by ``pid``; a gone group is fine.

        Just after the spawn the child may not have called setsid() yet, so its group
        does not exist: then the signal goes to the process itself.
        """
        try:
            self._kill_group(pid, signum)
        except OSError as exc:
            if exc.errno != errno.ESRCH:
                raise
            try:
                self._kill(pid, signum)
            except ProcessLookupError:
                pass


class _ProgramProtocol(ProcessProtocol):
    def __init__(self, owner: ProgramProcess) -> None:
        self._owner = owner
        self.pid: int | None = None

    def connectionMade(self) -> None:
        transport: Any = self.transport
        self.pid = transport.pid
        transport.closeStdin()

    def outReceived(self, data: bytes) -> None:
        self._owner._output(self._owner._stdout, data)

    def errReceived(self, data: bytes) -> None:
        self._owner._output(self._owner._stderr, data)

    def processExited(self, reason: Failure) -> None:
        self._owner._exited(self, reason)

    def processEnded(self, reason: Failure) -> None:
        self._owner._ended(self)


class ProgramProcess:
    """Keeps one program in the state its operator asked for, supervisord-style.

    Restart delays double from ``backoff_initial`` to ``backoff_max``: a start that dies
    before ``startsecs`` waits in BACKOFF and becomes FATAL after ``startretries``; a
    RUNNING program that exits and is restarted waits the same way when it ran for
    less than ``backoff_max`` (a crash loop), and restarts at once otherwise. When the
    main process ends, its whole process group is killed so nothing is left behind.

    :param spec: what to run.
    :param launcher: spawns and signals.
    :param clock: an IReactorTime.
    :param writer: the log writer.
    :param backoff_initial: first restart delay.
    :param backoff_max: the delay's cap.
    :param on_change: called with this object after every state change.
    """

    def __init__(self, spec: ProgramSpec, launcher: ProcessLauncher, clock: Any,
                 writer: AppLogWriter, backoff_initial: float = 1.0,
                 backoff_max: float = 60.0,
                 on_change: Callable[[ProgramProcess], None] | None = None) -> None:
        self.spec = spec
        if spec.settings.user and os.getuid() != 0:  # (said once per program set up, not at each start)
            log.warn("apps: {name} asks to run as user {user}, which only a gateway running as root switches to:"
                     " it runs as the gateway's user {own}", name=spec.name, user=shown_repr(spec.settings.user),
                     own=user_name(os.getuid()))
        self.state = ProgramState.STOPPED
        self.pid: int | None = None
        self.exitstatus: int | None = None
        self.error = ""
        self._launcher = launcher
        self._clock = clock
        self._writer = writer
        self._schedule = RestartSchedule(clock, backoff_initial, backoff_max)
        # (a crash loop restarts it every backoff_max seconds, for ever: two lines each time)
        self._exit_lines = CrashLoopLog(self._schedule, lambda: steady_seconds(clock))
        self._quiet = False  # its last end on its own was held back, and so is its restart's line
        self._shortages = 0  # spawns in a row that failed for one of SPAWN_SHORTAGES
        self._shortage_lines = LogThrottle(SHORTAGE_LOG_INTERVAL, lambda: steady_seconds(clock))
        self._on_change = on_change
        self._protocol: _ProgramProtocol | None = None
        self._started_at = 0.0
        self._oom_kills: int | None = None  # its memory cgroup's OOM kill count at its spawn
        self._stop_waiters: list[Deferred[None]] = []
        self._open_pipes: set[_ProgramProtocol] = set()
        self._drain_waiters: list[Deferred[None]] = []
        # The look for daemons its last run left, under way after an end on its own, and what
        # waits for it (the restart, an operator's start, a stop's own look): a run started
        # before it ends would be taken for such a daemon (same run id and name) and killed.
        self._looking: Deferred[None] | None = None
        self._after_look: Callable[[], None] | None = None
        self._preparing: Deferred[Any] | None = None  # its spawn's preparation, under way
        self._launch_waiters: list[Deferred[None]] = []
        settings = spec.settings
        self._stdout = self._open_log(spec.stdout_log)
        self._stderr = self._stdout if settings.redirect_stderr else self._open_log(
            spec.stderr_log)

    def _open_log(self, path: Path | None) -> RotatingLog | None:
        if path is None:
            return None
        settings = self.spec.settings
        return self._writer.open(path, settings.stdout_logfile_maxbytes,
                                 settings.stdout_logfile_backups)

    @property
    def restarts(self) -> int:
        """Automatic restarts since the apps service started (a configuration change starts a new one)."""
        return self._schedule.restarts

    def status(self) -> ProgramStatus:
        """A snapshot of the program's state."""
        running = self.state in (ProgramState.RUNNING, ProgramState.STOPPING)
        # (whole seconds, as GET /apps and the engine_report show it: an operator reads 2, not 1.95)
        uptime = round(steady_seconds(self._clock) - self._started_at) if running else 0
        return ProgramStatus(self.spec.name, self.spec.app, self.spec.version, self.state,
                             self.pid, uptime, self.exitstatus, self.restarts, self.error)

    def start(self) -> None:
        """Start the program now (an operator's start resets the retry counters)."""
        if self.state in (ProgramState.STARTING, ProgramState.RUNNING, ProgramState.STOPPING):
            return
        self._schedule.cancel()
        self._schedule.reset()
        self._exit_lines.reset()
        self._quiet = False
        self._shortages = 0
        self._when_looked(self._spawn)

    def stop(self) -> Deferred[None]:
        """Stop the program: stopsignal to its group, SIGKILL after stopwaitsecs.

        :return: fires once the process has exited (at once when none runs).
        """
        if self.state is ProgramState.STARTING and self.pid is None and self._protocol is not None:
            # Its spawn is being prepared (off the reactor thread): nothing runs, nothing was
            # left, and the preparation's end spawns nothing.
            protocol, self._protocol = self._protocol, None
            self._ended(protocol)
            self._schedule.cancel()
            self._set_state(ProgramState.STOPPED)
            return succeed(None)
        if self.state in (ProgramState.STARTING, ProgramState.RUNNING):
            self._schedule.cancel()
            self._set_state(ProgramState.STOPPING)
            assert self.pid is not None
            signum = getattr(signal, "SIG" + self.spec.settings.stopsignal)
            self._launcher.signal_group(self.pid, signum)
            self._schedule.later(self.spec.settings.stopwaitsecs, self._kill)
        if self.state is ProgramState.STOPPING:
            waiter: Deferred[None] = Deferred()
            self._stop_waiters.append(waiter)
            return waiter
        self._schedule.cancel()
        if self.state is ProgramState.STOPPED:
            return succeed(None)
        # (its main process ended on its own, and its group with it: a daemon it started may
        # still run; STOPPING keeps a start out until it is killed)
        self._set_state(ProgramState.STOPPING)
        self._when_looked(lambda: self._sweep(None))
        return self.stop()  # (fired already when nothing had to be looked for off the thread)

    def kill(self) -> None:
        """Stop the program at once: the gateway stops and can wait no longer for it (its
        stop outlasted ``gateway.shutdown_timeout``). A running program is stopped with
        SIGKILL to its whole group, whatever its ``stopwaitsecs``; nothing restarts it."""
        self.stop()
        if self.state is ProgramState.STOPPING and self.pid is not None:
            self._schedule.cancel()
            log.warn("apps: {name} has not stopped and the gateway cannot wait: killing its group",
                     name=self.spec.name)
            self._launcher.signal_group(self.pid, signal.SIGKILL)

    def drained(self, timeout: float = 2.0) -> Deferred[None]:
        """Fires once the pipes of every process it spawned are closed (all output read).

        A daemon that escaped the process group may hold a pipe open forever, so this
        gives up waiting after ``timeout`` seconds.
        """
        if not self._open_pipes:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._drain_waiters.append(waiter)

        def give_up() -> None:
            if not waiter.called:
                waiter.callback(None)

        timer = self._clock.callLater(timeout, give_up)

        def done(result: None) -> None:
            if timer.active():
                timer.cancel()

        return waiter.addCallback(done)

    def _ended(self, protocol: _ProgramProtocol) -> None:
        self._open_pipes.discard(protocol)
        if not self._open_pipes:
            waiters, self._drain_waiters = self._drain_waiters, []
            for waiter in waiters:
                if not waiter.called:
                    waiter.callback(None)

    def close(self) -> None:
        """Release the log files (call once the program is stopped for good)."""
        for target in {self._stdout, self._stderr} - {None}:
            assert target is not None
            self._writer.release(target)

    def _kill(self) -> None:
        self._schedule.fired()
        if self.pid is not None:
            log.warn("apps: {name} ignored its stop signal; killing its group",
                     name=self.spec.name)
            self._launcher.signal_group(self.pid, signal.SIGKILL)

    def _spawn(self) -> None:
        self._schedule.fired()
        protocol = _ProgramProtocol(self)
        self._protocol = protocol
        self._open_pipes.add(protocol)
        self._started_at = steady_seconds(self._clock)
        self._set_state(ProgramState.STARTING)
        # STARTING with no pid until the preparation is done (off the reactor thread)
        preparing: Deferred[Any] = self._launcher.prepare(self.spec)
        preparing.addCallbacks(self._launch, self._not_launched, callbackArgs=(protocol,), errbackArgs=(protocol,))
        preparing.addErrback(lambda failure: log.failure("apps: {name}: its start failed", failure, name=self.spec.name))
        self._preparing = preparing
        preparing.addBoth(self._prepared, preparing)  # (at once when it was prepared inline)

    def _prepared(self, _: object, preparing: Deferred[Any]) -> None:
        if self._preparing is preparing:
            self._preparing = None
            waiters, self._launch_waiters = self._launch_waiters, []
            for waiter in waiters:
                waiter.callback(None)

    def launched(self) -> Deferred[None]:
        """Fires once the spawn under way is made, or has failed or was given up (a stop came
        first): its preparation runs off the reactor thread (at once when none is under way)."""
        if self._preparing is None:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._launch_waiters.append(waiter)
        return waiter

    def _launch(self, plan: SpawnPlan, protocol: _ProgramProtocol) -> None:
        if self._protocol is not protocol:  # (stopped while its spawn was prepared)
            return
        try:
            transport = self._launcher.spawn(protocol, self.spec, plan)
        except Exception:
            self._not_launched(Failure(), protocol)
            return
        if self._shortages:
            self._shortages = 0
            self._shortage_lines.reset()
        if self._protocol is not protocol:
            # Twisted reaps a child that is already gone inside spawnProcess, so its
            # exit has been handled before we get here.
            return
        self.pid = transport.pid
        self._oom_kills = self._launcher.oom_kill_count(self.spec.app)
        self._launcher.spawned(self.spec.name, transport.pid)
        if not self._quiet:
            log.info("apps: {name} spawned, pid {pid}", name=self.spec.name, pid=self.pid)
        if self.spec.settings.startsecs <= 0:
            self._running()
        else:
            self._schedule.later(self.spec.settings.startsecs, self._running)

    def _not_launched(self, failure: Failure, protocol: _ProgramProtocol) -> None:
        """Its spawn failed: its preparation (no directory, an unknown user: KeyError) or the
        spawn itself (OSError); anything else is a bug's traceback, and a failed start too."""
        if self._protocol is not protocol:  # (stopped while its spawn was prepared)
            return
        exc = failure.value
        why = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)  # (str() quotes it)
        self._protocol = None
        self._ended(protocol)
        if isinstance(exc, OSError) and exc.errno in SPAWN_SHORTAGES:
            self._spawn_short(why)
            return
        if isinstance(exc, (OSError, KeyError)):
            log.error("apps: cannot spawn {name}: {error}", name=self.spec.name, error=why)
        else:
            log.failure("apps: cannot spawn {name}", failure, name=self.spec.name)
        self._start_failed(f"cannot spawn: {why}")

    def _running(self) -> None:
        self._schedule.fired()
        self._schedule.started()
        self._set_state(ProgramState.RUNNING)

    def _output(self, target: RotatingLog | None, data: bytes) -> None:
        if target is not None:
            self._writer.write(target, data)

    def _exited(self, protocol: _ProgramProtocol, reason: Failure) -> None:
        if protocol is not self._protocol:
            return
        self._protocol = None
        self.exitstatus = exit_status(reason)
        self.pid = None
        if protocol.pid is not None:
            self._launcher.signal_group(protocol.pid, signal.SIGKILL)
            self._launcher.ended(self.spec.name, protocol.pid)
        uptime = steady_seconds(self._clock) - self._started_at
        oom = self.state is not ProgramState.STOPPING and self._taken_by_oom_killer()
        if self.state is ProgramState.STOPPING:
            self._quiet = False
            log.info("apps: {name} stopped after {uptime:.1f}s: {how}", name=self.spec.name,
                     how=describe_exit(self.exitstatus), uptime=uptime)
        else:  # (a program that ends by itself: a crash, or a mistake the operator reads in its log)
            loop = self._exit_lines.note(uptime)
            self._quiet = loop is None
            if loop is not None and oom:
                log.warn("apps: {name} {how} after {uptime:.1f}s, not by the gateway: the kernel's OOM killer"
                         " took it (out of memory: its memory cgroup counted an OOM kill meanwhile){loop}",
                         name=self.spec.name, how=describe_exit(self.exitstatus), uptime=uptime, loop=loop)
            elif loop is not None:
                log.warn("apps: {name} {how} after {uptime:.1f}s, on its own: see why in its log ({where}){loop}",
                         name=self.spec.name, how=describe_exit(self.exitstatus), uptime=uptime,
                         where=self.spec.where_logged(), loop=loop)
        self._schedule.cancel()
        if self.state is ProgramState.STOPPING:
            self._sweep(protocol.pid)
            return
        self._look_after_exit(protocol.pid)
        if self.state is ProgramState.STARTING:
            status = self.exitstatus
            how = f"exited with {status}" if status >= 0 else f"killed by signal {-status}"
            how += OOM_KILLED if oom else ""
            self._start_failed(f"{how} before {self.spec.settings.startsecs:g}s")
        elif self.state is ProgramState.RUNNING:
            self._set_state(ProgramState.EXITED)
            # (unless an observer of that change stopped it: the health gate's rollback does)
            if self.state is ProgramState.EXITED and self._should_restart(self.exitstatus):
                delay = self._schedule.exited(uptime)
                self._when_looked(lambda: self._schedule.restart_later(delay, self._spawn))

    def _taken_by_oom_killer(self) -> bool:
        """Whether its end on its own was the kernel's OOM killer's: SIGKILL (no stop was asked),
        and the OOM kill count of its memory cgroup rose since its spawn."""
        before, self._oom_kills = self._oom_kills, None
        if self.exitstatus != -signal.SIGKILL or before is None:
            return False
        now = self._launcher.oom_kill_count(self.spec.app)
        return now is not None and now > before

    def _sweep(self, group: int | None) -> None:
        """Kill what it started that left its group ``group``, then STOPPED: fire the stop's waiters."""
        def stopped(_: object) -> None:
            self._set_state(ProgramState.STOPPED)
            waiters, self._stop_waiters = self._stop_waiters, []
            for waiter in waiters:
                waiter.callback(None)

        self._launcher.sweep(self.spec.name, group, self.spec.env).addCallback(stopped)

    def _look_after_exit(self, group: int | None) -> None:
        """Its main process ended on its own (group ``group`` killed): kill what it started that
        left the group, off the reactor thread; :meth:`_when_looked` holds what must wait."""
        # (in a crash loop, held back with the end's own line: :class:`CrashLoopLog`)
        looking = self._launcher.sweep(self.spec.name, group, self.spec.env, quiet=self._quiet)
        if looking.called:  # (nothing recorded, or looked through at once)
            return
        self._looking = looking

        def looked(_: object) -> None:
            self._looking = None
            then, self._after_look = self._after_look, None
            if then is not None:
                then()

        looking.addCallback(looked)

    def _when_looked(self, then: Callable[[], None]) -> None:
        """Call ``then`` now, or once the look after its end on its own is done (in place of
        what waited for it before: a stop drops the restart, a start replaces it)."""
        if self._looking is None:
            then()
        else:
            self._after_look = then

    def _start_failed(self, why: str) -> None:
        self.error = why
        delay = self._schedule.start_failed()
        if self._schedule.failures > self.spec.settings.startretries:
            log.error("apps: {name} failed to start {count} time{s}: FATAL", name=self.spec.name,
                      count=self._schedule.failures, s="" if self._schedule.failures == 1 else "s")
            self._set_state(ProgramState.FATAL)
            return
        self._set_state(ProgramState.BACKOFF)
        if self.state is ProgramState.BACKOFF:  # (not stopped by an observer of that change)
            self._when_looked(lambda: self._schedule.restart_later(delay, self._spawn))

    def _spawn_short(self, why: str) -> None:
        # The gateway out of descriptors says nothing of the program: it backs off until the
        # shortage passes, however long, and goes on as if the failed spawns never happened.
        self._shortages += 1
        count = self._shortage_lines.note()
        if count is not None:
            log.error("apps: cannot spawn {name}: {error} (the gateway's own shortage: tried again until it passes,"
                      " every {most:g} s at most; {since})", name=self.spec.name, error=why,
                      most=self._schedule.maximum, since=since_last_line(count, "failed spawns",
                                                                         "logged at most once a minute"))
        self.error = f"cannot spawn: {why} (the gateway's own shortage: tried again until it passes)"
        self._set_state(ProgramState.BACKOFF)
        if self.state is ProgramState.BACKOFF:  # (not stopped by an observer of that change)
            self._schedule.restart_later(self._schedule.delay(self._shortages), self._spawn)

    def _should_restart(self, status: int) -> bool:
        policy = self.spec.settings.autorestart
        if policy == "unexpected":
            # Negative: killed by a signal, never an expected exit.
            return status < 0 or status not in self.spec.settings.exitcodes
        return policy == "true"

    def _set_state(self, state: ProgramState) -> None:
        if state in (ProgramState.RUNNING, ProgramState.STOPPED):
            self.error = ""  # a start that succeeded, or an operator's stop, ends the failure
        self.state = state
        if self._on_change is not None:
            self._on_change(self)


def describe_exit(status: int) -> str:
    """An exit status as the log words it: ``exited with status 1``, or, for minus a signal
    number, ``killed by signal 15 (SIGTERM)``."""
    if status >= 0:
        return f"exited with status {status}"
    try:
        name = f" ({signal.Signals(-status).name})"
    except ValueError:
        name = ""
    return f"killed by signal {-status}{name}"
