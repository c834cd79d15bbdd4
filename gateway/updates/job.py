"""One download's life: queue slot, attempts, retries, deadline, idle timeout, progress."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urljoin

from twisted.internet.defer import CancelledError, Deferred, DeferredSemaphore, inlineCallbacks
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IResponse

from gateway.clockstep import steady_seconds
from gateway.blocking import RunBlocking
from gateway.updates.body import BodySink
from gateway.updates.errors import (
    AttemptsExhausted,
    ContentRangeMismatch,
    DeadlineExceeded,
    DigestMismatch,
    DownloadError,
    HTTPStatusError,
    IdleTimeout,
    RetryableDownloadError,
    ServerChangedFile,
    SizeExceeded,
    SizeMismatch,
    TooManyRedirects,
)
from gateway.certwindow import waits_for_clock
from gateway.netfailures import describe, describe_answer
from gateway.shown import shown_url
from gateway.updates.partfile import PartFile, PartMeta
from gateway.updates.response import (
    abort,
    body_length,
    checked_range,
    discard,
    header,
    strong_validator,
    total_of,
)
from gateway.updates.settings import DownloadSettings


class JobHost(Protocol):
    """What a :class:`DownloadJob` uses of its :class:`gateway.updates.downloader.Downloader`."""

    http: Any
    clock: IReactorTime
    settings: DownloadSettings
    run_blocking: RunBlocking
    retry_policy: Callable[[int], float]

    def check_url(self, url: str) -> None:
        """Refuse a URL whose scheme the settings do not allow."""

    def authorization(self, url: str) -> dict[str, list[str]]:
        """The ``Authorization`` header for ``url``'s origin (empty when none is registered)."""

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_RETRYABLE_STATUS = frozenset({408, 425, 429})


@dataclass(frozen=True)
class DownloadProgress:
    """A progress report, sent at most once a second per download.

    :param url: the artifact's URL.
    :param received: bytes of the file on hand (resumed bytes included).
    :param total: the file's size when known.
    :param rate: bytes per second over the last report interval.
    """

    url: str
    received: int
    total: int | None
    rate: float


class DownloadJob:
    """The state of one download; see :class:`gateway.updates.downloader.Downloader`."""

    log = Logger()

    def __init__(
        self,
        downloader: JobHost,
        url: str,
        destination: Path,
        size: int | None,
        digests: dict[str, str],
        progress: Callable[[DownloadProgress], None] | None,
    ) -> None:
        self.downloader = downloader
        self.url = url
        self.size = size
        self.result: Deferred[Path] = Deferred()
        self.part = PartFile(destination, PartMeta(url, size, digests), downloader.settings.checkpoint_bytes)
        self._progress = progress
        self._stopped: Exception | None = None
        self._slot: Deferred[Any] | None = None
        self._waiting: Deferred[Any] | None = None
        self._sink: BodySink | None = None
        #: the unwanted bodies (redirects', errors') still being read and dropped.
        self._discards: set[Deferred[None]] = set()
        self._in_attempt = False
        self._attempt_error: Exception | None = None
        self._attempt_start = 0
        self._last_seen = -1
        self._last_change = 0.0
        self._last_report = (0, 0.0)

    # -- life cycle ---------------------------------------------------------------------

    def queue(self, slots: DeferredSemaphore) -> None:
        """Wait for a free slot, then run; the slot is released when the download ends."""
        self._slot = slots.acquire()
        self._slot.addCallback(lambda _: self._run().addBoth(self._release, slots))
        self._slot.addErrback(self._fail)

    def stop(self, reason: Exception) -> None:
        """End the download with ``reason`` once nothing is pending any more."""
        if self._stopped is not None or self.result.called:
            return
        self._stopped = reason
        for dropping in list(self._discards):
            dropping.cancel()
        if self._slot is not None and not self._slot.called:
            self._slot.cancel()
        elif self._sink is not None:
            self._sink.abort(reason)
        elif self._waiting is not None:
            self._waiting.cancel()

    def _release(self, outcome: object, slots: DeferredSemaphore) -> None:
        slots.release()
        if isinstance(outcome, Failure):
            self._fail(outcome)
        else:
            self.result.callback(self.part.destination)

    def _fail(self, failure: Failure) -> None:
        if failure.check(CancelledError) and self._stopped is not None:
            failure = Failure(self._stopped)
        self.result.errback(failure)

    @inlineCallbacks
    def _run(self) -> Any:
        clock, settings = self.downloader.clock, self.downloader.settings
        deadline = clock.callLater(settings.deadline, self.stop, DeadlineExceeded(self.url, "deadline passed"))
        ticker = LoopingCall(self._tick)
        ticker.clock = clock
        ticker.start(1.0, now=False)
        try:
            self.downloader.check_url(self.url)
            if (yield self._blocking(self.part.destination_verified)):
                return
            offset = yield self._blocking(self.part.open)
            if offset:
                self.log.info("resuming {url} at {offset} bytes", url=shown_url(self.url), offset=offset)
            failures = retries = 0
            last: RetryableDownloadError | None = None
            while True:
                before = self.part.written
                try:
                    complete = yield self._attempt()
                except RetryableDownloadError as error:
                    last = error
                    complete = None
                yield self._blocking(self.part.checkpoint)
                if complete:
                    break
                if complete is False:  # a clean partial range: ask for the rest at once
                    continue
                progress = self.part.written > before
                retries = 0 if progress else retries + 1
                # (a certificate not valid yet by a clock not set yet: NTP cures it, not a retry)
                failures = 0 if progress else failures + (0 if waits_for_clock(last) else 1)
                if failures >= self.downloader.settings.max_attempts:
                    raise AttemptsExhausted(self.url, f"{failures} attempts without progress; last: {last}")
                delay = self.downloader.retry_policy(retries or 1)
                self.log.info("retrying {url} in {delay:.1f}s: {error}", url=shown_url(self.url), delay=delay, error=last)
                yield self._wait(partial(deferLater, clock, delay, lambda: None))
            yield self._finish()
        except Exception as error:
            closed = self._blocking(self.part.close)
            if isinstance(error, OSError):
                # The part cannot be written (a full disk, a directory that cannot be made): no
                # other attempt does better, so the download ends saying why (and closing the
                # part may fail alike).
                yield closed.addErrback(lambda failure: failure.trap(OSError) and None)
                raise DownloadError(self.url, f"cannot write {self.part.path.name}: {error}") from error
            yield closed
            raise
        finally:
            if deadline.active():
                deadline.cancel()
            if ticker.running:
                ticker.stop()

    @inlineCallbacks
    def _finish(self) -> Any:
        total = self.part.meta.size
        if total is not None and self.part.written != total:
            raise SizeMismatch(self.url, f"got {self.part.written} bytes, expected {total}")
        verified = yield self._blocking(self.part.finish)
        if not verified:
            checker = self.part.checker
            raise DigestMismatch(
                self.url, f"{checker.algorithm} is {checker.hexdigest()}, expected {checker.expected}; file deleted"
            )
        if self.part.checker.expected is None:
            self.log.info("downloaded {url} ({size} bytes; not verified: no digest was announced)",
                          url=shown_url(self.url), size=self.part.written)
        else:
            self.log.info("downloaded {url} ({size} bytes, {algorithm} verified)", url=shown_url(self.url),
                          size=self.part.written, algorithm=self.part.checker.algorithm)

    # -- helpers that honour stop() -----------------------------------------------------

    def _check_stopped(self) -> None:
        if self._stopped is not None:
            raise self._stopped

    @inlineCallbacks
    def _blocking(self, f: Callable[..., Any], *args: Any) -> Any:
        result = yield self.downloader.run_blocking(f, *args)  # never cancelled: the thread runs to its end
        return result

    @inlineCallbacks
    def _wait(self, start: Callable[[], Deferred[Any]]) -> Any:
        """Start what ``start`` starts (a request, a retry's delay) unless the download was
        stopped meanwhile (a stop can land while a disk call runs in its thread, where it has
        nothing to cancel), and wait for it; :meth:`stop` cancels it."""
        self._check_stopped()
        d = self._waiting = start()
        try:
            result = yield d
        except CancelledError:
            self._check_stopped()
            if self._attempt_error is not None:
                raise self._attempt_error from None
            raise
        finally:
            self._waiting = None
        self._check_stopped()
        return result

    # -- one attempt --------------------------------------------------------------------

    @inlineCallbacks
    def _attempt(self) -> Any:
        """Fire True when the file is complete, False after a clean partial range."""
        self._in_attempt = True
        self._attempt_error = None
        self._attempt_start = self.part.written
        self._last_change = steady_seconds(self.downloader.clock)
        try:
            response = yield self._request()
            complete = yield self._handle(response)
            return complete
        finally:
            self._in_attempt = False
            self._sink = None

    @inlineCallbacks
    def _request(self) -> Any:
        url = self.url
        headers = {"Accept-Encoding": ["identity"]}
        offset = self.part.written
        if offset:
            headers["Range"] = [f"bytes={offset}-"]
            validator = strong_validator(self.part.meta.etag, self.part.meta.last_modified)
            if validator:
                headers["If-Range"] = [validator]
        for _ in range(self.downloader.settings.max_redirects + 1):
            self.downloader.check_url(url)
            try:
                response = yield self._wait(partial(
                    self.downloader.http.request, "GET", url,
                    headers={**headers, **self.downloader.authorization(url)}, unbuffered=True, allow_redirects=False,
                ))
            except (DownloadError, CancelledError):
                raise
            except Exception as error:
                # the HTTP client wraps the cancel of a stop or of the idle timeout (no answer at
                # all: a server that stalls, in the TLS handshake too): that is what to tell
                self._check_stopped()
                if self._attempt_error is not None:
                    raise self._attempt_error from error
                raise RetryableDownloadError(url, f"the request got no answer: {describe(error)}") from error
            location = header(response, "Location")
            if response.code not in _REDIRECTS or not location:
                return response
            self._discard(response)
            url = urljoin(url, location)
        raise TooManyRedirects(self.url, f"more than {self.downloader.settings.max_redirects} redirects")

    @inlineCallbacks
    def _handle(self, response: IResponse) -> Any:
        code = response.code
        offset = self.part.written
        etag, modified = header(response, "ETag"), header(response, "Last-Modified")
        if code == 416:
            self._discard(response)
            total = total_of(header(response, "Content-Range"))
            if total == offset and self.size in (None, total):
                return True
            yield self._blocking(self.part.restart, None, None)
            raise ServerChangedFile(self.url, f"range {offset}- not satisfiable (size now {total}); starting over")
        if code == 200:
            first: Callable[[], None] | None = partial(self.part.restart, etag, modified)
            offset = self._attempt_start = 0
            total = body_length(response)
        elif code == 206:
            start, end, total = checked_range(self.url, header(response, "Content-Range"), offset)
            length = body_length(response)
            if length is not None and length != end - start + 1:
                abort(response)
                raise ContentRangeMismatch(self.url, f"Content-Length {length} does not fit the range {start}-{end}")
            if self.part.meta.etag and etag and etag != self.part.meta.etag:
                abort(response)
                yield self._blocking(self.part.restart, None, None)
                raise ServerChangedFile(self.url, f"ETag changed from {self.part.meta.etag} to {etag}; starting over")
            first = None
        else:
            self._discard(response)
            message = describe_answer(code, response.phrase)  # (its body is not read: it is discarded)
            if code >= 500 or code in _RETRYABLE_STATUS:
                raise RetryableDownloadError(self.url, message)
            raise HTTPStatusError(self.url, message)
        self._check_total(response, total)
        if total is not None:
            self.part.meta.size = total
        limit, too_big = self._limit(offset)
        batch = self.downloader.settings.write_batch
        sink = BodySink(self.part, self.downloader.run_blocking, batch, limit, too_big, first)
        self._sink = sink
        if self._stopped is not None:
            sink.abort(self._stopped)
        response.deliverBody(sink)
        try:
            yield sink.done
        except DownloadError:
            raise
        except Exception as error:
            self._check_stopped()
            raise RetryableDownloadError(
                self.url, f"the download was cut short after {sink.received} bytes of this attempt: "
                f"{describe(error)}") from error
        self._check_stopped()
        if total is None or self.part.written >= total:
            return True
        return False

    def _discard(self, response: IResponse) -> None:
        """Drop a body not wanted (a redirect's, an error's), within ``idle_timeout``; a stop
        closes its connection at once."""
        dropping = discard(response, self.downloader.clock, self.downloader.settings.idle_timeout)
        if not dropping.called:
            self._discards.add(dropping)
            dropping.addBoth(lambda _: self._discards.discard(dropping))

    def _check_total(self, response: IResponse, total: int | None) -> None:
        if total is None:
            return
        if total > self.downloader.settings.max_size:
            abort(response)
            raise SizeExceeded(self.url, f"{total} bytes is more than the maximum {self.downloader.settings.max_size}")
        if self.size is not None and total != self.size:
            abort(response)
            raise SizeMismatch(self.url, f"server says {total} bytes, announced {self.size}")

    def _limit(self, offset: int) -> tuple[float, Callable[[], DownloadError]]:
        max_size = self.downloader.settings.max_size
        if self.size is not None and self.size < max_size:
            announced = self.size
            message = f"body longer than the announced {announced} bytes"
            return announced - offset, lambda: SizeMismatch(self.url, message)
        return max_size - offset, lambda: SizeExceeded(self.url, f"body passed the maximum of {max_size} bytes")

    # -- the once-a-second tick: progress and idle timeout ------------------------------

    def _tick(self) -> None:
        now = steady_seconds(self.downloader.clock)
        received = self._attempt_start + (self._sink.received if self._sink is not None else 0)
        if not self._in_attempt:
            received = self.part.written
        if received != self._last_seen:
            self._last_seen = received
            self._last_change = now
            seen, at = self._last_report
            rate = (received - seen) / (now - at) if now > at and seen else 0.0
            self._last_report = (received, now)
            if self._progress is not None:
                self._progress(DownloadProgress(self.url, received, self.part.meta.size, rate))
        elif self._in_attempt and now - self._last_change >= self.downloader.settings.idle_timeout:
            self._abort_attempt(IdleTimeout(self.url, f"no data for {self.downloader.settings.idle_timeout:g}s"))

    def _abort_attempt(self, error: Exception) -> None:
        self._attempt_error = error
        if self._sink is not None:
            self._sink.abort(error)
        elif self._waiting is not None:
            self._waiting.cancel()
