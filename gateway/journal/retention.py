"""Limits of a stream: overflow (drop-oldest, reject-new), age expiry, free disk, deletion.

A mixin of :class:`~gateway.journal.stream.Stream`, kept apart so each file does one
thing: it decides which segments go and counts what that costs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from gateway.journal.losses import LossEntry, LossLedger, LossReason

if TYPE_CHECKING:
    from gateway.journal.files import FileLayer
    from gateway.journal.segments import Segment
    from gateway.journal.settings import StreamSettings


#: Bytes a reserved append (a link's loss report) may add beyond a stream's ``max_bytes``.
RESERVED_BYTES = 256 * 1024


class RetentionCursors(Protocol):
    """What retention uses of the stream's cursors (:class:`~gateway.journal.reader.StreamReader`)."""

    def slowest_ack(self) -> int | None:
        """The lowest acknowledged seq over every cursor (None: no cursors)."""

    def skip_to(self, seq: int) -> None:
        """Move every cursor behind ``seq`` to it."""


class StreamRetention:
    """Segment dropping, expiry and loss accounting for :class:`~gateway.journal.stream.Stream`."""

    log: Logger
    name: str
    directory: str
    settings: StreamSettings
    files: FileLayer
    run: Any
    clock: Any
    segments: list[Segment]
    reader: RetentionCursors
    ledger: LossLedger
    drops: dict[str, int]
    _bytes: int
    _free: int
    _unborn: set[int]
    _pending: list[bytes]
    _inflight: list[Any]
    _unwritten_bytes: Callable[[], int]
    _closed: bool
    _early: list[Any] | None
    _flush: Callable[..., None]

    def _over_limit(self, size: int) -> LossReason | None:
        """The limit ``size`` more bytes would break, if any."""
        if self._bytes + size > self.settings.max_bytes:
            return "max-bytes"
        if self._free - size < self.settings.min_free_bytes:
            return "min-free-disk"
        return None

    def _in_reserve(self, size: int) -> bool:
        """Whether ``size`` more bytes fit in the reserve kept for reserved appends."""
        return (self._bytes + size <= self.settings.max_bytes + RESERVED_BYTES
                and self._free - size >= self.settings.min_free_bytes // 2)

    def _make_room(self, size: int, limit: LossReason) -> bool:
        """Drop oldest segments until ``size`` more bytes fit (drop-oldest only)."""
        if self.settings.overflow == "reject-new":
            return False
        reason: LossReason | None = limit
        while reason is not None:
            if not self.drop_oldest(reason):
                return False
            reason = self._over_limit(size)
        return True

    def drop_oldest(self, reason: LossReason) -> bool:
        """Delete the oldest sealed segment, counting what no cursor had acknowledged."""
        if len(self.segments) < 2 or self.segments[1].first_seq in self._unborn:
            return False
        seg, nxt = self.segments[0], self.segments[1]
        del self.segments[0]
        self._bytes -= seg.size
        self._free += seg.size
        last = nxt.first_seq - 1
        floor = self.reader.slowest_ack()
        first_lost = seg.first_seq if floor is None else max(seg.first_seq, floor + 1)
        if first_lost <= last:
            self.note_loss(reason, last - first_lost + 1, seg.size, first_lost, last,
                           seg.first_time or 0.0, nxt.first_time or 0.0)
            self.log.warn("journal {stream}: dropped seq {first}-{last} ({reason})",
                          stream=self.name, first=first_lost, last=last, reason=reason)
        self.reader.skip_to(nxt.first_seq)
        self._unlink(seg.path)
        return True

    def _unlink(self, path: str) -> None:
        d = self.run(self.files.unlink, path)
        d.addErrback(lambda f: self.log.error("journal {stream}: deleting {path} failed: {error}",
                                              stream=self.name, path=path, error=f.value))

    def delete_acked(self, floor: int) -> None:
        """Delete sealed segments whose every record every cursor acknowledged."""
        while len(self.segments) > 1 and self.segments[1].first_seq - 1 <= floor \
                and self.segments[1].first_seq not in self._unborn:
            seg = self.segments.pop(0)
            self._bytes -= seg.size
            self._free += seg.size
            self._unlink(seg.path)

    def enforce_limits(self) -> None:
        """Expire records older than max_age_s and restore min free disk (call periodically)."""
        max_age = self.settings.max_age_s
        if max_age > 0:
            horizon = self.clock.seconds() - max_age
            while len(self.segments) > 1 and (self.segments[1].first_time or horizon) < horizon:
                if not self.drop_oldest("max-age"):
                    break
        if self.settings.overflow == "drop-oldest":
            while self._over_limit(0) == "min-free-disk" and self.drop_oldest("min-free-disk"):
                pass

    def refresh_free(self) -> Deferred[None]:
        """Re-read the free space of the journal's filesystem (on the I/O thread)."""
        d = self.run(self.files.free_bytes, self.directory)
        d.addCallback(lambda free: setattr(self, "_free", free - self._unwritten_bytes()))
        return d

    def note_loss(self, reason: LossReason, records: int, nbytes: int, first_seq: int = 0,
                  last_seq: int = 0, first_time: float = 0.0, last_time: float = 0.0) -> None:
        """Count a loss in the stats and the durable ledger (written with the next batch)."""
        self.drops[reason] = self.drops.get(reason, 0) + records
        self.ledger.note(LossEntry(reason, records, nbytes, first_seq, last_seq, first_time,
                                   last_time, self.clock.seconds()))
        if not self._inflight and not self._closed and self._early is None:
            self.clock.callLater(0, self._flush)
