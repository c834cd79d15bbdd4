"""The ``updates`` service: accepts Kanto-style install/download/cancel requests, drives each
operation through download and install, persists every step and resumes after a restart."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, DeferredList, inlineCallbacks, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from gateway import jsontext
from gateway.atomic import remove_tree_durably
from gateway.apps.process import ProcessLauncher
from gateway.clockstep import steady_seconds
from gateway.logthrottle import REFUSED_LOG_INTERVAL, LogThrottle, refused_since
from gateway.operations.httpclient import close_connections
from gateway.operations.status import Publish, StatusPublisher
from gateway.operations.store import StaleRecords, record_end_late
from gateway.operations.threads import daemon_pool
from gateway.payloadlimits import too_large
from gateway.shown import escaped, id_problem, shown_repr
from gateway.updates.downloader import Download, Downloader, HTTPRequester
from gateway.updates.errors import InvalidOperation, UpdateError
from gateway.updates.operation import Action, Operation, Status, correlation_id_of, kanto_message, parse_request
from gateway.updates.snapshot import ModuleSnapshot, OperationSnapshot, UpdatesSnapshot
from gateway.updates.settings import UpdatesSettings
from gateway.updates.store import OperationStore
from gateway.updates.targets import AppInstaller, ModuleInstaller, systemd_running

if TYPE_CHECKING:  # the download machinery is imported by the first download (idle footprint)
    from gateway.blocking import RunBlocking
    from gateway.updates.job import DownloadProgress

#: Ended operations kept (their records, and in the read side), the last ones to end; older
#: ones are forgotten unless they keep files or a channel still needs them (:meth:`UpdateService.hold`).
KEEP_ENDED = 100


class UpdateService(Service):
    """Runs update operations and reports their statuses on ``settings.status_topic``.

    :param settings: the ``updates`` section.
    :param state_dir: the gateway's state directory; this service uses ``<state_dir>/updates``.
    :param reactor: the reactor (time, processes, threads).
    :param http: the HTTP client; build it with :func:`gateway.updates.httpclient.make_http_client`.
    :param publish: the local bus's publish; statuses go out retained at QoS 1.
    :param app_installer: the hosted-apps installer (``install(archive) -> Deferred``), or None.
    :param run_blocking: runs blocking disk work; by default a private thread pool.
    :param retry_policy: download retry delays (``attempt -> seconds``); by default backoff with jitter.
    :param systemd: says whether ``systemd-run`` can host the .deb helper.
    :param launcher: spawns scripts: the hosted apps' launcher, which records their groups so that
        the next start stops what a gateway killed with SIGKILL left of them; None records nothing.
    """

    name = "updates"  # type: ignore[assignment]
    log = Logger()

    def __init__(
        self,
        settings: UpdatesSettings,
        state_dir: Path,
        reactor: Any,
        http: HTTPRequester,
        publish: Publish,
        app_installer: AppInstaller | None = None,
        run_blocking: RunBlocking | None = None,
        retry_policy: Callable[[int], float] | None = None,
        systemd: Callable[[], bool] = systemd_running,
        launcher: ProcessLauncher | None = None,
    ) -> None:
        self.settings = settings
        self.http = http
        self.root = state_dir / "updates"
        self.reactor = reactor
        self.publish = publish
        self._send = StatusPublisher(publish, settings.status_topic, "an update status", reactor)
        self.store = OperationStore(self.root / "operations")
        self._pool: ThreadPool | None = None
        if run_blocking is None:
            self._pool = daemon_pool(1, 3 * settings.download.concurrency + 1, "updates")
            run_blocking = partial(deferToThreadPool, reactor, self._pool)
        self.run_blocking = run_blocking
        self.downloader = Downloader(http, reactor, settings.download, run_blocking, retry_policy)
        self.installer = ModuleInstaller(reactor, settings, app_installer, systemd, run_blocking, launcher,
                                         self.root / "deb-request.json")
        self.operations: dict[str, Operation] = {}
        self._drivers: dict[str, Deferred[None]] = {}
        self._downloads: dict[str, list[Download]] = {}
        self._last_progress: dict[str, float] = {}
        self._canceling: set[str] = set()
        #: the operations whose new status is being written: not to be published before it is.
        self._recording: set[str] = set()
        #: per operation, the (received, totals) byte counts of its artifacts by URL (read side).
        self._transfer: dict[str, tuple[dict[str, int], dict[str, int | None]]] = {}
        self._watchers: list[Callable[[Operation], None]] = []
        # (a local client may send bad update commands in a loop: one line per interval)
        self._refused_lines = LogThrottle(REFUSED_LOG_INTERVAL, lambda: steady_seconds(reactor))
        self._keepers: list[Callable[[Operation], bool]] = []
        #: removes the records of the operations :meth:`_prune` forgets.
        self._stale = StaleRecords(self.store, run_blocking, "ended operation", "the next operation ends")
        #: the removals of forgotten records, or of the files of an ended download, under way by id: a
        #: new operation of that id waits for its own.
        self._removals: dict[str, Deferred[Any]] = {}
        self._loaded = False
        self._load_waiters: list[Deferred[None]] = []

    # -- life cycle -----------------------------------------------------------------------

    def startService(self) -> Deferred[None]:
        """Load persisted operations and resume the unfinished ones; fires once they are loaded."""
        super().startService()
        if self._pool is not None:
            self._pool.start()
        d = self.run_blocking(self._load)
        return d.addCallback(self._resume_all).addBoth(self._loaded_now)

    def _load(self) -> list[Operation]:
        """The persisted operations (blocking). The files of ended ones that keep none are
        removed: a crash between an operation's last step and their removal left them."""
        # In the order they were received (the files come in the order of their names: hashes);
        # a record from before there was one, by the order they ended, unfinished ones last.
        operations = sorted(self.store.load_all(), key=lambda op: (op.received, op.ended == 0, op.ended,
                                                                    op.correlation_id))
        for operation in operations:
            directory = self._artifacts_directory(operation)
            if operation.status.final and not _keeps_files(operation) and directory.exists():
                remove_tree_durably(directory)
        return operations

    def _loaded_now(self, result: Any) -> Any:
        self._loaded = True
        waiters, self._load_waiters = self._load_waiters, []
        for waiter in waiters:
            waiter.callback(None)
        return result

    def when_loaded(self) -> Deferred[None]:
        """Fires once the persisted operations are loaded and the unfinished ones resumed (at once
        when they are): another channel (the fleet's) must not look at ``operations`` before, or
        it would take a finished operation for one never started."""
        if self._loaded:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._load_waiters.append(waiter)
        return waiter

    def _resume_all(self, operations: list[Operation]) -> None:
        for operation in operations:
            self.operations[operation.correlation_id] = operation
            if not operation.status.final:
                self.log.info("resuming operation {id} at {status}", id=operation.correlation_id,
                              status=operation.status.value)
                self._drive(operation, resumed=True)

    def stopService(self) -> Deferred[None]:
        """Stop downloads (their parts stay for the next start) and wait for them to wind down.

        Installs in progress are not waited for: they are checked after the next start. A
        script running is killed (as the gateway's end would): the next start reports it
        interrupted, not run twice, and it does not run on beside the next service.
        """
        super().stopService()
        self.installer.stop()
        for downloads in list(self._downloads.values()):
            for download in list(downloads):
                download.cancel()
        waiting = [d for cid, d in self._drivers.items() if self.operations[cid].status != Status.INSTALLING]
        done: Deferred[Any] = DeferredList(waiting, consumeErrors=True)
        if self._pool is not None:
            pool = self._pool
            done.addCallback(lambda _: pool.stop())
        done.addCallback(lambda _: close_connections(self.http))
        return done.addCallback(lambda _: None)

    # -- requests -------------------------------------------------------------------------

    def handle_command(self, command: str, payload: bytes) -> str | None:
        """Handle a Kanto SoftwareUpdatable message from the cloud or a local topic.

        :param command: ``install``, ``download`` or ``cancel``.
        :param payload: the JSON body.
        :return: why it was refused (logged and reported as :meth:`handle_request` says), or None;
            one larger than :data:`~gateway.payloadlimits.REQUEST_BYTES` is refused unread.
        """
        oversized = too_large(payload)
        if oversized is not None:
            refusal = InvalidOperation(oversized)
            self._refused(command, None, refusal)
            return str(refusal)
        try:
            request = jsontext.loads(payload, strict=True)  # (a NaN went on into the state and the statuses)
        except ValueError as error:
            refusal = InvalidOperation(f"the request is not JSON: {error}")
            self._refused(command, None, refusal)
            return str(refusal)
        try:
            self.handle_request(command, request)
        except (ValueError, UpdateError) as error:
            return str(error)
        return None

    def handle_request(self, command: str, request: Any) -> Operation | None:
        """Carry out a decoded Kanto SoftwareUpdatable request (bare or in a Ditto envelope),
        as every door does (the local topics, the cloud commands, the admin API). A refusal
        is logged and reported before it is raised: the status of the operation of its id that
        goes on is published again, its message ``<command> refused: <why>``; a refused
        ``install`` or ``download`` with an id to report under ends ``FINISHED_ERROR`` under it.

        :param command: ``install``, ``download`` or ``cancel``.
        :param request: the decoded JSON body.
        :return: the operation started (None for a cancel).
        :raises InvalidOperation: (or another UpdateError, or ValueError) when refused.
        """
        request = kanto_message(request)
        try:
            if command == "cancel":
                self.cancel(request)
                return None
            if command in ("install", "download"):
                return self.submit(command, request)  # type: ignore[arg-type]
            raise InvalidOperation(f"unknown command {shown_repr(command)}")
        except (ValueError, UpdateError) as error:
            self._refused(command, request, error)
            raise

    def _refused(self, command: str, request: Any, error: Exception) -> None:
        """Log a refused request and report it under its id, if it has one (handle_request)."""
        count = self._refused_lines.note()
        if count is not None:
            self.log.warn("refused update command {command}: {error} ({since})", command=escaped(str(command)),
                          error=escaped(str(error)), since=refused_since(count))
        cid = request.get("correlationId") if isinstance(request, dict) else None
        if not isinstance(cid, str) or not cid or id_problem(cid) is not None:
            return  # no id to report under: only logged (and answered, from the cloud)
        known = self.operations.get(cid)
        now = self.reactor.seconds()
        if known is not None and not known.status.final:
            # the operation goes on: repeat its status, saying what was refused (a status
            # still being written is published once it is, and not before)
            if cid not in self._recording:
                status = known.status_payload(now, self._download_percent(known))
                status["message"] = f"{command} refused: {error}"
                self._send(status)
        elif command != "cancel":
            # a refused install or download ends under its id. A cancel of an operation that
            # has ended, or that the gateway does not know, publishes nothing (as Kanto's
            # agent): lastOperation is one retained topic for all operations, and a status of
            # that id would replace the one of the real last operation.
            self._send({"correlationId": cid, "status": Status.FINISHED_ERROR.value, "message": str(error),
                        "timestamp": int(now * 1000)})

    def submit(self, action: Action, request: Any) -> Operation:
        """Accept an ``install`` or ``download`` request and start it.

        :param action: ``install`` or ``download``.
        :param request: the decoded Kanto request.
        :raises InvalidOperation: when the request is malformed or its id is already running.
        """
        return self.start(parse_request(action, request))

    def start(self, operation: Operation) -> Operation:
        """Start an operation built by another channel (the fleet's DDI deployments).

        :param operation: a new operation (status ``STARTED``).
        :raises InvalidOperation: when an operation with its id is already running.
        """
        current = self.operations.get(operation.correlation_id)
        if current is not None and not current.status.final:
            raise InvalidOperation(f"operation {operation.correlation_id} is already {current.status.value}")
        # An ended operation of that id may still be removing its files (its directory is the new
        # one's) or recording its end: the new one starts once it is done.
        ending = self._drivers.get(operation.correlation_id)
        # Received last, also when an ended one had its id: the read side lists them in this order.
        self.operations.pop(operation.correlation_id, None)
        operation.received = 1 + max((op.received for op in self.operations.values()), default=0)
        self.operations[operation.correlation_id] = operation
        self._drive(operation, resumed=False, after=ending)
        return operation

    def cancel(self, request: Any) -> None:
        """Cancel a running operation while it downloads; an install in progress is not canceled.

        :param request: ``{"correlationId": ...}``.
        :raises InvalidOperation: when the request is not an object, its id not a non-empty
            string, no such operation runs or it is past downloading.
        """
        if not isinstance(request, dict):
            raise InvalidOperation("the request must be a JSON object")
        cid = correlation_id_of(request)
        operation = self.operations.get(cid)
        if operation is None or operation.status.final:
            raise InvalidOperation(f"no running operation {shown_repr(cid)} to cancel")
        if operation.status not in (Status.STARTED, Status.DOWNLOADING):
            raise InvalidOperation(f"operation {cid} is {operation.status.value}; it can no longer be canceled")
        self._canceling.add(operation.correlation_id)
        for download in self._downloads.get(operation.correlation_id, []):
            download.cancel()

    def discard(self, correlation_id: str) -> Deferred[Any]:
        """Remove the files an ended ``download`` operation kept for a later install, when the
        action it was for is canceled by the channel that asked for it (a hawkBit cancelAction);
        the operation's status stays what it ended with, and it is forgotten in its turn as any
        ended operation that keeps no files.

        :param correlation_id: the operation's id.
        :raises InvalidOperation: when no such operation has ended.
        """
        operation = self.operations.get(correlation_id)
        if operation is None or not operation.status.final:
            raise InvalidOperation(f"no ended operation {shown_repr(correlation_id)} to discard")
        return self._remove_kept_files(operation)

    def watch(self, watcher: Callable[[Operation], None]) -> Callable[[], None]:
        """Call ``watcher(operation)`` after every persisted step of every operation (the fleet
        channel reports them to its server); returns a function that stops the calls.

        :param watcher: called on the reactor thread; it must not raise.
        """
        self._watchers.append(watcher)
        return lambda: self._watchers.remove(watcher) if watcher in self._watchers else None

    def hold(self, keeper: Callable[[Operation], bool]) -> Callable[[], None]:
        """Keep every ended operation for which ``keeper(operation)`` is true, however many
        operations ended after it (the fleet keeps a deployment until the server took in its final
        feedback); returns a function that stops asking ``keeper``.

        :param keeper: called on the reactor thread when an operation ends; it must not raise.
        """
        self._keepers.append(keeper)
        return lambda: self._keepers.remove(keeper) if keeper in self._keepers else None

    # -- the read side -----------------------------------------------------------------------

    def snapshot(self) -> UpdatesSnapshot:
        """Every operation's status and download progress (O(operations + artifacts), no I/O)."""
        out = []
        for cid, op in self.operations.items():
            received, totals = self._transfer.get(cid, ({}, {}))
            got = sum(received.values())
            total = sum(t or 0 for t in totals.values()) if totals and all(totals.values()) else None
            out.append(OperationSnapshot(
                cid, op.action, op.status.value, op.message,
                tuple(ModuleSnapshot(m.name, m.version, m.target) for m in op.modules), op.installed,
                cid in self._drivers, got, total, min(100, int(100 * got / total)) if total else None))
        return UpdatesSnapshot(tuple(out))

    # -- driving an operation -------------------------------------------------------------

    def _drive(self, operation: Operation, resumed: bool, after: Deferred[None] | None = None) -> None:
        """Run ``operation`` to its end, once ``after`` (the driver of the ended operation of its
        id, still winding down) has fired."""
        cid = operation.correlation_id
        if after is None:
            d = self._run(operation, resumed)
        else:
            ended: Deferred[None] = Deferred()

            def tell(result: Any) -> Any:
                ended.callback(None)
                return result  # (``after``'s own result, for whoever else waits on it)

            after.addBoth(tell)
            d = ended.addCallback(lambda _: self._run(operation, resumed))
        self._drivers[cid] = d
        d.addErrback(lambda f: self.log.failure("operation {id} crashed", f, id=cid))

        def forget(_: Any) -> None:
            # (returning the popped Deferred here would chain d to itself: it would never fire)
            if self._drivers.get(cid) is d:
                del self._drivers[cid]

        d.addBoth(forget)

    def _artifact_path(self, operation: Operation, module_index: int, filename: str) -> Path:
        key = hashlib.sha256(operation.correlation_id.encode()).hexdigest()[:32]
        return self.root / "artifacts" / key / f"m{module_index}" / filename

    @inlineCallbacks
    def _run(self, operation: Operation, resumed: bool) -> Any:
        recorded = True
        try:
            try:
                if operation.status in (Status.STARTED, Status.DOWNLOADING):
                    if operation.status == Status.STARTED:
                        yield self._step(operation, Status.STARTED, "accepted")
                    yield self._step(operation, Status.DOWNLOADING, "resumed after restart" if resumed else "", 0)
                    yield self._download_all(operation)
                    yield self._step(operation, Status.DOWNLOADED, downloaded_message(operation))
                    resumed = False  # (said at DOWNLOADING: the install that follows is a first one)
                if operation.action == "install":
                    yield self._install_all(operation, resumed)
                yield self._step(operation, Status.FINISHED_SUCCESS, "done")
            except CancelledError:
                if not self.running and operation.correlation_id not in self._canceling:
                    return  # stopping: the persisted status resumes at the next start
                yield self._step(operation, Status.FINISHED_CANCELED, "canceled")  # (a cancel accepted before the stop)
            except UpdateError as error:
                yield self._step(operation, Status.FINISHED_ERROR, str(error))
            finally:
                self._downloads.pop(operation.correlation_id, None)
                self._canceling.discard(operation.correlation_id)
        except RecordNotWritten as error:  # a full or read-only disk
            recorded = yield self._end_unrecorded(operation, error.cause)
        if not _keeps_files(operation):
            yield self._remove_artifacts(operation)
        if not recorded:
            yield record_end_late(self.store, self.run_blocking, operation, self.log, "operation")
        if self.running:
            yield self._drop_old_downloads()
            yield self._prune()

    def _prune(self) -> Deferred[Any]:
        """Forget the ended operations older than the last :data:`KEEP_ENDED` to end, and remove
        their records, but for those that keep files (a download for a later install) and those a
        keeper holds. A record the disk refuses to remove is logged and tried again at the next prune."""
        ended = sorted((op for op in self.operations.values() if op.status.final), key=lambda op: op.ended)
        stale = [op.correlation_id for op in ended[:-KEEP_ENDED]
                 if not _keeps_files(op) and op.correlation_id not in self._drivers
                 and op.correlation_id not in self._removals  # (its files going: forgotten at the next prune)
                 and not any(keeper(op) for keeper in self._keepers)]
        for cid in stale:
            del self.operations[cid]
            self._transfer.pop(cid, None)
            self._last_progress.pop(cid, None)
        removal = self._stale.remove(stale, self.log)
        for cid in stale:
            self._removals[cid] = removal

        def removed(_: Any) -> None:
            for cid in stale:
                if self._removals.get(cid) is removal:
                    del self._removals[cid]

        return removal.addCallback(removed)

    @inlineCallbacks
    def _drop_old_downloads(self) -> Any:
        """Remove the files of the downloads kept for a later install beyond the last
        ``settings.keep_downloads`` to end, oldest first (logged as a warning). Each stays an ended
        ``FINISHED_SUCCESS``, its message saying why, and is forgotten in its turn as any other
        (:meth:`_prune`); no status is published (``lastOperation`` stays the real last one's)."""
        limit = self.settings.keep_downloads
        kept = sorted((op for op in self.operations.values() if _keeps_files(op)), key=lambda op: op.ended)
        dropped = kept[:-limit]
        for operation in dropped:  # (all marked at once: a prune running meanwhile counts them out)
            operation.files_removed = True
            operation.message = (f"downloaded; its files were removed: more than {limit} download"
                                 f"{' was' if limit == 1 else 's were'} kept for a "
                                 "later install (updates.keep_downloads), the oldest go first; an install of it "
                                 "downloads again")
            self.log.warn("operation {id}: {reason}", id=operation.correlation_id, reason=escaped(operation.message))
        for operation in dropped:
            yield self._remove_kept_files(operation)

    def _remove_kept_files(self, operation: Operation) -> Deferred[Any]:
        """Record that the ended ``operation`` keeps no files any more, then remove them (persist,
        then act: files a crash in between leaves go at the next start). A new operation of its id,
        whose directory is the same, waits until they are gone. A record the disk refuses is
        logged as a warning, and the files go all the same. Never fails."""
        cid = operation.correlation_id
        operation.files_removed = True

        def not_recorded(failure: Any) -> None:
            failure.trap(OSError)
            self.log.warn("operation {id}: cannot record that its files are removed ({error}); removing them",
                          id=cid, error=failure.value.strerror or failure.value)

        removal = self.run_blocking(self.store.save, operation).addErrback(not_recorded)
        removal.addCallback(lambda _: self._remove_artifacts(operation))
        self._removals[cid] = removal

        def removed(_: Any) -> None:
            if self._removals.get(cid) is removal:
                del self._removals[cid]

        return removal.addBoth(removed)

    def _artifacts_directory(self, operation: Operation) -> Path:
        return self._artifact_path(operation, 0, "x").parent.parent

    def _remove_artifacts(self, operation: Operation) -> Deferred[Any]:
        return self.run_blocking(remove_tree_durably, self._artifacts_directory(operation))

    @inlineCallbacks
    def _download_all(self, operation: Operation) -> Any:
        cid = operation.correlation_id
        if cid in self._canceling or not self.running:  # (stopped meanwhile: the next service downloads)
            raise CancelledError()
        artifacts = [(i, a) for i, m in enumerate(operation.modules) for a in m.artifacts]
        received = {a.url: 0 for _, a in artifacts}
        totals = {a.url: a.size for _, a in artifacts}
        self._transfer[cid] = (received, totals)

        def progress(report: DownloadProgress) -> None:
            received[report.url] = report.received
            totals[report.url] = totals[report.url] or report.total
            self._progress(operation, received, totals)

        downloads = [
            self.downloader.download(a.url, self._artifact_path(operation, i, a.filename), a.size, a.digests, progress)
            for i, a in artifacts
        ]
        self._downloads[cid] = downloads
        results = yield DeferredList([d.result for d in downloads], consumeErrors=True)
        failures = [result for ok, result in results if not ok]
        if cid in self._canceling or any(f.check(CancelledError) for f in failures):
            for download in downloads:
                download.cancel()
            raise CancelledError()
        if failures:
            operation.failed = next(i for (i, _), (ok, _) in zip(artifacts, results) if not ok)
            failures[0].raiseException()
        for (_, artifact), download in zip(artifacts, downloads):  # progress reports miss the last chunk
            received[artifact.url] = download.received
            totals[artifact.url] = totals[artifact.url] or download.received

    def _progress(self, operation: Operation, received: dict[str, int], totals: dict[str, int | None]) -> None:
        now = steady_seconds(self.reactor)
        if now - self._last_progress.get(operation.correlation_id, float("-inf")) < 1.0:
            return
        self._last_progress[operation.correlation_id] = now
        self._send(operation.status_payload(self.reactor.seconds(), self._download_percent(operation)))

    def _download_percent(self, operation: Operation) -> int | None:
        """What a ``DOWNLOADING`` status of ``operation`` says as ``progress``: the bytes
        received of all its artifacts' in percent, at most 99 (the last chunk is verified
        before DOWNLOADED), 0 until every artifact's size is known; ``None`` in any other status."""
        if operation.status != Status.DOWNLOADING:
            return None
        received, totals = self._transfer.get(operation.correlation_id, ({}, {}))
        total = sum(t or 0 for t in totals.values())
        return min(99, int(100 * sum(received.values()) / total)) if total and all(totals.values()) else 0

    @inlineCallbacks
    def _install_all(self, operation: Operation, resumed: bool) -> Any:
        for index in range(operation.installed, len(operation.modules)):
            if not self.running:  # (stopping: the next service installs it, resumed between steps)
                raise CancelledError()
            module = operation.modules[index]
            files = [self._artifact_path(operation, index, a.filename) for a in module.artifacts]
            interrupted = resumed and operation.status == Status.INSTALLING
            if interrupted:
                # Say so at once: the retained status may not have survived the restart, and the
                # install's result (a .deb helper's, say) may be a long way off.
                yield self._step(operation, Status.INSTALLING, f"{module.name} {module.version} resumed after restart")
            else:  # (resumed between steps, DOWNLOADED or INSTALLED: nothing of this module ran yet)
                operation.helper = None
                yield self._step(operation, Status.INSTALLING, f"{module.name} {module.version}"
                                 + (" resumed after restart" if resumed else ""))
            try:
                message = yield self.installer.install(operation, module, files, interrupted)
            except UpdateError:
                if not self.running:  # the stop cut it short (the apps service's, say): the next service runs it again
                    raise CancelledError() from None
                raise
            operation.installed = index + 1
            yield self._step(operation, Status.INSTALLED, message)
            resumed = False

    @inlineCallbacks
    def _end_unrecorded(self, operation: Operation, error: OSError) -> Any:
        """End an operation whose record the disk refused: ``FINISHED_ERROR`` saying so,
        recorded if the disk takes it now, published all the same (the cloud learns it, and
        its id may be asked for again).

        :return: (a Deferred firing with) whether the end was recorded.
        """
        message = f"the operation's record cannot be written: {error.strerror or error}"
        self.log.error("operation {id}: {reason}", id=operation.correlation_id, reason=message)
        try:
            yield self._step(operation, Status.FINISHED_ERROR, message)
        except RecordNotWritten:
            self._announce(operation, None)
            return False
        return True

    @inlineCallbacks
    def _step(self, operation: Operation, status: Status, message: str, progress: int | None = None) -> Any:
        """Persist the new status, then publish it (persist, then act).

        :param progress: the status's ``progress`` (``DOWNLOADING``'s), when it has one.
        :raises RecordNotWritten: the disk refused the record (nothing is published).
        """
        removal = self._removals.get(operation.correlation_id)
        if removal is not None:  # (an operation of that id, forgotten: its record goes first)
            yield removal
        operation.status, operation.message = status, message
        if status.final and not operation.ended:
            operation.ended = 1 + max((op.ended for op in self.operations.values()), default=0)
        self._recording.add(operation.correlation_id)
        try:
            yield self.run_blocking(self.store.save, operation)
        except OSError as error:
            raise RecordNotWritten(error) from error
        finally:
            self._recording.discard(operation.correlation_id)
        self._announce(operation, progress)

    def _announce(self, operation: Operation, progress: int | None) -> None:
        """Log and publish the operation's status, and tell the watchers."""
        self.log.info("operation {id}: {status} {reason}", id=operation.correlation_id,
                      status=operation.status.value, reason=escaped(operation.message))
        if progress is not None:  # a progress report too: the next one is a second away
            self._last_progress[operation.correlation_id] = steady_seconds(self.reactor)
        self._send(operation.status_payload(self.reactor.seconds(), progress))
        for watcher in list(self._watchers):
            try:
                watcher(operation)
            except Exception:
                self.log.failure("an operation watcher failed")


class RecordNotWritten(Exception):
    """An operation's record could not be written.

    :ivar cause: the write's error.
    """

    def __init__(self, cause: OSError) -> None:
        super().__init__(str(cause))
        self.cause = cause


def _keeps_files(operation: Operation) -> bool:
    """Whether an ended ``operation`` keeps its artifacts: only a ``download`` that succeeded
    (for an install that may follow) does, until they are removed (:meth:`UpdateService._drop_old_downloads`)."""
    return operation.action == "download" and operation.status == Status.FINISHED_SUCCESS and not operation.files_removed


def downloaded_message(operation: Operation) -> str:
    """The ``DOWNLOADED`` step's message: ``all artifacts verified`` when each artifact had a
    digest announced (and its file matched it); else which files nothing verified, so that
    the status does not claim a check that was not made (checksums are optional)."""
    unverified = [a.filename for m in operation.modules for a in m.artifacts if not a.digests]
    if not unverified:
        return "all artifacts verified"
    return (f"all artifacts downloaded; not verified, as no digest was announced for them: "
            f"{', '.join(escaped(name) for name in unverified)}")
