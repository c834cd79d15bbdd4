"""The ``uploads`` service: Kanto's AutoUploadable feature. A trigger selects files and asks
the cloud where to put each; the cloud's ``start`` names the provider; every step is
persisted, then published; unfinished uploads resume after a restart."""

from __future__ import annotations

import fnmatch
import glob
import os
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from secrets import token_hex
from typing import TYPE_CHECKING, Any, NamedTuple

from twisted.application.service import Service
from twisted.internet.defer import (CancelledError, Deferred, DeferredList, DeferredSemaphore, inlineCallbacks,
                                    succeed)
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from gateway.asciidigits import ascii_digits
from gateway.atomic import fsync_directory, write_json_atomically
from gateway.clockstep import steady_seconds
from gateway.configtext import NOT_UTF8_LOCALE, unencodable_problem
from gateway.logthrottle import REFUSED_LOG_INTERVAL, LogThrottle, refused_since
from gateway.operations.httpclient import close_connections
from gateway.operations.retry import lazy_backoff
from gateway.operations.status import Publish, StatusPublisher
from gateway.operations.store import RecordStore, StaleRecords, record_end_late
from gateway.operations.threads import daemon_pool
from gateway.shown import escaped, shown
from gateway.uploads import messages, readaccess
from gateway.uploads.diagnostics import BUNDLES_DIR, DiagnosticsBundle, remove_unnamed_bundles
from gateway.uploads.errors import InvalidRequest, UnknownUpload, UploadError
from gateway.uploads.operation import FileUpload, Upload, UploadState, rfc3339
from gateway.uploads.schedule import Activation, PeriodicTrigger, load_activation
from gateway.uploads.settings import UploadsSettings

if TYPE_CHECKING:  # the transfer machinery is imported by the first upload (idle footprint)
    from gateway.uploads.filebody import FileIdentity
    from gateway.uploads.providers import HTTPClient, Provider
    from gateway.uploads.transfer import FileTransfer

log = Logger()

#: Finished uploads kept on disk (their last statuses), newest first.
KEEP_FINISHED = 20
#: Uploads whose files all wait for the cloud's ``start`` (``PENDING``), at most: a trigger
#: past it cancels the oldest of them. Without it a cloud that never answers made every
#: periodic trigger one more upload kept for good, with its diagnostics bundle.
MAX_UNANSWERED = 10
#: The periodic uploads' activation in force (the last ``activate``/``deactivate``), under ``uploads/``.
ACTIVATION_FILE = "activation.json"


class Selection(NamedTuple):
    """What a trigger's globs match (:func:`select_files`)."""

    #: The files to upload: regular, readable by the gateway's user, their paths text.
    files: list[str]
    #: Files whose path is not text (:func:`name_problem` says why).
    unnamed: list[str]
    #: Files the gateway's user may not read, each with why (:func:`~gateway.uploads.readaccess.unreadable`).
    unreadable: dict[str, str]
    #: Globs with a directory the gateway's user may not look into, each with it (:func:`closed_directory`).
    closed: dict[str, str]


def select_files(patterns: tuple[str, ...]) -> Selection:
    """The regular files the globs match, sorted, each once (blocking): those whose path is
    text, and those whose path is not: a file named in Latin-1 on disk, or one named in UTF-8
    under a locale that is not UTF-8 (:func:`name_problem`). Its name reaches Python with the
    bytes it cannot decode as lone surrogates, which the request to the cloud, the upload's
    record and an S3 key or blob name cannot hold. Files the gateway's user may not read, and
    the globs whose directory it may not look into (where :mod:`glob` sees nothing), are told
    apart too, so that a trigger says so rather than ask the cloud for a file it cannot send."""
    found = {os.path.abspath(p) for pattern in patterns for p in glob.glob(pattern, recursive=True)}
    files = sorted(p for p in found if os.path.isfile(p))
    unnamed = [p for p in files if not _utf8(p)]
    unreadable = {p: why for p in files if p not in unnamed and (why := readaccess.unreadable(p)) is not None}
    closed = {pattern: why for pattern in patterns if (why := readaccess.closed_directory(pattern)) is not None}
    return Selection([p for p in files if p not in unnamed and p not in unreadable], unnamed, unreadable, closed)


def _utf8(path: str) -> bool:
    """Whether ``path`` (as :mod:`os` gives it) is text: its bytes on disk decoded in Python's
    file system encoding."""
    try:
        path.encode()
    except UnicodeEncodeError:
        return False
    return True


def name_problem(path: str) -> tuple[str, str]:
    """Why ``path``, one that :func:`select_files` leaves out, is not text, and what to do.

    :return: what completes "its name is": ``not UTF-8`` (its bytes on disk are not), or UTF-8
        that a file system encoding that is not UTF-8 (``LC_ALL=C`` with ``PYTHONUTF8=0``:
        ascii) cannot decode; and what to do, with its separator: rename the file, or change
        the locale.
    """
    try:
        os.fsencode(path).decode()
    except UnicodeDecodeError:
        return "not UTF-8", (", and the cloud's request, the upload's record and the storage name files in UTF-8 "
                             "(rename it)")
    encoding = sys.getfilesystemencoding()
    return f"UTF-8 that Python's file system encoding ({encoding}) cannot decode", f" {NOT_UTF8_LOCALE}"


def glob_covers(allowed: str, asked: str) -> bool:
    """Whether the glob ``allowed`` matches ``asked`` (a path or a glob) as a path, for the
    ``scoped`` mode: both are made absolute and normalized (a ``..`` in ``asked`` cannot climb
    out), ``*``, ``?`` and ``[...]`` match within one directory level, ``**`` any number of
    levels (as :func:`select_files` expands them).

    :param allowed: one of the configured ``files``.
    :param asked: a trigger's ``upload.files``.
    """
    return _segments_match(os.path.abspath(allowed).split(os.sep), os.path.abspath(asked).split(os.sep))


def _segments_match(pattern: list[str], parts: list[str]) -> bool:
    if not pattern:
        return not parts
    if pattern[0] == "**":
        return any(_segments_match(pattern[1:], parts[i:]) for i in range(len(parts) + 1))
    return bool(parts) and fnmatch.fnmatchcase(parts[0], pattern[0]) and _segments_match(pattern[1:], parts[1:])


def make_provider(*args: Any, **kwargs: Any) -> Provider:
    """:func:`gateway.uploads.choice.make_provider`, imported by the first upload."""
    from gateway.uploads.choice import make_provider as choose

    return choose(*args, **kwargs)


class UploadService(Service):
    """Runs uploads and reports them on ``settings.status_topic``.

    :param settings: the ``uploads`` section.
    :param state_dir: the gateway's state directory; this service uses ``<state_dir>/uploads``.
    :param reactor: the reactor (time, threads).
    :param http: the HTTP client (:func:`gateway.operations.httpclient.make_http_client`).
    :param publish: the local bus's publish.
    :param identity: ``(tenant_id, thing_id)`` for the outbox messages (the thing id ``namespace:name``).
    :param diagnostics: builds the diagnostics bundle, or None when there is none.
    :param run_blocking: runs blocking disk work; by default a private thread pool.
    :param retry_policy: ``attempt -> seconds`` between attempts; by default backoff with jitter.
    :param localtime: for the daily window (tests inject one).
    :param provider_factory: turns ``start`` options into a provider (tests inject fakes;
        default: :func:`make_provider`).
    """

    name = "uploads"  # type: ignore[assignment]
    log = Logger()

    def __init__(self, settings: UploadsSettings, state_dir: Path, reactor: Any, http: HTTPClient,
                 publish: Publish, identity: tuple[str, str], diagnostics: DiagnosticsBundle | None = None,
                 run_blocking: Callable[..., Deferred[Any]] | None = None,
                 retry_policy: Callable[[int], float] | None = None, localtime: Any = None,
                 provider_factory: Callable[..., Provider] | None = None) -> None:
        self.settings = settings
        self.root = state_dir / "uploads"
        self.reactor = reactor
        self.http = http
        self.tenant_id, self.device_id = identity
        self.diagnostics = diagnostics
        self.provider_factory = provider_factory if provider_factory is not None else make_provider
        self.store: RecordStore[Upload] = RecordStore(self.root / "operations", Upload.from_json)
        self._send = StatusPublisher(publish, settings.status_topic, "an upload status", reactor)
        self._pool: ThreadPool | None = None
        if run_blocking is None:
            # a reader per transfer, plus digests, stats and state writes
            self._pool = daemon_pool(1, 2 * settings.concurrency + 2, "uploads")
            run_blocking = partial(deferToThreadPool, reactor, self._pool)
        self.run_blocking = run_blocking
        self.retry_policy = retry_policy or lazy_backoff(initialDelay=settings.retry_initial_delay,
                                                          maxDelay=settings.retry_max_delay)
        self.periodic = PeriodicTrigger(settings.periodic, reactor, self._periodic_trigger,
                                        **({"localtime": localtime} if localtime else {}))
        self.uploads: dict[str, Upload] = {}
        self._slots = DeferredSemaphore(settings.concurrency)
        self._transfers: dict[str, FileTransfer] = {}
        self._queued: dict[str, Deferred[Any]] = {}
        self._runs: dict[str, Deferred[None]] = {}
        self._last_progress: dict[str, float] = {}
        #: why an upload's last change is not on disk (its record refused), by id: each status
        #: carries it, the listing too, until a later write of its record works (memory only).
        self._unrecorded: dict[str, str] = {}
        #: the triggers still selecting their files (not yet in ``uploads``), by id.
        self._triggering: dict[str, Deferred[None]] = {}
        #: the inbox messages being handled, each fired once it is answered (the stop waits for them).
        self._handling: set[Deferred[None]] = set()
        self._stopping = False
        # (a local client may send bad inbox messages in a loop: one line per interval)
        self._refused_lines = LogThrottle(REFUSED_LOG_INTERVAL, lambda: steady_seconds(reactor))
        self._serial = int(reactor.seconds())
        #: removes the records of the uploads :meth:`_prune` forgets.
        self._stale = StaleRecords(self.store, run_blocking, "finished upload", "the next upload ends")
        self._bundles = 0

    # -- life cycle -----------------------------------------------------------------------

    def startService(self) -> Deferred[None]:
        """Load persisted uploads and resume the unfinished ones; restore the activation and
        publish it (Kanto reports its ``autoUpload`` property when it connects)."""
        super().startService()
        self._stopping = False
        if self._pool is not None:
            self._pool.start()
        d = self.run_blocking(self.store.load_all)
        d.addCallback(self._resume_all)
        d.addCallback(lambda _: self._remove_unnamed_bundles())
        d.addCallback(lambda _: self.run_blocking(load_activation, self.root / ACTIVATION_FILE))
        d.addCallback(self._restore_activation)
        return d

    def _remove_unnamed_bundles(self) -> Deferred[None]:
        """Remove the diagnostics bundles no upload names (a gateway killed while it wrote
        one, or before its upload's record was written); a failure is a warning, the start
        goes on."""
        named = {os.path.basename(item.path) for upload in self.uploads.values() for item in upload.files
                 if item.temporary}
        directory = self.root / BUNDLES_DIR

        def removed(names: list[str]) -> None:
            if names:
                self.log.info("uploads: removed {count} diagnostics bundle file(s) no upload names from {directory}",
                              count=len(names), directory=str(directory))

        def refused(failure: Any) -> None:
            failure.trap(OSError)
            self.log.warn("uploads: cannot remove the diagnostics bundles no upload names from {directory}: {error}",
                          directory=str(directory), error=failure.value.strerror or failure.value)

        d = self.run_blocking(remove_unnamed_bundles, directory, named)
        d.addCallbacks(removed, refused)
        return d

    def _restore_activation(self, saved: Activation | str | None) -> None:
        if isinstance(saved, str):
            self.log.error("uploads: unusable {path} ({problem}); periodic uploads start as periodic.active says",
                           path=str(self.root / ACTIVATION_FILE), problem=saved)
        activation = saved if isinstance(saved, Activation) else Activation(self.settings.periodic.active)
        self.periodic.apply(activation)
        self._send(_auto_upload(activation), topic=self.settings.auto_upload_topic)

    def _resume_all(self, uploads: list[Upload]) -> None:
        for upload in uploads:
            self.uploads[upload.correlation_id] = upload
            made = upload.correlation_id.removeprefix("upload-id-")
            if ascii_digits(made):  # (isdecimal() is true for ١٢ too)
                self._serial = max(self._serial, int(made))
        for upload in list(self.uploads.values()):
            if upload.state.final:
                continue
            if all(item.state == UploadState.SUCCESS for item in upload.files):  # stopped before it ended
                self._end_stored(upload)
                continue
            self.log.info("resuming upload {id} ({state})", id=upload.correlation_id, state=upload.state.value)
            upload.message = "resumed after restart"
            self._send(upload.status_payload())
            for item in upload.files:
                if item.state == UploadState.UPLOADING:
                    try:
                        provider = self._provider(upload, item.options)
                    except UploadError as error:
                        self._fail(upload, item, error)
                        continue
                    self._run_file(upload, item, provider)
                elif item.state == UploadState.PENDING:
                    self._request(upload, item)

    @inlineCallbacks
    def _end_stored(self, upload: Upload) -> Any:
        """End ``upload`` SUCCESS: the storage has each of its files (persisted), but the
        gateway stopped before it removed them (``delete``, the bundle) or ended the upload."""
        try:
            for item in upload.files:
                if upload.delete or item.temporary:
                    yield self._remove_stored(item)
            yield self._finish(upload, UploadState.SUCCESS)
        except Exception:
            self.log.failure("upload {id} crashed", id=upload.correlation_id)

    @inlineCallbacks
    def _remove_stored(self, item: FileUpload) -> Any:
        """Remove a file the storage has (``delete``, the bundle); one that cannot be removed
        is stored all the same: its message says so and the upload goes on."""
        problem = yield self.run_blocking(_remove, item.path)
        if problem is not None:
            item.message = f"uploaded, not deleted: {problem}"
            self.log.warn("could not delete {path} once uploaded: {problem}", path=escaped(item.path), problem=problem)

    def stopService(self) -> Deferred[None]:
        """Stop the periodic trigger and the transfers (they resume at the next start); a message
        being handled is waited for, so that what it does is recorded and it is answered (a
        trigger still selecting its files gets its upload recorded: its requests are sent again at
        the next start); one that comes after this is answered that the service is stopping."""
        super().stopService()
        self._stopping = True
        self.periodic.stop()
        for queued in list(self._queued.values()):
            queued.cancel()
        for transfer in list(self._transfers.values()):
            transfer.cancel()
        done: Deferred[Any] = DeferredList(list(self._runs.values()) + list(self._triggering.values())
                                           + list(self._handling), consumeErrors=True)

        def finish(_: Any) -> Deferred[None]:
            if self._pool is not None:
                self._pool.stop()
            return close_connections(self.http)

        return done.addCallback(finish)

    # -- inbox ----------------------------------------------------------------------------

    def handle(self, operation: str, payload: bytes) -> Deferred[tuple[int, dict[str, Any]]]:
        """Handle one inbox message; fires with Kanto's answer ``(status, body)``: 204, or 400
        (malformed), 404 (unknown correlation id), 500 (could not be done) with an error body.

        :param operation: ``trigger``, ``start``, ``cancel``, ``activate`` or ``deactivate``.
        :param payload: the bare value or a Ditto envelope.
        """
        inbox: messages.Inbox | None = None
        try:
            inbox = messages.parse_inbox(operation, payload, self.settings.feature_id)
            if self._stopping:  # its thread pool is going: what it would do could not be recorded
                raise UploadError("the uploads service is stopping (the gateway stops, or restarts for a "
                                  "configuration change): nothing was done; send it again once it is back")
            handler = getattr(self, f"_{inbox.operation}")
            d: Deferred[Any] = succeed(None).addCallback(lambda _: handler(inbox.value))
        except UploadError as error:
            d = Deferred()
            d.errback(error)

        def answer(_: Any) -> tuple[int, dict[str, Any]]:
            return 204, messages.response(inbox, 204, None)

        def refused(failure: Any) -> tuple[int, dict[str, Any]]:
            error = failure.value
            if isinstance(error, InvalidRequest):
                status, code = 400, messages.PARAMETER_INVALID
            elif isinstance(error, UnknownUpload):
                status, code = 404, messages.PARAMETER_INVALID
            else:
                status, code = 500, messages.EXECUTION_FAILED
                if not isinstance(error, (UploadError, OSError)):
                    self.log.failure("upload operation {operation} crashed", failure, operation=operation)
            count = self._refused_lines.note()
            if count is not None:
                self.log.warn("refused upload operation {operation}: {error} ({since})", operation=operation,
                              error=escaped(str(error)), since=refused_since(count))
            return status, messages.response(inbox, status, messages.error_body(status, code, str(error)))

        answered: Deferred[None] = Deferred()
        self._handling.add(answered)

        def ended(result: Any) -> Any:
            self._handling.discard(answered)
            answered.callback(None)
            return result

        return d.addCallbacks(answer, refused).addBoth(ended)

    def snapshot(self) -> dict[str, Any]:
        """What the admin API shows: every upload kept (newest first), each in Kanto's
        ``lastUpload`` form, and the periodic triggers' ``autoUpload`` state."""
        newest = sorted(reversed(list(self.uploads.values())), key=lambda upload: upload.triggered_at, reverse=True)
        return {"uploads": [self._status(upload) for upload in newest],
                "autoUpload": _auto_upload(self.periodic.activation)}

    def new_correlation_id(self) -> str:
        """A fresh upload id (``upload-id-<n>``), as a trigger without one gets."""
        return self._next_id()

    def _next_id(self) -> str:
        """``upload-id-<n>``: n counts on from the clock's seconds at the start and from every
        such id of the uploads kept, skipping those taken. A gateway without a real-time clock
        starts again at the same time of day (1970) after every boot: counting from the clock
        alone, it made again the ids of the uploads it keeps."""
        self._serial += 1
        while f"upload-id-{self._serial}" in self.uploads:
            self._serial += 1
        return f"upload-id-{self._serial}"

    def _periodic_trigger(self) -> Deferred[None]:
        def refused(answer: tuple[int, dict[str, Any]]) -> None:
            if answer[0] != 204:
                self.log.warn("periodic trigger refused: {body}", body=answer[1])

        return self.handle("trigger", b"{}").addCallback(refused)

    def _trigger(self, value: dict[str, Any]) -> Deferred[None]:
        cid = messages.correlation_id(value, "trigger", required=False) or self._next_id()
        options = messages.string_options(value, "trigger")
        if cid in self.uploads and not self.uploads[cid].state.final:
            raise InvalidRequest(f"upload '{cid}' is already {self.uploads[cid].state.value}")
        if cid in self._triggering:
            raise InvalidRequest(f"upload '{cid}' is already being triggered")
        selecting: Deferred[None] = Deferred()
        self._triggering[cid] = selecting

        def selected(result: Any) -> Any:
            del self._triggering[cid]
            selecting.callback(None)
            return result

        return self._select(cid, options).addBoth(selected)

    @inlineCallbacks
    def _select(self, cid: str, options: dict[str, str]) -> Any:
        """The rest of a trigger: select the files, record the upload, send its requests."""
        patterns = self._patterns(options)
        busy = any(u.state == UploadState.UPLOADING for u in self.uploads.values())
        if self.settings.single_upload and options.get("force") != "true" and busy:
            raise UploadError("there is an ongoing upload - set the 'force' option to 'true' to force trigger the upload")
        selection: Selection = yield self.run_blocking(select_files, patterns)
        paths, unnamed = selection.files, selection.unnamed
        problems = {path: name_problem(path) for path in unnamed}
        for path, (problem, advice) in problems.items():
            self.log.warn("upload {id} leaves out {path}: its name is {problem}{advice}",
                          id=cid, path=escaped(path), problem=problem, advice=advice)
        for path, why in selection.unreadable.items():
            self.log.warn("upload {id} leaves out {path}: {why}", id=cid, path=escaped(path), why=escaped(why))
        for pattern, why in selection.closed.items():
            self.log.warn("upload {id} cannot look for {pattern}: {why}", id=cid, pattern=escaped(pattern),
                          why=escaped(why))
        temporary: set[str] = set()
        wants_bundle = options.get("upload.diagnostics", "").lower() == "true" or (
            self.settings.diagnostics and "upload.files" not in options)
        if wants_bundle and self.diagnostics is not None:
            self._bundles += 1  # two triggers in one millisecond get a bundle each
            # and a random part: a gateway without a real-time clock reads the same times at
            # each boot (1970), and the counter starts again, while an earlier bundle may wait
            name = f"diagnostics-{int(self.reactor.seconds() * 1000)}-{self._bundles}-{token_hex(4)}.tar.gz"
            bundle = yield self.diagnostics.build(self.root / BUNDLES_DIR / name)
            paths.append(str(bundle))
            temporary.add(str(bundle))
        if not paths:
            kinds = " or ".join(sorted({problem for problem, _ in problems.values()}, key=str.lower))
            said = [f"{len(unnamed)} left out: their names are {kinds}"] if unnamed else []
            if len(selection.unreadable) == 1:
                [(path, why)] = selection.unreadable.items()
                said.append(f"{escaped(path)}: {why}")
            elif selection.unreadable:
                said.append(f"{len(selection.unreadable)} left out: the gateway's user may not read them (the log"
                            " names each)")
            said += [escaped(why) for why in dict.fromkeys(selection.closed.values())]
            left_out = f" ({'; '.join(said)})" if said else ""
            # (a glob the trigger named is repeated as an error repeats a request's words)
            globs = shown(patterns[0]) if "upload.files" in options else ", ".join(patterns)
            if not patterns:  # (the default configuration: say which key, not only that none matched)
                raise UploadError("no file matches the configured files (none): uploads.files is empty; list the"
                                  " globs of the files to upload there, or ask for the diagnostics bundle alone"
                                  " (the trigger's upload.diagnostics: gatewayctl uploads trigger --diagnostics)")
            raise UploadError(f"no file matches {globs or repr(globs)}{left_out}")
        upload: Upload | None = None
        try:
            upload = yield self._new_upload(cid, paths, temporary, options)
            # Kept once its record is on disk: a trigger the disk refuses leaves no upload
            # behind (a retry of it would be refused as already PENDING).
            yield self.run_blocking(self.store.save, upload)
        except Exception as error:
            for path in temporary:  # the bundle of a refused trigger
                yield self.run_blocking(_remove, path)
            if isinstance(error, OSError) and upload is not None:  # (its record, not its files)
                raise UploadError(f"upload '{cid}' not made: {self._record_not_written(upload, error)}; nothing"
                                  " was kept: send the trigger again once the disk takes it") from error
            raise
        self.uploads[cid] = upload
        self._send(upload.status_payload())
        for item in upload.files:
            self._request(upload, item)
        yield self._cancel_unanswered(cid)

    @inlineCallbacks
    def _cancel_unanswered(self, newest: str) -> Any:
        """Cancel the uploads triggered longest ago among those still waiting for the cloud's
        ``start`` (``PENDING``), so that :data:`MAX_UNANSWERED` remain, ``newest`` among them.
        Never fails: the trigger that made ``newest`` is answered as it is."""
        waiting = sorted((u for u in self.uploads.values() if u.state == UploadState.PENDING
                          and u.correlation_id != newest), key=lambda u: u.triggered_at)
        for upload in waiting[:max(0, len(waiting) - (MAX_UNANSWERED - 1))]:
            upload.message = f"canceled: more than {MAX_UNANSWERED} uploads waited for the cloud's start"
            self.log.warn("upload {id} canceled: more than {most} uploads waited for the cloud's start, the"
                          " oldest go first", id=upload.correlation_id, most=MAX_UNANSWERED)
            try:
                yield self._finish(upload, UploadState.CANCELED)
            except Exception:
                self.log.failure("upload {id}: the cancel failed", id=upload.correlation_id)

    @inlineCallbacks
    def _new_upload(self, cid: str, paths: list[str], temporary: set[str], options: dict[str, str]) -> Any:
        """The upload of a trigger: each file stat-ed (and hashed with ``checksum``).

        :raises UploadError: a file that cannot be read.
        """
        files = []
        for i, path in enumerate(paths):
            try:
                stat = yield self.run_blocking(os.stat, path)
            except OSError as error:
                raise UploadError(f"cannot read {path}: {error.strerror}") from error
            files.append(FileUpload(f"{cid}#{i + 1}", path, stat.st_size, temporary=path in temporary))
        forwarded = {k[len("options."):]: v for k, v in options.items() if k.startswith("options.")}
        upload = Upload(cid, files, delete=self.settings.delete, checksum=self.settings.checksum,
                        request_options=forwarded, triggered_at=self.reactor.seconds())
        if upload.checksum:
            from gateway.uploads.filebody import digest_file

            for item in files:
                digests = yield self.run_blocking(digest_file, item.path)
                item.md5, item.sha256 = digests.md5, digests.sha256
        return upload

    def _patterns(self, options: dict[str, str]) -> tuple[str, ...]:
        asked = options.get("upload.files")
        if asked is None:
            return self.settings.files
        unencodable = unencodable_problem(asked)  # (as the configuration's globs are checked)
        if unencodable is not None:
            raise UploadError(f"upload.files {unencodable}")
        mode = self.settings.mode
        if mode == "lax" or (mode == "strict" and asked in self.settings.files) or (
                mode == "scoped" and any(glob_covers(allowed, asked) for allowed in self.settings.files)):
            return (asked,)
        raise UploadError(f"uploading '{shown(asked)}' with mode '{mode}' is not permitted")

    def _request(self, upload: Upload, item: FileUpload) -> None:
        request = messages.outbox_request(self.device_id, self.tenant_id, self.settings.feature_id,
                                          item.correlation_id, upload.request_options_for(item))
        self._send(request, topic=self.settings.request_topic, retain=False)

    def _find(self, cid: str) -> tuple[Upload, FileUpload | None]:
        """The upload ``cid`` names (a trigger's id, which may hold ``#`` too) and, for a
        file's id ``<id>#<n>``, that file."""
        parent, item = self.uploads.get(cid), None
        if parent is None and "#" in cid:
            parent = self.uploads.get(cid.rsplit("#", 1)[0])
            item = parent.child(cid) if parent is not None else None
            parent = parent if item is not None else None
        if parent is None or parent.state.final:
            raise UnknownUpload(f"upload with correlation ID '{shown(cid)}' not found")
        return parent, item

    def _provider(self, upload: Upload, options: dict[str, str]) -> Provider:
        s = self.settings
        return self.provider_factory(options, self.http, upload.checksum, s.allow_http, s.azure_block_threshold,
                             s.azure_block_size, s.azure_parallel_blocks, aws_endpoint=s.aws_endpoint,
                             now=self.reactor.seconds)

    @inlineCallbacks
    def _start(self, value: dict[str, Any]) -> Any:
        cid = messages.correlation_id(value, "start")
        options = messages.string_options(value, "start")
        upload, item = self._find(cid)
        if item is None:
            raise UploadError(f"multi-file upload '{cid}' cannot be started - start the individual uploads")
        if item.state != UploadState.PENDING:
            raise UploadError(f"upload '{cid}' already started")
        try:
            provider = self._provider(upload, options)
        except InvalidRequest as error:
            raise UploadError(str(error)) from error  # Kanto answers a bad provider with 500
        before = (item.options, item.state, upload.state, upload.start_time, upload.message, upload.info)
        item.options, item.state = options, UploadState.UPLOADING
        if upload.state == UploadState.PENDING:
            upload.state, upload.start_time, upload.message = UploadState.UPLOADING, self.reactor.seconds(), ""
            upload.info = {k[len("info."):]: v for k, v in options.items() if k.startswith("info.")}
        try:
            yield self._save(upload)
        except OSError as error:  # not on disk (a full disk): the file is still PENDING, the start may come again
            if not upload.state.final:  # (unless a cancel ended the upload meanwhile)
                item.options, item.state, upload.state, upload.start_time, upload.message, upload.info = before
            raise UploadError(f"upload '{cid}' not started: {self._record_not_written(upload, error)}; it is"
                              " still PENDING: send the start again once the disk takes it") from error
        self._run_file(upload, item, provider)

    @inlineCallbacks
    def _cancel(self, value: dict[str, Any]) -> Any:
        cid = messages.correlation_id(value, "cancel")
        code, message = value.get("statusCode", ""), value.get("message", "")
        if cid in self._triggering:  # still selecting (hashing) its files: canceled once it has them
            yield self._triggering[cid]
        upload, _ = self._find(cid)
        upload.status_code, upload.message = str(code or ""), str(message or "canceled")
        yield self._finish(upload, UploadState.CANCELED)

    @inlineCallbacks
    def _activate(self, value: dict[str, Any]) -> Any:
        start = messages.parse_time(value.get("from"), "from")
        end = messages.parse_time(value.get("to"), "to")
        if start is not None and end is not None and end < start:
            raise InvalidRequest(f"period end - {value.get('to')} - is before period start - {value.get('from')}")
        yield self._set_activation(Activation(True, start, end))

    @inlineCallbacks
    def _deactivate(self, value: dict[str, Any]) -> Any:
        yield self._set_activation(Activation(False))

    @inlineCallbacks
    def _set_activation(self, activation: Activation) -> Any:
        state = {"active": activation.active, "start": activation.start, "end": activation.end}
        yield self.run_blocking(write_json_atomically, self.root / ACTIVATION_FILE, state)
        self.periodic.apply(activation)
        self._send(_auto_upload(activation), topic=self.settings.auto_upload_topic)

    # -- transfers ------------------------------------------------------------------------

    def _run_file(self, upload: Upload, item: FileUpload, provider: Provider) -> None:
        d = self._transfer(upload, item, provider)
        self._runs[item.correlation_id] = d
        d.addErrback(lambda f: self.log.failure("upload {id} crashed", f, id=item.correlation_id))
        d.addBoth(lambda _: self._runs.pop(item.correlation_id, None) and None)

    @inlineCallbacks
    def _transfer(self, upload: Upload, item: FileUpload, provider: Provider) -> Any:
        queued = self._slots.acquire()
        self._queued[item.correlation_id] = queued
        try:
            yield queued
        except CancelledError:
            return
        finally:
            self._queued.pop(item.correlation_id, None)
        if item.state != UploadState.UPLOADING or not self.running:
            self._slots.release()
            return
        from gateway.uploads.transfer import FileTransfer

        transfer = FileTransfer(
            item.path, item.correlation_id, provider, self.reactor, self.run_blocking,
            self.retry_policy, self.settings.max_attempts, self.settings.chunk_size, self.settings.idle_timeout,
            on_attempt=lambda ident: self._attempt(upload, item, ident),
            on_bytes=lambda n: self._progress(upload, item, n))
        self._transfers[item.correlation_id] = transfer
        try:
            digests = yield transfer.run()
        except CancelledError:
            return  # canceled (statuses already sent) or stopping (resumed at the next start)
        except UploadError as error:
            if item.state == UploadState.UPLOADING:
                yield self._fail(upload, item, error)
            return
        except Exception as error:  # a bug or a library's surprise: the upload fails, visibly
            self.log.failure("upload {id} crashed", id=item.correlation_id)
            if item.state == UploadState.UPLOADING:
                yield self._fail(upload, item, UploadError(f"{type(error).__name__}: {error}"))
            return
        finally:
            self._transfers.pop(item.correlation_id, None)
            self._slots.release()
        if item.state != UploadState.UPLOADING:
            return
        item.state, item.sent, item.md5, item.sha256 = UploadState.SUCCESS, item.size, digests.md5, digests.sha256
        self.log.info("uploaded {path} ({size} bytes, sha256 {sha}) via {provider}", path=escaped(item.path),
                      size=item.size, sha=digests.sha256, provider=provider.name)
        if upload.delete or item.temporary:
            # on disk before the file goes: a restart must not send again a file that is gone
            try:
                yield self.run_blocking(self.store.save, upload)
            except OSError as error:
                item.message = f"uploaded, not deleted: {_unrecorded(error)}"
            else:
                yield self._remove_stored(item)
        if all(f.state == UploadState.SUCCESS for f in upload.files):
            yield self._finish(upload, UploadState.SUCCESS)
        else:
            yield self._record(upload)

    def _attempt(self, upload: Upload, item: FileUpload, ident: FileIdentity) -> None:
        item.size, item.sent = ident.size, 0

    def _progress(self, upload: Upload, item: FileUpload, count: int) -> None:
        item.sent += count
        now = steady_seconds(self.reactor)
        if now - self._last_progress.get(upload.correlation_id, float("-inf")) >= 1.0:
            self._last_progress[upload.correlation_id] = now
            self._send(self._status(upload))

    def _fail(self, upload: Upload, item: FileUpload, error: Exception) -> Deferred[None]:
        item.state, item.message = UploadState.FAILED, str(error)
        upload.message = f"{item.path}: {error}"
        self.log.warn("upload {id} of {path} failed: {error}", id=item.correlation_id, path=escaped(item.path),
                      error=escaped(str(error)))
        return self._finish(upload, UploadState.FAILED)

    @inlineCallbacks
    def _finish(self, upload: Upload, state: UploadState) -> Any:
        """End ``upload`` in ``state``: the files still open are canceled (Kanto does so too)."""
        upload.state, upload.end_time = state, self.reactor.seconds()
        upload.ended = 1 + max((u.ended for u in self.uploads.values()), default=0)
        open_files = [item for item in upload.files if not item.state.final]
        for item in open_files:  # first all, so no freed slot starts one of them
            item.state = UploadState.CANCELED
        for item in open_files:
            for pending in (self._queued.get(item.correlation_id), self._transfers.get(item.correlation_id)):
                if pending is not None:
                    pending.cancel()
        recorded = yield self._record(upload)
        for item in upload.files:
            # the bundle, also one stored but kept for want of its record: nothing resumes an ended upload
            if item.temporary:
                problem = yield self.run_blocking(_remove, item.path)
                if problem is not None:
                    self.log.warn("could not delete {path}: {problem}", path=escaped(item.path), problem=problem)
                elif item.state == UploadState.SUCCESS:
                    item.message = ""
        if not recorded:  # recorded once the bundle's space is free, or its record removed
            written = yield record_end_late(self.store, self.run_blocking, upload, self.log, "upload")
            if written:
                self._unrecorded.pop(upload.correlation_id, None)
        yield self._prune()

    @inlineCallbacks
    def _save(self, upload: Upload) -> Any:
        """Persist, then publish (persist, then act).

        :raises OSError: when the disk refuses the record (nothing is published).
        """
        yield self.run_blocking(self.store.save, upload)
        self._unrecorded.pop(upload.correlation_id, None)
        self._send(upload.status_payload())

    def _status(self, upload: Upload) -> dict[str, Any]:
        """``upload``'s ``lastUpload`` status, its ``message`` ending with why its record is behind
        (``the upload's record cannot be written: <error>``) while it is."""
        status = upload.status_payload()
        note = self._unrecorded.get(upload.correlation_id)
        if note:
            status["message"] = f"{status['message']}; {note}" if status["message"] else note
        return status

    def _record_not_written(self, upload: Upload, error: OSError) -> str:
        """Why ``upload``'s record is not on disk, naming its file (``[Errno 28] No space left on
        device`` said neither what nor where)."""
        where = error.filename or self.store.path_for(upload.correlation_id)
        return f"its record {where} cannot be written: {error.strerror or error}"

    @inlineCallbacks
    def _record(self, upload: Upload) -> Any:
        """Persist, then publish a change that has happened (a file stored, an upload ended):
        one whose record the disk refuses (full, read-only) is published all the same, its
        ``message`` saying so, since the cloud must learn it and nothing may wait on it.

        :return: (a Deferred firing with) whether the change was recorded.
        """
        try:
            yield self._save(upload)
            return True
        except OSError as error:
            note = self._unrecorded[upload.correlation_id] = _unrecorded(error)
            self.log.error("upload {id} is {state}, but {note}", id=upload.correlation_id,
                           state=upload.state.value, note=note)
            self._send(self._status(upload))
            return False

    def _prune(self) -> Deferred[Any]:
        """Forget the finished uploads older than the last :data:`KEEP_FINISHED`, and their
        records. A record the disk refuses to remove (read-only) is logged once, as a warning,
        and tried again at the next prune: the upload that has just ended is not affected."""
        finished = sorted((u for u in self.uploads.values() if u.state.final), key=lambda u: (u.ended, u.end_time or 0))
        stale = [upload.correlation_id for upload in finished[:-KEEP_FINISHED]]
        for correlation_id in stale:
            del self.uploads[correlation_id]
            self._last_progress.pop(correlation_id, None)
            self._unrecorded.pop(correlation_id, None)
        return self._stale.remove(stale, self.log)


def _auto_upload(activation: Activation) -> dict[str, Any]:
    """Kanto's ``autoUpload`` property of an activation."""
    return {"active": activation.active, "startTime": rfc3339(activation.start) if activation.start else None,
            "endTime": rfc3339(activation.end) if activation.end else None}


def _unrecorded(error: OSError) -> str:
    """What a status says when its record could not be written (``error``)."""
    return f"the upload's record cannot be written: {error.strerror or error}"


def _remove(path: str) -> str | None:
    """Delete ``path`` and fsync its directory (blocking), so that a power cut cannot bring back
    a file ``delete: true`` removed (the next trigger would send it again) or a bundle; returns
    why it could not be deleted, or None (also when it was gone). A directory that cannot be
    fsynced once the file is gone (one the gateway may write but not read) is a warning only.
    """
    try:
        os.unlink(path)
    except FileNotFoundError:
        return None
    except OSError as error:
        return error.strerror or str(error)
    directory = os.path.dirname(path)
    try:
        fsync_directory(Path(directory))
    except OSError as error:
        log.warn("deleted {path}, but cannot fsync its directory {directory} ({error}): a power cut may bring it"
                 " back", path=escaped(path), directory=escaped(directory), error=error.strerror or str(error))
    return None
