"""What a link needs from a journal stream, and an in-memory stream that provides it.

:class:`LinkStream` is the subset of the journal's ``Stream`` the links use (the real one
is ``gateway.journal.stream.Stream``); :class:`MemoryStream` keeps records in memory, for
tests and for running links without a journal.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Protocol

from twisted.internet.defer import Deferred, succeed


@dataclass(frozen=True)
class Record:
    """One routed message, as a link stream holds it (field-compatible with the journal's).

    :ivar topic: the cloud topic (already rewritten by the router).
    :ivar payload: the message bytes.
    :ivar qos: the QoS towards the cloud.
    :ivar retain: the retain flag.
    :ivar received: when the gateway received it (seconds since the epoch).
    :ivar headers: extra key/value pairs.
    :ivar seq: the stream's sequence number (set by the stream on append).
    """

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False
    received: float = 0.0
    headers: tuple[tuple[str, str], ...] = ()
    seq: int = 0


class LinkStream(Protocol):
    """The journal stream operations a link uses."""

    def append(self, record: Any) -> Deferred[int]:
        """Store ``record``; fires with its seq once durable (per the stream's sync policy)."""

    def cursor(self, name: str) -> Deferred[None]:
        """Create cursor ``name`` unless it exists."""

    def read(self, cursor: str, max_records: int = 1000, max_bytes: int = 1 << 20) -> Deferred[list[Any]]:
        """The next records for ``cursor`` (empty when none are there yet)."""

    def ack(self, cursor: str, seq: int) -> Deferred[None]:
        """Acknowledge every record up to ``seq``; fires once durable."""

    def wait(self, cursor: str) -> Deferred[None]:
        """Fire when ``cursor`` may have records to read."""

    def loss_report(self) -> Any:
        """Losses not yet cleared (``entries`` and ``totals``)."""


@dataclass(frozen=True)
class MemoryLossReport:
    """An empty loss report, shaped like the journal's."""

    stream: str
    entries: tuple[Any, ...] = ()
    totals: Any = None


class MemoryStream:
    """A :class:`LinkStream` in memory: appends are "durable" at once unless ``hold`` is set.

    :param name: the stream's name.
    """

    def __init__(self, name: str = "memory") -> None:
        self.name = name
        self.records: list[Record] = []
        self.acked: dict[str, int] = {}
        self.positions: dict[str, int] = {}
        self.hold = False
        self.held: list[tuple[Deferred[int], int]] = []
        self.losses: Any = MemoryLossReport(name)
        self._waiters: list[Deferred[None]] = []

    def append(self, record: Any) -> Deferred[int]:
        """Store ``record`` with the next seq (seqs start at 1)."""
        seq = len(self.records) + 1
        self.records.append(replace(record, seq=seq))
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(None)
        if self.hold:
            d: Deferred[int] = Deferred()
            self.held.append((d, seq))
            return d
        return succeed(seq)

    def release(self) -> None:
        """Make every held append durable."""
        held, self.held = self.held, []
        for d, seq in held:
            d.callback(seq)

    def cursor(self, name: str) -> Deferred[None]:
        """Create ``name`` at the start unless it exists."""
        self.acked.setdefault(name, 0)
        self.positions.setdefault(name, self.acked[name])
        return succeed(None)

    def read(self, cursor: str, max_records: int = 1000, max_bytes: int = 1 << 20) -> Deferred[list[Any]]:
        """Records after the cursor's read position."""
        start = self.positions[cursor]
        out: list[Record] = []
        size = 0
        for record in self.records[start:start + max_records]:
            if out and size + len(record.payload) > max_bytes:
                break
            out.append(record)
            size += len(record.payload)
        self.positions[cursor] = start + len(out)
        return succeed(out)

    def ack(self, cursor: str, seq: int) -> Deferred[None]:
        """Move the cursor's acknowledged seq forward."""
        self.acked[cursor] = max(self.acked[cursor], seq)
        return succeed(None)

    def rewind(self, cursor: str) -> None:
        """Read again from the record after the last acknowledged one (as after a restart)."""
        self.positions[cursor] = self.acked[cursor]

    def wait(self, cursor: str) -> Deferred[None]:
        """Fire when a record is appended (at once when unread ones exist)."""
        if self.positions[cursor] < len(self.records):
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._waiters.append(d)
        return d

    def loss_report(self) -> Any:
        """The report set in ``losses``."""
        return self.losses
