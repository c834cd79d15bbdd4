"""Named read cursors of a stream and their durable form.

A cursor's durable state is the last seq its consumer acknowledged with every record
before it (``acked``), and the ranges of seqs acknowledged above it (``above``: a link
sending live data beside a backlog has those), in ``cursors/<name>.json`` written
atomically. Its read position lives only in memory: after a restart reading resumes
right after ``acked`` and skips the ``above`` ranges, so at most what was in flight (or
acknowledged since the last save) is delivered again and nothing is skipped.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from twisted.internet.defer import Deferred, DeferredLock

from gateway import jsontext
from gateway.filelayer import FileLayer, set_aside
from gateway.journal.segments import ReadPosition

_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,100}\Z")  # (\Z: "$" takes a name before a trailing newline)
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
    :param acked: last seq acknowledged with every seq before it (durable once ``saved``
        equals it).
    :param above: ``(first, last)`` ranges of seqs acknowledged above ``acked + 1``, in
        order, apart from each other.
    :param position: where the next read starts (None: right after ``acked``).
    """

    name: str
    acked: int
    above: list[tuple[int, int]] = field(default_factory=list)
    position: ReadPosition | None = None
    saved: int = -1
    #: Bumped by each change of ``acked`` or ``above``; ``saved_changes`` is the one on disk.
    changes: int = 0
    saved_changes: int = 0
    #: Bumped by a rewind, so a read in flight then does not move the position back.
    rewinds: int = 0
    saving: bool = False
    waiters: list[tuple[int, Deferred[None]]] = field(default_factory=list)
    lock: DeferredLock = field(default_factory=DeferredLock)

    def unacked(self, last_seq: int) -> int:
        """Records up to ``last_seq`` not acknowledged: after ``acked`` and not in ``above``."""
        return last_seq - self.acked - sum(last - first + 1 for first, last in self.above)

    def unacked_runs(self, first: int, last: int) -> list[tuple[int, int]]:
        """The ``(first, last)`` runs of seqs from ``first`` to ``last`` not acknowledged, in order."""
        return runs_outside(max(first, self.acked + 1), last, self.above)


def runs_outside(first: int, last: int, ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """The ``(first, last)`` runs of seqs from ``first`` to ``last`` in none of ``ranges`` (in
    order, apart from each other), in order."""
    runs: list[tuple[int, int]] = []
    start = first
    for low, high in ranges:
        if low > last:
            break
        if low > start:
            runs.append((start, low - 1))
        start = max(start, high + 1)
    if start <= last:
        runs.append((start, last))
    return runs


def cursor_path(directory: str, name: str) -> str:
    """The file that holds cursor ``name`` of the stream in ``directory``."""
    return os.path.join(directory, "cursors", name + SUFFIX)


def merge_ranges(acked: int, above: list[tuple[int, int]], more: Iterable[tuple[int, int]],
                 limit: int) -> tuple[int, list[tuple[int, int]]]:
    """``acked`` and ``above`` with the ranges ``more`` acknowledged too (none past ``limit``).

    :return: the new ``acked`` (a range starting right after it joins it) and ranges.
    """
    merged: list[tuple[int, int]] = []
    for first, last in sorted([*above, *more]):
        first, last = max(first, acked + 1), min(last, limit)
        if first > last:
            continue
        if merged and first <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], last))
        else:
            merged.append((first, last))
    while merged and merged[0][0] <= acked + 1:
        acked = max(acked, merged.pop(0)[1])
    return acked, merged


def union_runs(runs: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """The ``(first, last)`` runs of seqs in any of ``runs``, in order, apart from each other."""
    merged: list[tuple[int, int]] = []
    for first, last in sorted(runs):
        if merged and first <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], last))
        else:
            merged.append((first, last))
    return merged


def encode_cursor(acked: int, above: list[tuple[int, int]] | None = None) -> bytes:
    """The durable form of a cursor."""
    if above:
        return json.dumps({"acked": acked, "above": above}).encode()
    return json.dumps({"acked": acked}).encode()


def load_cursors(files: FileLayer, directory: str) -> tuple[dict[str, tuple[int, list[tuple[int, int]]]], dict[str, str]]:
    """Every cursor stored under ``directory`` as ``{name: (acked, above)}`` (blocking), and
    ``{name: why}`` for each of those whose file could not be read.

    A cursor file that cannot be parsed counts as acked 0 (re-deliver, never skip). One
    that cannot be read at all (a directory, a named pipe or a loop of symbolic links in its
    place) counts the same and is moved aside to ``<name>.json.damaged``, so the cursor's next save makes
    a fresh file (a rename over a directory fails).
    """
    cdir = os.path.join(directory, "cursors")
    files.makedirs(cdir)
    found: dict[str, tuple[int, list[tuple[int, int]]]] = {}
    unreadable = {}
    for entry in files.listdir(cdir):
        path = os.path.join(cdir, entry)
        if entry.endswith(".tmp"):
            files.unlink(path)
            continue
        if not entry.endswith(SUFFIX):
            continue
        name = entry[: -len(SUFFIX)]
        try:
            data = files.read(path, 0, 1 << 24)
        except OSError as exc:
            found[name] = (0, [])
            unreadable[name] = f"{type(exc).__name__}: {exc}; {set_aside(files, path)}"
            continue
        try:
            stored = jsontext.loads(data)
            acked = int(stored["acked"])
            above = [(int(first), int(last)) for first, last in stored.get("above", ())]
        except (ValueError, KeyError, TypeError, AttributeError, OverflowError) as exc:  # (int(1e400): OverflowError)
            acked, above = 0, []
            unreadable[name] = f"{type(exc).__name__}: {exc}"
        found[name] = (acked, above)
    return found, unreadable
