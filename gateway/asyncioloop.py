"""The asyncio loop under Twisted's asyncio reactor, for the few places that use it directly."""

from __future__ import annotations

import asyncio
from typing import Any


def event_loop(reactor: Any) -> asyncio.AbstractEventLoop | None:
    """The asyncio loop ``reactor`` runs on, or ``None`` for any other reactor (test clocks).

    Twisted keeps it in a private attribute of ``AsyncioSelectorReactor``; this is the one
    place that reads it. Uses: amqtt runs on it, and ``call_soon``/``call_soon_threadsafe``
    on it skip the ``callLater(0)`` that the reactor's own ``callFromThread`` adds.
    """
    loop = getattr(reactor, "_asyncioEventloop", None)
    return loop if isinstance(loop, asyncio.AbstractEventLoop) else None
