"""The log of the changes to the shadows behind: ``shadows-behind.log``, appended a record at a time.

Each change (a shadow marked behind, or its mark dropped) is one line,
``<CRC-32 of the JSON, 8 hex digits> <JSON>\\n``: ``{"shadow": s, "thing": t, "since": x}``
marks ``s``, ``{"shadow": s}`` drops its mark; a shadow's last line says its state. A line
not whole, or whose CRC does not match (a write torn by a crash or a power cut), ends the
log: it and what follows are ignored, and cut off before the next append.

The functions here that touch the disk block: they run off the reactor thread.
"""

from __future__ import annotations

import json
import math
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway import jsontext
from gateway.filelayer import OSFiles

#: The log's name, in the twin's directory (beside ``shadows-behind.json``).
LOG_FILE = "shadows-behind.log"


@dataclass(frozen=True)
class BehindMark:
    """A shadow the cloud is behind on.

    :param thing: the twin's thing the shadow is of.
    :param since: when a request of it was first refused since it was last up to date
        (seconds since the epoch).
    """

    thing: str
    since: float


def valid_mark(mark: Any) -> bool:
    """Whether ``mark`` (decoded JSON) is a mark as the files hold it: ``{"thing": <str>,
    "since": <number>}``, a finite number a float holds (other keys are ignored)."""
    if not (isinstance(mark, dict) and isinstance(mark.get("thing"), str) and type(mark.get("since")) in (int, float)):
        return False
    try:
        return math.isfinite(mark["since"])
    except OverflowError:  # (an integer too large for a float)
        return False


def encode(shadow: str, mark: BehindMark | None) -> bytes:
    """The log's record of ``shadow``'s state: marked ``mark``, or not behind (``None``)."""
    value: dict[str, Any] = {"shadow": shadow}
    if mark is not None:
        value.update(thing=mark.thing, since=mark.since)
    body = json.dumps(value, separators=(",", ":")).encode()
    return b"%08x %s\n" % (zlib.crc32(body), body)


@dataclass(frozen=True)
class Replayed:
    """What :func:`replay` found in a log.

    :param size: the bytes of its whole records (where the next append goes).
    :param records: how many whole records.
    :param ignored: the bytes after them (a torn tail), ignored.
    """

    size: int
    records: int
    ignored: int


def replay(data: bytes, marks: dict[str, BehindMark]) -> Replayed:
    """Apply the records of the log ``data`` to ``marks``, in order, up to the first that is
    not whole or not valid."""
    size = records = 0
    while True:
        end = data.find(b"\n", size)
        if end < 0:
            break
        line = data[size:end]
        try:
            value = jsontext.loads(line[9:]) if line[8:9] == b" " and int(line[:8], 16) == zlib.crc32(line[9:]) else None
        except ValueError:
            value = None
        if not isinstance(value, dict) or not isinstance(value.get("shadow"), str):
            break
        if "thing" not in value:
            marks.pop(value["shadow"], None)
        elif valid_mark(value):
            marks[value["shadow"]] = BehindMark(value["thing"], float(value["since"]))
        else:
            break
        size, records = end + 1, records + 1
    return Replayed(size, records, len(data) - size)


def read(path: Path) -> bytes:
    """The log's bytes (none when there is no log)."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return b""


def append(path: Path, data: bytes, size: int) -> int:
    """Append ``data`` to the log whose whole records end at ``size`` (what is after, a torn
    tail or a failed append's part, is cut off first), and fsync it; returns the new size. A
    log shorter than ``size`` (emptied by a compaction whose fsync failed, or removed) is
    appended to where it ends: lengthened to ``size``, its gap of zeros would hide every
    record after it."""
    files = OSFiles(0o644)
    name = str(path)
    created = not files.exists(name)
    try:
        end = 0 if created else files.size(name)
        if end > size:
            files.truncate(name, size)
            end = size
        files.append_sync(name, data)
    finally:
        files.close(name)
    if created:
        files.fsync_dir(str(path.parent))
    return end + len(data)


def empty(path: Path) -> None:
    """Cut the log to nothing, durably (its records are in the snapshot now)."""
    fd = os.open(path, os.O_WRONLY)
    try:
        os.ftruncate(fd, 0)
        os.fsync(fd)
    finally:
        os.close(fd)
