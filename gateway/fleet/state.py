"""What the fleet channel must remember across restarts, persisted atomically in one file.

- ``outbox``: feedback not yet accepted by the server, in order (sent again after a restart);
- ``reported``: per action, the operation status last turned into feedback (so a step
  persisted by the update service just before a crash is still reported, once);
- ``cancels``: cancel requests waiting for their operation to end (action -> cancel id);
- ``canceled``: actions canceled before they started (never started later);
- ``config_hash``: the attributes last accepted by ``configData``;
- ``sw_version``: the version of the last deployment installed (reported as ``sw_version``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gateway.atomic import read_json, write_json_atomically


@dataclass
class Feedback:
    """One feedback message for the server.

    :param kind: ``deploymentBase`` or ``cancelAction``.
    :param action_id: the action (or cancel action) it is about.
    :param status: the DDI ``status`` object.
    """

    kind: str
    action_id: str
    status: dict[str, Any]


@dataclass
class FleetState:
    """The persisted state (see the module docstring)."""

    outbox: list[Feedback] = field(default_factory=list)
    reported: dict[str, str] = field(default_factory=dict)
    cancels: dict[str, str] = field(default_factory=dict)
    canceled: list[str] = field(default_factory=list)
    config_hash: str = ""
    sw_version: str = ""

    @classmethod
    def load(cls, path: Path) -> FleetState:
        """Read the state file; an absent one is an empty state.

        :raises ValueError: when the file is there but unreadable.
        """
        raw = read_json(path)
        if raw is None:
            return cls()
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: not a JSON object")
        try:
            return cls([Feedback(**f) for f in raw.get("outbox", [])], dict(raw.get("reported", {})),
                       dict(raw.get("cancels", {})), list(raw.get("canceled", [])), str(raw.get("config_hash", "")),
                       str(raw.get("sw_version", "")))
        except TypeError as error:
            raise ValueError(f"{path}: {error}") from error

    def save(self, path: Path) -> None:
        """Write atomically and durably (blocking: run it off the reactor)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomically(path, asdict(self))
