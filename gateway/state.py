"""The state directory: created (mode 0750) before any service that keeps state starts."""

from __future__ import annotations

import os
from pathlib import Path

from twisted.application.service import Service
from twisted.logger import Logger

from gateway.errors import GatewayError


class StateDirService(Service):
    """Makes sure the state directory exists and is writable.

    :param path: the state directory.
    """

    name = "state"  # type: ignore[assignment]
    log = Logger()

    def __init__(self, path: Path) -> None:
        self.path = path

    def startService(self) -> None:
        """Create the directory; fail clearly when that is impossible."""
        super().startService()
        try:
            self.path.mkdir(mode=0o750, parents=True, exist_ok=True)
        except OSError as exc:
            raise GatewayError(f"cannot create the state directory {self.path}: {exc.strerror or exc}") from exc
        if not os.access(self.path, os.W_OK | os.X_OK):
            raise GatewayError(f"the state directory {self.path} is not writable")
        self.log.info("state under {path}", path=str(self.path))

