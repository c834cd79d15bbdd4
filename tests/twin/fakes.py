"""In-memory stand-ins for the twin's tests: a bus that records publishes, synchronous file I/O."""

from __future__ import annotations

import json
from typing import Any, Callable

from twisted.internet.defer import Deferred, maybeDeferred, succeed

from gateway.broker.bus import BusMessage
from gateway.mqtt.topics import matches


class RecordingBus:
    """Subscriptions and a list of everything published (as ``(topic, decoded JSON)``)."""

    def __init__(self) -> None:
        self.subscriptions: list[tuple[str, Callable[[BusMessage], Any]]] = []
        self.published: list[tuple[str, Any]] = []

    def subscribe(self, topic_filter: str, callback: Callable[[BusMessage], Any]) -> Callable[[], None]:
        entry = (topic_filter, callback)
        self.subscriptions.append(entry)
        return lambda: self.subscriptions.remove(entry)

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> Deferred[None]:
        self.published.append((topic, json.loads(payload)))
        return succeed(None)

    def deliver(self, topic: str, message: Any) -> Deferred[Any]:
        """A local app publishes ``message`` (JSON-encoded unless bytes) on ``topic``."""
        payload = message if isinstance(message, bytes) else json.dumps(message).encode()
        results = [maybeDeferred(cb, BusMessage(topic, payload, 1, False))
                   for f, cb in self.subscriptions if matches(f, topic)]
        return results[0] if results else succeed(None)

    def take(self) -> list[tuple[str, Any]]:
        """What was published since the last take."""
        out, self.published = self.published, []
        return out


def run_now(f: Callable[..., Any], *args: Any) -> Deferred[Any]:
    """Run "blocking" work at once (tests' run_blocking)."""
    return maybeDeferred(f, *args)


class HeldRunner:
    """Runs blocking work only when the test says so, to see what waits for the disk."""

    def __init__(self) -> None:
        self.pending: list[tuple[Callable[..., Any], tuple[Any, ...], Deferred[Any]]] = []

    def __call__(self, f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.pending.append((f, args, d))
        return d

    def run_one(self, fail: Exception | None = None) -> None:
        f, args, d = self.pending.pop(0)
        if fail is not None:
            d.errback(fail)
        else:
            d.callback(f(*args))


class HeldReads:
    """A journal stream's ``read`` whose records are taken when it is called (as the journal
    takes its segments then) but handed over only when the test says so: a read from disk
    still under way.

    :param read: the stream's own ``read``.
    """

    def __init__(self, read: Callable[..., Deferred[list[Any]]]) -> None:
        self.read = read
        self.pending: list[tuple[Deferred[list[Any]], list[Any]]] = []

    def __call__(self, cursor: str, max_records: int = 1000, max_bytes: int = 1 << 20) -> Deferred[list[Any]]:
        records: list[Any] = []
        self.read(cursor, max_records, max_bytes).addCallback(records.extend)
        d: Deferred[list[Any]] = Deferred()
        self.pending.append((d, records))
        return d

    def release(self) -> None:
        """Hand over the oldest read's records."""
        d, records = self.pending.pop(0)
        d.callback(records)
