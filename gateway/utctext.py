"""Times for people, in UTC (standard library only: ``gatewayctl`` shows them too)."""

from __future__ import annotations

import time


def utc_text(seconds: object) -> str:
    """``seconds`` since the epoch as a UTC time (``2026-12-07T04:00:00Z``); ``-`` when it is
    no number or no time the platform can write (unknown: ``1e20`` in a damaged run record)."""
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool):
        return "-"
    try:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))
    except (OverflowError, ValueError, OSError):  # (past time_t, NaN, a year gmtime refuses)
        return "-"
