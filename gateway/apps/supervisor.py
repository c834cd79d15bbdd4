"""The set of supervised programs: build their specs, add, remove, start and stop them."""

from __future__ import annotations

import os
import pwd
import shlex
from pathlib import Path
from typing import Any, Callable

from twisted.internet.defer import Deferred, gatherResults

from gateway.apps.errors import InstallError, UnknownAppError
from gateway.apps.logs import AppLogWriter
from gateway.apps.process import ProcessLauncher, ProgramProcess, ProgramSpec, ProgramStatus
from gateway.apps.settings import ProgramSettings
from gateway.shown import shown_repr


#: What systemd tells the gateway's own process (socket activation, ``sd_notify``, the
#: watchdog), left out of an app's environment: a program would take the gateway's sockets
#: for its own (its fd 3 is no socket of them), or speak to systemd in the gateway's name.
SYSTEMD_PROCESS_VARIABLES = frozenset({"LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "NOTIFY_SOCKET",
                                       "WATCHDOG_PID", "WATCHDOG_USEC"})


def app_environment(app: str, version: str, home: Path, state_dir: Path,
                    broker_address: str) -> dict[str, str]:
    """The gateway's environment, but for :data:`SYSTEMD_PROCESS_VARIABLES`, plus the
    ``GATEWAY_*`` variables that tell an app where it is.

    :param app: the app's name.
    :param version: the app's version.
    :param home: the app's version directory.
    :param state_dir: the gateway's state directory.
    :param broker_address: the local MQTT broker, as apps should connect to it.
    """
    env = {name: value for name, value in os.environ.items() if name not in SYSTEMD_PROCESS_VARIABLES}
    env.update(
        GATEWAY_APP_NAME=app, GATEWAY_APP_VERSION=version, GATEWAY_APP_DIR=str(home),
        GATEWAY_APP_STATE_DIR=str(state_dir / "apps" / app / "data"),
        GATEWAY_STATE_DIR=str(state_dir), GATEWAY_BROKER=broker_address,
    )
    return env


def build_spec(name: str, app: str, version: str, settings: ProgramSettings, home: Path,
               state_dir: Path, broker_address: str) -> ProgramSpec:
    """Resolve a program's command, directory, environment and log paths.

    The environment is :func:`app_environment` plus supervisord's ``SUPERVISOR_*``
    variables, then the program's ``environment``. Default logs go to
    ``<state>/logs/apps/<program>.log`` (and ``.err.log``).

    :param name: the program's name.
    :param app: the app's name.
    :param version: the app's version.
    :param settings: the program's knobs.
    :param home: the app's version directory (relative paths start there).
    :param state_dir: the gateway's state directory.
    :param broker_address: the local MQTT broker, as apps should connect to it.
    :raises InstallError: for an empty command, or an unknown user when the gateway runs as
        root (otherwise ``user`` is ignored, and with it HOME, USER and LOGNAME).
    """
    argv = tuple(shlex.split(settings.command))
    if not argv:
        raise InstallError(f"program {name}: empty command")
    env = app_environment(app, version, home, state_dir, broker_address)
    env.update(SUPERVISOR_ENABLED="1", SUPERVISOR_PROCESS_NAME=name,
               SUPERVISOR_GROUP_NAME=name, GATEWAY_PROGRAM_NAME=name)
    if settings.user and os.getuid() == 0:  # only root can switch users: otherwise ignored
        try:
            entry = pwd.getpwnam(settings.user)
        except KeyError as exc:
            raise InstallError(f"program {name}: no user {settings.user!r}") from exc
        env.update(HOME=entry.pw_dir, USER=entry.pw_name, LOGNAME=entry.pw_name)
    env.update(settings.environment)
    cwd = home / settings.directory if settings.directory else home
    logs_dir = state_dir / "logs" / "apps"
    return ProgramSpec(
        name, app, version, settings, argv, cwd, env,
        _log_path(settings.stdout_logfile, logs_dir / f"{name}.log", home),
        None if settings.redirect_stderr else _log_path(
            settings.stderr_logfile, logs_dir / f"{name}.err.log", home),
    )


def _log_path(configured: str | None, default: Path, home: Path) -> Path | None:
    if configured is None or configured.upper() == "AUTO":
        return default
    if configured.upper() == "NONE":
        return None
    return home / configured


class AppSupervisor:
    """Runs every program of every app; program names are unique across the gateway.

    :param launcher: spawns and signals process groups.
    :param clock: an IReactorTime.
    :param writer: the shared log writer.
    :param backoff_initial: first restart delay.
    :param backoff_max: restart delay cap.
    """

    def __init__(self, launcher: ProcessLauncher, clock: Any, writer: AppLogWriter,
                 backoff_initial: float = 1.0, backoff_max: float = 60.0) -> None:
        self._launcher = launcher
        self._clock = clock
        self._writer = writer
        self._initial = backoff_initial
        self._max = backoff_max
        self.programs: dict[str, ProgramProcess] = {}
        self.observers: list[Callable[[ProgramProcess], None]] = []

    def add(self, spec: ProgramSpec) -> ProgramProcess:
        """Supervise ``spec`` (STOPPED until started).

        :raises InstallError: when another app already has a program of that name.
        """
        if spec.name in self.programs:
            raise InstallError(f"program name {spec.name!r} is taken by app "
                               f"{self.programs[spec.name].spec.app!r}")
        process = ProgramProcess(spec, self._launcher, self._clock, self._writer,
                                 self._initial, self._max, self._notify)
        self.programs[spec.name] = process
        return process

    def _notify(self, process: ProgramProcess) -> None:
        for observer in list(self.observers):
            observer(process)

    def get(self, name: str) -> ProgramProcess:
        """The program called ``name``.

        :raises UnknownAppError: when there is none.
        """
        try:
            return self.programs[name]
        except KeyError:
            raise UnknownAppError(f"no program {shown_repr(name)}") from None

    def of_app(self, app: str) -> list[ProgramProcess]:
        """The programs of ``app``, in name order."""
        return [p for n, p in sorted(self.programs.items()) if p.spec.app == app]

    def remove_app(self, app: str) -> Deferred[None]:
        """Stop every program of ``app`` and forget them; fires once all have exited."""
        return self._stop_and_forget(self.of_app(app))

    def stop_all(self) -> Deferred[None]:
        """Stop and forget every program; fires once every process has exited."""
        return self._stop_and_forget(list(self.programs.values()))

    def kill_all(self) -> None:
        """Kill every program now (see :meth:`ProgramProcess.kill`); :meth:`stop_all`'s
        Deferred still fires once each has exited."""
        for process in list(self.programs.values()):
            process.kill()

    def _stop_and_forget(self, processes: list[ProgramProcess]) -> Deferred[None]:
        def forget(_: object, process: ProgramProcess) -> None:
            if self.programs.get(process.spec.name) is process:
                del self.programs[process.spec.name]
            process.close()

        stops = [p.stop().addCallback(forget, p) for p in processes]
        return gatherResults(stops, consumeErrors=True).addCallback(lambda _: None)

    def flush_logs(self) -> Deferred[None]:
        """Fires once every output received so far is in the log files."""
        return self._writer.flush()

    def statuses(self) -> list[ProgramStatus]:
        """Every program's status, in name order."""
        return [p.status() for _, p in sorted(self.programs.items())]
