"""Times for people, in UTC (standard library only: ``gatewayctl`` shows them too)."""

from __future__ import annotations

import time


def utc_text(seconds: object) -> str:
    """``seconds`` since the epoch as a UTC time (``2026-12-07T04:00:00Z``); ``-`` when it is
    no number (unknown)."""
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool):
        return "-"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))
