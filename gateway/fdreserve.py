"""The file descriptors kept from clients: a listener closes a new client connection while the
gateway has too few left for its own work (journal segments, cursor and checkpoint writes,
cloud links, hosted programs' pipes).

Without it, clients that connect until the process meets its ``RLIMIT_NOFILE`` (systemd's
``LimitNOFILE``) leave the gateway none: Twisted's listening ports go on closing each new
connection, but the journal cannot open its next segment, so no QoS 1 message is acknowledged
any more, the links cannot reconnect and the hosted programs cannot be spawned, until clients
leave.

Linux hands out the lowest free descriptor number. So while the lowest free one is below
``limit - reserve``, client connections (each on the lowest free number when it came) hold
numbers below that too, and the last ``reserve`` numbers below the limit are left to the
gateway's own files and sockets.
"""

from __future__ import annotations

import errno
import os
import resource
from typing import Any, Callable

from twisted.logger import Logger

from gateway.addresses import address_text
from gateway.logthrottle import LogThrottle

#: Descriptors kept from clients at most; fewer under a low limit (an eighth of it).
RESERVE_MAX = 1024

#: Seconds between two log lines about the connections a listener closed to keep the reserve, at least.
RESERVE_LOG_INTERVAL = 60.0


def reserve_for(limit: int) -> int:
    """How many descriptors are kept from clients under a ``limit`` of descriptors."""
    return min(RESERVE_MAX, limit // 8)


def soft_limit() -> int:
    """The process's limit of open descriptors (``RLIMIT_NOFILE``'s soft value), or -1 for none."""
    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return -1 if limit == resource.RLIM_INFINITY else int(limit)


def lowest_free() -> int:
    """The lowest descriptor number free now (raises OSError when none is: EMFILE, ENFILE)."""
    probe = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    os.close(probe)
    return probe


class DescriptorReserve:
    """Tells a listener whether to close a new client connection to keep the reserve.

    :param limit: the limit of descriptors now (-1: none); :func:`soft_limit` by default.
    :param free: the lowest free descriptor number now; :func:`lowest_free` by default.
    """

    def __init__(self, limit: Callable[[], int] = soft_limit, free: Callable[[], int] = lowest_free) -> None:
        self._limit = limit
        self._free = free

    def short(self) -> tuple[int, int] | None:
        """``(reserve, limit)`` when a new client connection is to be closed: the lowest free
        descriptor is one of the last ``reserve`` below ``limit`` (or none is free); None when
        it may stay (or when this cannot be told: no limit, no ``/dev/null``)."""
        limit = self._limit()
        if limit < 0:
            return None
        reserve = reserve_for(limit)
        try:
            lowest = self._free()
        except OSError as error:
            if error.errno in (errno.EMFILE, errno.ENFILE):
                return reserve, limit
            return None
        return (reserve, limit) if lowest >= limit - reserve else None


class ReserveRefusals:
    """One listener's side of the reserve: whether to close a new client connection on accept
    (:meth:`DescriptorReserve.short`), each one closed counted, and logged at the first, then
    at most once per :data:`RESERVE_LOG_INTERVAL` with the count so far.

    :param listener: what the log calls the listener (``listener default``, ``ingest``).
    :param log: the listener's logger (the lines go out in its namespace).
    :param now: a steady clock (:func:`gateway.clockstep.steady_seconds`) for the log's interval.
    :param reserve: the reserve; the process's own (:class:`DescriptorReserve`) by default.
    :ivar refused: connections closed on accept to keep the reserve, so far.
    """

    def __init__(self, listener: str, log: Logger, now: Callable[[], float],
                 reserve: DescriptorReserve | None = None) -> None:
        self.listener = listener
        self.reserve = reserve or DescriptorReserve()
        self.refused = 0
        self._log = log
        self._lines = LogThrottle(RESERVE_LOG_INTERVAL, now)

    def refuses(self, addr: Any) -> bool:
        """Whether the new connection from ``addr`` is to be closed on accept: the gateway has
        too few file descriptors left for its own work (counted, and logged as the class says)."""
        short = self.reserve.short()
        if short is None:
            return False
        self.refused += 1
        if self._lines.note() is not None:
            reserve, limit = short
            self._log.warn("{listener}: closing {peer}: the gateway has fewer than {reserve} of its {limit} file"
                           " descriptors free (its limit, LimitNOFILE), kept for its journal, links and hosted"
                           " programs ({total} closed so far; logged at most once a minute)",
                           listener=self.listener, peer=address_text(addr), reserve=reserve, limit=limit,
                           total=self.refused)
        return True
