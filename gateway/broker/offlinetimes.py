"""How long a restored persistent session's client has been offline: the saved times read
back against the clocks at the start.

The broker saves when each persistent session's client went offline as a wall-clock time
(the checkpoint's ``offline_since``, the state log's ``offline`` records), and with it the
clock of the boot it was read in (:class:`~gateway.clockstep.BootClock`: the boot's id and
its ``CLOCK_BOOTTIME`` reading; the checkpoint's ``clock``, an ``offline`` record's ``boot``
header). At the start:

- in the same boot, the time offline is counted on the boot's clock, which no step of the
  wall clock moves: a clock set wrong (years ahead, or back) while the gateway was stopped
  neither ends a session early nor keeps it late;
- after a reboot (or with an unknown boot), the time before the save still counts (it was
  counted on the steady clock), and the time from the save to the start (the machine was
  off for most of it) is the wall clock's, when it looks right: both readings of a set clock
  (:data:`~gateway.clockstep.CLOCK_SET_SINCE`), the clock at start not before the saved
  time, nor more than :data:`MAX_OFF_TIME` after it. Otherwise it is not known, and counts
  as none: the session counts as offline from the saved idle time at the start. A clock
  years ahead at start (a wrong real-time clock, a clock set by hand, a restored virtual
  machine) would otherwise end every persistent session at once, with the QoS 1/2 messages
  queued for them, which the broker acknowledged.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from gateway.clockstep import CLOCK_SET_SINCE, BootClock, in_boot

#: The longest time from a saved time to the start that the wall clock is believed for, across
#: a reboot (30 days): a clock that reads more is taken as wrong (the gateway cannot tell a longer
#: power-off from a clock set ahead, and ending sessions loses the messages queued for them).
MAX_OFF_TIME = 30 * 24 * 3600.0

#: The clock a checkpoint's times were read on: ``[boot id, wall seconds, boot clock seconds]``
#: at its writing (the checkpoint's ``clock``).
SavedClock = tuple[str, float, float]


def offline_for(since: float | None, now: float) -> float:
    """Seconds from the wall-clock time ``since`` to ``now`` (the wall clock at start), when the
    wall clock can be believed for them: none when ``since`` is not known, is later than
    ``now`` (a clock behind, or stepped back), either of them is before
    :data:`~gateway.clockstep.CLOCK_SET_SINCE` (a clock not set), or ``now`` is more than
    :data:`MAX_OFF_TIME` after ``since`` (a clock ahead)."""
    if since is None or since < CLOCK_SET_SINCE or now < CLOCK_SET_SINCE:
        return 0.0
    gap = now - since
    return gap if 0.0 <= gap <= MAX_OFF_TIME else 0.0


def saved_clock(boot: BootClock, now: float) -> list[Any]:
    """The checkpoint's ``clock`` for a checkpoint taken at ``now`` (the wall clock) in ``boot``."""
    return [boot.boot, now, boot.seconds()]


def read_saved_clock(value: Any) -> SavedClock:
    """A checkpoint's ``clock`` as :func:`saved_clock` wrote it.

    :raises ValueError: ``value`` is not such a clock.
    """
    if not (isinstance(value, list) and len(value) == 3 and isinstance(value[0], str)
            and all(type(v) in (int, float) and math.isfinite(v) for v in value[1:])):
        raise ValueError("clock: not [boot id, wall-clock seconds, boot-clock seconds]")
    return value[0], float(value[1]), float(value[2])


def restored_idle(since: float | None, clock: SavedClock | None, now: float, boot: BootClock | None) -> float:
    """Seconds a checkpoint's session has been offline at the start.

    :param since: its ``offline_since`` (None: its client was connected, or not known).
    :param clock: the checkpoint's ``clock`` (None: a checkpoint written before it was kept,
        whose times are the wall clock's alone: :func:`offline_for`).
    :param now: the wall clock now.
    :param boot: this boot's clock (None: not known).
    """
    if since is None:
        return 0.0
    if clock is None:
        return offline_for(since, now)
    saved_in, saved_at, boot_at = clock
    before = max(saved_at - since, 0.0)  # (idle at the save: counted on the steady clock then)
    if boot is not None and in_boot(boot, saved_in):
        return before + max(boot.seconds() - boot_at, 0.0)
    return before + offline_for(saved_at, now)


def boot_header(boot: BootClock) -> tuple[tuple[str, str], ...]:
    """The ``boot`` header of a state-log ``offline`` record logged now in ``boot``: its id and its
    clock's reading (none when the boot is not known)."""
    return (("boot", f"{boot.boot} {boot.seconds():.3f}"),) if boot.boot else ()


def logged_idle(received: float, headers: Mapping[str, str], now: float, boot: BootClock | None) -> float:
    """Seconds the client of a state-log ``offline`` record (received at ``received``, with
    ``headers``) has been offline at the start: on the boot's clock when the record was logged
    in this boot (its ``boot`` header), else the wall clock's (:func:`offline_for`)."""
    logged_in, _, at = headers.get("boot", "").partition(" ")
    if boot is not None and in_boot(boot, logged_in):
        try:
            boot_at = float(at)
        except ValueError:
            boot_at = math.nan
        if math.isfinite(boot_at):
            return max(boot.seconds() - boot_at, 0.0)
    return offline_for(received, now)
