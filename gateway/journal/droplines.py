"""The warnings a stream logs when its limits drop records: one a minute per reason, not one a segment.

A cloud link down for days under a publisher flood makes drop-oldest drop a segment every few
seconds (with 64 KiB segments, 33 a second): a line per segment filled the log for as long as
the flood lasted. :class:`DropLines` logs the first drop of a reason at once, then at most one
line per :data:`DROP_LOG_INTERVAL` seconds for it, covering every seq dropped since its last
line (those held back when the drops stop get theirs at the next periodic check once it is
due); the loss ledger, the snapshot and ``/metrics`` count every drop meanwhile.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from twisted.logger import Logger

from gateway.journal.losses import LossReason
from gateway.logthrottle import LogThrottle

#: Seconds between two lines about drops of one reason in one stream, at least.
DROP_LOG_INTERVAL = 60.0


@dataclass
class _Unlogged:
    """The drops of one reason since its last line."""

    first: int = 0
    last: int = 0
    records: int = 0
    segments: int = 0


class DropLines:
    """Logs a stream's drops (:meth:`dropped`): the first of each reason at once, then at most
    one line a minute per reason, each covering the drops since the reason's last line.

    :param stream: the stream's name, as the lines give it.
    :param log: the logger the lines go to.
    :param now: a steady clock (``clockstep.steady_seconds``).
    """

    def __init__(self, stream: str, log: Logger, now: Callable[[], float]) -> None:
        self.stream = stream
        self.log = log
        self._now = now
        self._throttles: dict[LossReason, LogThrottle] = {}
        self._unlogged: dict[LossReason, _Unlogged] = {}

    def dropped(self, reason: LossReason, first: int, last: int, records: int) -> None:
        """Note a dropped segment: ``records`` not acknowledged, from seq ``first`` to ``last``;
        log it with those since the last line of its reason when a line is due."""
        throttle = self._throttles.get(reason)
        if throttle is None:
            throttle = self._throttles[reason] = LogThrottle(DROP_LOG_INTERVAL, self._now)
        unlogged = self._unlogged.setdefault(reason, _Unlogged(first=first))
        unlogged.last = last
        unlogged.records += records
        segments = throttle.note()
        if segments is not None:
            self._log(reason, segments)

    def flush(self) -> None:
        """Log the drops held back of each reason whose line is due (the journal's periodic
        limit check calls it): the last drops of a flood that stopped get their line too."""
        for reason in list(self._unlogged):
            segments = self._throttles[reason].note(0)
            if segments:
                self._log(reason, segments)

    def close(self) -> None:
        """Log the drops held back of every reason, due or not: the stream closes, and no
        periodic check comes after it."""
        for reason in list(self._unlogged):
            self._log(reason, self._throttles[reason].take())

    def _log(self, reason: LossReason, segments: int) -> None:
        """The line for the drops of ``reason`` held back, ``segments`` segments in all."""
        unlogged = self._unlogged.pop(reason)
        span = unlogged.last - unlogged.first + 1
        self.log.warn(
            "journal {stream}: dropped seq {first}-{last} ({reason}){count}{since}",
            stream=self.stream, first=unlogged.first, last=unlogged.last, reason=reason,
            count="" if unlogged.records == span else
            f": {unlogged.records} records not acknowledged, the others were delivered (or counted lost already)",
            since="" if segments == 1 else
            f" ({segments} segments dropped since the last such line; logged at most once a minute"
            " while drops go on)")
