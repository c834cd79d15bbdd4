"""The apps' operations interface: install, uninstall, start, stop, restart, status, tail.

The spool and the updates service (``app`` modules) call this one class; every other door
to the apps must too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal

from twisted.internet.defer import CancelledError, Deferred, DeferredLock, fail, gatherResults, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.logger import Logger

from gateway.apps.commands import CommandResult, run_command
from gateway.apps.errors import (AlreadyCurrentError, AmbiguousProgramError, AppError, AppsStoppingError,
                                 DesiredStateError, HealthCheckError, InstallError, ManifestError,
                                 PackageError, UnknownAppError)
from gateway.apps.health import watch_health
from gateway.apps.logs import log_lines, remove_logs, tail_bytes, tail_file
from gateway.apps.manifest import AppManifest, HealthCheck, read_manifest
from gateway.apps.process import ProcessLauncher, ProgramProcess, ProgramSpec, ProgramStatus
from gateway.apps.registry import RUNNING, STOPPED, AppRegistry
from gateway.apps.settings import AppsSettings
from gateway.apps.supervisor import AppSupervisor, app_environment, build_spec
from gateway.filelayer import makedirs_durably
from gateway.shown import shown, shown_repr

if TYPE_CHECKING:  # the installer (and tarfile) is imported by the first install
    from gateway.apps.installer import Blocking, PackageInstaller

log = Logger()
CONFIG_VERSION = "config"
#: Programs started in one turn of the reactor at the gateway's start: each spawn costs a few ms
#: of the reactor's thread (its cgroup is made off it), and 50 in one turn held every MQTT
#: client, link and timer for 0.5 s (2 s on a loaded machine).
STARTS_PER_TURN = 8
#: Why an install whose health window the apps service's stop cut short was rolled back.
_STOPPED_IN_WINDOW = ("the apps service stopped during the health window (the gateway stops, or restarts "
                      "for a configuration change)")


@dataclass(frozen=True)
class InstallResult:
    """How an install ended. Failures are results, not errors, so callers can report them.

    :param ok: the new version is installed (and, if it runs programs, healthy).
    :param outcome: ``installed``; ``refused`` (unsafe or malformed, nothing written);
        ``failed`` (install.sh or setup failed, nothing active changed); ``rolled-back``
        (the new version was unhealthy and the previous one runs again).
    :param name: the app (None when the package could not even be named).
    :param version: the version installed or attempted.
    :param previous: the version that was current before (equal to ``version`` when that
        version was current already and the install was refused for it).
    :param message: one line for an operator.
    :param log: install.sh's output, plus the new version's log tail on a rollback.
    """

    ok: bool
    outcome: Literal["installed", "refused", "failed", "rolled-back"]
    name: str | None
    version: str | None
    previous: str | None
    message: str
    log: str = ""


class AppOperations:
    """Everything an operator can do to hosted apps; mutating calls run one at a time.

    :param settings: the apps settings.
    :param state_dir: the gateway's state directory.
    :param reactor: an IReactorProcess and IReactorTime.
    :param broker_address: the local broker address apps are told about.
    :param supervisor: runs the programs.
    :param launcher: spawns and signals process groups.
    :param blocking: runs a blocking callable off the reactor thread.
    """

    def __init__(self, settings: AppsSettings, state_dir: Path, reactor: Any,
                 broker_address: str, supervisor: AppSupervisor, launcher: ProcessLauncher,
                 blocking: Blocking[Any]) -> None:
        self._settings = settings
        self._state_dir = state_dir
        self._reactor = reactor
        self._broker = broker_address
        self._supervisor = supervisor
        self._launcher = launcher
        self._blocking = blocking
        self.registry = AppRegistry(state_dir)
        self._made_installer: PackageInstaller | None = None
        #: whether another kind of app (a container) has ``name``, or an install of it is under way.
        self.other_kinds: Callable[[str], bool] = lambda name: False
        self._installing: str | None = None  # the app the install under way took the name of
        self._recorded = False  # the install under way is in apps/installing.json
        self._desired: dict[str, str] = {}
        self._lock = DeferredLock()
        self._closed = False

    @property
    def _installer(self) -> PackageInstaller:
        """The package installer, made by the first install (an idle gateway does without
        it and tarfile)."""
        if self._made_installer is None:
            from gateway.apps.installer import PackageInstaller

            state_dir, broker_address = self._state_dir, self._broker
            self._made_installer = PackageInstaller(
                self._settings, self.registry, self._reactor, self._launcher, self._blocking,
                lambda app, version, home: app_environment(app, version, home, state_dir, broker_address),
                self._take_name, self._record_install)
        return self._made_installer

    # -- start-up -------------------------------------------------------------------
    @inlineCallbacks
    def load(self) -> Any:
        """Supervise the config's programs and every installed app's current version.

        Programs start when their persisted desired state is ``running``, or when none
        is persisted and ``autostart`` is set. An app that cannot be loaded is logged
        and skipped; the others still start.
        """
        yield self._blocking(lambda: makedirs_durably(str(self._state_dir)))

        def make_data_dirs() -> None:  # each config program's GATEWAY_APP_STATE_DIR, as for a package
            for name in self._settings.programs:
                makedirs_durably(str(self.registry.data_dir(name)))

        yield self._blocking(make_data_dirs)
        yield self._blocking(self.registry.remove_leftovers)
        yield self._undo_cut_short_install()
        try:
            self._desired = yield self._blocking(self.registry.load_desired)
        except ValueError as exc:
            log.error("apps: unusable wishes ({error}); each program follows its autostart until it is"
                      " started or stopped again", error=str(exc))
            self._desired = {}
        processes = []
        for name, settings in sorted(self._settings.programs.items()):
            try:
                spec = build_spec(name, name, CONFIG_VERSION, settings, self._state_dir,
                                  self._state_dir, self._broker)
                processes.append(self._supervisor.add(spec))
            except AppError as exc:
                log.error("apps: config program {name}: {error}", name=name, error=str(exc))
        yield self._run_all(processes)
        installed = yield self._blocking(self.registry.installed)
        for name, version in installed.items():
            home = self.registry.version_dir(name, version)
            try:
                manifest = yield self._blocking(lambda: read_manifest(home, name, version))
                processes = self._add_programs(manifest, home)
            except AppError as exc:
                log.error("apps: cannot load {name} {version}: {error}", name=name,
                          version=version, error=str(exc))
            else:
                yield self._run_all(processes)

    @inlineCallbacks
    def _run_all(self, processes: list[ProgramProcess]) -> Any:
        """:meth:`_run` each, :data:`STARTS_PER_TURN` in a turn of the reactor; fires once
        every one started is spawned (its spawn is prepared off the reactor thread)."""
        for first in range(0, len(processes), STARTS_PER_TURN):
            if first:
                yield deferLater(self._reactor, 0, lambda: None)
            batch = processes[first:first + STARTS_PER_TURN]
            for process in batch:
                self._run(process)
            yield gatherResults([process.launched() for process in batch])

    @inlineCallbacks
    def _undo_cut_short_install(self) -> Any:
        """Before any program starts: an install the gateway's end cut short (a SIGKILL, a power
        cut: in its health window, or before) is undone on disk, as a stop in it would be."""
        try:
            undone = yield self._blocking(lambda: self.registry.undo_cut_short_install(self._version_logs))
        except (OSError, ValueError) as exc:
            log.error("apps: cannot undo the install the gateway's end cut short: {error}", error=str(exc))
            return
        if undone is not None:
            name, version, previous = undone
            log.warn("apps: {name} {version}: its install was cut short by the gateway's end (killed, or a "
                     "power cut): undone, {undone}", name=name, version=version,
                     undone=f"rolled back to {previous}" if previous else "removed (no previous version)")

    def _run(self, process: ProgramProcess) -> None:
        if self._closed:  # the service began to stop while it loaded: it starts nothing more
            return
        wish = self._desired.get(process.spec.name)
        if wish == RUNNING or (wish is None and process.spec.settings.autostart):
            process.start()

    def _specs(self, manifest: AppManifest, home: Path) -> list[ProgramSpec]:
        """The programs of ``manifest``'s version in ``home``, resolved, in name order."""
        return [build_spec(name, manifest.name, manifest.version, settings, home, self._state_dir, self._broker)
                for name, settings in sorted(manifest.programs.items())]

    def _version_logs(self, name: str, version: str) -> list[Path]:
        """The log files of the programs of ``version`` of ``name``; none when its manifest
        cannot be read (an install cut short while it unpacked). Blocks."""
        home = self.registry.version_dir(name, version)
        try:
            return [path for spec in self._specs(read_manifest(home, name, version), home) for path in spec.logs]
        except (AppError, OSError):
            return []

    def _add_programs(self, manifest: AppManifest, home: Path) -> list[ProgramProcess]:
        specs = self._specs(manifest, home)
        for spec in specs:
            owner = self._supervisor.programs.get(spec.name)
            if owner is not None and (owner.spec.app != manifest.name
                                      or owner.spec.version == CONFIG_VERSION):
                raise InstallError(f"program name {spec.name!r} is taken by app "
                                   f"{owner.spec.app!r}")
            if self.other_kinds(spec.name):
                raise InstallError(f"program name {spec.name!r}: {spec.name!r} is the name of a container app")
        return [self._supervisor.add(spec) for spec in specs]

    def _take_name(self, name: str) -> str | None:
        """Why the package being installed may not have ``name``; else ``name`` is the install's
        until it ends (:meth:`installs`: a container install started meanwhile is refused)."""
        if self._declared(name):
            return f"{name!r} is a program declared in the gateway config"
        if self.other_kinds(name):
            return f"{name!r} is the name of a container app"
        self._installing = name
        return None

    def _declared(self, name: str) -> bool:
        """Whether ``name`` is a program declared in the gateway config (``apps.programs``)."""
        return any(p.spec.version == CONFIG_VERSION for p in self._supervisor.of_app(name))

    def _record_install(self, name: str, version: str) -> None:
        """Before the package is unpacked (off the reactor thread, the operations' lock held, so
        the wishes do not change meanwhile): record the install, for the next start to undo
        if the gateway's end cuts it short."""
        self.registry.begin_install(name, version, dict(self._desired))
        self._recorded = True

    def _forget_install(self) -> None:
        """The install ended: its record goes (blocks). A record the disk keeps is undone at the
        next start, which rolls a healthy install back: logged."""
        self._recorded = False
        try:
            self.registry.end_install()
        except OSError as exc:
            log.error("apps: cannot remove {path} ({error}): the next start undoes the install it names",
                      path=str(self.registry.installing_path), error=exc.strerror or exc)

    def installs(self, name: str) -> bool:
        """Whether an install of an app named ``name`` is under way (its name is taken from the
        moment its package was checked, before ``install.sh`` runs, until the install ends)."""
        return self._installing == name

    def close(self) -> None:
        """The apps service stops: from now on nothing starts a program. An operation under
        way ends without starting one (an install in its health window, whose programs are
        being stopped, is rolled back on disk only); one that has not begun yet fails with
        :class:`AppsStoppingError`. The wishes they persisted stay, for the next start. An
        ``install.sh`` running is killed, as the gateway's end would kill it."""
        self._closed = True
        if self._made_installer is not None:
            self._made_installer.stop()

    def settled(self) -> Deferred[None]:
        """Fires once the operations under way or waiting have ended (after :meth:`close`: they
        start nothing more, and the files they write are on disk for the next service)."""
        return self._lock.run(lambda: None)

    # -- install --------------------------------------------------------------------
    def install(self, archive: Path) -> Deferred[InstallResult]:
        """Install a GWE tarball or native package; roll back if it is unhealthy.

        :param archive: the package file; it is only read.
        :return: fires with an InstallResult, success or not (never errbacks on a bad
            package or a failed install).
        """
        return self._lock.run(self._install, archive)

    def _install(self, archive: Path) -> Deferred[InstallResult]:
        def ended(result: Any) -> Any:
            self._installing = None
            if not self._recorded:
                return result
            return self._blocking(self._forget_install).addCallback(lambda _: result)

        return self._install_package(archive).addBoth(ended)

    @inlineCallbacks
    def _install_package(self, archive: Path) -> Any:
        if self._closed:
            return InstallResult(False, "failed", None, None, None, "the apps service is stopping (the gateway "
                                 "stops, or restarts for a configuration change): nothing was installed")
        try:
            prepared = yield self._installer.prepare(archive)
        except AlreadyCurrentError as exc:
            # previous == version: the caller can tell "nothing to do" from a failure
            return InstallResult(False, "failed", exc.name, exc.version, exc.version, str(exc))
        except PackageError as exc:
            refused = not isinstance(exc, InstallError)
            message = (f"bad package: {exc}" if isinstance(exc, ManifestError)
                       else f"refused: {exc}" if refused else str(exc))
            return InstallResult(False, "refused" if refused else "failed", exc.name, exc.version,
                                 self.registry.current(exc.name) if exc.name else None, message, exc.log)
        except CancelledError:  # (close() killed its install.sh; the unpacked files are gone)
            return InstallResult(False, "failed", None, None, None, "the apps service stopped while install.sh "
                                 "ran (the gateway stops, or restarts for a configuration change): it was "
                                 "killed, nothing active changed")
        manifest, home = prepared.manifest, prepared.home
        name, version = manifest.name, manifest.version
        previous = self.registry.current(name)
        if self._closed:  # it stopped while install.sh ran: nothing active changes
            yield self._blocking(lambda: self._installer.discard(name, version))
            return InstallResult(False, "failed", name, version, previous,
                                 f"the apps service stopped before {name} {version} was switched to "
                                 "(the gateway stops, or restarts for a configuration change): nothing "
                                 "active changed", prepared.install_output)
        before = dict(self._desired)
        old_names = {p.spec.name for p in self._supervisor.of_app(name)}
        desired = {program: wish for program, wish in before.items() if program not in old_names}
        desired.update({p: RUNNING for p, s in manifest.programs.items() if s.autostart})
        try:
            yield self._blocking(lambda: self.registry.set_current(name, version))
            yield self._save_desired(desired)
        except OSError as exc:  # the disk refuses the switch (full, read-only): nothing active changes
            yield self._blocking(lambda: self._unswitch(name, version, previous))
            return InstallResult(False, "failed", name, version, previous,
                                 f"could not switch to {name} {version}: {exc}", prepared.install_output)
        self._desired = desired
        yield self._supervisor.remove_app(name)
        try:
            processes = self._add_programs(manifest, home)
        except AppError as exc:
            yield self._rollback(name, version, previous, before)
            return InstallResult(False, "failed", name, version, previous, str(exc),
                                 prepared.install_output)
        started = [p for p in processes if p.spec.settings.autostart]
        window = (manifest.health_window if manifest.health_window is not None
                  else self._settings.health_window)
        check = self._health_check(manifest.health, name, version, home)
        try:
            if self._closed:
                raise HealthCheckError(_STOPPED_IN_WINDOW)
            for process in started:
                process.start()
            if started or check is not None:
                yield watch_health(self._supervisor, started, window, self._reactor, check)
        except HealthCheckError as exc:
            if self._closed:  # its programs are stopped with every other's: rolled back on disk only
                exc = HealthCheckError(_STOPPED_IN_WINDOW)
            tails = yield self._tails(started)
            yield self._rollback(name, version, previous, before)
            log.error("apps: {name} {version} unhealthy, {undone}: {why}", name=name, version=version,
                      undone=f"rolled back to {previous}" if previous else "removed (no previous version)",
                      why=str(exc))
            return InstallResult(False, "rolled-back", name, version, previous, str(exc),
                                 prepared.install_output + tails)
        # Forgotten before the old versions go: the next start after a gateway killed while they are
        # deleted must not undo this healthy install (switching back to a version already deleted).
        yield self._blocking(self._forget_install)
        try:
            yield self._blocking(lambda: self.registry.prune(name, self._settings.keep_versions))
        except OSError as exc:  # (installed all the same: the next install's prune finds them)
            log.error("apps: {name} {version} installed, but its old versions could not all be deleted ({error}):"
                      " the next install deletes them", name=name, version=version, error=exc.strerror or exc)
        log.info("apps: {name} {version} installed", name=name, version=version)
        return InstallResult(True, "installed", name, version, previous,
                             f"{name} {version} installed", prepared.install_output)

    def _unswitch(self, name: str, version: str, previous: str | None) -> None:
        """Switch ``current`` back to ``previous`` and remove ``version``'s files, after a
        switch whose desired state could not be written. Blocks.

        When ``current`` cannot be switched back either, the new files stay (``current`` may
        name them) and the next start runs what ``current`` names."""
        try:
            self.registry.set_current(name, previous)
        except OSError:
            log.failure("apps: cannot switch {name} back to {previous}", name=name, previous=previous)
            return
        self._installer.discard(name, version)

    def _health_check(self, health: HealthCheck | None, name: str, version: str,
                      home: Path) -> Any:
        if health is None:
            return None

        def check() -> Deferred[None]:
            env = app_environment(name, version, home, self._state_dir, self._broker)

            def judge(result: CommandResult) -> None:
                if not result.ok:
                    output = result.output.decode("utf-8", "replace").strip()
                    # (a check killed at its timeout has no exit status: it said "failed (None)")
                    why = (f"timed out after {health.timeout:g} s (health.timeout)" if result.exitstatus is None
                           else f"failed ({result.exitstatus})")
                    raise HealthCheckError(f"health check {why}: {output[-500:]}")

            return run_command(self._reactor, self._launcher, health.argv, home, env,
                               health.timeout, name=f"{name} {version} health check").addCallback(judge)

        return check

    @inlineCallbacks
    def _tails(self, processes: list[ProgramProcess]) -> Any:
        # Stop them and let their last output reach the files before reading.
        for process in processes:
            yield process.stop()
        for process in processes:
            yield process.drained()
        yield self._supervisor.flush_logs()
        text = ""
        for process in processes:
            for path in process.spec.logs:
                lines = yield self._blocking(lambda: tail_file(path, 50))
                text += f"\n--- {path.name} ---\n" + "\n".join(lines)
        return text

    @inlineCallbacks
    def _rollback(self, name: str, version: str, previous: str | None,
                  before: dict[str, str]) -> Any:
        # The logs of its programs go with it, as an uninstall's do (the result holds their ends),
        # but for those the version it goes back to writes in.
        logs = [path for process in self._supervisor.of_app(name) for path in process.spec.logs]
        yield self._supervisor.remove_app(name)
        yield self._blocking(lambda: self.registry.set_current(name, previous))
        try:
            yield self._save_desired(before)
        except OSError as exc:  # the rollback goes on: the next write of the wishes puts them back
            log.error("apps: {name} rolled back, but {path} still holds the wishes of {version}: {error}",
                      name=name, path=str(self.registry.desired_path), version=version,
                      error=exc.strerror or exc)
        self._desired = before
        yield self._supervisor.flush_logs()
        kept = {path for process in self._supervisor.programs.values() for path in process.spec.logs}
        if previous is None:
            yield self._blocking(lambda: self.registry.remove_app(name, [p for p in logs if p not in kept]))
            return
        yield self._blocking(lambda: self.registry.remove_version(name, version))
        home = self.registry.version_dir(name, previous)
        manifest = yield self._blocking(lambda: read_manifest(home, name, previous))
        kept.update(path for spec in self._specs(manifest, home) for path in spec.logs)
        yield self._blocking(lambda: remove_logs([path for path in logs if path not in kept]))
        if self._closed:  # the next apps service starts the previous version's programs
            return
        for process in self._add_programs(manifest, home):
            self._run(process)

    def _save_desired(self, desired: dict[str, str] | None = None) -> Deferred[None]:
        snapshot = dict(self._desired if desired is None else desired)
        return self._blocking(lambda: self.registry.save_desired(snapshot))

    # -- control --------------------------------------------------------------------
    def _targets(self, name: str) -> list[ProgramProcess]:
        if name in self._supervisor.programs:
            return [self._supervisor.programs[name]]
        processes = self._supervisor.of_app(name)
        if not processes:
            raise UnknownAppError(f"no app or program {shown_repr(name)}")
        return processes

    def start(self, name: str) -> Deferred[None]:
        """Start an app's programs (or one program) and remember that it should run.

        :raises UnknownAppError: (as the Deferred's failure) for an unknown name.
        """
        return self._lock.run(self._unless_closed, self._set_wish, name, RUNNING)

    def stop(self, name: str) -> Deferred[None]:
        """Stop an app's programs (or one program); it stays stopped across restarts.

        :return: fires once every process of it has exited.
        """
        return self._lock.run(self._unless_closed, self._set_wish, name, STOPPED)

    def restart(self, name: str) -> Deferred[None]:
        """Stop, then start; it is desired running afterwards."""
        return self._lock.run(self._unless_closed, self._restart, name)

    @inlineCallbacks
    def _restart(self, name: str) -> Any:
        yield self._persist_wish(self._targets(name), RUNNING)
        yield self._set_wish(name, STOPPED, persist=False)
        yield self._set_wish(name, RUNNING, persist=False)

    @inlineCallbacks
    def _persist_wish(self, processes: list[ProgramProcess], wish: str) -> Any:
        """Persist, then act: ``desired.json`` says ``wish`` for ``processes`` before memory does.

        :raises DesiredStateError: when the disk refuses it; nothing changed then.
        """
        what = "start" if wish == RUNNING else "stop"
        yield self._replace_desired({**self._desired, **{process.spec.name: wish for process in processes}},
                                    f"keep the wish to {what} {', '.join(p.spec.name for p in processes)}")

    @inlineCallbacks
    def _replace_desired(self, desired: dict[str, str], what: str) -> Any:
        """Write ``desired`` to ``desired.json``, then make it the wishes in memory.

        :raises DesiredStateError: "cannot ``what`` (...): nothing changed", when the disk refuses it.
        """
        try:
            yield self._save_desired(desired)
        except OSError as exc:
            raise DesiredStateError(f"cannot {what} ({self.registry.desired_path}: {exc.strerror or exc}):"
                                    " nothing changed") from exc
        self._desired = desired

    @inlineCallbacks
    def _set_wish(self, name: str, wish: str, persist: bool = True) -> Any:
        processes = self._targets(name)
        if persist:
            yield self._persist_wish(processes, wish)
        started = []
        for process in processes:
            if wish != RUNNING:
                yield process.stop()
            elif not self._closed:  # (a restart whose stop outlived the service: the next one starts it)
                process.start()
                started.append(process)
        # answered once spawned (its spawn is prepared off the reactor thread), with its pid
        yield gatherResults([process.launched() for process in started])

    def _unless_closed(self, operation: Callable[..., Deferred[Any]], *args: Any) -> Deferred[Any]:
        """Run ``operation(*args)``, unless the service has stopped meanwhile (:meth:`close`).

        :raises AppsStoppingError: when it has.
        """
        if self._closed:
            raise AppsStoppingError("the apps service is stopping (the gateway stops, or restarts for "
                                    "a configuration change): nothing was done")
        return operation(*args)

    def uninstall(self, name: str) -> Deferred[None]:
        """Stop an installed app and delete it, its versions, data and desired state.

        :raises UnknownAppError: (as the Deferred's failure) when it is not installed; the
            message says so of a program declared in the config, which is removed from there.
        :raises DesiredStateError: (as the Deferred's failure) when the disk refuses to write
            ``desired.json`` without its wishes: nothing changed, it runs on.
        """
        return self._lock.run(self._unless_closed, self._uninstall, name)

    @inlineCallbacks
    def _uninstall(self, name: str) -> Any:
        if self.registry.current(name) is None:
            if self._declared(name):  # listed like an app, so say why it is not one
                raise UnknownAppError(f"{shown_repr(name)} is a program declared in the gateway config"
                                      " (apps.programs), not an installed app: remove it from the"
                                      " configuration to remove it")
            program = self._supervisor.programs.get(name)
            if program is not None:  # listed as a program of an installed app: name that app
                raise UnknownAppError(f"{shown_repr(name)} is a program of the app {shown_repr(program.spec.app)},"
                                      f" not an app: uninstall {shown_repr(program.spec.app)} to remove it")
            raise UnknownAppError(f"no installed app {shown_repr(name)}")
        processes = self._supervisor.of_app(name)
        names = {process.spec.name for process in processes}
        # persist, then act: its wishes are gone from desired.json before it is
        kept = {program: wish for program, wish in self._desired.items() if program not in names}
        yield self._replace_desired(kept, f"forget the wishes of {name}")
        logs = [path for process in processes for path in process.spec.logs]
        yield self._supervisor.remove_app(name)
        yield self._supervisor.flush_logs()
        yield self._blocking(lambda: self.registry.remove_app(name, logs))
        log.info("apps: {name} uninstalled", name=name)

    # -- report ---------------------------------------------------------------------
    def status(self, name: str | None = None) -> list[ProgramStatus]:
        """Every program's status, or those of one app or program.

        :raises UnknownAppError: for an unknown name.
        """
        if name is None:
            return self._supervisor.statuses()
        return [p.status() for p in self._targets(name)]

    def log_path(self, name: str, stderr: bool = False) -> Path:
        """The file a program's stdout (or stderr) goes to, for following it.

        :param name: a program, or an app with one program.
        :raises UnknownAppError: when there is no such program or log (a program with
            ``redirect_stderr`` has no stderr log; one whose log file is ``NONE`` keeps none);
            the message says which.
        :raises AmbiguousProgramError: when ``name`` is an app with several programs.
        """
        processes = self._targets(name)
        if len(processes) != 1:
            raise AmbiguousProgramError(f"{name!r} has several programs: name one"
                                        f" ({shown(', '.join(process.spec.name for process in processes))})")
        spec = processes[0].spec
        path = spec.stderr_log if stderr else spec.stdout_log
        if path is None:
            if stderr and spec.settings.redirect_stderr:
                raise UnknownAppError(f"{name!r} has no stderr log: redirect_stderr sends its stderr "
                                      "to its stdout log; ask for that one")
            which = "stderr" if stderr else "stdout"
            raise UnknownAppError(f"{name!r} keeps no {which} log ({which}_logfile is NONE)")
        return path

    def tail(self, name: str, lines: int = 100, stderr: bool = False) -> Deferred[list[str]]:
        """The last lines of a program's stdout log (or stderr log) as text, each without its
        end, a byte that is no UTF-8 as U+FFFD (:func:`~gateway.apps.logs.log_lines` of
        :meth:`tail_bytes`).

        :param name: a program, or an app with one program.
        """
        return self.tail_bytes(name, lines, stderr).addCallback(log_lines, lines)

    def tail_bytes(self, name: str, lines: int = 100, stderr: bool = False) -> Deferred[bytes]:
        """The last lines of a program's stdout log (or stderr log), as they are
        (:func:`~gateway.apps.logs.tail_bytes`), with every line of its output the gateway has
        received so far: what waits for the log writer's thread is written first.

        :param name: a program, or an app with one program.
        :raises UnknownAppError: (as the Deferred's failure) when there is no such log.
        :raises AmbiguousProgramError: (likewise) when ``name`` is an app with several programs.
        """
        try:
            path = self.log_path(name, stderr)
        except (UnknownAppError, AmbiguousProgramError) as exc:
            return fail(exc)
        return self._supervisor.flush_logs().addCallback(lambda _: self._blocking(lambda: tail_bytes(path, lines)))
