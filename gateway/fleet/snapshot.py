"""The fleet channel's read-side snapshot: whether the gateway reaches its DDI server, when it
last did and why not, when it polls next, the deployment under way and the feedback waiting.

Taken by :meth:`gateway.fleet.service.FleetService.snapshot`; reports, ``/metrics`` and the
admin API read this, never the service's fields.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

#: What the fleet service does now (:attr:`FleetSnapshot.state`).
FleetActivity = Literal["starting", "polling", "waiting", "failing", "held", "stopped"]


@dataclass(frozen=True)
class FleetSnapshot:
    """The fleet channel at one moment (counters since the service started: the gateway's start,
    or the last configuration change, which restarts every service).

    :param server: ``fleet.base_url``, credentials in it redacted.
    :param tenant: the hawkBit tenant.
    :param controller_id: this gateway's controller id on the server.
    :param state: ``starting`` (waiting for the update service's operations, no poll yet),
        ``polling`` (a poll under way), ``waiting`` (for the next poll, the last one went well),
        ``failing`` (the last poll failed: backing off), ``held`` (the server's ``Retry-After``
        holds every request back until ``held_until``), ``stopped``.
    :param polls: polls tried.
    :param failures: of those, polls that failed (no answer, 401, 429, 5xx, an answer that is not DDI,
        feedback the server asked to slow down with...).
    :param failures_in_row: polls failed since the last one that went well.
    :param last_poll_at: when the last poll ended (seconds since the epoch), ``None`` before one.
    :param last_poll_outcome: ``ok``, ``failed``, or ``""`` before the first poll ended.
    :param last_success_at: when a poll last went well, ``None`` before one did.
    :param last_error: why the last poll failed (or feedback was not taken), kept after a poll
        goes well again (``""`` before any failure).
    :param last_error_at: when that was, ``None`` while there is none.
    :param failing_since: when the first of the polls failed in a row failed, ``None`` while none has.
    :param next_poll_in_s: seconds until the next poll, ``None`` while one is under way (or before
        the first is scheduled, or stopped).
    :param held_until: while the server's ``Retry-After`` holds requests back: until when
        (seconds since the epoch), else ``None``.
    :param server_sleep_s: the poll interval the server asked for (``config.polling.sleep``) in
        force, ``None`` until it said one (``fleet.poll_interval`` is used then).
    :param action_id: the server's action under way (its update operation not ended), ``""`` when none.
    :param action_status: that operation's step (``DOWNLOADING``, ``INSTALLING``...), ``""`` when none.
    :param sw_version: the version of the last deployment installed, ``""`` before one.
    :param feedback_waiting: feedback messages in the outbox, not yet taken by the server.
    :param feedback_oldest_age_s: seconds the oldest of them has waited, ``None`` when none waits.
    :param feedback_dropped: feedback messages the server refused for good, dropped (a 4xx other than
        401, 403, 408 and 429, a quota exceeded), since the service started.
    """

    server: str
    tenant: str
    controller_id: str
    state: FleetActivity
    polls: int
    failures: int
    failures_in_row: int
    last_poll_at: float | None
    last_poll_outcome: Literal["ok", "failed", ""]
    last_success_at: float | None
    last_error: str
    last_error_at: float | None
    failing_since: float | None
    next_poll_in_s: float | None
    held_until: float | None
    server_sleep_s: float | None
    action_id: str
    action_status: str
    sw_version: str
    feedback_waiting: int
    feedback_oldest_age_s: float | None
    feedback_dropped: int = 0
