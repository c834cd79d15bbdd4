"""What a link needs from a journal stream.

:class:`LinkStream` is the subset of the journal's ``Stream`` the links use (the real one
is ``gateway.journal.stream.Stream``; tests use ``tests.links.memory.MemoryStream``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from gateway.journal.losses import LossReason
from gateway.journal.record import encode

#: The cursor every link (MQTT or HTTP) reads its stream ``link-<name>`` with.
CURSOR = "cloud"


class LinkStream(Protocol):
    """The journal stream operations a link uses."""

    #: The seq the next record appended will get.
    next_seq: int

    @property
    def first_kept_seq(self) -> int:
        """The seq of the oldest record the stream still holds (:attr:`next_seq` when it holds
        none): the records below it are gone, acknowledged by every cursor or dropped by the
        stream's limits, and no read returns them."""

    def append(self, record: Any, reserved: bool = False) -> Deferred[int]:
        """Store ``record``; fires with its seq once durable (per the stream's sync policy).

        ``reserved``: it may use the stream's reserve beyond its limits (loss reports)."""

    def append_many(self, records: Sequence[Any], on_durable: Callable[[int], object],
                    on_failed: Callable[[Failure], object]) -> None:
        """Store ``records`` in order; call ``on_durable(seq of the last)`` once all are
        durable, or ``on_failed(failure)``: one call for them all."""

    def cursor(self, name: str) -> Deferred[None]:
        """Create cursor ``name`` unless it exists."""

    def read(self, cursor: str, max_records: int = 1000, max_bytes: int = 1 << 20) -> Deferred[list[Any]]:
        """The next records for ``cursor`` (empty when none are there yet)."""

    def ack(self, cursor: str, seq: int, above: Iterable[tuple[int, int]] = ()) -> Deferred[None]:
        """Acknowledge every record up to ``seq`` and the ``(first, last)`` ranges ``above``
        it; fires once durable. Reads skip what is acknowledged."""

    def note_ack(self, cursor: str, seq: int) -> None:
        """Acknowledge every record up to ``seq`` in memory only (the next :meth:`ack` saves
        it): what the cloud took is never counted as lost when the journal drops it."""

    def wait(self, cursor: str) -> Deferred[None]:
        """Fire when ``cursor`` may have records to read."""

    def unacked(self, cursor: str) -> int:
        """Records appended after ``cursor``'s last acknowledged one (0 for an unknown cursor)."""

    def received_now(self, seq: int, received: float) -> float:
        """Record ``seq``'s ``received`` time on the wall clock as it reads now: moved by every
        step of the clock the stream saw since (a gateway without a real-time clock that
        received it at 1970, before NTP stepped the clock)."""

    def note_loss(self, reason: LossReason, records: int, nbytes: int, first_seq: int = 0,
                  last_seq: int = 0, first_time: float = 0.0, last_time: float = 0.0) -> None:
        """Count records lost for ``reason`` in the loss ledger (durable before any cursor
        save that follows: the cursor never passes a loss no ledger counts). Seqs counted
        ``over-cloud-limit`` or ``refused-by-cloud`` before (met again after a crash before
        that save) are not counted again."""

    def loss_report(self) -> Any:
        """Losses not yet cleared (``entries`` and ``totals``)."""

    @property
    def losses_reported(self) -> str | None:
        """The key last given to :meth:`mark_losses_reported` (kept across restarts), or None."""

    def mark_losses_reported(self, key: str | None) -> None:
        """Keep ``key`` (what the link queued upstream) durably with the loss ledger."""




def note_losses(stream: LinkStream, reason: LossReason, records: Iterable[Any]) -> None:
    """Count ``records`` (read from ``stream``, with their seqs) as lost for ``reason`` in its
    loss ledger: one entry per run of consecutive seqs, their sizes as the journal stores them."""
    run: list[Any] = []
    for record in sorted(records, key=lambda r: r.seq):
        if run and record.seq != run[-1].seq + 1:
            _note_run(stream, reason, run)
            run = []
        run.append(record)
    if run:
        _note_run(stream, reason, run)


def _note_run(stream: LinkStream, reason: LossReason, run: list[Any]) -> None:
    stream.note_loss(reason, len(run), sum(len(encode(r, r.seq)) for r in run), run[0].seq, run[-1].seq,
                     min(r.received for r in run), max(r.received for r in run))
