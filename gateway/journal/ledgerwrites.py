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

    Writes that run finish in the order they were handed over (one I/O thread), and each
    holds the whole ledger: once write N is on disk, so is everything every write before it
    held. A write that never runs is refused out of that order: a batch's, as soon as a batch
    before it fails, while a write on its own handed over before it is still to run; what
    waits for that earlier one keeps waiting for its own outcome.
    """

    def __init__(self) -> None:
        self._handed = 0  # the number of the last write handed over
        self._on_disk = 0  # the number of the last write that reached the disk
        self._needed = 0  # the write that counts what cursors pass and deletions drop
        self._needed_refused: BaseException | None = None  # why the disk refused it, if it did
        self._last_refused: tuple[int, BaseException] | None = None  # the last write refused, and why
        self._waiting: list[tuple[int, Deferred[None]]] = []

    def handed_over(self) -> int:
        """A write of the whole ledger as it is now is handed to the I/O thread: its number
        (it is the one needed from now on when the one needed was refused: it holds it)."""
        self._handed += 1
        if self._needed_refused is not None:
            self._needed, self._needed_refused = self._handed, None
        return self._handed

    def need(self) -> None:
        """The last write handed over counts what the cursors are moved past (a drop, a damaged
        stretch): :meth:`on_disk` waits for it."""
        self._needed = self._handed
        last = self._last_refused
        self._needed_refused = last[1] if last is not None and last[0] == self._needed else None

    def on_disk(self) -> Deferred[None]:
        """Fires once the write needed (:meth:`need`) is on disk (now, when it is); fails with
        its error when the disk refused it and no write was handed over since."""
        needed = self._needed
        if self._on_disk >= needed:
            return succeed(None)
        if self._needed_refused is not None:
            return fail(self._needed_refused)
        d: Deferred[None] = Deferred()
        self._waiting.append((needed, d))
        return d

    def written(self, number: int) -> None:
        """Write ``number`` is on disk: what waited for it, or for one before it, goes on."""
        self._on_disk = max(self._on_disk, number)
        self._finish(number, None)

    def refused(self, number: int, error: BaseException) -> None:
        """The disk refused write ``number`` (or it never ran): what waited for it fails with
        ``error``; what waits for an earlier one waits for that one's outcome."""
        self._last_refused = (number, error)
        if number == self._needed:
            self._needed_refused = error
        self._finish(number, error)

    def not_run(self, number: int, error: BaseException) -> None:
        """Write ``number`` never ran (its batch was refused, or failed before the ledger):
        what waited for it waits for the last write handed over since, which holds all it
        held; with none, it fails with ``error``."""
        if self._handed <= number:
            self.refused(number, error)
            return
        if self._needed == number:
            self._needed = self._handed
        self._waiting = [(self._handed if waited == number else waited, d) for waited, d in self._waiting]

    def _finish(self, number: int, error: BaseException | None) -> None:
        # (a write on disk holds what every write before it held; a refusal tells of itself only)
        done = (lambda waited: waited <= number) if error is None else (lambda waited: waited == number)
        ready = [d for waited, d in self._waiting if done(waited)]
        self._waiting = [(waited, d) for waited, d in self._waiting if not done(waited)]
        for d in ready:
            if error is None:
                d.callback(None)
            else:
                d.errback(error)
