"""The ingest's ``Site``: imported by the first connection to the device API (gateway.lazysite)."""

from __future__ import annotations

from typing import Any

from twisted.web.server import Site


class QuietSite(Site):
    """A Site without an access log line per request (a write per second per app adds up)."""

    def log(self, request: Any) -> None:
        """Log nothing."""
