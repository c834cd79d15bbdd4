"""Installing downloaded modules: apps through the hosted-apps installer, scripts by running
them, and gateway ``.deb`` files through a detached helper that outlives the gateway, or
through the package's root-owned ``gateway-selfupdate`` unit (:mod:`gateway.updates.selfupdate`)."""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from twisted.internet.defer import Deferred, DeferredLock, inlineCallbacks, maybeDeferred
from twisted.internet.inotify import INotify
from twisted.logger import Logger

from gateway.apps.commands import run_command
from gateway.apps.operations import InstallResult
from gateway.apps.process import ProcessLauncher
from gateway.atomic import fsync_directory, read_json, write_json_atomically
from gateway.clockstep import steady_seconds
from gateway.filelayer import makedirs, makedirs_durably
from gateway.namewatch import NameWatch, inotify_maker
from gateway.shown import shown_repr
from gateway.updates.errors import InstallError
from gateway.updates.operation import Operation, SoftwareModule
from gateway.updates.settings import UpdatesSettings


#: The path unit that hands a packaged gateway's .deb to root (``deb_installer: unit``).
SELFUPDATE_UNIT = "gateway-selfupdate.path"
#: Beside the request file: the result directory of the last gateway package installer launched,
#: which the next one waits for (across a restart too).
LAST_INSTALLER = "deb-installer.json"
#: Where the package installs that unit (``deb_installer: auto`` looks for it).
SELFUPDATE_UNIT_FILES = tuple(Path(directory) / SELFUPDATE_UNIT
                              for directory in ("/lib/systemd/system", "/usr/lib/systemd/system"))
#: Seconds that unit has to take a request before the install fails.
UNIT_TAKE_LIMIT = 30.0

#: Seconds between looks at an installer's files when nothing wakes the wait sooner: their change
#: does where inotify watches them (:mod:`gateway.namewatch`); the helper's end, the time limits.
LOOK_EVERY = 1.0

#: How much of the installer's log (install.sh's output, the new version's log tail) a status carries.
LOG_TAIL_CHARS = 800


class AppInstaller(Protocol):
    """What the hosted-apps installer offers: install an app archive, keeping the old version on failure."""

    def install(self, archive: Path) -> Deferred[InstallResult]:
        """Install (or upgrade to) the app in ``archive``.

        :return: fires with the result: ``ok`` is False when the package was refused, its install
            failed or it was rolled back (:class:`gateway.apps.operations.InstallResult`).
        """


#: How the name of the one file each target installs ends, among a module's artifacts.
TARGET_FILE_ENDINGS = {"app": (".tar.gz", ".tgz"), "script": (".sh",), "gateway": (".deb",), "swu": (".swu",)}


def target_file(target: str, files: list[Path]) -> Path:
    """The artifact a one-file target installs: the first whose name ends as that target's kind
    of file does (the package beside its signature, a script beside its notes), else the first.

    :param target: ``app``, ``script``, ``gateway`` or ``swu``.
    :param files: the module's artifacts, in order (at least one).
    """
    return next((f for f in files if f.name.endswith(TARGET_FILE_ENDINGS[target])), files[0])


def module_named(kind: str, module: SoftwareModule) -> str:
    """How a message names the module it installed: ``app 'sensor' 2.1``, its kind, its name
    quoted (a hawkBit chunk named ``app`` read ``app app 2``; a name of spaces or of a
    number would not read as one either) and its version.

    :param kind: ``app`` or ``container``.
    """
    return f"{kind} {shown_repr(module.name)} {module.version}"


def app_install_failure(module: SoftwareModule, result: InstallResult) -> str:
    """The status message for an app install that did not succeed: what happened, the installer's
    reason, and the tail of its log.

    :param module: the module that was installed.
    :param result: the installer's result (``ok`` False).
    """
    what = {
        "refused": "refused by the app installer (nothing was installed)",
        "failed": "install failed (the running version was not touched)",
        "rolled-back": (f"did not start healthy and was rolled back to {result.previous}" if result.previous
                        else "did not start healthy and was removed (no previous version)"),
    }.get(result.outcome, result.outcome)
    if None not in (result.name, result.version) and (result.name, result.version) != (module.name, module.version):
        what += f" (its package is {result.name} {result.version})"  # (as an INSTALLED message says)
    reason = result.message.removeprefix("refused: ")  # (the outcome says so already)
    return with_log_tail(f"{module_named('app', module)} {what}: {reason}", result.log)


def with_log_tail(message: str, log: str) -> str:
    """``message`` followed by the last :data:`LOG_TAIL_CHARS` of an installer's ``log``
    (install.sh's output, a rolled-back version's program or container logs), if any."""
    tail = log.strip()
    if tail:
        if len(tail) > LOG_TAIL_CHARS:
            tail = "..." + tail[-LOG_TAIL_CHARS:]
        message += f"\n--- install log (tail) ---\n{tail}"
    return message


def deb_installer(settings: UpdatesSettings) -> str:
    """``helper`` or ``unit``: how a gateway .deb is installed (``updates.deb_installer``; ``auto``
    is ``unit`` when the gateway does not run as root and the package's unit is installed)."""
    if settings.deb_installer != "auto":
        return settings.deb_installer
    if os.geteuid() != 0 and any(path.exists() for path in SELFUPDATE_UNIT_FILES):
        return "unit"
    return "helper"


def systemd_running() -> bool:
    """True when systemd is PID 1 and ``systemd-run`` is installed."""
    return os.path.isdir("/run/systemd/system") and shutil.which("systemd-run") is not None


class ModuleInstaller:
    """Installs one software module according to its target.

    :param reactor: spawns processes and tells the time.
    :param settings: the updates settings (script timeout, .deb command, systemd use).
    :param app_installer: the hosted-apps installer; None when apps are not hosted.
    :param systemd: says whether ``systemd-run`` can host the .deb helper.
    :param run_blocking: runs blocking work (unpacking bundles) off the reactor.
    :param deb_request: where a .deb install is requested from ``gateway-selfupdate.path``
        (``deb_installer: unit``), and beside it :data:`LAST_INSTALLER`; the updates service passes
        ``<state_dir>/updates/deb-request.json``.
    :param launcher: spawns scripts; the hosted apps' launcher records each script's group in
        ``processes.json`` while it runs, so that the next start stops what a gateway killed
        with SIGKILL left of it (:mod:`gateway.apps.leftovers`); None: a launcher recording nothing.
    :param notifier: makes the inotify instance that tells when the unit takes a request and when an
        installer's result comes; None: inotify on ``reactor`` where it can be
        (:func:`gateway.namewatch.inotify_maker`), else a look every :data:`LOOK_EVERY` seconds.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        settings: UpdatesSettings,
        app_installer: AppInstaller | None,
        systemd: Callable[[], bool] = systemd_running,
        run_blocking: Callable[..., Deferred[Any]] | None = None,
        launcher: ProcessLauncher | None = None,
        deb_request: Path | None = None,
        notifier: Callable[[], INotify] | None = None,
    ) -> None:
        self.reactor = reactor
        self._notifier = notifier or inotify_maker(reactor)
        self.deb_request = deb_request
        self.launcher = launcher or ProcessLauncher(reactor)
        self.run_blocking = run_blocking or (lambda f, *args: maybeDeferred(f, *args))
        self.settings = settings
        self.app_installer = app_installer
        self.systemd = systemd
        self._scripts: set[Deferred[Any]] = set()  # the scripts running (and swupdate_command runs)
        self._deb_lock = DeferredLock()

    def stop(self) -> None:
        """The updates service stops (the gateway stops, or a configuration change restarts it):
        kill the scripts running, as the gateway's end would (their install fails with
        CancelledError; the next service reports each as interrupted, not run twice)."""
        for running in list(self._scripts):
            running.cancel()

    @inlineCallbacks
    def install(self, operation: Operation, module: SoftwareModule, files: list[Path], resumed: bool) -> Any:
        """Install ``module`` from its downloaded ``files``; fire with a message for the status.

        :param operation: the operation (its ``helper`` is set for .deb installs; the caller persists it).
        :param module: the module.
        :param files: its verified artifacts, in order.
        :param resumed: True when a restart interrupted this install: apps and containers are
            installed again (the installers switch versions atomically), a running .deb helper is
            waited for, and a script is not run twice.
        :raises InstallError: when the install failed: for apps also when the installer refused the
            package or rolled the new version back (its result says ``ok=False``).
        """
        files = [f.absolute() for f in files]
        if module.target in TARGET_FILE_ENDINGS:  # (one file each; a container takes them all)
            files = [target_file(module.target, files)]
        if module.target == "swu":
            from gateway.updates.swu.install import install_bundle  # an idle gateway installs nothing

            message = yield install_bundle(self, operation, module, files[0], resumed, self.run_blocking)
            return message
        if module.target == "app":
            if self.app_installer is None:
                raise InstallError(f"{module_named('app', module)}: no app installer in this gateway")
            try:
                result = yield self.app_installer.install(files[0])
            except Exception as error:
                raise InstallError(f"{module_named('app', module)}: {error}") from error
            if not result.ok:
                if resumed and result.outcome == "failed" and result.version is not None \
                        and result.previous == result.version:
                    # The install that the restart interrupted got as far as switching versions.
                    return (f"{module_named('app', module)} installed (it was already current when "
                            "the gateway came back after a restart; its health window was not watched again)")
                raise InstallError(app_install_failure(module, result))
            message = f"{module_named('app', module)} installed" + (" (again, after a restart)" if resumed else "")
            if (result.name, result.version) != (module.name, module.version):  # the package names what it is
                message += f": its package is {result.name} {result.version}"
            return message
        if module.target == "container":
            message = yield self._install_container(module, files, resumed)
            return message
        if module.target == "script":
            if resumed:
                raise InstallError(f"{module.name}: the gateway restarted while its script ran, so its outcome "
                                   "is unknown; not run twice")
            message = yield self._run_script(operation, module, files[0])
            return message
        deb = files[0]
        result_dir = deb.parent / "helper"
        if resumed and (yield self.run_blocking(_installer_started, result_dir)):
            # Taken up after a restart: its installer runs, or ran, already. Nothing is launched,
            # so the lock is not waited for: another package's install, resumed beside this one,
            # may hold it, waiting for this installer's result before it launches its own.
            if deb_installer(self.settings) == "unit":
                from gateway.updates.rollback import ALIVE  # (the unit's side: only a resumed install)

                # Tell the unit, which watches the new version start (and rolls back when it
                # does not: gateway.updates.rollback).
                yield self.run_blocking(write_json_atomically, result_dir / ALIVE, {"pid": os.getpid()})
            message = yield self._installed(operation, module, deb, result_dir)
            return message
        # One package install at a time: dpkg takes one, and the unit has one request file.
        message = yield self._deb_lock.run(self._install_deb, operation, module, deb)
        return message

    @inlineCallbacks
    def _install_container(self, module: SoftwareModule, files: list[Path], resumed: bool) -> Any:
        install = getattr(self.app_installer, "install_container", None)
        if install is None:
            raise InstallError(f"{module_named('container', module)}: no container runtime in this gateway")
        try:
            result = yield install(module.name, module.version, files,
                                   {a.filename: a.digests for a in module.artifacts})
        except Exception as error:
            raise InstallError(f"{module_named('container', module)}: {error}") from error
        if not result.ok:
            if resumed and result.outcome == "failed" and result.previous == module.version:
                # The install that the restart interrupted got as far as switching versions.
                return (f"{module_named('container', module)} installed (it was already current when "
                        "the gateway came back after a restart; its health window was not watched again)")
            reason = result.message.removeprefix("refused: ")  # (the outcome says so already)
            raise InstallError(with_log_tail(
                f"{module_named('container', module)} {result.outcome}: {reason}", result.log))
        return f"{module_named('container', module)} installed"

    @inlineCallbacks
    def _run_script(self, operation: Operation, module: SoftwareModule, script: Path) -> Any:
        env = {**os.environ, "UPDATE_MODULE_NAME": module.name, "UPDATE_MODULE_VERSION": module.version}
        result = yield self.run(["/bin/sh", str(script)], script.parent, self.settings.script_timeout, env,
                                name=operation.process_name(script.name))
        output = result.output.decode("utf-8", "replace").strip()
        if result.exitstatus is None:
            raise InstallError(f"{script.name} ran longer than {self.settings.script_timeout:g}s and was killed")
        # (a script that says nothing is reported without a dangling ': ', as a silent installer is)
        if result.exitstatus != 0:
            said = f": {output[-500:]}" if output else ""
            raise InstallError(f"{script.name} exited with {result.exitstatus}{said}")
        return f"{script.name} ran" + (f": {output[-200:]}" if output else "")

    def run(self, argv: list[str], cwd: Path, timeout: float, env: dict[str, str] | None = None,
            name: str | None = None) -> Any:
        """Run a child in its own process group, bounded; fires with its result (exit status, output).
        :meth:`stop` kills it. A ``name`` records its group in the launcher's records while it runs
        (see :func:`gateway.apps.commands.run_command`)."""
        running = self._run(argv, cwd, timeout, env, name)
        self._scripts.add(running)

        def ended(result: Any) -> Any:
            self._scripts.discard(running)
            return result

        return running.addBoth(ended)

    def _run(self, argv: list[str], cwd: Path, timeout: float, env: dict[str, str] | None = None,
             name: str | None = None) -> Any:
        """Run a child in its own process group, bounded (the hosted-apps command runner)."""
        return run_command(self.reactor, self.launcher, tuple(argv), cwd,
                           env if env is not None else dict(os.environ), timeout, name=name)

    @inlineCallbacks
    def _install_deb(self, operation: Operation, module: SoftwareModule, deb: Path) -> Any:
        """Launch the installer of ``deb`` (the helper, or a request to the unit) once the one
        launched before it has its result, and wait for its own."""
        result_dir = deb.parent / "helper"
        last = self.deb_request.with_name(LAST_INSTALLER) if self.deb_request is not None else None
        if last is not None:
            earlier = yield self.run_blocking(read_json, last)
            yield self._after_earlier_installer(earlier, result_dir)

        def fresh_result_dir() -> None:
            shutil.rmtree(result_dir, ignore_errors=True)
            makedirs_durably(str(result_dir))

        yield self.run_blocking(fresh_result_dir)  # (an fsync of its parent: not on the reactor thread)
        if last is not None:
            yield self.run_blocking(write_json_atomically, last, {"result_dir": str(result_dir)})
        if deb_installer(self.settings) == "unit":
            yield self._hand_to_unit(operation, deb, result_dir)
        else:
            yield self._launch(operation, result_dir, [*self.settings.deb_install_command, str(deb)])
        message = yield self._installed(operation, module, deb, result_dir)
        return message

    @inlineCallbacks
    def _after_earlier_installer(self, last: Any, result_dir: Path) -> Any:
        """Fire once the installer recorded in ``last`` (the content of :data:`LAST_INSTALLER`),
        launched by this gateway before a restart, say, has its result (at once when it has, or
        never started); one that vanished or is past ``script_timeout`` is not waited for
        further: its own operation says so, and dpkg refuses to run beside it."""
        earlier = Path(last["result_dir"]) if isinstance(last, dict) and isinstance(last.get("result_dir"), str) \
            else None
        if earlier is None or earlier == result_dir:
            return
        started = yield self.run_blocking(_installer_started, earlier)
        if not started:
            return
        self.log.info("waiting for the gateway package installer of {earlier} to end first", earlier=str(earlier))
        try:
            yield self._wait_for_result(earlier)
        except InstallError:
            pass

    @inlineCallbacks
    def _installed(self, operation: Operation, module: SoftwareModule, deb: Path, result_dir: Path) -> Any:
        """Wait for the result of ``deb``'s installer; fire with the status's message.

        :raises InstallError: when it failed, or the unit rolled the new version back.
        """
        operation.helper = {"result_dir": str(result_dir)}
        result = yield self._wait_for_result(result_dir)
        output = str(result.get("output", "")).strip()
        if isinstance(result.get("message"), str):  # the unit's account: the new version failed, rolled back
            raise InstallError(f"{deb.name}: {result['message']}" + (f"\n--- dpkg ---\n{output[-500:]}"
                                                                     if output else ""))
        if result.get("exit_code") != 0:
            raise InstallError(f"{deb.name}: installer exited with {result.get('exit_code')}"
                               + (f": {output[-500:]}" if output else ""))
        return f"gateway package {module.version} installed"

    @inlineCallbacks
    def _launch(self, operation: Operation, result_dir: Path, command: list[str]) -> Any:
        helper = [sys.executable, "-m", "gateway.updates.detached_run"]
        if self.settings.use_systemd_run and self.systemd():
            # Named for this install's result directory, one per install and always a valid unit
            # name (the directory above it is m0 for every operation, a bundle's holds its name).
            unit = "gateway-update-" + hashlib.sha256(os.fsencode(result_dir)).hexdigest()[:16]
            argv = ["systemd-run", f"--unit={unit}", "--collect", "--quiet", "--", *helper, str(result_dir), "--",
                    *command]
            argv[0] = shutil.which("systemd-run") or argv[0]
        else:
            argv = [*helper, "--detach", str(result_dir), "--", *command]
        self.log.info("starting detached installer {argv}", argv=argv)
        # Not recorded in apps/processes.json (no name), unlike a script: the package's
        # maintainer scripts restart the gateway while dpkg runs, and the next start must not
        # stop the install of its own package (docs/updates.md).
        launched = yield self._run(argv, result_dir, 60.0)
        if launched.exitstatus != 0:
            output = launched.output.decode("utf-8", "replace").strip()
            raise InstallError(f"could not start the installer helper: {output[-500:]}")

    @inlineCallbacks
    def _hand_to_unit(self, operation: Operation, deb: Path, result_dir: Path) -> Any:
        """Write the request ``gateway-selfupdate.path`` watches, and wait until its service took it
        (renamed it aside); withdraw it and fail when nothing took it within :data:`UNIT_TAKE_LIMIT`."""
        request = self.deb_request
        if request is None:
            raise InstallError("the .deb goes to gateway-selfupdate, but this installer was given no request path")
        # (each look at the disk off the reactor thread, through run_blocking: an atomic write
        # fsyncs, and a slow SD card would stall every connection)
        yield self.run_blocking(_write_request, request, {"deb": str(deb), "result_dir": str(result_dir),
                                                          "correlation_id": operation.correlation_id})
        self.log.info("asked {unit} to install {deb} (request {request})", unit=SELFUPDATE_UNIT, deb=str(deb),
                      request=str(request))
        watch = NameWatch(self.reactor, request, self._notifier)
        began = steady_seconds(self.reactor)
        try:
            while (yield self.run_blocking(request.exists)):
                if steady_seconds(self.reactor) - began >= UNIT_TAKE_LIMIT:
                    withdrawn = yield self.run_blocking(_withdraw_request, request)
                    if not withdrawn:
                        break
                    raise InstallError(
                        f"{SELFUPDATE_UNIT} did not take the request within {UNIT_TAKE_LIMIT:g}s: enable it as "
                        f"root (systemctl enable --now {SELFUPDATE_UNIT}), and check that it watches {request}; "
                        "the installed version stays")
                yield watch.wait(LOOK_EVERY)
        finally:
            watch.close()

    @inlineCallbacks
    def _wait_for_result(self, result_dir: Path) -> Any:
        """Fire with the installer's result (``result.json`` in ``result_dir``) as soon as it is
        written; fail when its helper is gone without one (unless the unit recorded a step there,
        which its next start finishes: after a power cut, at boot), or after ``script_timeout``.
        Each look reads the directory through ``run_blocking``, off the reactor thread."""
        watch = NameWatch(self.reactor, result_dir / "result.json", self._notifier)
        began = steady_seconds(self.reactor)
        try:
            while True:
                result, going = yield self.run_blocking(_installer_progress, result_dir)
                if isinstance(result, dict):
                    return result
                waited = steady_seconds(self.reactor) - began
                if waited >= 5.0 and not going:
                    raise InstallError("the installer helper vanished without a result")
                if waited >= self.settings.script_timeout:
                    raise InstallError(f"no installer result after {self.settings.script_timeout:g}s")
                yield watch.wait(LOOK_EVERY)
        finally:
            watch.close()


def _write_request(request: Path, content: dict[str, Any]) -> None:
    """Write the request ``gateway-selfupdate.path`` watches, its folder made first (blocking)."""
    makedirs(str(request.parent))
    write_json_atomically(request, content)


def _withdraw_request(request: Path) -> bool:
    """Take the request nothing took back, atomically and durably; False when the unit took it at
    this very moment (blocking: renames and fsyncs)."""
    try:
        os.replace(request, request.with_name(request.name + ".withdrawn"))
    except FileNotFoundError:
        return False
    # (durably: a request back after a power cut would be installed at boot, by the unit enabled
    # meanwhile, for an operation reported failed)
    fsync_directory(request.parent)
    return True


def _installer_started(result_dir: Path) -> bool:
    """Whether the installer of ``result_dir`` (the helper, or the unit's service) has started."""
    return (result_dir / "helper.pid").exists() or (result_dir / "result.json").exists()


def _installer_progress(result_dir: Path) -> tuple[Any, bool]:
    """The installer's result in ``result_dir`` (``result.json``'s content, None before it is
    written), and whether it is still going: its helper alive, or a step the unit recorded
    there, which its next start finishes (blocking: reads the disk). With its result there, the
    helper and the step are not looked at."""
    from gateway.updates.rollback import STEP  # (the unit's side: only while a package installs)

    result = read_json(result_dir / "result.json")
    if isinstance(result, dict):
        return result, True
    return result, _helper_alive(result_dir) or (result_dir / STEP).exists()


def _helper_alive(result_dir: Path) -> bool:
    try:
        pid = int((result_dir / "helper.pid").read_text())
    except (OSError, ValueError):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
