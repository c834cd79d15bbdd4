"""What the fleet channel must remember across restarts, persisted atomically in one file.

- ``outbox``: feedback not yet accepted by the server, in order (sent again after a restart);
- ``reported``: per action, the operation status last turned into feedback (so a step
  persisted by the update service just before a crash is still reported, once), in the
  order the actions ended (the last ones only: :meth:`FleetState.trim`);
- ``cancels``: cancel requests waiting for their operation to end (action -> cancel id);
- ``canceled``: actions the server canceled before they installed anything (never started later;
  the last ones only);
- ``download_only``: actions started as download only (``update: skip``): their operation ends
  at ``downloaded``, and is held no longer once the server took that in (one downloaded to
  wait for its maintenance window is held until it installs); absent from a state written
  before it was recorded, whose downloaded actions all stay held;
- ``config_hash``: the attributes last accepted by ``configData``;
- ``sw_version``: the version of the last deployment installed (reported as ``sw_version``);
- ``installed_action``: the action that installed it;
- ``held_until``: until when (seconds since the epoch) the server's ``Retry-After`` holds every
  request back, 0 for no hold (a restart keeps to it);
- ``clock``: the wall clock the times (``queued_at``, ``held_until``) were read on, ``[boot id,
  offset]`` (:func:`~gateway.clockstep.clock_of`): a start in the same boot, the clock not stepped
  since, goes on moving them with each step of it; ``null`` (or absent: a state written before
  it was kept) when not known, or when some were read on another clock (another boot's), which
  a step of this one does not move.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gateway.atomic import read_json, write_json_atomically
from gateway.clockstep import ClockOf
from gateway.filelayer import makedirs_durably
from gateway.updates.operation import EARLIER_CANCELED, Status, recorded_status


@dataclass
class Feedback:
    """One feedback message for the server.

    :param kind: ``deploymentBase`` or ``cancelAction``.
    :param action_id: the action (or cancel action) it is about.
    :param status: the DDI ``status`` object.
    :param queued_at: when it was put in the outbox (seconds since the epoch); ``None`` in a
        state written by a version before it was recorded, read without a ``now``
        (:meth:`FleetState.load`).
    """

    kind: str
    action_id: str
    status: dict[str, Any]
    queued_at: float | None = None


@dataclass
class FleetState:
    """The persisted state (see the module docstring)."""

    outbox: list[Feedback] = field(default_factory=list)
    reported: dict[str, str] = field(default_factory=dict)
    cancels: dict[str, str] = field(default_factory=dict)
    canceled: list[str] = field(default_factory=list)
    download_only: list[str] = field(default_factory=list)
    config_hash: str = ""
    sw_version: str = ""
    installed_action: str = ""
    held_until: float = 0.0
    clock: ClockOf | None = None

    @classmethod
    def load(cls, path: Path, now: float | None = None) -> FleetState:
        """Read the state file; an absent one is an empty state. Keys it does not know are
        ignored (a newer version's, after a rollback).

        :param now: when a feedback without ``queued_at`` (or with one that is not a number:
            a state written before it was recorded) counts as queued: the start that read it;
            ``None`` leaves it unknown.

        :raises ValueError: when the file is there but unreadable, or not of this shape (a
            feedback whose kind, action id or status is of another kind, a map of other than
            strings...): such a state would fail every poll.
        """
        raw = read_json(path)
        if raw is None:
            return cls()
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: not a JSON object")
        outbox = raw.get("outbox", [])
        if not isinstance(outbox, list) or not all(_is_feedback(f) for f in outbox):
            raise ValueError(f"{path}: outbox is not a list of feedback (kind, action_id, status)")
        for key in ("reported", "cancels"):
            value = raw.get(key, {})
            if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
                raise ValueError(f"{path}: {key} is not a map of strings")
        for key in ("canceled", "download_only"):
            value = raw.get(key, [])
            if not isinstance(value, list) or not all(isinstance(a, str) for a in value):
                raise ValueError(f"{path}: {key} is not a list of strings")
        for key in ("config_hash", "sw_version", "installed_action"):
            if not isinstance(raw.get(key, ""), str):
                raise ValueError(f"{path}: {key} is not a string")
        return cls([Feedback(f["kind"], f["action_id"], f["status"], _number(f, "queued_at", now)) for f in outbox],
                   {action_id: _current(status) for action_id, status in raw.get("reported", {}).items()},
                   dict(raw.get("cancels", {})), list(raw.get("canceled", [])), list(raw.get("download_only", [])),
                   raw.get("config_hash", ""), raw.get("sw_version", ""), raw.get("installed_action", ""),
                   _number(raw, "held_until", None) or 0.0, _clock(raw.get("clock")))

    def trim(self, keep: int, needed: Callable[[str], bool]) -> None:
        """Forget the actions that ended beyond the last ``keep`` in ``reported`` (in the order they
        ended), and beyond the last ``keep`` in ``canceled``, but for those ``needed(action_id)``
        keeps; ``download_only`` keeps the actions still in ``reported``.

        :param keep: how many of each are remembered, at least.
        :param needed: whether an action must be remembered however long ago it ended.
        """
        for action_id in _beyond([a for a in self.reported if not needed(a)], keep):
            del self.reported[action_id]
        forgotten = set(_beyond([a for a in self.canceled if not needed(a)], keep))
        self.canceled = [a for a in self.canceled if a not in forgotten]
        self.download_only = [a for a in self.download_only if a in self.reported or needed(a)]

    def save(self, path: Path) -> None:
        """Write atomically and durably (blocking: run it off the reactor), ``reported`` in its
        order (sorted, a restart took the actions for ended in the order of their ids), its
        FINISHED_CANCELED as :data:`~gateway.updates.operation.EARLIER_CANCELED`, which every build reads."""
        makedirs_durably(str(path.parent))  # (a power cut must not take it with the state)
        saved = asdict(self)
        saved["reported"] = {action_id: recorded_status(status) for action_id, status in self.reported.items()}
        write_json_atomically(path, saved, sort_keys=False)


def _beyond(actions: list[str], keep: int) -> list[str]:
    """The ``actions`` before the last ``keep``."""
    return actions[:max(0, len(actions) - keep)]


def _number(raw: dict[str, Any], key: str, default: float | None) -> float | None:
    """A persisted time, a feedback's ``queued_at`` or the state's ``held_until``; ``default``
    when absent or not a finite number of seconds (``NaN``, ``Infinity``, an integer no float
    holds: only a feedback's age in the snapshot, or how long the server's ``Retry-After`` is
    kept to, depends on it: no reason to set the state aside)."""
    value = raw.get(key)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return default
    try:
        seconds = float(value)
    except OverflowError:  # (an integer of hundreds of digits)
        return default
    return seconds if math.isfinite(seconds) else default


def _clock(raw: Any) -> ClockOf | None:
    """The state's ``clock``; None when absent or not ``[boot id, offset]`` (its times then count as
    read on another clock: only the feedback's age and a hold's end depend on it)."""
    if not (isinstance(raw, list) and len(raw) == 2 and isinstance(raw[0], str)
            and type(raw[1]) in (int, float) and math.isfinite(raw[1])):
        return None
    return raw[0], float(raw[1])


def _is_feedback(raw: Any) -> bool:
    """Whether ``raw`` is a persisted :class:`Feedback` the service can send."""
    return (isinstance(raw, dict) and {"kind", "action_id", "status"} <= set(raw)
            and raw["kind"] in ("deploymentBase", "cancelAction") and isinstance(raw["action_id"], str)
            and isinstance(raw["status"], dict))


def _current(status: str) -> str:
    """A status as ``reported`` holds it now: an earlier version's ``CANCELED`` is
    ``FINISHED_CANCELED`` (so that its action is still taken for ended)."""
    return Status.FINISHED_CANCELED.value if status == EARLIER_CANCELED else status
