"""The nearest of a path and the directories above it that exists: what making the path would write in."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, TypeVar

T = TypeVar("T")


def nearest_existing(path: Path, look: Callable[[Path], T]) -> tuple[Path, T] | None:
    """The first of ``path`` and the directories above it that ``look`` finds (does not raise
    :class:`FileNotFoundError` for), with what it found; ``None`` when none is found, or when
    ``look`` fails otherwise on one (it cannot be told).

    :param path: where to start.
    :param look: looks at one path (``os.stat``, ``os.statvfs``).
    """
    for candidate in (path, *path.parents):
        try:
            return candidate, look(candidate)
        except FileNotFoundError:
            continue
        except OSError:
            return None
    return None
