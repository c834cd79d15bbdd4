"""Make one file unreadable to the code under test, as a file root owns is to the gateway's user.

The suite runs as root, for whom a file's mode refuses nothing: the refusal is injected.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase


def refuse_reading(test: SynchronousTestCase, path: Path) -> None:
    """Until ``test`` ends, opening or reading ``path`` (``os.open``, ``Path.read_bytes``,
    ``Path.read_text``) raises ``PermissionError`` (EACCES); every other file is read as usual."""
    real_open, real_bytes, real_text = os.open, Path.read_bytes, Path.read_text

    def refuse(candidate: Any) -> None:
        if Path(candidate) == path:
            raise PermissionError(errno.EACCES, "Permission denied", str(candidate))

    def refusing_open(candidate: Any, *args: Any, **kwargs: Any) -> int:
        refuse(candidate)
        return real_open(candidate, *args, **kwargs)

    def refusing_bytes(candidate: Path) -> bytes:
        refuse(candidate)
        return real_bytes(candidate)

    def refusing_text(candidate: Path, *args: Any, **kwargs: Any) -> str:
        refuse(candidate)
        return real_text(candidate, *args, **kwargs)

    test.patch(os, "open", refusing_open)
    test.patch(Path, "read_bytes", refusing_bytes)
    test.patch(Path, "read_text", refusing_text)
