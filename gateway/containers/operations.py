"""Container apps' operations: install or update (health gate, rollback), start, stop, restart,
uninstall, status, tail, and reconciling the runtime with the desired state.

Bound into the hosted apps' one operator model by :class:`gateway.apps.hosted.AppsControl`:
the same names, states, results (:class:`gateway.apps.operations.InstallResult`) and logs.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Literal

from twisted.internet.defer import CancelledError, Deferred, DeferredLock, fail, inlineCallbacks, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.apps.errors import AppsStoppingError, DesiredStateError, HealthCheckError, UnknownAppError
from gateway.apps.logs import remove_logs, tail_bytes, tail_file
from gateway.apps.names import log_name_problem
from gateway.apps.operations import InstallResult
from gateway.apps.process import ProgramState
from gateway.containers.description import ContainerDescription, valid_name
from gateway.containers.descfile import read_description
from gateway.containers.errors import DescriptionError, ImageError, NotFound, RuntimeFailure
from gateway.containers.health import watch_unit
from gateway.containers.images import Blocking, ImageFetcher
from gateway.containers.runtime import ContainerState, ContainerRuntime, ImageInfo
from gateway.containers.store import ContainerStore, DesiredState, Deployed
from gateway.containers.supervisor import ContainerSupervisor
from gateway.containers.unit import ContainerStatus
from gateway.shown import shown_repr

log = Logger()
LABEL_APP = "io.gateway.app"
LABEL_VERSION = "io.gateway.version"
#: The label naming the state directory of the gateway that made a container: a gateway acts
#: only on its own containers (and on those made before the label, which have none).
LABEL_OWNER = "io.gateway.state-dir"
CONFIG_VERSION = "config"
#: Why the operation asked for was not done (see :meth:`ContainerOperations.close`).
STOPPING = "the containers service is stopping (the gateway stops, or restarts for a configuration change)"


def _stop_cut_short(failure: Failure) -> None:
    """A unit's stop the runtime did not finish, where the operation goes on all the same (the
    unit is STOPPED; the next look at the runtime's states stops the container again)."""
    failure.trap(RuntimeFailure)


class ContainerOperations:
    """Everything an operator can do to container apps; mutating calls run one at a time.

    :param runtime: the container runtime.
    :param supervisor: the units.
    :param fetcher: pulls and loads images.
    :param store: the persisted desired state.
    :param clock: an IReactorTime.
    :param blocking: runs a blocking callable off the reactor thread.
    :param health_window: the default health window (``apps.health_window``).
    :param declared: the containers declared in the config.
    :param taken: says whether a name belongs to a hosted program.
    """

    def __init__(self, runtime: ContainerRuntime, supervisor: ContainerSupervisor, fetcher: ImageFetcher,
                 store: ContainerStore, clock: Any, blocking: Blocking, health_window: float,
                 declared: dict[str, ContainerDescription],
                 taken: Callable[[str], bool] = lambda name: False) -> None:
        self._runtime = runtime
        self._supervisor = supervisor
        self._fetcher = fetcher
        self._store = store
        self._clock = clock
        self._blocking = blocking
        self._health_window = health_window
        self._declared = declared
        self.taken = taken
        self._state = DesiredState()
        self._failed: dict[str, ContainerStatus] = {}
        self._lock = DeferredLock()
        self._closed = False
        self._watching: Deferred[None] | None = None  # the health window of the install under way
        self._installing: str | None = None  # the app the install under way took the name of
        self._unusable = False  # the state file could not be read at the start (moved aside)
        self._left: set[str] = set()  # containers left alone for it (each said once)
        supervisor.on_reconnect = self.reconcile

    def close(self) -> None:
        """The containers service stops: the operation under way goes no further than a crash
        there would (an install waiting for its image does nothing more, one in its health
        window leaves the new version current, unwatched, as after a restart), one that has not
        begun fails with :class:`AppsStoppingError`: once they have ended (:meth:`settled`) the
        next service (a configuration change) finds the desired state and the runtime as they
        were left, and nothing of this one acts on them any more."""
        self._closed = True
        self._fetcher.close()
        if self._watching is not None:
            self._watching.cancel()

    def settled(self) -> Deferred[None]:
        """Fires once the operations under way or waiting have ended."""
        return self._lock.run(succeed, None)

    def _unless_closed(self, operation: Callable[..., Deferred[Any]], *args: Any) -> Deferred[Any]:
        """Run ``operation(*args)`` unless the service has stopped meanwhile (:meth:`close`).

        :raises AppsStoppingError: when it has.
        """
        if self._closed:
            raise AppsStoppingError(f"{STOPPING}: nothing was done")
        return operation(*args)

    # -- start-up and reconciling ----------------------------------------------------------
    @inlineCallbacks
    def load(self) -> Any:
        """Read the desired state, take in the config's containers, follow events, reconcile."""
        self._state, problems = yield self._blocking(self._store.load)
        if problems:
            # What it named cannot be told from strays now: its containers are left as they are.
            self._unusable = True
            log.error("containers: unusable {path} ({problems}); the containers of the apps it"
                      " no longer names are left as they are until the next start",
                      path=self._store.path, problems="; ".join(problems))
        yield self._finish_uninstalls()
        for name, deployed in list(self._state.apps.items()):
            if deployed.source == "config" and name not in self._declared:
                del self._state.apps[name]  # removed from the config: reconcile removes it
        for name, description in self._declared.items():
            current = self._state.apps.get(name)
            if self.taken(name):  # an app installed before the container was declared
                why = f"{name!r} is the name of a hosted app or program: the declared container is not run"
                log.error("containers: {why}", why=why)
                if current is not None and current.source == "config":
                    del self._state.apps[name]
                self._fail(Deployed(name, CONFIG_VERSION, description, "", "", "stopped", "config"), why)
                continue
            if current is None or current.source != "config" or current.description != description:
                wish = current.wish if current is not None else (
                    "running" if description.autostart else "stopped")
                self._state.apps[name] = Deployed(name, CONFIG_VERSION, description, "", "", wish, "config")
        yield self._save_taken_in()
        try:
            yield self._supervisor.follow()
        except RuntimeFailure as exc:
            log.error("containers: the runtime does not answer ({error}); trying again", error=str(exc))
            why = f"{exc} (the gateway takes the container in hand once it answers)"
            self._list_unseen(lambda deployed: (ProgramState.FATAL, why))  # (their state unknown until then)
            self._supervisor.retry_later()
            return
        # Listed from here, each as it is wished until the reconcile comes to it (it may wait
        # behind the removal of an old container, or the pull of another app's image).
        self._list_unseen(lambda deployed: (
            ProgramState.STARTING if deployed.wish == "running" else ProgramState.STOPPED, ""))
        # Not waited for: a pull (a declared container's image, up to pull_timeout) must not hold
        # up the gateway's start; the operations asked for meanwhile wait behind it.
        self.reconcile().addCallback(lambda _: self._lock.run(self._prune_unused)).addErrback(
            lambda failure: log.error("containers: cannot take the containers in hand: {error}",
                                      error=failure.getErrorMessage()))

    @inlineCallbacks
    def _finish_uninstalls(self) -> Any:
        """Delete the log files of the apps whose uninstall a crash cut short (their containers
        are removed by :meth:`reconcile`, their images by the prune after it), unless the name is
        another app's or program's now (declared in the config, a hosted program)."""
        for name in sorted(self._state.uninstalling):
            if name not in self._state.apps and name not in self._declared and not self.taken(name):
                logs = self._supervisor.log_files(name)
                yield self._blocking(lambda: remove_logs(logs))
                log.info("containers: {name}'s uninstall, cut short by a restart, is finished: its logs are"
                         " deleted", name=name)
        self._state.uninstalling.clear()  # (written with the config's containers taken in, next)

    @inlineCallbacks
    def _prune_unused(self) -> Any:
        """Delete the images an update cut short (before its end: step 6) left that no current or
        previous version uses; a disk that refuses to record it is logged (the next prune does)."""
        if self._closed or not self._state.images - self._keep():
            return
        try:
            yield self._prune()
        except OSError as exc:
            log.warn("containers: cannot record the images deleted ({path}: {error}): the next prune forgets them",
                     path=self._store.path, error=exc.strerror or str(exc))

    def reconcile(self) -> Deferred[None]:
        """Make the runtime match the desired state: one container per app, in its wished state.

        Containers of versions that are not current and of apps the gateway no longer has
        are removed, so a crash in the middle of an update leaves no duplicates.
        """
        return self._lock.run(lambda: succeed(None) if self._closed else self._reconcile())

    @inlineCallbacks
    def _reconcile(self) -> Any:
        try:
            found = yield self._clear_stale()
        except RuntimeFailure as exc:
            # (the apps listed as they were wished, waiting for it, would show so for ever)
            self._list_unreached(f"{exc} (the gateway takes the container in hand again at app.start or its next start)")
            raise
        by_name = {s.name: s for s in found}
        for name, deployed in sorted(self._state.apps.items()):
            if self._closed:  # (the gateway stops while an image is pulled at its start)
                return
            try:
                yield self._ensure(deployed, by_name.get(deployed.container_name))
            except (RuntimeFailure, ImageError) as exc:
                if self._closed:  # (its pull given up by the stop: the next start pulls it)
                    return
                log.error("containers: cannot run {name}: {error}", name=name, error=str(exc))
                self._fail(deployed, str(exc))

    @inlineCallbacks
    def _clear_stale(self) -> Any:
        """Stop again the gateway's containers whose stop was cut short, and remove those of
        versions that are not current and of apps the gateway no longer has (reconcile's first
        step).

        :return: the containers left, as the runtime lists them.
        """
        listed: list[ContainerState] = yield self._own_containers()
        found = []
        for state in listed:
            app = state.labels.get(LABEL_APP, "")
            deployed = self._state.apps.get(app)
            if state.stopping and not (deployed is None and self._unusable):
                # Its stop was cut short (the gateway and podman's service died meanwhile): podman
                # would neither start it nor, removing it, end its process. Stop it for good first
                # (at once when it is to be removed: a forced removal would not wait either).
                timeout = 0.0 if deployed is None or state.name != deployed.container_name \
                    else deployed.description.stop_timeout
                log.info("containers: stopping {container} again, its stop was cut short", container=state.name)
                yield self._runtime.stop(state.id, timeout)
                state = yield self._runtime.inspect(state.id)
            found.append(state)
            if deployed is None and self._unusable:
                if state.id not in self._left:
                    self._left.add(state.id)
                    log.warn("containers: leaving {container} (app {app}) as it is: the state file that"
                             " named it was unusable; stop the gateway and put it back from {aside} to take"
                             " it in hand again (the next start removes it)", container=state.name, app=app,
                             aside=f"{self._store.path}.damaged")
                continue
            if deployed is None or state.name != deployed.container_name:
                log.info("containers: removing {container}, not a current version", container=state.name)
                yield self._runtime.remove(state.id)
        return found

    @inlineCallbacks
    def _ensure(self, deployed: Deployed, existing: ContainerState | None) -> Any:
        unit = self._supervisor.units.get(deployed.name)
        if unit is not None and existing is not None and unit.container_id == existing.id:
            if deployed.wish == "running" and unit.state is ProgramState.RUNNING and not existing.running:
                # Its death fell between two event streams: handle it as the event would have.
                unit.missed_exit(existing.exit_code)
                return
            if deployed.wish == "running" and existing.running != (unit.state is ProgramState.RUNNING):
                self._supervisor.forget(deployed.name)  # missed events: adopt it afresh
                unit = None
            else:
                unit.resume_logs()
                return
        if unit is not None:
            self._supervisor.forget(deployed.name)
        if existing is None:
            if not deployed.image_id:
                self._fail(deployed, "", ProgramState.STARTING)  # listed while its image comes
                info = yield self._fetcher.pull(deployed.description.image)
                deployed = yield self._with_image(deployed, info)
                if self._closed:  # stopped meanwhile: the next start creates it
                    return
            container_id = yield self._create(deployed)
        else:
            container_id = existing.id
            if not deployed.image_id and existing.image_id:
                # Adopted, its image unrecorded (the state file was unusable, or the write after
                # its pull refused): learnt from the container, its digest is reported again.
                try:
                    info = yield self._runtime.image(existing.image_id)
                except NotFound:
                    pass  # (podman lists no such image: adopted all the same, its image unknown)
                else:
                    deployed = yield self._with_image(deployed, info)
        self._failed.pop(deployed.name, None)
        unit = self._supervisor.add(deployed, container_id)
        if existing is not None:
            unit.attach(existing)
        if deployed.wish == "running":
            unit.start()
        elif existing is not None and existing.running:
            yield unit.stop().addErrback(_stop_cut_short)

    @inlineCallbacks
    def _with_image(self, deployed: Deployed, info: ImageInfo) -> Any:
        """Record ``info`` as the image of declared ``deployed`` (pulled for it, or the one its
        adopted container runs), among the images the gateway brought in, and write it.

        :return: the new :class:`Deployed`.
        """
        deployed = replace(deployed, image_id=info.id, image_digest=info.digest)
        self._state.apps[deployed.name] = deployed
        self._state.images.add(info.id)
        yield self._save_taken_in()
        return deployed

    def _create(self, deployed: Deployed) -> Deferred[str]:
        return self._runtime.create(deployed.container_name, deployed.image_id, deployed.description,
                                    {LABEL_APP: deployed.name, LABEL_VERSION: deployed.version,
                                     LABEL_OWNER: self._store.owner})

    def _own_containers(self) -> Deferred[list[ContainerState]]:
        """The gateway's containers in the runtime: labelled :data:`LABEL_APP`, and made by this
        gateway (:data:`LABEL_OWNER`, or none: made by a version before the label). Another
        gateway's (its own state directory, the same podman storage) are never touched."""
        def own(listed: list[ContainerState]) -> list[ContainerState]:
            return [s for s in listed if s.labels.get(LABEL_OWNER, self._store.owner) == self._store.owner]

        return self._runtime.containers(LABEL_APP).addCallback(own)

    def _list_unseen(self, shown: Callable[[Deployed], tuple[ProgramState, str]]) -> None:
        """List every app of the desired state not listed yet (at the start: none has a unit) as
        ``shown`` says (its state, and why), until it is taken in hand."""
        for name, deployed in self._state.apps.items():
            if name not in self._failed:
                state, why = shown(deployed)
                self._fail(deployed, why, state)

    def _list_unreached(self, why: str) -> None:
        """List FATAL, ``why``, the apps listed as they are wished (:meth:`_list_unseen`) that a
        reconcile cut short never took in hand."""
        for name, status in list(self._failed.items()):
            deployed = self._state.apps.get(name)
            if deployed is not None and not status.error and name not in self._supervisor.units:
                self._fail(deployed, why)

    def _fail(self, deployed: Deployed, why: str, state: ProgramState = ProgramState.FATAL) -> None:
        """List ``deployed``, which has no unit (yet), as ``state`` (FATAL: it cannot be deployed, ``why``)."""
        self._failed[deployed.name] = ContainerStatus(
            deployed.name, deployed.name, deployed.version, state, None, 0, None, 0,
            deployed.description.image, deployed.image_digest, why)

    @inlineCallbacks
    def _save_taken_in(self) -> Any:
        """Write what taking the containers in hand added to the desired state (the config's
        containers, a declared container's image once pulled). A disk that refuses it (full or
        read-only at boot) is logged and the containers go on: the next start makes the same
        again from the file and the config (a pull finds the image podman already has), and the
        next change writes it all."""
        try:
            yield self._save()
        except OSError as exc:
            log.error("containers: cannot write {path} ({error}): the containers follow it and the"
                      " config as they are; it is written with the next change",
                      path=self._store.path, error=exc.strerror or str(exc))

    def _save(self, state: DesiredState | None = None) -> Deferred[None]:
        snapshot = self._state.changed() if state is None else state
        return self._blocking(lambda: self._store.save(snapshot))

    # -- install and update ----------------------------------------------------------------
    @inlineCallbacks
    def install_files(self, name: str, version: str, files: list[Path],
                      digests: dict[str, dict[str, str]]) -> Any:
        """Install from an update's artifacts: a description (``.json``/``.yaml``) and maybe an
        OCI archive the description names in ``archive``.

        :param digests: each artifact's announced digests, by file name.
        :return: an InstallResult (``refused`` for a bad description or an archive without an
            announced sha256, never an errback).
        """
        described = [f for f in files if f.suffix in (".json", ".yaml", ".yml")]
        if len(described) != 1:
            return InstallResult(False, "refused", name, version, None,
                                 "refused: a container update needs exactly one .json or .yaml description")
        try:
            description = yield self._blocking(lambda: read_description(described[0]))
        except DescriptionError as exc:
            return InstallResult(False, "refused", name, version, None, f"bad description: {exc}")
        archive = None
        if description.archive is not None:
            archive = next((f for f in files if f.name == description.archive), None)
            if archive is None:
                return InstallResult(False, "refused", name, version, None,
                                     f"refused: archive {description.archive!r} is not an artifact")
            if not digests.get(archive.name, {}).get("sha256"):
                return InstallResult(False, "refused", name, version, None,
                                     f"refused: archive {archive.name!r} comes without an announced sha256 digest")
        result = yield self.install(name, version, description, archive,
                                    digests.get(archive.name, {}) if archive is not None else {})
        return result

    def install(self, name: str, version: str, description: ContainerDescription,
                archive: Path | None = None, digests: dict[str, str] | None = None) -> Deferred[InstallResult]:
        """Install or update a container app; roll back to the previous version if unhealthy.

        :param archive: an OCI archive holding the image (else the image is pulled).
        :param digests: the archive's announced digests (sha256 required).
        :return: fires with an InstallResult, success or not.
        """
        return self._lock.run(self._unless_closed, self._install, name, version, description, archive, digests or {})

    def _install(self, name: str, version: str, description: ContainerDescription, archive: Path | None,
                 digests: dict[str, str]) -> Deferred[InstallResult]:
        def ended(result: Any) -> Any:
            self._installing = None
            return result

        return self._install_container(name, version, description, archive, digests).addBoth(ended)

    @inlineCallbacks
    def _install_container(self, name: str, version: str, description: ContainerDescription, archive: Path | None,
                           digests: dict[str, str]) -> Any:
        previous = self._state.apps.get(name)
        was = previous.version if previous is not None else None

        def failed(outcome: Literal["refused", "failed", "rolled-back"], message: str,
                   log_text: str = "") -> InstallResult:
            log.error("containers: {name} {version}: {reason}", name=name, version=version, reason=message)
            return InstallResult(False, outcome, name, version, was, message, log_text)

        problems = ([] if valid_name(name) else [f"{name!r} is not a valid container name"])
        log_clash = log_name_problem(name)  # its logs must be no other's
        if log_clash is not None:
            problems.append(log_clash)
        problems += description.problems()
        if problems:
            return failed("refused", "bad description: " + "; ".join(problems))
        if self.taken(name):
            return failed("refused", f"refused: {name!r} is the name of a hosted process app or program")
        if previous is not None and previous.source == "config":
            return failed("refused", f"refused: {name!r} is a container declared in the gateway config")
        if previous is not None and previous.version == version:
            return failed("failed", f"{name} {version} is already the current version")
        rolled_back = yield self._rollback_cut_short(name)
        if rolled_back is not None and rolled_back[0] == version:
            # The update run again after a restart (a crash) in its rollback: it ends as that rollback would.
            tails = yield self._read_tails(name)
            return failed("rolled-back", f"{rolled_back[1]} (the gateway restarted during the rollback; "
                          f"{version} is not tried again)", tails)
        self._installing = name
        try:
            if archive is not None:
                info = yield self._fetcher.load(archive, description.image, digests)
            else:
                info = yield self._fetcher.pull(description.image)
        except (ImageError, RuntimeFailure) as exc:
            if self._closed:  # (its stop ends podman's service too: the pull's connection is lost)
                return failed("failed", f"{STOPPING} before {name} {version} was created: nothing changed ({exc})")
            if isinstance(exc, ImageError) and exc.brought:  # loaded all the same: delete those not in use
                self._state.images |= exc.brought
                yield self._prune()
            return failed("failed", str(exc))
        if self._closed:
            return failed("failed", f"{STOPPING} before {name} {version} was created: nothing changed")
        new = Deployed(name, version, description, info.id, info.digest,
                       "running" if description.autostart else "stopped", "update",
                       None if previous is None else replace(previous, previous=None))
        self._state.images.add(info.id)
        try:
            container_id = yield self._create(new)
        except RuntimeFailure as exc:
            yield self._save()
            return failed("failed", f"the runtime refused the container: {exc}")
        if self._closed:  # (not current: the next start would remove it, but that start has been)
            yield self._runtime.remove(container_id).addErrback(lambda _: None)
            return failed("failed", f"{STOPPING} before {name} {version} was made current: nothing changed")
        # Persist, then act: from here a crash leaves the new version current.
        try:
            yield self._save(self._state.changed(apps={**self._state.apps, name: new}))
        except OSError as exc:
            yield self._runtime.remove(container_id).addErrback(lambda _: None)
            deleted = yield self._fetcher.prune(self._state.images, self._keep())  # (unwritten: the disk refuses)
            self._state.images -= set(deleted)
            return failed("failed", f"cannot keep {name} {version} as the current version ({self._store.path}: "
                          f"{exc.strerror or exc}): nothing changed")
        self._state.apps[name] = new
        old_unit = self._supervisor.units.get(name)
        if old_unit is not None and not self._closed:
            yield old_unit.stop().addErrback(_stop_cut_short)
            self._supervisor.forget(name)
        if self._closed:  # current on disk: the next service starts it (and removes the old one)
            return failed("failed", f"{STOPPING} once {name} {version} was current, before it started: the next "
                          "start runs it")
        self._failed.pop(name, None)
        unit = self._supervisor.add(new, container_id)
        if new.wish == "running":
            unit.start()
            window = description.health_window if description.health_window is not None else self._health_window
            self._watching = watch_unit(self._supervisor, unit, window, self._clock)
            try:
                yield self._watching
            except CancelledError:  # closed: as after a restart in the window, it stays current
                return failed("failed", f"{STOPPING} in {name} {version}'s health window: it stays current, "
                              "its window not watched")
            except HealthCheckError as exc:
                # Persist, then act: from here a crash ends as a rollback (the next start runs the old version).
                restored = {other: kept for other, kept in self._state.apps.items() if other != name}
                if new.previous is not None:
                    restored[name] = new.previous
                # The rollback is recorded too: the update run again after such a crash ends as one.
                rolling = self._state.changed(apps=restored)
                rolling.rollbacks[name] = (version, str(exc))
                refused: OSError | None = None
                try:
                    yield self._save(rolling)
                except OSError as error:  # rolled back all the same (it must not run): unrecorded
                    refused = error
                self._state = rolling  # (the lock held: nothing else changed the state meanwhile)
                tails = yield self._tails(name)
                try:
                    # (unrecorded, the file still names the new version's image: kept until it is)
                    yield self._rollback(new, container_id, prune=refused is None)
                finally:
                    self._state.rollbacks.pop(name, None)
                try:
                    yield self._save()  # (the images deleted; no rollback under way)
                except OSError as error:  # rolled back all the same, as it is in podman
                    if refused is not None:
                        return failed("rolled-back", f"{exc}; rolled back, but the disk refuses to record it "
                                      f"({self._store.path}: {error.strerror or error}): until the next write "
                                      f"the file says {version} is current, and a restart runs it", tails)
                    log.warn("containers: {name} {version} rolled back, but cannot record that its rollback is"
                             " over ({path}: {error}): until the next write the file says it is under way and"
                             " lists the images deleted", name=name, version=version, path=self._store.path,
                             error=error.strerror or str(error))
                if refused is not None:  # recorded at last: the new version's image can go
                    yield self._prune_unused()
                return failed("rolled-back", str(exc), tails)
            finally:
                self._watching = None
        if previous is not None:
            old = yield self._own_containers()
            for state in old:
                if state.labels.get(LABEL_APP) == name and state.id != container_id:
                    yield self._runtime.remove(state.id)
        try:
            yield self._prune()
        except OSError as exc:  # installed all the same: the file lists pruned images until the next prune
            log.warn("containers: {name} {version} installed, but cannot record the images deleted ({path}:"
                     " {error}): the next prune forgets them", name=name, version=version, path=self._store.path,
                     error=exc.strerror or str(exc))
        log.info("containers: {name} {version} installed ({image})", name=name, version=version,
                 image=description.image)
        return InstallResult(True, "installed", name, version, was, f"{name} {version} installed")

    def _keep(self) -> set[str]:
        """The images a current or previous version of an app uses."""
        keep = {d.image_id for d in self._state.apps.values()}
        return keep | {d.previous.image_id for d in self._state.apps.values() if d.previous is not None}

    @inlineCallbacks
    def _prune(self) -> Any:
        """Delete the images the gateway brought in that no current or previous version uses,
        and persist what is left."""
        deleted = yield self._fetcher.prune(self._state.images, self._keep())
        self._state.images -= set(deleted)
        yield self._save()

    @inlineCallbacks
    def _tails(self, name: str) -> Any:
        unit = self._supervisor.units.get(name)
        if unit is None:
            return ""
        yield unit.stop().addErrback(_stop_cut_short)
        yield unit.drained()
        text = yield self._read_tails(name)
        return text

    @inlineCallbacks
    def _read_tails(self, name: str) -> Any:
        """The last 50 lines of the app's stdout and stderr logs, for a rollback's report."""
        yield self._supervisor.flush_logs()
        text = ""
        for path in self._supervisor.log_files(name):
            lines = yield self._blocking(lambda: tail_file(path, 50))
            text += f"\n--- {path.name} ---\n" + "\n".join(lines)
        return text

    @inlineCallbacks
    def _rollback_cut_short(self, name: str) -> Any:
        """Take out the record of ``name``'s rollback that a crash cut short (an install begins:
        it is that update's, run again after the restart, or a later one's), written at once
        (a disk that refuses it is logged: the next write forgets it).

        :return: the version rolled back and why, or None.
        """
        rolled_back = self._state.rollbacks.pop(name, None)
        if rolled_back is not None:
            try:
                yield self._save()
            except OSError as exc:
                log.warn("containers: cannot write {path} ({error}): it says {name} {version}'s rollback is"
                         " under way until the next write", path=self._store.path,
                         error=exc.strerror or str(exc), name=name, version=rolled_back[0])
        return rolled_back

    @inlineCallbacks
    def _rollback(self, new: Deployed, container_id: str, prune: bool = True) -> Any:
        """Remove ``new``'s container, run the previous version's again and (``prune``) delete
        ``new``'s image if no version uses it (the desired state says the previous version
        already; the caller writes it with the images deleted)."""
        self._supervisor.forget(new.name)
        yield self._runtime.remove(container_id)
        if new.previous is not None:
            found = yield self._own_containers()
            existing = next((s for s in found if s.name == new.previous.container_name), None)
            yield self._ensure(new.previous, existing)
        if prune and new.image_id not in {d.image_id for d in self._state.apps.values()}:
            deleted = yield self._fetcher.prune({new.image_id} & self._state.images, set())
            self._state.images -= set(deleted)

    # -- control ----------------------------------------------------------------------------
    def owns(self, name: str) -> bool:
        """Whether ``name`` is a container app."""
        return name in self._state.apps

    def installs(self, name: str) -> bool:
        """Whether an install of a container app named ``name`` is under way (its name is taken
        from the moment its description was checked, before its image is fetched, until the
        install ends: a process app install started meanwhile is refused)."""
        return self._installing == name

    def start(self, name: str) -> Deferred[None]:
        """Start it and remember that it should run."""
        return self._lock.run(self._unless_closed, self._set_wish, name, "running")

    def stop(self, name: str) -> Deferred[None]:
        """Stop it (fires once stopped); it stays stopped across restarts."""
        return self._lock.run(self._unless_closed, self._set_wish, name, "stopped")

    def restart(self, name: str) -> Deferred[None]:
        """Stop, then start; it is desired running afterwards."""
        return self._lock.run(self._unless_closed, self._restart, name)

    @inlineCallbacks
    def _restart(self, name: str) -> Any:
        yield self._persist_wish(name, "running")
        yield self._set_wish(name, "stopped", persist=False).addErrback(_stop_cut_short)
        yield self._set_wish(name, "running", persist=False)

    @inlineCallbacks
    def _persist_wish(self, name: str, wish: str) -> Any:
        """Persist, then act: the state file says ``wish`` for ``name`` before memory does.

        :raises UnknownAppError: for a name that is no container app.
        :raises DesiredStateError: when the disk refuses it; nothing changed then.
        """
        deployed = self._state.apps.get(name)
        if deployed is None:
            raise UnknownAppError(f"no app or program {shown_repr(name)}")
        wished = deployed.with_wish("running" if wish == "running" else "stopped")
        try:
            yield self._save(self._state.changed(apps={**self._state.apps, name: wished}))
        except OSError as exc:
            what = "start" if wish == "running" else "stop"
            raise DesiredStateError(f"cannot keep the wish to {what} {name} ({self._store.path}:"
                                    f" {exc.strerror or exc}): nothing changed") from exc
        self._state.apps[name] = wished

    @inlineCallbacks
    def _set_wish(self, name: str, wish: str, persist: bool = True) -> Any:
        if persist:
            yield self._persist_wish(name, wish)
        elif name not in self._state.apps:
            raise UnknownAppError(f"no app or program {shown_repr(name)}")
        if self._closed and wish == "running":  # (a restart whose stop outlived the service: the next one starts it)
            return
        unit = self._supervisor.units.get(name)
        if unit is None:
            if wish == "running":
                yield self._reconcile()
            return
        if wish == "running":
            unit.start()
        else:
            yield unit.stop()

    def uninstall(self, name: str) -> Deferred[None]:
        """Stop and delete the container, forget the app, delete its log files, prune its images.

        :raises UnknownAppError: (as the Deferred's failure) when it is not an installed container
            app; the message says so of a container declared in the config, removed from there.
        :raises DesiredStateError: (as the Deferred's failure) when the disk refuses to write the
            state file without it: nothing changed, it runs on; or, once it is uninstalled, when
            the disk refuses to record the images pruned with it (the file still lists them).
        :raises RuntimeFailure: once it is uninstalled (stopped, forgotten, its logs deleted),
            when podman did not list or remove its container: the next start's reconcile does.
        """
        return self._lock.run(self._unless_closed, self._uninstall, name)

    @inlineCallbacks
    def _uninstall(self, name: str) -> Any:
        deployed = self._state.apps.get(name)
        if deployed is not None and deployed.source == "config":  # listed like an app: say why it is not one
            raise UnknownAppError(f"{shown_repr(name)} is a container declared in the gateway config"
                                  " (containers.containers), not an installed app: remove it from the"
                                  " configuration to remove it")
        if deployed is None:
            raise UnknownAppError(f"no installed container app {shown_repr(name)}")
        apps = {other: kept for other, kept in self._state.apps.items() if other != name}
        forgotten = self._state.changed(apps=apps)
        forgotten.uninstalling.add(name)  # (a crash from here on: the next start finishes the uninstall)
        forgotten.rollbacks.pop(name, None)  # (a rollback a crash cut short is no later install's)
        try:  # persist, then act: it is gone from the state file before it is stopped
            yield self._save(forgotten)
        except OSError as exc:
            raise DesiredStateError(f"cannot forget {name} ({self._store.path}: {exc.strerror or exc}):"
                                    " nothing changed") from exc
        unit = self._supervisor.units.get(name)
        if unit is not None:
            yield unit.stop().addErrback(_stop_cut_short)
            self._supervisor.forget(name)
        del self._state.apps[name]
        self._state.uninstalling.add(name)
        self._state.rollbacks.pop(name, None)
        self._failed.pop(name, None)
        left: RuntimeFailure | None = None
        try:
            found = yield self._own_containers()
            for state in found:
                if state.labels.get(LABEL_APP) == name:
                    yield self._runtime.remove(state.id)
        except RuntimeFailure as exc:  # forgotten already: finish, then say so
            log.warn("containers: {name} uninstalled, its container not removed: {error}", name=name, error=str(exc))
            left = exc
        yield self._supervisor.flush_logs()  # its last output written: nothing makes the files again
        logs = self._supervisor.log_files(name)
        yield self._blocking(lambda: remove_logs(logs))
        deleted = yield self._fetcher.prune(self._state.images, self._keep())
        images = self._state.images - set(deleted)
        self._state.uninstalling.discard(name)  # (done: a write the disk refuses here, the next one says so)
        try:  # (memory follows the file: images it still lists are forgotten by the next prune)
            yield self._save(self._state.changed(images=images))
        except OSError as exc:
            raise DesiredStateError(f"{name} uninstalled, but cannot record that its images were deleted "
                                    f"({self._store.path}: {exc.strerror or exc}): the next prune forgets them"
                                    ) from exc
        self._state.images = images
        if left is not None:
            raise RuntimeFailure(f"{name} uninstalled, but podman did not remove its container ({left}): "
                                 "the gateway removes it when it next starts") from left

    # -- report ---------------------------------------------------------------------------
    def statuses(self) -> list[ContainerStatus]:
        """Every container app's status (STARTING while its image is pulled to deploy it, FATAL with
        the error when it could not be deployed)."""
        found = {s.name: s for s in self._supervisor.statuses()}
        found.update({n: s for n, s in self._failed.items() if n not in found})
        return [found[n] for n in sorted(found)]

    def status(self, name: str) -> list[ContainerStatus]:
        """One container app's status.

        :raises UnknownAppError: for an unknown name.
        """
        found = [s for s in self.statuses() if s.name == name]
        if not found:
            raise UnknownAppError(f"no app or program {shown_repr(name)}")
        return found

    def log_path(self, name: str, stderr: bool = False) -> Path:
        """The file its stdout (or stderr) goes to, for following it; also for one not deployed
        (listed FATAL: its image cannot be pulled), whose file holds its earlier runs' output.

        :raises UnknownAppError: for a name that is no container app.
        """
        if name not in self._state.apps:
            raise UnknownAppError(f"no app or program {shown_repr(name)}")
        stdout, stderr_log = self._supervisor.log_files(name)
        return stderr_log if stderr else stdout

    def tail_bytes(self, name: str, lines: int = 100, stderr: bool = False) -> Deferred[bytes]:
        """The last lines of its stdout (or stderr) log as they are (see :meth:`log_path`)."""
        try:
            path = self.log_path(name, stderr)
        except UnknownAppError as exc:
            return fail(exc)
        return self._supervisor.flush_logs().addCallback(
            lambda _: self._blocking(lambda: tail_bytes(path, lines)))
