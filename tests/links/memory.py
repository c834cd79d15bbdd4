"""An in-memory journal stream for the links' unit tests (the real one is gateway.journal)."""

from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks, succeed
from twisted.python.failure import Failure

from gateway.journal.record import Record


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
        self.above: dict[str, list[tuple[int, int]]] = {}
        self.acks = 0  # cursor saves
        self.positions: dict[str, int] = {}
        self.hold = False
        self.held: list[tuple[Deferred[int], int]] = []
        self.losses: Any = MemoryLossReport(name)
        self.losses_reported: str | None = None
        #: :meth:`note_loss` calls: ``(reason, records, bytes, first_seq, last_seq, first_time, last_time)``
        self.noted: list[tuple[str, int, int, int, int, float, float]] = []
        self._waiters: list[Deferred[None]] = []
        #: the wall clock's steps it saw, as the journal's ledger keeps them: ``(first seq after it, seconds)``
        self.steps: list[tuple[int, float]] = []
        self.dropped = 0  # the last seq :meth:`drop` dropped

    def append(self, record: Any, reserved: bool = False) -> Deferred[int]:
        """Store ``record`` with the next seq (seqs start at 1)."""
        seq = len(self.records) + 1
        self.records.append(record._replace(seq=seq))
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(None)
        if self.hold:
            d: Deferred[int] = Deferred()
            self.held.append((d, seq))
            return d
        return succeed(seq)

    def append_many(self, records: Sequence[Any], on_durable: Callable[[int], object],
                    on_failed: Callable[[Failure], object], reserved: bool = False) -> None:
        """:meth:`append` of each record; ``on_durable(last seq)`` once all are durable."""
        results = [self.append(record, reserved) for record in records]
        gatherResults(results, consumeErrors=True).addCallbacks(lambda seqs: on_durable(seqs[-1]),
                                            lambda failure: on_failed(failure.value.subFailure))

    def received_now(self, seq: int, received: float) -> float:
        """``received`` moved by the :attr:`steps` ``(first seq after it, seconds)`` after ``seq``."""
        return received + sum(step for first, step in self.steps if seq < first)

    @property
    def next_seq(self) -> int:
        """The seq the next record appended will get."""
        return len(self.records) + 1

    @property
    def first_kept_seq(self) -> int:
        """The seq after the last one :meth:`drop` dropped (the records acknowledged stay)."""
        return self.dropped + 1

    def drop(self, last: int) -> None:
        """Drop the records up to ``last`` as the journal's limits do (``drop-oldest``): reads
        skip them (their objects stay in :attr:`records`, which seqs index)."""
        self.dropped = max(self.dropped, last)
        for cursor, position in self.positions.items():
            self.positions[cursor] = max(position, last)

    def release(self) -> None:
        """Make every held append durable."""
        held, self.held = self.held, []
        for d, seq in held:
            d.callback(seq)

    def cursor(self, name: str) -> Deferred[None]:
        """Create ``name`` at the oldest record kept unless it exists."""
        self.acked.setdefault(name, 0)
        self.positions.setdefault(name, max(self.acked[name], self.dropped))
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

    def ack(self, cursor: str, seq: int, above: Any = ()) -> Deferred[None]:
        """Move the cursor's acknowledged seq forward (``above`` ranges are kept in ``above``)."""
        self.acked[cursor] = max(self.acked[cursor], seq)
        self.above[cursor] = list(above)
        self.acks += 1
        return succeed(None)

    def note_ack(self, cursor: str, seq: int) -> None:
        """Move the cursor's acknowledged seq forward in memory: no save (``acks`` unchanged)."""
        self.acked[cursor] = max(self.acked[cursor], seq)

    def rewind(self, cursor: str) -> None:
        """Read again from the record after the last acknowledged one, or the oldest kept (as after a restart)."""
        self.positions[cursor] = max(self.acked[cursor], self.dropped)

    def wait(self, cursor: str) -> Deferred[None]:
        """Fire when a record is appended (at once when unread ones exist)."""
        if self.positions[cursor] < len(self.records):
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._waiters.append(d)
        return d

    def unacked(self, cursor: str) -> int:
        """Records appended and not acknowledged by the cursor, as the journal counts them:
        after its acknowledged seq, less the ranges acknowledged above it (0 for an unknown cursor)."""
        if cursor not in self.acked:
            return 0
        return len(self.records) - self.acked[cursor] - sum(last - first + 1
                                                            for first, last in self.above.get(cursor, ()))

    def loss_report(self) -> Any:
        """The report set in ``losses``."""
        return self.losses

    def note_loss(self, reason: str, records: int, nbytes: int, first_seq: int = 0, last_seq: int = 0,
                  first_time: float = 0.0, last_time: float = 0.0) -> None:
        """Keep the loss in ``noted`` (``losses`` stays as it was set)."""
        self.noted.append((reason, records, nbytes, first_seq, last_seq, first_time, last_time))

    def mark_losses_reported(self, key: str | None) -> None:
        """Keep ``key`` in ``losses_reported``."""
        self.losses_reported = key


@inlineCallbacks
def start_links(test: Any, reactor: Any, links: dict[str, Any]) -> Any:
    """A real broker and journal, a :class:`~gateway.links.service.LinksService` with ``links``
    (name -> ``LinkSettings``; identity ``t1``/``gw1``, retries after 0.1 s) and a client
    connected to the broker; all stopped on cleanup. Fires with ``(links service, broker,
    client)``."""
    from gateway.links.service import LinksService
    from gateway.links.settings import LinksSettings
    from tests.broker.harness import port_of, start_broker
    from tests.mqttclient import TestClient

    broker = yield start_broker(test, reactor)
    journal = yield start_journal(test, reactor)
    service = LinksService(LinksSettings(links=links), reactor, broker.bus, journal, identity=("t1", "gw1"),
                           retry_policy=lambda attempt: 0.1, durable_gate=broker.durable_gate)
    yield service.startService()
    test.addCleanup(service.stopService)
    device = TestClient(reactor)
    yield device.connect(port_of(broker))
    test.addCleanup(device.stop)
    return service, broker, device


def start_journal(test: Any, reactor: Any) -> "Deferred[Any]":
    """Start a real :class:`~gateway.journal.service.JournalService` in a temp dir; stopped on cleanup."""
    from pathlib import Path

    from gateway.journal.service import JournalService
    from gateway.journal.settings import JournalSettings

    journal = JournalService(JournalSettings(), Path(test.mktemp()), reactor)
    d = journal.startService()
    test.addCleanup(journal.stopService)
    return (d if isinstance(d, Deferred) else succeed(None)).addCallback(lambda _: journal)


class MemoryJournal:
    """Hands out :class:`MemoryStream` s by name, like the journal service's ``stream(name)``."""

    def __init__(self) -> None:
        self._streams: dict[str, MemoryStream] = {}

    def stream(self, name: str) -> MemoryStream:
        """The stream called ``name`` (created on first use)."""
        return self._streams.setdefault(name, MemoryStream(name))

    def streams(self) -> dict[str, MemoryStream]:
        """Every stream by name."""
        return dict(self._streams)
