"""The ``commands:`` section: remote commands to the gateway and safe configuration changes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

from gateway.mqtt.topics import valid_topic

#: The least and the most seconds a change may wait for its confirmation: the range of
#: ``confirm_window`` and of the admin API's ``confirm_within``. Every other change is
#: refused while one waits, so a window of weeks would lock the configuration that long.
CONFIRM_WINDOW_RANGE = (1.0, 86400.0)


@dataclass(frozen=True)
class CommandsSettings:
    """How remote commands and configuration changes behave.

    :ivar confirm_window: seconds a remote ``config.set`` has for the cloud link(s) to come
        back up before the previous configuration is restored.
    """

    confirm_window: float = field(default=120.0, metadata={
        "min": CONFIRM_WINDOW_RANGE[0], "max": CONFIRM_WINDOW_RANGE[1],
        "doc": "seconds a remote config change has for the cloud link(s) to come back up, or it is reverted"})
    logs_max_bytes: int = field(default=65536, metadata={
        "min": 1024, "max": 1048576, "doc": "largest app.logs reply body (older lines are left out)"})
    report_topic: str = field(default="edge/gateway/config/lastChange", metadata={
        "doc": "local topic of configuration change reports (routed upstream like telemetry)"})

    def config_problems(self) -> Iterable[tuple[tuple[str, ...], str]]:
        """The reports are published on ``report_topic``: it must be a topic name."""
        if not valid_topic(self.report_topic):
            yield ("report_topic",), f"not a valid topic name: {self.report_topic!r}"
