"""How long the broker keeps persistent sessions whose clients are offline, and how many.

A clean session (CleanSession=1) ends with its connection. A persistent one
(CleanSession=0, §3.1.2.4) outlives it, holding its subscriptions and queued messages,
but not forever: :class:`OfflineSessions` lists the persistent sessions whose clients are
offline, in the order they went offline, and says which must end, either because their
client has been away longer than ``persistent_client_expiration`` (mosquitto's name), or
because more than ``max_offline_sessions`` are offline (the longest offline go first).
The broker (:class:`~gateway.broker.core.GatewayBroker`) then forgets them.

Idle times are counted on a clock that never steps (``steady_seconds``), so NTP stepping
the wall clock expires nothing early or late. A session restored from disk went offline
some time before the start (:meth:`OfflineSessions.restored`, from the times
:mod:`gateway.broker.persistence` saved, read by :mod:`gateway.broker.offlinetimes`): it is
placed among the others by that time.
"""

from __future__ import annotations

from operator import itemgetter
from typing import Callable

#: ``persistent_client_expiration`` when the config names none: seven days.
DEFAULT_EXPIRATION = 7 * 24 * 3600.0
#: ``max_offline_sessions`` when the config names none.
DEFAULT_MAX_OFFLINE = 1000
#: The most seconds between two looks for expired sessions.
MAX_SWEEP_INTERVAL = 60.0


def sweep_interval(expiration: float) -> float:
    """Seconds between two looks for expired sessions: a tenth of the expiration, 1 to 60 s."""
    return min(max(expiration / 10, 1.0), MAX_SWEEP_INTERVAL)


class OfflineSessions:
    """The persistent sessions whose clients are offline, longest offline first.

    :param expiration: seconds a persistent session is kept after its client went
        offline; ``0`` keeps it until the cap pushes it out.
    :param max_sessions: most offline persistent sessions kept.
    :param clock: seconds now (the reactor's ``seconds``).
    :ivar expired: sessions ended because their client stayed away too long, so far.
    :ivar evicted: sessions ended because too many were offline, so far.
    """

    def __init__(self, expiration: float, max_sessions: int, clock: Callable[[], float]) -> None:
        self.expiration = expiration
        self.max_sessions = max_sessions
        self.clock = clock
        self.expired = 0
        self.evicted = 0
        self._since: dict[str, float] = {}  # client id -> when it went offline; insertion order is age

    def __len__(self) -> int:
        return len(self._since)

    def __contains__(self, client_id: object) -> bool:
        return client_id in self._since

    def went_offline(self, client_id: str) -> None:
        """``client_id``'s connection ended and its session stays: its idle time starts now."""
        self._since.pop(client_id, None)
        self._since[client_id] = self.clock()

    def restored(self, client_id: str, idle: float) -> None:
        """``client_id``'s session, restored from disk, went offline ``idle`` seconds ago.

        Call :meth:`reorder` once every restored session is listed: until then the list may
        not be in the order the sessions went offline.
        """
        self._since[client_id] = self.clock() - max(idle, 0.0)

    def reorder(self) -> None:
        """Put the listed sessions back in the order they went offline (after :meth:`restored`)."""
        self._since = dict(sorted(self._since.items(), key=itemgetter(1)))  # (stable: ties keep their order)

    def came_back(self, client_id: str) -> None:
        """``client_id`` is connected again (or its session ended): it is not idle."""
        self._since.pop(client_id, None)

    def idle_for(self, client_id: str) -> float | None:
        """Seconds ``client_id`` has been offline, or ``None`` if it is not listed."""
        since = self._since.get(client_id)
        return None if since is None else self.clock() - since

    def due(self) -> list[str]:
        """The client ids whose sessions must end now (no longer listed; counted as expired or evicted).

        Expired ones first, then the longest offline while more than ``max_sessions`` remain.
        """
        ending: list[str] = []
        since = self._since
        if self.expiration > 0:
            deadline = self.clock() - self.expiration
            for client_id, offline_at in since.items():
                if offline_at > deadline:
                    break  # the rest went offline later
                ending.append(client_id)
            for client_id in ending:
                del since[client_id]
            self.expired += len(ending)
        excess = len(since) - self.max_sessions
        if excess > 0:
            evicted = [client_id for client_id, _ in zip(since, range(excess))]
            for client_id in evicted:
                del since[client_id]
            self.evicted += len(evicted)
            ending += evicted
        return ending
