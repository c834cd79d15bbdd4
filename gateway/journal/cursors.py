"""Named read cursors of a stream and their durable form.

A cursor's durable state is one number, the last seq its consumer acknowledged,
in ``cursors/<name>.json`` written atomically. Its read position lives only in
memory: after a restart reading resumes right after the acknowledged seq, so at
most what was in flight is delivered again and nothing is skipped.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field

from twisted.internet.defer import Deferred, DeferredLock

from gateway.journal.files import FileLayer
from gateway.journal.segments import ReadPosition

_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")
SUFFIX = ".json"


def check_name(name: str) -> str:
    """Return ``name`` if it is usable as a stream or cursor name, else raise ValueError."""
    if not _NAME.match(name) or name.startswith("."):
        raise ValueError(f"bad name {name!r}: use 1-100 of A-Z a-z 0-9 _ . - (no leading dot)")
    return name


@dataclass
class Cursor:
    """One consumer's place in a stream.

    :param name: the cursor's name.
    :param acked: last seq acknowledged (durable once ``saved`` equals it).
    :param position: where the next read starts (None: right after ``acked``).
    """

    name: str
    acked: int
    position: ReadPosition | None = None
    saved: int = -1
    #: Bumped by a rewind, so a read in flight then does not move the position back.
    rewinds: int = 0
    saving: bool = False
    waiters: list[tuple[int, Deferred[None]]] = field(default_factory=list)
    lock: DeferredLock = field(default_factory=DeferredLock)


def cursor_path(directory: str, name: str) -> str:
    """The file that holds cursor ``name`` of the stream in ``directory``."""
    return os.path.join(directory, "cursors", name + SUFFIX)


def encode_cursor(acked: int) -> bytes:
    """The durable form of a cursor."""
    return json.dumps({"acked": acked}).encode()


def load_cursors(files: FileLayer, directory: str) -> dict[str, int]:
    """Every cursor stored under ``directory`` as ``{name: acked}`` (blocking).

    A cursor file that cannot be parsed counts as acked 0 (re-deliver, never skip).
    """
    cdir = os.path.join(directory, "cursors")
    files.makedirs(cdir)
    found = {}
    for entry in files.listdir(cdir):
        path = os.path.join(cdir, entry)
        if entry.endswith(".tmp"):
            files.unlink(path)
            continue
        if not entry.endswith(SUFFIX):
            continue
        try:
            acked = int(json.loads(files.read(path, 0, 4096))["acked"])
        except (ValueError, KeyError, TypeError):
            acked = 0
        found[entry[: -len(SUFFIX)]] = acked
    return found
