"""Periodic uploads: every ``period`` between Kanto's ``activate`` ``from`` and ``to`` (absolute
times), and only inside the configured daily window (local time of day), which a clock not set
yet (a gateway without a real-time clock at 1970, before NTP) cannot tell: its ticks wait."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from gateway.atomic import read_json, set_aside
from gateway.clockstep import unset_clock
from gateway.uploads.settings import PeriodicSettings


@dataclass
class Activation:
    """Kanto's ``autoUpload`` property: whether periodic uploads are on, and between when.

    :param active: on or off.
    :param start: ``from`` (seconds since the epoch), or None for "now".
    :param end: ``to``, or None for "indefinitely".
    """

    active: bool
    start: float | None = None
    end: float | None = None


def load_activation(path: Path) -> Activation | str | None:
    """The activation saved in ``path`` (blocking); None when none was saved. A file that
    cannot be used (unreadable, not JSON, not an activation: ``active`` true or false,
    ``start`` and ``end`` a time or null) is moved aside to ``<name>.damaged``: what is wrong
    with it and where it went is returned, for the log.

    :param path: the activation file.
    """
    try:
        saved = read_json(path)
        if saved is None:
            return None
        if not (isinstance(saved, dict) and isinstance(saved.get("active"), bool)
                and all(_is_time(saved.get(key)) for key in ("start", "end"))):
            raise ValueError("not an activation (active true or false, start and end a time or null)")
        return Activation(saved["active"], saved.get("start"), saved.get("end"))
    except (OSError, ValueError) as error:
        return f"{error}; {set_aside(path)}"


def _is_time(value: Any) -> bool:
    """Whether ``value`` is a saved time: seconds since the epoch (finite), or None."""
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value))


def _minutes(hhmm: str) -> int:
    hours, minutes = hhmm.split(":")
    return int(hours) * 60 + int(minutes)


def _window(settings: PeriodicSettings) -> tuple[int, int] | None:
    """The daily window's ends in minutes of the day, or None when it is the whole day (no
    window, or ends that are equal: the whole day from that time)."""
    if settings.window_from is None and settings.window_to is None:
        return None
    start = _minutes(settings.window_from or "00:00")
    end = _minutes(settings.window_to or "24:00") if settings.window_to != "00:00" else 24 * 60
    return None if start == end % (24 * 60) else (start, end)


def in_daily_window(settings: PeriodicSettings, local: time.struct_time) -> bool:
    """Whether ``local`` (a local time, as the wall clock reads it) is inside the daily window
    (no window: always). A window whose ends are equal spans the whole day from that time.

    :param settings: the periodic settings.
    :param local: the local time to check.
    """
    window = _window(settings)
    if window is None:
        return True
    now = local.tm_hour * 60 + local.tm_min
    start, end = window
    if start <= end:
        return start <= now < end
    return now >= start or now < end  # spans midnight


class PeriodicTrigger:
    """Calls ``trigger`` every ``settings.period`` seconds while active and in the windows.

    :param settings: the periodic settings.
    :param clock: the reactor (or a ``task.Clock``).
    :param trigger: starts one upload.
    :param localtime: seconds since the epoch -> local time (injectable for tests).
    """

    log = Logger()

    def __init__(self, settings: PeriodicSettings, clock: Any, trigger: Callable[[], Any],
                 localtime: Callable[[float], time.struct_time] = time.localtime) -> None:
        self.settings = settings
        self.clock = clock
        self.trigger = trigger
        self.localtime = localtime
        self.activation = Activation(settings.active)
        self._loop: LoopingCall | None = None
        self._waiting_for_clock = False  # (said once while the clock is not set)

    def apply(self, activation: Activation) -> None:
        """Switch to ``activation`` (restarting the period when on)."""
        self.stop()
        self.activation = activation
        if activation.active:
            self._loop = LoopingCall(self._tick)
            self._loop.clock = self.clock
            self._loop.start(self.settings.period, now=False).addErrback(
                lambda f: self.log.failure("periodic upload trigger crashed", f))

    def stop(self) -> None:
        """Stop ticking (the activation is kept)."""
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    def _tick(self) -> None:
        now = self.clock.seconds()
        activation = self.activation
        if activation.end is not None and now > activation.end:
            self.log.info("periodic uploads ended: past their 'to' time")
            self.stop()
            return
        if activation.start is not None and now < activation.start:
            return
        year = unset_clock(now)
        if year is not None and _window(self.settings) is not None:
            if not self._waiting_for_clock:
                self._waiting_for_clock = True
                self.log.info("periodic uploads wait for the clock: it reads {year}, not set yet (no real-time "
                              "clock, and NTP has not set it), so the daily window {start}-{end} cannot be told",
                              year=year, start=self.settings.window_from or "00:00",
                              end=self.settings.window_to or "24:00")
            return
        self._waiting_for_clock = False
        if not in_daily_window(self.settings, self.localtime(now)):
            return
        self.trigger()
