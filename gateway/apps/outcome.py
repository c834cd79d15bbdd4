"""An install's outcome in one line, as the spool's log and ``gatewayctl apps install`` tell it."""

from __future__ import annotations


def outcome_line(outcome: str, message: str) -> str:
    """``<outcome>: <message>``, the outcome said once: a refusal's message begins with it
    already (``refused: ...``); other messages (``health check failed (1): unhealthy``) do not
    say whether the previous version runs again.

    :param outcome: ``installed``, ``refused``, ``failed`` or ``rolled-back``.
    :param message: the install result's message.
    """
    return message if message.startswith(f"{outcome}:") else f"{outcome}: {message}"
