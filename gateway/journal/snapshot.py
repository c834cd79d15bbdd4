"""The journal's read-side snapshot: per stream depth, age, appends, fsync latency, losses.

Taken by :meth:`gateway.journal.stream.Stream.snapshot` and
:meth:`gateway.journal.service.JournalService.snapshot`; reports, ``/metrics`` and the
admin API read these, never the stream's fields.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.degraded import Degraded
from gateway.journal.stats import Histogram, HistogramSnapshot


@dataclass(frozen=True)
class CursorSnapshot:
    """One reader of a stream.

    :param name: the cursor (a link's is ``cloud``).
    :param acked: the last seq it acknowledged with every seq before it.
    :param unacked: records appended after that and not acknowledged (ranges acknowledged
        above ``acked``, live records sent beside a backlog, are not counted).
    """

    name: str
    acked: int
    unacked: int


@dataclass(frozen=True)
class LatencySnapshot:
    """A running latency: count, sum, max and last value, in seconds."""

    count: int
    sum_s: float
    max_s: float
    last_s: float


@dataclass(frozen=True)
class LossCount:
    """Records a stream lost for one reason since the journal service started: the gateway's
    start, or the last configuration change applied or reverted while it runs (which restarts
    every service; the count starts again from zero).

    :param reason: ``max-bytes``, ``max-age``, ``min-free-disk``, ``rejected``, ``corrupt``,
        ``torn``, ``write-failed``, ``over-cloud-limit`` or ``refused-by-cloud`` (see
        :class:`~gateway.journal.losses.LossEntry`).
    :param records: how many.
    """

    reason: str
    records: int


@dataclass(frozen=True)
class StreamSnapshot:
    """One journal stream at one moment.

    :param name: the stream (a link's is ``link-<name>``).
    :param records: records retained.
    :param bytes: bytes on disk plus bytes waiting to be written.
    :param segments: segment files.
    :param free_bytes: free space the stream last saw on its filesystem.
    :param oldest_age_s: seconds since the oldest retained record was received (0 when empty).
    :param oldest_unacked_age_s: seconds since the oldest record some cursor has not
        acknowledged was received (0 when every cursor is caught up or there is none; when
        damage took that record, the first one kept after it). Exact, after a restart too:
        a record no longer in memory has its time read from its segment on the I/O thread
        (:mod:`gateway.journal.unackedage`); until that read is done, the age of the closest
        older record whose time is known (at worst its segment's first).
    :param next_seq: the seq the next append gets.
    :param appends: appends acknowledged (durable under ``sync``) since the journal service
        started (as for :class:`LossCount`).
    :param append_latency: append to acknowledgement.
    :param fsyncs: batches written (each one write and, under ``sync``, one fsync).
    :param fsync_latency: seconds per batch write-and-fsync, as a histogram.
    :param cursors: its readers.
    :param losses: records lost since the journal service started, by reason.
    :param refusing: while the stream refuses appends, why (``disk-full``, ``read-only`` or ``write-error``:
        a write failed, and the stream backs off; ``max-bytes`` or ``min-free-disk``: a limit
        under ``reject-new``, or a record that fits not even an empty stream), since when and
        how many it refused since then; ``None`` again once an append is written.
    :param refused_appends: appends refused since the journal service started (as for
        :class:`LossCount`), every reason.
    :param ledger_failing: while writes of its loss ledger (``losses.json``) fail (a full
        disk: the loss counts are not durable, a restart would forget those since the last
        write), reason ``ledger-not-saved``, the last error, since when and how many writes
        failed; ``None`` again once a write works.
    :param in_use: whether the configuration uses the stream (a link's, the broker's state
        log, the twin's shadow sync); one that is not (its link removed or renamed) stays on
        disk until the operator drops it (``DELETE /journal/NAME``, ``gatewayctl journal drop``).
    :param cursor_save_latency: seconds per cursor save that worked (a write and two fsyncs
        on the I/O thread), from its hand-over to that thread (the wait behind the batches
        queued there included) until it was durable, as a histogram with
        ``fsync_latency``'s buckets.
    """

    name: str
    records: int
    bytes: int
    segments: int
    free_bytes: int
    oldest_age_s: float
    oldest_unacked_age_s: float
    next_seq: int
    appends: int
    append_latency: LatencySnapshot
    fsyncs: int
    fsync_latency: HistogramSnapshot
    cursors: tuple[CursorSnapshot, ...]
    losses: tuple[LossCount, ...]
    refusing: Degraded | None = None
    refused_appends: int = 0
    ledger_failing: Degraded | None = None
    cursor_save_latency: HistogramSnapshot = field(default_factory=lambda: Histogram().snapshot())
    in_use: bool = True


@dataclass(frozen=True)
class DroppedStream:
    """A stream the operator dropped since the journal service started (as for :class:`LossCount`).

    :param name: the stream.
    :param lost: records its cursors had not acknowledged, counted lost (reason ``dropped``).
    :param lost_bytes: the bytes it held when they were (0 when nothing was lost).
    :param at: when it was dropped (seconds since the epoch).
    """

    name: str
    lost: int
    lost_bytes: int
    at: float


@dataclass(frozen=True)
class JournalSnapshot:
    """Every stream of the journal.

    :param directory: where the journal lives.
    :param streams: the streams, by name.
    :param refusing: while a stream refuses appends (:func:`streams_refusing`), else ``None``.
    :param ledger_failing: while a stream's loss ledger is not written
        (:func:`streams_ledger_failing`), else ``None``.
    :param dropped: the streams the operator dropped since the journal service started, in
        the order dropped.
    """

    directory: str
    streams: tuple[StreamSnapshot, ...]
    refusing: Degraded | None = None
    ledger_failing: Degraded | None = None
    dropped: tuple[DroppedStream, ...] = ()


def streams_refusing(streams: tuple[StreamSnapshot, ...]) -> Degraded | None:
    """The journal's :class:`Degraded` from its streams': the reason and start of the stream
    refusing appends longest, every refusing stream's words (``<stream> refuses appends:
    <error>``, longest first, joined by ``; ``) and the appends they refused; ``None`` when
    no stream refuses any."""
    return _longest_first([(s.name, s.refusing) for s in streams], "{} refuses appends: {}")


def streams_ledger_failing(streams: tuple[StreamSnapshot, ...]) -> Degraded | None:
    """The journal's :class:`Degraded` for loss ledgers not written, as :func:`streams_refusing`
    (words ``<stream>'s loss ledger: <error>``); ``None`` while every ledger is written."""
    return _longest_first([(s.name, s.ledger_failing) for s in streams], "{}'s loss ledger: {}")


def _longest_first(named: list[tuple[str, Degraded | None]], words: str) -> Degraded | None:
    """One :class:`Degraded` for the failing ones of ``named``: the reason and start of the one
    failing longest, each one's ``words`` (formatted with its name and error), longest first,
    joined by ``; ``, and their failures together; ``None`` when none fails."""
    states = sorted(((name, state) for name, state in named if state is not None), key=lambda n: n[1].since)
    if not states:
        return None
    first = states[0][1]
    return Degraded(first.reason, "; ".join(words.format(name, state.error) for name, state in states),
                    first.since, sum(state.failures for _, state in states))
