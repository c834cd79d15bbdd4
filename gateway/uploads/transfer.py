"""Sending one file with retries: backoff with jitter, up to a number of attempts in a row
without progress (an attempt that leaves the storage more blocks does not count), a file that
changed while it was sent is sent again, an attempt with no byte moving for the idle timeout
is aborted, a cancel stops the attempt in flight."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.logger import Logger

from gateway.certwindow import waits_for_clock
from gateway.shown import escaped
from gateway.uploads.errors import FileChanged, ProviderRefused, TransferFailed, UploadError
from gateway.uploads.filebody import Digests, FileIdentity, HashingFileBody, digest_file, identify
from gateway.uploads.providers import Provider, Transfer

#: Provider codes that mean "the bytes did not match the checksum sent": the file changed.
DIGEST_CODES = ("BadDigest", "Md5Mismatch", "InvalidDigest", "XAmzContentChecksumMismatch", "InvalidMd5")


class FileTransfer:
    """Sends one file through ``provider`` until it is stored, refused, or out of attempts.

    :param path: the file.
    :param key: a stable id of the file's upload (the child correlation id).
    :param provider: where it goes.
    :param clock: the reactor: schedules retries, takes the body's chunks from its reader thread.
    :param run_blocking: runs blocking work (stat, hashing, the body's reads) in a thread.
    :param retry_policy: ``attempt -> seconds`` (backoff with jitter).
    :param max_attempts: failed attempts in a row without progress before giving up (see
        :meth:`_progressed`).
    :param chunk_size: bytes per body read.
    :param idle_timeout: seconds an attempt may go without a byte handed to the socket (or,
        once the body is sent, without the answer) before it is aborted as a failed attempt.
    :param on_attempt: called with the file's identity when an attempt starts (progress resets).
    :param on_bytes: progress.
    """

    log = Logger()

    def __init__(self, path: str, key: str, provider: Provider, clock: Any,
                 run_blocking: Callable[..., Deferred[Any]], retry_policy: Callable[[int], float],
                 max_attempts: int, chunk_size: int, idle_timeout: float,
                 on_attempt: Callable[[FileIdentity], None], on_bytes: Callable[[int], None]) -> None:
        self.path, self.key, self.provider = path, key, provider
        self.clock, self.run_blocking = clock, run_blocking
        self.retry_policy, self.max_attempts, self.chunk_size = retry_policy, max_attempts, chunk_size
        self.idle_timeout = idle_timeout
        self.on_attempt, self.on_bytes = on_attempt, on_bytes
        #: attempts made.
        self.attempts = 0
        #: failed attempts in a row that made no progress, counted against ``max_attempts``.
        self.fruitless = 0
        #: failed attempts in a row that made no progress, each (for the backoff).
        self._retries = 0
        #: the most blocks the storage was known to hold at a failure (None: none known yet).
        self._most_held: int | None = None
        #: what the attempt in flight (or the last one) hands the provider; None before it does.
        self._transfer: Transfer | None = None
        self.canceled = False
        #: why the attempt in flight was aborted for want of progress (None: it was not).
        self._stalled: TransferFailed | None = None
        self._current: Deferred[Any] | None = None
        self._streamed: list[HashingFileBody] = []

    def cancel(self) -> None:
        """Stop: the request in flight is aborted, no retry follows; :meth:`run` fails with
        :class:`CancelledError`."""
        self.canceled = True
        if self._current is not None:
            self._current.cancel()

    def _stall(self) -> None:
        """No byte moved for ``idle_timeout`` seconds: abort the attempt in flight."""
        self._stalled = TransferFailed(f"no byte sent and no answer for {self.idle_timeout:g}s (idle_timeout)")
        if self._current is not None:
            self._current.cancel()

    def _body(self, offset: int, length: int, on_bytes: Callable[[int], None], hashing: bool = True) -> HashingFileBody:
        body = HashingFileBody(self.path, self.run_blocking, self.clock.callFromThread, offset, length,
                               self.chunk_size, on_bytes, hashing=hashing)
        self._streamed.append(body)
        return body

    def _wait(self, d: Deferred[Any]) -> Deferred[Any]:
        self._current = d
        return d

    @inlineCallbacks
    def run(self) -> Any:
        """Send the file; fires with its :class:`Digests` once the provider has it all.

        :raises UploadError: the last attempt's error, when it is final or attempts ran out.
        :raises CancelledError: when canceled.
        """
        while True:
            self.attempts += 1
            try:
                digests = yield self._attempt()
                return digests
            except Exception as error:
                if self.canceled:
                    raise CancelledError() from error
                if isinstance(error, ProviderRefused) and error.reason.startswith(DIGEST_CODES):
                    error = FileChanged(f"the provider saw other bytes than were hashed ({error.reason})")
                if isinstance(error, OSError):
                    raise UploadError(f"cannot read the file: {error.strerror or error}") from error
                if not isinstance(error, UploadError):
                    raise
                if not error.retryable:
                    raise
                progressed = self._progressed(error)
                self._retries = 0 if progressed else self._retries + 1
                # (a certificate not valid yet by a clock not set yet: NTP cures it, not a retry)
                self.fruitless = 0 if progressed else self.fruitless + (0 if waits_for_clock(error) else 1)
                if self.fruitless >= self.max_attempts:
                    raise
                # as the journal's and the links' backoff, it starts over once something is taken
                delay = self.retry_policy(self._retries or 1)
                self.log.warn("upload of {path} failed (attempt {n}, {fruitless} in a row without progress): {error};"
                              " again in {delay:.1f}s", path=escaped(self.path), n=self.attempts,
                              fruitless=self.fruitless, error=escaped(str(error)), delay=delay)
            yield self._wait(deferLater(self.clock, delay, lambda: None))

    def _progressed(self, error: UploadError) -> bool:
        """Whether the attempt that failed with ``error`` made progress: the storage holds more
        of the file's blocks than at every earlier failure (for the first failure the provider
        learned it at: than when that attempt began). An attempt through a provider that keeps
        nothing of a failed one (a single PUT), or that found the file changed, makes none."""
        transfer, self._transfer = self._transfer, None
        if transfer is None or transfer.found is None or isinstance(error, FileChanged):
            return False
        baseline = transfer.found if self._most_held is None else self._most_held
        self._most_held = max(baseline, transfer.held)
        return transfer.held > baseline

    @inlineCallbacks
    def _attempt(self) -> Any:
        self._transfer = None
        before: FileIdentity = yield self.run_blocking(identify, self.path)
        self.on_attempt(before)
        first, block_size = self.provider.digests_first(before.size)
        digests: Digests | None = None
        if first:
            digests = yield self.run_blocking(digest_file, self.path, block_size)
        if self.canceled:
            raise CancelledError()
        key = hashlib.sha256(f"{self.key}\0{before.size}\0{before.mtime_ns}".encode()).hexdigest()
        self._stalled = None
        watchdog = self.clock.callLater(self.idle_timeout, self._stall)

        def moved(count: int) -> None:
            if watchdog.active():
                watchdog.reset(self.idle_timeout)
            self.on_bytes(count)

        transfer = Transfer(self.path, before.size, digests, self._body, moved, self.run_blocking, key)
        self._transfer = transfer
        self._streamed = transfer.streamed
        try:
            yield self._wait(self.provider.send(transfer))
        except Exception:
            if self._stalled is not None:  # what the abort raised says less than why it came
                raise self._stalled from None
            raise
        finally:
            if watchdog.active():
                watchdog.cancel()
            for body in transfer.streamed:
                body.stopProducing()  # ends a reader thread the HTTP client did not stop
        short = next((body for body in transfer.streamed if body.sent < body.length), None)
        if short is not None:  # an answer that came before the body went: the storage has less
            raise TransferFailed(f"the server answered before it received the whole body ({short.sent} of "
                                 f"{short.length} bytes sent)")
        try:
            after: FileIdentity = yield self.run_blocking(identify, self.path)
        except FileNotFoundError as error:  # read to the end through its open descriptor
            raise UploadError("the file was removed while it was sent") from error
        if after != before:
            raise FileChanged(f"{self.path} changed while it was sent (size {before.size} -> {after.size})")
        whole = [b for b in transfer.streamed if b.length == before.size and b.sent == b.length]
        streamed = (yield whole[0].when_hashed()) if whole else None
        if digests is not None and streamed is not None and (streamed.md5, streamed.sha256) != (
                digests.md5, digests.sha256):
            raise FileChanged(f"{self.path} changed while it was sent (its digest differs)")
        result = digests or streamed
        if result is None:  # sent in blocks without digests first: cannot happen (Azure hashes first)
            result = yield self.run_blocking(digest_file, self.path)
        return result
