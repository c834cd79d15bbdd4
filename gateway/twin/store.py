"""The twin's things in memory and on disk: one JSON file, replaced atomically on every change.

Changes are applied in memory at once and written by a coalescing writer: while one write
is running, later changes wait and go together in the next. A change is acknowledged
(response, event, shadow sync) only once a write that holds it is durable. Each thing's
JSON is kept from one write to the next until the thing changes, so a write encodes only
the things changed since the last (the file is rewritten whole all the same).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.atomic import read_json, set_aside, write_parts_atomically
from gateway.blocking import RunBlocking
from gateway.clockstep import WallClock, steady_seconds
from gateway.degraded import Failing

#: Revisions of deleted things kept at most: a thing created again goes on from its revision
#: while it is kept; past this the things deleted longest ago are forgotten (created again,
#: they start from 1), so that ever new thing ids do not grow the twin without end.
MAX_DELETED_REVISIONS = 10_000


def encode_thing(thing: dict[str, Any]) -> bytes:
    """One thing's JSON as ``things.json`` holds it (ASCII: its length is the thing's size,
    which ``twin.max_thing_bytes`` bounds)."""
    return json.dumps(thing, sort_keys=True).encode()


def _entry(thing_id: str, encoded: bytes) -> bytes:
    """One thing's ``"<id>": {...}`` in ``things.json``, from its :func:`encode_thing` bytes."""
    return json.dumps(thing_id).encode() + b": " + encoded


def _null_non_finite(value: Any, path: str = "") -> list[str]:
    """Replace every ``NaN``, ``Infinity`` and ``-Infinity`` in the JSON ``value`` (its objects
    and arrays changed in place) by ``null``, as JavaScript's ``JSON.stringify`` does: no JSON
    holds them (AWS IoT refuses a shadow update that does, for good).

    :param path: where ``value`` is (a JSON pointer; ``""``: the top).
    :returns: ``"<pointer> (<value>)"`` of each replaced, sorted.
    """
    found: list[str] = []
    stack: list[tuple[Any, str]] = [(value, path)]
    while stack:
        item, at = stack.pop()
        keys = item.keys() if isinstance(item, dict) else range(len(item)) if isinstance(item, list) else ()
        for key in keys:
            inner = item[key]
            where = f"{at}/{str(key).replace('~', '~0').replace('/', '~1')}"
            if isinstance(inner, float) and not math.isfinite(inner):
                found.append(f"{where} ({json.dumps(inner)})")
                item[key] = None
            elif isinstance(inner, (dict, list)):
                stack.append((inner, where))
    return sorted(found)


def _revision(value: Any) -> int:
    """A thing's revision as ``things.json`` holds it: a whole number (``3``, or ``3.0``).

    :raises ValueError: for another value (``1.5`` was taken as 1, ``true`` as 1: a revision
        the twin had never given, and its events' order with it).
    :raises OverflowError: for ``Infinity``.
    """
    if type(value) is int or (type(value) is float and value.is_integer()):
        return int(value)
    if type(value) is float and math.isinf(value):
        raise OverflowError(f"a revision is a whole number, not {value}")
    raise ValueError(f"a revision is a whole number, not {json.dumps(value)}")


class TwinStore:
    """Things by id, each with its revision, persisted to ``path``.

    :param path: the JSON file (``<state_dir>/twin/things.json``).
    :param run_blocking: runs the file writes (a thread pool in the gateway).
    :param clock: the clock: the time of day (when writes began to fail) and steady time
        (how long a write took).
    """

    log = Logger()

    def __init__(self, path: Path, run_blocking: RunBlocking, clock: WallClock) -> None:
        self.path = path
        self.run_blocking = run_blocking
        self.clock = clock
        #: While writes fail (a full or read-only disk): why, since when, how many.
        self.failing = Failing()
        #: The last write that worked: its seconds (hand-over to the thread to durable) and bytes.
        self.last_write: tuple[float, int] | None = None
        self.things: dict[str, dict[str, Any]] = {}
        self.revisions: dict[str, int] = {}
        self._deleted: dict[str, None] = {}  # deleted things whose revision is kept, oldest first
        #: each thing's ``"<id>": {...}`` as the last write encoded it, until :meth:`bump` says it
        #: changed (a deleted thing is bumped too)
        self._encoded: dict[str, bytes] = {}
        self._writing = False
        self._waiting: list[Deferred[None]] = []
        self._before_next: list[Deferred[None]] = []  # what the next write waits for (:meth:`write_after`)
        #: whether the last write failed: changes in memory that are not on disk yet
        self._unsaved = False

    def load(self) -> Deferred[None]:
        """Read the file (nothing yet: no things). A file the twin cannot use (unreadable, not
        JSON, not a twin file) is logged and moved aside to ``things.json.damaged``: the twin
        starts without those things rather than keeping the whole gateway from starting."""
        return self.run_blocking(self._read).addCallback(self._loaded)

    def _read(self) -> tuple[dict[str, Any], dict[str, int], dict[str, list[str]]] | str | None:
        """Blocking: the file's things and revisions, and the values no JSON holds (``NaN``,
        ``Infinity``: older versions stored them) set to null in them, by thing (see
        :meth:`_loaded`); None when there is no file; what is wrong with it (and where it
        went) when it cannot be used."""
        try:
            data = read_json(self.path)
            if data is None:
                return None
            if (not isinstance(data, dict) or not isinstance(data.get("things"), dict)
                    or not isinstance(data.get("revisions"), dict)
                    or not all(isinstance(thing, dict) for thing in data["things"].values())):
                raise ValueError("not a twin file (no things and revisions)")
            revisions = {str(key): _revision(value) for key, value in data["revisions"].items()}
            mended = {thing_id: paths for thing_id, thing in data["things"].items()
                      if (paths := _null_non_finite(thing))}
            return data["things"], revisions, mended
        except (OSError, ValueError, TypeError, OverflowError) as exc:  # (int(Infinity): OverflowError)
            return f"{exc}; {set_aside(self.path)}"

    def _loaded(self, read: tuple[dict[str, Any], dict[str, int], dict[str, list[str]]] | str | None) -> None:
        if isinstance(read, str):
            self.log.error("twin: unusable {path} ({problem}); the twin starts without its things",
                           path=str(self.path), problem=read)
        elif read is not None:
            self.things, self.revisions, mended = read
            self._encoded.clear()
            self._deleted = dict.fromkeys(t for t in self.revisions if t not in self.things)
            self._forget_deleted()
            self._tell_mended(mended)

    def _tell_mended(self, mended: dict[str, list[str]]) -> None:
        """Values no JSON holds (``NaN``, ``Infinity``: an older version stored them from
        commands this one refuses) were set to ``null``: kept, they went into every retrieve,
        event and shadow update of their thing, which AWS IoT refuses for good. Told once, a
        warning per thing naming each path and its value, and written at once (at the next start
        they are ``null``; a write the disk refuses is logged, and the next start tells them again).

        :param mended: ``"<pointer> (<value>)"`` of each value set to null, by thing.
        """
        for thing_id, paths in mended.items():
            self.log.warn("twin: thing {thing} in {path} held values that are no JSON, set to null (stored by an"
                          " older version; AWS IoT and the twin's events take no NaN or Infinity): {values}",
                          thing=thing_id, path=str(self.path), values=", ".join(paths))
        if mended:
            self.save().addErrback(self._mend_not_written)

    def _mend_not_written(self, failure: Failure) -> None:
        failure.trap(OSError)
        self.log.error("twin: cannot write {path} ({error}): the values set to null are null in memory, and"
                       " written with the next change the disk takes", path=str(self.path), error=str(failure.value))

    def bump(self, thing_id: str, encoded: bytes | None = None) -> int:
        """The thing's next revision (counted on past deletes too, so events stay ordered; of
        deleted things only the last :data:`MAX_DELETED_REVISIONS` are remembered).

        :param encoded: the changed thing's :func:`encode_thing` bytes, when the caller has
            them already (its size was checked): the next write takes them as they are.
        """
        revision = self.revisions.get(thing_id, 0) + 1
        self.revisions[thing_id] = revision
        if encoded is None:
            self._encoded.pop(thing_id, None)
        else:
            self._encoded[thing_id] = _entry(thing_id, encoded)
        self._deleted.pop(thing_id, None)
        if thing_id not in self.things:  # deleted: its revision is kept, within the bound
            self._deleted[thing_id] = None
            self._forget_deleted()
        return revision

    def _forget_deleted(self) -> None:
        while len(self._deleted) > MAX_DELETED_REVISIONS:
            oldest = next(iter(self._deleted))
            del self._deleted[oldest]
            del self.revisions[oldest]

    def write_after(self, ready: Deferred[None]) -> None:
        """Make the next write (which holds the changes made so far) wait for ``ready``: what
        must be durable before those changes are (it fires, with anything, once it is)."""
        self._before_next.append(ready)

    def save(self) -> Deferred[None]:
        """Write everything as it is now; fires once that is durable."""
        d: Deferred[None] = Deferred()
        self._waiting.append(d)
        if not self._writing:
            self._write()
        return d

    def flushed(self) -> Deferred[None]:
        """Fires once every change made so far is durable (at once when none is pending;
        after a failed write, once a new write holds them)."""
        if not self._writing and not self._waiting and not self._unsaved:
            return succeed(None)
        return self.save()

    def _write(self) -> None:
        self._writing = True
        waiters, self._waiting = self._waiting, []
        # json.dumps({"things": ..., "revisions": ...}, sort_keys=True), each thing from the cache
        encoded, things = self._encoded, self.things
        entries = []
        for thing_id in sorted(things):
            entry = encoded.get(thing_id)
            if entry is None:
                entry = encoded[thing_id] = _entry(thing_id, encode_thing(things[thing_id]))
            entries.append(entry)
        parts = [b'{"revisions": ', json.dumps(self.revisions, sort_keys=True).encode(), b', "things": {',
                 b", ".join(entries), b"}}"]

        before, self._before_next = self._before_next, []

        def done(result: Any, started: float) -> None:
            self._writing = False
            self._unsaved = isinstance(result, Failure)
            if isinstance(result, Failure):
                self.failing.failed("not-saved", result.getErrorMessage(), self.clock.seconds())
            else:
                self.failing.recovered()
                self.last_write = (steady_seconds(self.clock) - started, result)
            for d in waiters:
                if isinstance(result, Failure):
                    d.errback(result)
                else:
                    d.callback(None)
            if self._waiting:
                self._write()

        def write(_: Any) -> None:
            started = steady_seconds(self.clock)
            self.run_blocking(write_parts_atomically, self.path, parts).addBoth(done, started)

        if before:
            DeferredList(before, consumeErrors=True).addCallback(write)
        else:
            write(None)
