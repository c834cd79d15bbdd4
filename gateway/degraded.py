"""A started service kept from part of its job: the read side's one shape for it.

A journal stream refusing appends (a full disk), the broker failing to save its checkpoint,
the twin failing to write its things: the service runs, and would show ``running`` to an
operator, while what it is for does not happen. Each such service keeps a :class:`Failing`
(one :meth:`~Failing.failed` where the failure happens, one :meth:`~Failing.recovered` where
the work succeeds again) and puts its :class:`Degraded` in its snapshot; the gateway's status
shows it (:func:`describe`) as the service's ``error``.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.utctext import utc_text


@dataclass(frozen=True)
class Degraded:
    """Why a started service (or a part of it: a journal stream) fails at its job, and since when.

    :param reason: what fails, a short word: a stream's ``disk-full``, ``read-only``, ``write-error``,
        ``max-bytes`` or ``min-free-disk`` (appends refused), ``ledger-not-saved`` (its loss
        ledger); the broker's ``checkpoint-not-saved``; the twin's ``not-saved``.
    :param error: the last failure's words (the operating system's error), else ``""``.
    :param since: when the first failure since the work last succeeded happened (seconds
        since the epoch).
    :param failures: failures since then (a stream's appends refused, a service's saves failed).
    """

    reason: str
    error: str
    since: float
    failures: int


class Failing:
    """The mutable side of :class:`Degraded`: noted where a failure happens, cleared where
    the work succeeds again."""

    def __init__(self) -> None:
        self._state: Degraded | None = None
        #: Failures since this was made (the service's start): never cleared, a counter.
        self.total = 0

    @property
    def now(self) -> Degraded | None:
        """The failure going on now, or ``None`` while the work succeeds."""
        return self._state

    def failed(self, reason: str, error: str, now: float, count: int = 1) -> Degraded:
        """``count`` failures happened for ``reason``: ``since`` stays the first one's (the work
        has failed since then), ``reason`` and ``error`` become the last one's.

        :return: the failure going on now (:attr:`now`)."""
        state = self._state
        self._state = Degraded(reason, error, state.since if state is not None else now,
                               (state.failures if state is not None else 0) + count)
        self.total += count
        return self._state

    def recovered(self) -> None:
        """The work succeeded: nothing fails any more."""
        self._state = None


def describe(degraded: Degraded) -> str:
    """One line for the gateway's status: ``<reason>: <error> (since <UTC time>, <n> failed)``."""
    since = utc_text(degraded.since)
    error = f": {degraded.error}" if degraded.error else ""
    return f"{degraded.reason}{error} (since {since}, {degraded.failures} failed)"
