"""Per-stream statistics: depth, age, latency, drops, and the fsync latency histogram."""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field

#: Upper bounds (seconds) of the fsync latency histogram's buckets: from a fast SSD's
#: sub-millisecond fsync to an SD card's worst seconds.
FSYNC_BUCKETS: tuple[float, ...] = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


@dataclass(frozen=True)
class HistogramSnapshot:
    """A histogram at one moment, in Prometheus' shape.

    :param bounds: the buckets' upper bounds (inclusive), ascending; ``+Inf`` is implied.
    :param cumulative: per bound, the observations at most that large (then one more
        entry: every observation, the ``+Inf`` bucket).
    :param count: observations so far.
    :param sum: their sum.
    """

    bounds: tuple[float, ...]
    cumulative: tuple[int, ...]
    count: int
    sum: float


class Histogram:
    """Counts observations in fixed buckets: one bisect and one increment each.

    :param bounds: the buckets' upper bounds, ascending.
    """

    def __init__(self, bounds: tuple[float, ...] = FSYNC_BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        """Count one observation of ``value``."""
        self.counts[bisect_left(self.bounds, value)] += 1
        self.count += 1
        self.sum += value

    def snapshot(self) -> HistogramSnapshot:
        """The cumulative counts now."""
        cumulative, running = [], 0
        for n in self.counts:
            running += n
            cumulative.append(running)
        return HistogramSnapshot(self.bounds, tuple(cumulative), self.count, self.sum)


@dataclass
class Latency:
    """Running count, mean, max and last value of a latency in seconds."""

    count: int = 0
    total: float = 0.0
    max: float = 0.0
    last: float = 0.0

    def add(self, seconds: float, n: int = 1) -> None:
        """Account ``n`` observations that each took ``seconds``."""
        self.count += n
        self.total += seconds * n
        self.last = seconds
        if seconds > self.max:
            self.max = seconds

    def add_many(self, n: int, total: float, longest: float) -> None:
        """Account ``n`` observations that took ``total`` seconds together, ``longest`` at most."""
        self.count += n
        self.total += total
        self.last = longest
        if longest > self.max:
            self.max = longest

    @property
    def mean(self) -> float:
        """Mean over every observation (0.0 before the first)."""
        return self.total / self.count if self.count else 0.0


@dataclass(frozen=True)
class StreamStats:
    """A snapshot of one stream.

    :param name: the stream.
    :param records: records retained (from the oldest segment to the newest record).
    :param bytes: bytes on disk plus bytes waiting to be written.
    :param segments: segment files.
    :param oldest_age: seconds since the oldest retained record was received
        (0.0 when empty).
    :param next_seq: the seq the next append gets.
    :param backlog: per cursor, records appended but not yet acknowledged.
    :param append_latency: append to durable acknowledgement (or to acceptance for
        the interval and none policies).
    :param fsync_latency: one write-and-fsync of a batch on the I/O thread.
    :param batch_records: records per written batch (group commit).
    :param drops: records lost, by reason (see :class:`~gateway.journal.losses.LossEntry`).
    """

    name: str
    records: int
    bytes: int
    segments: int
    oldest_age: float
    next_seq: int
    backlog: dict[str, int]
    append_latency: Latency
    fsync_latency: Latency
    batch_records: Latency
    drops: dict[str, int] = field(default_factory=dict)
