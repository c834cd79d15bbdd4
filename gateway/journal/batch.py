"""A batch of appends on its way to disk, and what its completion calls.

:class:`Batch` is what a :class:`~gateway.journal.stream.Stream` hands to the I/O
thread with the callbacks of its appends; :func:`fire_range` tells those callbacks
their seqs once the batch is durable; :class:`Once` is the one result of an
``append_many``; :func:`call_logged` calls an append's callback, logging what it raises.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.journal.record import Record
from gateway.journal.segments import BatchOp

#: Called with an append's seq once it is durable.
OnDurable = Callable[[int], object]
#: Called with the error (a :class:`Failure`) if an append is lost before it is durable.
OnFailed = Callable[[Failure], object]


class HasLog(Protocol):
    """What :func:`fire_range` uses of its stream: its log, only when a callback raises."""

    @property
    def log(self) -> Logger:
        """The stream's logger."""


class Batch:
    """One batch handed to the I/O thread, with what its completion needs."""

    __slots__ = ("ops", "done", "failed", "since", "first", "written", "ledger", "ledger_write", "nbytes", "plain",
                 "refusals", "undo")

    def __init__(self, ops: list[BatchOp], done: list[OnDurable | None], failed: list[OnFailed],
                 since: tuple[float, float], first: int, written: list[tuple[Record, int, int, int]],
                 ledger: bytes | None, ledger_write: int, plain: bool, undo: list[BatchOp] | None,
                 refusals: int = 0) -> None:
        self.ops = ops
        self.done = done  # one per sync append, in seq order from ``first``
        self.failed = failed  # one per sync append, or per append_many (each called if it fails)
        self.since = since  # the sum of its appends' start times, the first one's
        self.first = first  # its first seq
        self.written = written  # one entry per append
        self.ledger = ledger
        self.ledger_write = ledger_write  # its number (:class:`LedgerWrites`), when it holds the ledger
        self.nbytes = sum(len(data) for _, data, _, _ in ops)
        self.plain = plain  # it holds an append that needed no reserve: written, the stream takes appends again
        #: The stream's refusals (``Stream.refusing.total``) when its last such append was made: a
        #: refusal after it (the same turn's flood past the limit) is not ended by its write.
        self.refusals = refusals
        self.undo = undo  # the failed batch's undo it does first (``Stream._undo``)


def fire_range(done: list[OnDurable | None], start: int, end: int, first: int, stream: HasLog) -> None:
    """Tell ``done[start:end]`` their seqs (``first + index``): one plain call per record
    that has a callback (:meth:`~gateway.journal.stream.Stream.append_many` gives only its last one).

    A callback that raises is logged and the rest still run (a Deferred's ``callback``
    never raises: its own errors stay in its chain). It takes the stream rather than its
    log: ``stream.log`` builds a new :class:`Logger` at each access, which only a failure
    should pay for.
    """
    seq = first + start
    for i in range(start, end):
        call = done[i]
        if call is not None:
            try:
                call(seq)
            except Exception:
                stream.log.failure("journal: an append's durable callback raised")
        seq += 1


class Once:
    """The one result of :meth:`~gateway.journal.stream.Stream.append_many`: the first of ``durable``/``failed`` wins."""

    __slots__ = ("on_durable", "on_failed", "settled")

    def __init__(self, on_durable: OnDurable, on_failed: OnFailed) -> None:
        self.on_durable = on_durable
        self.on_failed = on_failed
        self.settled = False

    def durable(self, seq: int) -> None:
        """The last record is durable (and so, in seq order, every one before it)."""
        if not self.settled:
            self.settled = True
            self.on_durable(seq)

    def failed(self, failure: Failure) -> None:
        """A record was refused or lost (each of them may say so: only the first counts)."""
        if not self.settled:
            self.settled = True
            self.on_failed(failure)


def call_logged(f: Callable[[Any], object], arg: object) -> None:
    """Call ``f(arg)``; an exception it raises is logged, not passed on."""
    try:
        f(arg)
    except Exception:
        Logger().failure("journal: an append's callback raised")
