"""Which writes of a stream's loss ledger reached the disk, and what waits for one that did.

The ledger is written with a batch of appends or on its own (:meth:`Stream.save_ledger_now
<gateway.journal.stream.Stream.save_ledger_now>`); a write the disk refuses (a full disk)
leaves the ledger to write again later. What must not reach the disk before the ledger that
counts a drop or a damaged stretch waits here for a write that worked, not only for its turn
on the I/O thread: the deletion of a dropped segment whose records the ledger counts lost, a
cursor's save past them. Before, a power cut after a refused write lost them uncounted.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, fail, succeed


class LedgerWrites:
    """The ledger's writes handed to the I/O thread, numbered from 1, and their outcome.

    Writes finish in the order they were handed over (one I/O thread), and each holds the
    whole ledger: once write N is on disk, so is everything every write before it held.
    """

    def __init__(self) -> None:
        self._handed = 0  # the number of the last write handed over
        self._on_disk = 0  # the number of the last write that reached the disk
        self._needed = 0  # the write that counts what cursors pass and deletions drop
        self._refused: tuple[int, BaseException] | None = None  # the last write refused, and why
        self._waiting: list[tuple[int, Deferred[None]]] = []

    def handed_over(self) -> int:
        """A write of the whole ledger as it is now is handed to the I/O thread: its number
        (it is the one needed from now on when the one needed was refused: it holds it)."""
        self._handed += 1
        if self._refused is not None and self._refused[0] == self._needed:
            self._needed = self._handed
        return self._handed

    def need(self) -> None:
        """The last write handed over counts what the cursors are moved past (a drop, a damaged
        stretch): :meth:`on_disk` waits for it."""
        self._needed = self._handed

    def on_disk(self) -> Deferred[None]:
        """Fires once the write needed (:meth:`need`) is on disk (now, when it is); fails with
        its error when the disk refused it and no write was handed over since."""
        needed = self._needed
        if self._on_disk >= needed:
            return succeed(None)
        if self._refused is not None and self._refused[0] == needed:
            return fail(self._refused[1])
        d: Deferred[None] = Deferred()
        self._waiting.append((needed, d))
        return d

    def written(self, number: int) -> None:
        """Write ``number`` is on disk: what waited for it, or for one before it, goes on."""
        self._on_disk = max(self._on_disk, number)
        self._finish(number, None)

    def refused(self, number: int, error: BaseException) -> None:
        """The disk refused write ``number``: what waited for it fails with ``error``."""
        self._refused = (number, error)
        self._finish(number, error)

    def _finish(self, number: int, error: BaseException | None) -> None:
        ready = [d for waited, d in self._waiting if waited <= number]
        self._waiting = [(waited, d) for waited, d in self._waiting if waited > number]
        for d in ready:
            if error is None:
                d.callback(None)
            else:
                d.errback(error)
