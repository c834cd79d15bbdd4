"""Loss accounting: every record a stream dropped, expired, rejected or found corrupt.

Entries are kept durably (``losses.json`` in the stream directory, written
atomically) until the link that reports them upstream clears them. The same file keeps
the wall clock's steps seen while the stream's records were received, so that their
ages (and ``max_age_s``) are counted on the clock as it is now, after a restart too.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal, get_args

from gateway import jsontext
from gateway.journal.cursors import runs_outside, union_runs
from gateway.journal.record import MAX_SEQ

LossReason = Literal["max-bytes", "max-age", "min-free-disk", "rejected", "corrupt", "torn", "write-failed",
                     "over-cloud-limit", "refused-by-cloud", "dropped"]
_REASONS = frozenset(get_args(LossReason))
#: The reasons of losses a reader counts as it passes the records (a link skipping them, or
#: counting what its cloud refused): its cursor moves past them only later, so a crash in
#: between makes it meet them again (see :attr:`LossLedger.passed`).
PASSED_REASONS = frozenset({"over-cloud-limit", "refused-by-cloud"})
#: Entries kept before the oldest ones are merged by reason.
MAX_ENTRIES = 1000


@dataclass(frozen=True)
class LossEntry:
    """Records a stream lost for one reason, with their seq and time ranges.

    :param reason: why: ``max-bytes``, ``max-age``, ``min-free-disk`` (drop-oldest
        deleted them), ``rejected`` (reject-new refused them; seqs are 0),
        ``corrupt`` (bit rot found by a reader or on open), ``torn`` (an
        unacknowledged write cut by a crash), ``write-failed`` (an interval/none
        append whose write failed after it was acknowledged), ``over-cloud-limit``
        (records a link did not send because its cloud would refuse them:
        :mod:`gateway.links.cloudlimits`; or that an HTTP link's cloud refused as too large),
        ``refused-by-cloud`` (records an HTTP link's cloud refused for good, with a status
        that says sending them again cannot help: :mod:`gateway.links.httprefusals`),
        ``dropped`` (records its cursors had not acknowledged when the operator dropped the
        whole stream, with ``force``: :meth:`gateway.journal.service.JournalService.drop`).
    :param records: how many records.
    :param bytes: how many bytes of segment data.
    :param first_seq: first seq lost (0 when unknown, or when no record was lost: a
        ``torn`` tail counts bytes only).
    :param last_seq: last seq lost (0 likewise).
    :param first_time: earliest received time involved (0.0 when unknown).
    :param last_time: latest received time involved (0.0 when unknown).
    :param noted_at: when the journal noted the loss.
    """

    reason: LossReason
    records: int
    bytes: int
    first_seq: int
    last_seq: int
    first_time: float
    last_time: float
    noted_at: float


def _entry(saved: Any) -> LossEntry:
    """The :class:`LossEntry` saved as ``saved`` by :meth:`LossLedger.dump`.

    :raises TypeError: a field is missing or unknown.
    :raises ValueError: a field has the wrong type (a report's totals add them up), or a time is
        no finite number (the report goes upstream as JSON, which holds no ``NaN``).
    """
    entry = LossEntry(**saved)
    counts = (entry.records, entry.bytes, entry.first_seq, entry.last_seq)
    times = (entry.first_time, entry.last_time, entry.noted_at)
    if (entry.reason not in _REASONS or any(type(n) is not int for n in counts)
            or any(type(t) not in (int, float) or not math.isfinite(t) for t in times)):
        raise ValueError(f"not a loss entry: {saved!r}")
    return entry


def _clock(saved: Any) -> tuple[str, float, int] | None:
    """:attr:`LossLedger.clock` as :meth:`LossLedger.dump` saved it; None when it is not that
    (absent before it was kept, or damaged: then the records kept count as received on
    another clock, and a step moves the newer ones only)."""
    if not (isinstance(saved, list) and len(saved) == 3):
        return None
    boot, offset, since = saved
    if not isinstance(boot, str) or type(offset) not in (int, float) or type(since) is not int \
            or not math.isfinite(offset):
        return None
    return boot, float(offset), since


@dataclass(frozen=True)
class LossReport:
    """Losses not yet cleared, and totals by reason, for a link to send upstream.

    :param stream: the stream's name.
    :param entries: the losses, oldest first.
    :param totals: records lost by reason over ``entries``.
    """

    stream: str
    entries: tuple[LossEntry, ...]
    totals: dict[str, int]


class LossLedger:
    """The loss entries of one stream, in memory and (via :meth:`dump`) on disk.

    :param entries: the losses, oldest first.
    :param reported: what the link last queued upstream (its own key for a report), or None.
    :param damage: where the damaged stretches already counted are (see :meth:`counted`).
    :param steps: the wall clock's steps, ``(seq, seconds)`` each, in seq order: the received
        time of each record before ``seq`` is off by ``seconds`` (see :meth:`note_step` and
        :meth:`stepped_since`).
    :param passed: the runs of seqs counted lost as a reader passed them (see :attr:`passed`).
    :param dropped_below: every seq below it was dropped by the limits (see :attr:`dropped_below`).
    :param skipped: the runs of seqs counted lost that no record holds (see :attr:`skipped`).
    """

    def __init__(self, entries: list[LossEntry] | None = None, reported: str | None = None,
                 damage: set[tuple[int, int]] | None = None,
                 steps: list[tuple[int, float]] | None = None,
                 passed: list[tuple[int, int]] | None = None, dropped_below: int = 0,
                 skipped: list[tuple[int, int]] | None = None) -> None:
        self.entries: list[LossEntry] = entries or []
        self.reported = reported
        #: ``(segment's first seq, offset)`` of each damaged stretch counted, kept (also once
        #: its entry is cleared) in the same atomic write as its entry, so that a stretch found
        #: again (a reader that had not passed it before a crash, the tail scanned at every
        #: open) is never counted twice, nor lost uncounted.
        self.damage: set[tuple[int, int]] = damage or set()
        self.steps: list[tuple[int, float]] = steps or []
        #: The wall clock the newest records were received on: its boot's id, its offset from
        #: that boot's clock (wall minus boot seconds) and the first seq received on it (see
        #: :meth:`note_clock`); None: not known.
        self.clock: tuple[str, float, int] | None = None
        #: ``(first, last)`` runs of seqs counted for a :data:`PASSED_REASONS` reason, in order,
        #: apart from each other, kept in the same atomic write as their entries until every
        #: cursor's save has passed them (:meth:`forget_passed_to`): a crash before that save
        #: makes the reader meet them again, and they are not counted twice.
        self.passed: list[tuple[int, int]] = passed or []
        #: The seq below which the limits dropped every record, written (with the drop's loss
        #: entry) before a dropped segment's file is deleted: a crash or power cut before that
        #: deletion is durable leaves the file, which the next open deletes instead of sending
        #: its records again or counting its drop twice (0: none dropped).
        self.dropped_below = dropped_below
        #: ``(first, last)`` runs of seqs counted lost that no record holds, in order, apart from
        #: each other: those counted ``write-failed`` (appends acknowledged under ``sync:
        #: interval`` or ``none`` whose write failed) and those a damaged stretch cost
        #: (``corrupt``). The stream gives them to no other record (it numbers on past them,
        #: after a restart too), a reader neither returns a record found under them (one a
        #: failed undo left) nor counts their gap as damage, and neither a drop nor a cursor's
        #: backlog counts them again. Kept in the same atomic write as their entry, until every
        #: cursor's save has passed them.
        self.skipped: list[tuple[int, int]] = skipped or []
        #: True when entries changed since the last :meth:`dump`.
        self.dirty = False
        #: Why the saved ledger this one replaces could not be read (``None``: it could, or
        #: there was none); see :meth:`load`.
        self.unreadable: str | None = None

    @classmethod
    def load(cls, data: bytes | str | None) -> LossLedger:
        """A ledger from :meth:`dump` output (``None``, no saved ledger: empty). Saved data
        that holds no ledger, or why the saved one could not be read (a string), gives an
        empty one too, with :attr:`unreadable` saying why and :attr:`dirty` set, so that a
        readable ledger replaces it with the next write."""
        if data is None:
            return cls()
        if isinstance(data, str):
            return cls._unreadable(data)
        try:
            saved = jsontext.loads(data)
            reported = saved.get("reported")
            damage = {(int(segment), int(offset)) for segment, offset in saved.get("damage", ())}  # (not before)
            steps = [(int(seq), float(step)) for seq, step in saved.get("steps", ())]  # (not before either)
            passed = union_runs((int(first), int(last)) for first, last in saved.get("passed", ()))  # (nor this)
            dropped_below = int(saved.get("dropped_below", 0))  # (nor this)
            skipped = union_runs((int(first), int(last)) for first, last in saved.get("skipped", ()))  # (nor this)
            if dropped_below > MAX_SEQ or skipped and skipped[-1][1] >= MAX_SEQ:  # (the stream numbers on from them)
                raise ValueError(f"a seq past the largest a record holds ({MAX_SEQ})")
            if not all(math.isfinite(step) for _, step in steps):  # (NaN: every age NaN, and none expired)
                raise ValueError(f"a step of the clock that is no number of seconds: {steps}")
            ledger = cls([_entry(e) for e in saved["entries"]], reported if isinstance(reported, str) else None,
                         damage, steps, passed, dropped_below, skipped)
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:  # (int(1e400): OverflowError)
            return cls._unreadable(f"{type(exc).__name__}: {exc}")
        ledger.clock = _clock(saved.get("clock"))
        return ledger

    @classmethod
    def _unreadable(cls, why: str) -> LossLedger:
        """An empty ledger replacing a saved one that could not be used, for ``why``."""
        ledger = cls()
        ledger.unreadable = why
        ledger.dirty = True
        return ledger

    def dump(self) -> bytes:
        """The ledger serialised for :func:`gateway.filelayer.write_atomic`."""
        self.dirty = False
        saved: dict[str, object] = {"entries": [asdict(e) for e in self.entries]}
        if self.reported is not None:
            saved["reported"] = self.reported
        if self.damage:
            saved["damage"] = sorted(self.damage)
        if self.steps:
            saved["steps"] = self.steps
        if self.passed:
            saved["passed"] = self.passed
        if self.dropped_below:
            saved["dropped_below"] = self.dropped_below
        if self.skipped:
            saved["skipped"] = self.skipped
        if self.clock is not None:
            saved["clock"] = self.clock
        return json.dumps(saved).encode()

    def note_dropped_below(self, seq: int) -> None:
        """The limits dropped every record below ``seq`` (:attr:`dropped_below`): kept with the
        ledger's next write. (Not a write of its own: a drop that counts a loss writes the
        ledger at once, and a segment every cursor had acknowledged that comes back loses nothing.)"""
        self.dropped_below = max(self.dropped_below, seq)

    def note_step(self, next_seq: int, step: float, since: int = 0) -> None:
        """The wall clock stepped by ``step`` seconds before record ``next_seq`` was received:
        the received times of the records from ``since`` to it, received on the clock before
        the step, are off by ``step`` (those before ``since`` were received on another clock,
        before a reboot or before a step made while the gateway was stopped: not moved). Kept
        as two entries, ``step`` before ``next_seq`` and ``-step`` before ``since``, which a
        ledger of a gateway that knows no ``since`` reads the same."""
        self._add_step(next_seq, step)
        if since > 0:
            self._add_step(since, -step)
        self.dirty = True

    def _add_step(self, seq: int, step: float) -> None:
        for n, (first, seconds) in enumerate(self.steps):
            if first == seq:
                if seconds + step == 0.0:
                    del self.steps[n]
                else:
                    self.steps[n] = (seq, seconds + step)
                return
        self.steps.append((seq, step))
        self.steps.sort()

    def note_clock(self, boot: str, offset: float, since: int) -> None:
        """The newest records are received on the wall clock that reads ``offset`` seconds more
        than boot ``boot``'s clock, from record ``since`` on (:attr:`clock`)."""
        if self.clock != (boot, offset, since):
            self.clock = (boot, offset, since)
            self.dirty = True

    def stepped_since(self, seq: int) -> float:
        """Seconds the wall clock stepped since record ``seq`` was received (on the clock it was
        received on): add them to its received time to have that time on the clock as it reads now."""
        return sum(step for first, step in self.steps if seq < first)

    def keep_steps_from(self, first_seq: int) -> None:
        """Forget the steps before every record kept (``first_seq``: the oldest one's seq)."""
        kept = [entry for entry in self.steps if entry[0] > first_seq]
        if len(kept) != len(self.steps):
            self.steps = kept
            self.dirty = True

    def counted(self, where: tuple[int, int], lost: tuple[int, int] | None = None) -> bool:
        """Whether the damaged stretch at ``where`` (segment's first seq, offset) is counted.

        :param lost: the first and last seq the stretch cost, if it cost records. A gateway
            older than :attr:`damage` counted a stretch without noting where it was: such a
            stretch is known by its ``corrupt`` entry of exactly those seqs (no other stretch
            can cost them), and :attr:`damage` keeps it from then on.
        """
        if where in self.damage:
            return True
        if lost is None or not any(e.reason == "corrupt" and (e.first_seq, e.last_seq) == lost
                                   for e in self.entries):
            return False
        self.damage.add(where)
        self.dirty = True
        return True

    def keep_damage_in(self, segments: Iterable[int]) -> None:
        """Forget where the damage counted in segments that are gone (``segments``: the
        first seqs of those left); seqs only grow, so no later segment has their names."""
        live = set(segments)
        self.damage = {where for where in self.damage if where[0] in live}

    def note(self, entry: LossEntry, where: tuple[int, int] | None = None) -> int:
        """Record ``entry``, merging it into the last one when it continues it.

        An entry of a :data:`PASSED_REASONS` reason (its ``records`` the seqs from
        ``first_seq`` to ``last_seq``) counts only the seqs not counted so before
        (:attr:`passed`): none, or one entry per run of the others, which share its bytes
        by records (and keep its times).

        :param where: the damaged stretch it counts (see :meth:`counted`), if it is one.
        :returns: the records counted.
        """
        if entry.reason in PASSED_REASONS and entry.first_seq:
            return self._note_passed(entry)
        if where is not None:
            self.damage.add(where)
        self._add(entry)
        return entry.records

    def _note_passed(self, entry: LossEntry) -> int:
        """:meth:`note` for records a reader passed, less those counted before."""
        whole = (entry.first_seq, entry.last_seq)
        runs = runs_outside(entry.first_seq, entry.last_seq, self.passed)
        span = entry.last_seq - entry.first_seq + 1
        for first, last in runs:
            n = last - first + 1
            self._add(entry if n == span else replace(entry, records=n, bytes=entry.bytes * n // span,
                                                      first_seq=first, last_seq=last))
        self.passed = union_runs([*self.passed, whole])
        return sum(last - first + 1 for first, last in runs)

    def forget_passed_to(self, floor: int) -> None:
        """Every cursor's save has passed seq ``floor``: forget the seqs up to it in
        :attr:`passed` and :attr:`skipped` (no reader meets them again). Written with the next change."""
        if self.passed and self.passed[0][0] <= floor:
            self.passed = [(max(first, floor + 1), last) for first, last in self.passed if last > floor]
        if self.skipped and self.skipped[0][0] <= floor:
            self.skipped = [(max(first, floor + 1), last) for first, last in self.skipped if last > floor]

    def note_skipped(self, first: int, last: int) -> None:
        """Seqs ``first`` to ``last`` are counted ``write-failed`` or ``corrupt``: no record
        holds them (:attr:`skipped`). Written with the next write, with their entry."""
        self.skipped = union_runs([*self.skipped, (first, last)])
        self.dirty = True

    def not_skipped(self, lost: tuple[int, int] | None) -> list[tuple[int, int]]:
        """The runs of the seqs ``lost`` (first, last; None: none) that are not :attr:`skipped`:
        a damaged stretch that holds a record a failed undo left costs only the others."""
        return runs_outside(*lost, self.skipped) if lost is not None else []

    def is_skipped(self, seq: int) -> bool:
        """Whether ``seq`` is among the :attr:`skipped` seqs."""
        return any(first <= seq <= last for first, last in self.skipped)

    def next_past_skipped(self, next_seq: int) -> int:
        """The stream's next seq at its open, ``next_seq`` being the one its segments (and
        :meth:`keep_dropped_below`) give: past every :attr:`skipped` seq, which a power cut
        under ``sync: interval`` or ``none`` can leave above the last record on disk."""
        return max(next_seq, self.skipped[-1][1] + 1) if self.skipped else next_seq

    def keep_passed_below(self, next_seq: int) -> None:
        """Forget the seqs from ``next_seq`` on in :attr:`passed`: the stream gives them to
        new records (a power cut took records written and not fsynced)."""
        if self.passed and self.passed[-1][1] >= next_seq:
            self.passed = [(first, min(last, next_seq - 1)) for first, last in self.passed if first < next_seq]

    def keep_dropped_below(self, next_seq: int) -> int:
        """The stream's next seq at its open, ``next_seq`` being the one its segments give.

        When :attr:`dropped_below` is above ``next_seq`` and an entry counts seqs from
        ``next_seq`` on, a power cut took dropped records that were written but not fsynced
        (``sync: interval`` or ``none``): the mark stays and the stream numbers on from it,
        so that no new record takes a seq the ledger counts dropped. With no such entry the
        segments it spoke of were removed from outside: the mark is forgotten (written with
        the next write), and the seqs from ``next_seq`` on go to new records.
        """
        if self.dropped_below <= next_seq:
            return next_seq
        if any(e.last_seq >= next_seq for e in self.entries if e.reason not in PASSED_REASONS):
            return self.dropped_below
        self.dropped_below, self.dirty = 0, True
        return next_seq

    def _add(self, entry: LossEntry) -> None:
        """Append ``entry`` (merged with the last entry when both are ``rejected``)."""
        last = self.entries[-1] if self.entries else None
        if last is not None and last.reason == entry.reason == "rejected":
            entry = LossEntry(
                "rejected",
                last.records + entry.records,
                last.bytes + entry.bytes,
                0,
                0,
                min(last.first_time, entry.first_time),
                max(last.last_time, entry.last_time),
                entry.noted_at,
            )
            self.entries[-1] = entry
        else:
            self.entries.append(entry)
        if len(self.entries) > MAX_ENTRIES:
            self._merge_oldest()
        self.dirty = True

    def _merge_oldest(self) -> None:
        """Fold the oldest entry that has a later one of the same reason into it."""
        for i, a in enumerate(self.entries):
            j = next((j for j in range(i + 1, len(self.entries)) if self.entries[j].reason == a.reason), None)
            if j is None:
                continue
            b = self.entries.pop(j)
            self.entries[i] = LossEntry(
                a.reason,
                a.records + b.records,
                a.bytes + b.bytes,
                a.first_seq or b.first_seq,
                max(a.last_seq, b.last_seq),
                a.first_time or b.first_time,
                max(a.last_time, b.last_time),
                b.noted_at,
            )
            return

    def report(self, stream: str) -> LossReport:
        """The current :class:`LossReport`."""
        totals: dict[str, int] = {}
        for e in self.entries:
            totals[e.reason] = totals.get(e.reason, 0) + e.records
        return LossReport(stream, tuple(self.entries), totals)

    def clear(self, report: LossReport) -> None:
        """Forget the entries of ``report`` (they were delivered upstream)."""
        n = len(report.entries)
        if self.entries[:n] == list(report.entries):
            del self.entries[:n]
        else:
            self.entries = [e for e in self.entries if e not in report.entries]
        self.dirty = True
