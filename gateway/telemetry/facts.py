"""Gathering system facts section by section: one failure is recorded, the rest still comes.

Blocking (``/proc``, ``statvfs``): report builders run these in a thread.
"""

from __future__ import annotations

from typing import Any, Callable


class Sections:
    """Builds a report's sections; a section that raises becomes ``None`` plus an error line.

    :ivar errors: ``"<section>: <what went wrong>"``, in the order met.
    """

    def __init__(self) -> None:
        self.errors: list[str] = []

    def take(self, name: str, build: Callable[[], Any], default: Any = None) -> Any:
        """``build()``, or ``default`` with the error noted when it raises."""
        try:
            return build()
        except Exception as exc:  # a report must go out with what it has: every failure is named
            self.errors.append(f"{name}: {type(exc).__name__}: {exc}")
            return default
