"""Forwarding a link's stream to the cloud: a bounded window, cursor acks, resends, rate limit.

The forwarder outlives connections. Records read from the cursor stay in memory until the
cloud acknowledges them; after a reconnect everything unacknowledged is sent again, in
order, with DUP set. The cursor is acknowledged up to the highest seq below which every
record is acknowledged, with the ranges acknowledged above it (live records sent beside
a backlog), so a restart resends only what was sent and not yet durably acknowledged;
the forwarder keeps that at most ``resend_limit`` records by saving the cursor before it
gets there (and waiting for the save when it does), besides every 50 ms: each crash
costs at most that many duplicates upstream.

Live records (appended to the stream since the link connected) may be interleaved with the
backlog (``drain_order: interleave``), so fresh data is not stuck behind hours of backlog; only
the backlog is subject to the token-bucket rate limit. Which records are live goes by their
seqs, not by their received times: a gateway without a real-time clock may restart at 1970
with a backlog received at the right time, or see its clock stepped back while connected.

A record the cloud would refuse (over the link's :class:`~gateway.links.cloudlimits.CloudLimits`:
it would close the connection, and get the same record again after every reconnect) is not
sent: it is done for the cursor, as a record the journal dropped is, and counted in the loss
ledger as ``over-cloud-limit``.
"""

from __future__ import annotations

import sys
from collections import OrderedDict, deque
from functools import partial
from itertools import repeat
from operator import attrgetter
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from gateway.clockstep import steady_seconds
from gateway.degraded import Degraded, Failing
from gateway.links.cloudlimits import CloudLimits, publish_size
from gateway.links.protocol import MQTTClientProtocol
from gateway.links.readretry import READ_FAILURE_LOG_INTERVAL, READ_RETRY_INTERVAL, ReadRetry, log_read_again, \
    log_read_failed
from gateway.links.snapshot import CURSOR_NOT_SAVED
from gateway.links.stream import LinkStream, note_losses
from gateway.logthrottle import LogThrottle, more_of_a_batch
from gateway.mqtt.topics import topic_for_log

#: Packet ids for publishes; the protocol uses the ids above this for SUBSCRIBE.
MAX_PACKET_ID = 64535
_seq = attrgetter("seq")
#: Live records kept in memory (offered, or read), at most; beyond this they are read from
#: the stream later.
LIVE_LIMIT = 10000


class TokenBucket:
    """Messages and bytes per second, with one second of burst.

    :param messages: messages per second (0: no limit).
    :param nbytes: bytes per second (0: no limit).
    """

    def __init__(self, messages: float, nbytes: float, clock: IReactorTime) -> None:
        self.rates = (messages, nbytes)
        self.clock = clock
        self.tokens = [messages, nbytes]
        self.stamp = steady_seconds(clock)

    def delay(self, size: int) -> float:
        """Seconds until one message of ``size`` bytes may go (0: now, and it is counted)."""
        now = steady_seconds(self.clock)
        elapsed, self.stamp = now - self.stamp, now
        wait = 0.0
        for i, (rate, cost) in enumerate(zip(self.rates, (1, size))):
            if rate <= 0:
                continue
            self.tokens[i] = min(rate + cost, self.tokens[i] + elapsed * rate)
            if self.tokens[i] < cost:
                wait = max(wait, (cost - self.tokens[i]) / rate)
        if wait == 0.0:
            for i, (rate, cost) in enumerate(zip(self.rates, (1, size))):
                if rate > 0:
                    self.tokens[i] -= cost
        return wait


#: Seconds between durable saves of a link's cursor while few records are acknowledged.
CURSOR_ACK_INTERVAL = 0.05
#: A timed cursor save waits at least this many times as long as the previous one took,
#: counted from its end: on a disk slow to fsync (a save is a write and two fsyncs, 200 ms
#: on an SD card) saves then take at most a fifth of the journal's I/O thread, which every
#: append (every local PUBACK) waits on.
CURSOR_SAVE_SPACING = 4
#: Duplicates a crash may cost at most, by default (a link's ``resend_limit``).
RESEND_LIMIT = 4096
#: Seconds before a failed cursor save is tried again.
CURSOR_RETRY_INTERVAL = 1.0
#: Seconds between two log lines of a cursor save that keeps failing (a full disk).
CURSOR_FAILURE_LOG_INTERVAL = 60.0


def log_cursor_save_failed(log: Logger, link: str, cursor: str, failing: Degraded) -> None:
    """Say that a link's cursor save failed (a full disk): the caller says it at the first
    failure, then at most once per :data:`CURSOR_FAILURE_LOG_INTERVAL`, and tries again every
    :data:`CURSOR_RETRY_INTERVAL`.

    :param failing: its ``save_failing`` now (the failures in a row, the last error).
    """
    log.error("link {link}: cursor {cursor}: saving it failed ({count} in a row): {error}; tried again every"
              " {interval:g} s, logged once a minute", link=link, cursor=cursor, count=failing.failures,
              error=failing.error, interval=CURSOR_RETRY_INTERVAL)


def log_cursor_saved_again(log: Logger, link: str, cursor: str, failing: Degraded) -> None:
    """Say that a link's cursor is saved again, after the failures ``failing`` counts."""
    log.info("link {link}: cursor {cursor}: saved again after {count} failed saves", link=link, cursor=cursor,
             count=failing.failures)

#: Seconds between two log lines about records over the cloud's limits, at least.
OVER_LIMIT_LOG_INTERVAL = 10.0
#: Connections in a row that end with the same record sent and unacknowledged before the link
#: warns that the cloud may be refusing it (and again every this many more).
STALL_WARN_AFTER = 3
#: Topics whose size (or refusal) is kept; beyond this the cache starts again.
TOPIC_CACHE_SIZE = 4096


def _runs(seqs: set[int], dropped: deque[tuple[int, int]] | tuple[()] = ()) -> list[tuple[int, int]]:
    """``seqs`` and the ``(first, last)`` runs ``dropped`` as ``(first, last)`` ranges of
    consecutive seqs, in order."""
    runs: list[list[int]] = []
    for first, last in sorted([(seq, seq) for seq in seqs] + list(dropped)):
        if runs and first <= runs[-1][1] + 1:
            runs[-1][1] = max(runs[-1][1], last)
        else:
            runs.append([first, last])
    return [(first, last) for first, last in runs]


class Forwarder:
    """Sends one stream's records through whichever connection the link has.

    :param stream: the link's stream.
    :param cursor: the cursor's name in that stream.
    :param window: QoS 1 publishes in flight at most.
    :param clock: for the rate limit.
    :param bucket: the backlog's rate limit, or ``None``.
    :param interleave: send live records beside the backlog.
    :param ack_interval: seconds between durable cursor saves while fewer than half of
        ``resend_limit`` records are acknowledged since the last one (acknowledgements from
        the cloud in between are saved together); longer after a slow save
        (:data:`CURSOR_SAVE_SPACING`).
    :param linger: seconds to wait, once the stream says new records are durable, before
        sending them: what arrives meanwhile goes in the same write (0: on the next turn).
    :param resend_limit: records sent whose acknowledgement is not yet durable in the
        cursor, at most (in flight, or acknowledged since the last cursor save): what a
        crash may cost in duplicates. The cursor is saved once half of it is acknowledged, and
        sending waits for the save when the limit is reached.
    :param limits: what the cloud takes (``None``: anything); a record over them is skipped.
    :param link: the link's name, for the log.
    """

    log = Logger()

    def __init__(self, stream: LinkStream, cursor: str, window: int, clock: IReactorTime,
                 bucket: TokenBucket | None = None, interleave: bool = True,
                 ack_interval: float = CURSOR_ACK_INTERVAL, linger: float = 0.0,
                 resend_limit: int = RESEND_LIMIT, limits: CloudLimits | None = None, link: str = "") -> None:
        self.stream = stream
        self.cursor = cursor
        self.window = window
        self.clock = clock
        self.bucket = bucket
        self.interleave = interleave
        self.protocol: MQTTClientProtocol | None = None
        self.inflight: OrderedDict[int, Any] = OrderedDict()  # packet id -> record, in send order
        self.backlog: deque[Any] = deque()  # read from the cursor, not yet sent
        self.live: deque[Any] = deque()  # offered live, not yet sent
        self.sent = 0
        self.acked = 0
        self.resent = 0
        self._floor = 0  # every seq <= floor is acknowledged
        self._next_read = 0  # the seq the cursor should give next (0: unknown yet)
        self._done: set[int] = set()  # acknowledged seqs above the floor
        #: runs ``(first, last)`` the journal dropped above the floor, ascending: kept whole, for
        #: a run dropped while the cloud was away may be millions of seqs
        self._dropped: deque[tuple[int, int]] = deque()
        #: seqs offered live that the cursor has not passed yet, ascending (the cursor may never
        #: bring one: the journal skips what the cloud acknowledged above the cursor, and drops)
        self._taken_live: deque[int] = deque()
        self._live_from = 0  # records of lower seqs were appended before the link connected: backlog
        self._turn_live = False
        self._behind = False  # the last read ended in the backlog
        self._reading = False
        self._waiting = False
        self._timer: IDelayedCall | None = None
        self._acking = False
        self._acked_floor = 0
        #: while the cursor's saves fail (a full disk): since when, how many in a row, the last error
        self.save_failing = Failing()
        self._failure_logged_at = 0.0
        self.ack_interval = ack_interval
        if resend_limit < 1:
            raise ValueError(f"resend_limit must be at least 1, not {resend_limit}")
        self.resend_limit = resend_limit
        self._save_every = max(1, resend_limit // 2)
        self._exposed = 0  # records sent whose acknowledgement is not durable yet
        self._done_unsaved = 0  # of those, acknowledged by the cloud and in no cursor save yet
        self.linger = linger
        self._linger_call: IDelayedCall | None = None
        self._next_save = float("-inf")  # steady seconds before which no timed save starts
        self._ack_timer: IDelayedCall | None = None
        self._next_id = 0
        self._pumping = False
        self._again = False
        self.stopped = False
        self.limits = limits
        self.link = link
        #: the payload size compared with each record: the only check when the topic does not matter
        self._max_payload = limits.max_payload if limits is not None and limits.max_payload else sys.maxsize
        #: topic -> its UTF-8 length (-1: refused), when the topic matters (AWS IoT Core, a packet limit)
        self._topics: dict[str, int] | None = {} if limits is not None and limits.checks_topic else None
        self._max_packet = limits.max_packet if limits is not None else 0
        self._over_limit_lines = LogThrottle(OVER_LIMIT_LOG_INTERVAL, partial(steady_seconds, clock))
        self._read_retry = ReadRetry(clock, self._read, READ_RETRY_INTERVAL, READ_FAILURE_LOG_INTERVAL)
        self._stalled_seq = 0  # the oldest record in flight when the last connection ended
        self._stalls = 0  # connections in a row that ended with it in flight

    # -- the connection ---------------------------------------------------------------

    def attach(self, protocol: MQTTClientProtocol) -> None:
        """A connection is up: resend what is unacknowledged (DUP), then go on."""
        self.protocol = protocol
        self._live_from = self.stream.next_seq
        self.resent += len(self.inflight)
        for packet_id, record in self.inflight.items():
            protocol.publish(record.topic, record.payload, 1, record.retain, packet_id, True)
        self.pump()

    def detach(self) -> None:
        """The connection is gone; keep everything for the next one."""
        self.protocol = None
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if not self.stopped:
            self._note_stall()

    def _note_stall(self) -> None:
        """A connection ended: when the same record was the oldest in flight (sent, not
        acknowledged) at the end of :data:`STALL_WARN_AFTER` connections in a row, warn that the
        cloud may be closing the connection on it (a message over its limits: the link would
        send it first on every connection, for ever), naming it and the settings that skip it."""
        oldest = next(iter(self.inflight.values()), None)
        if oldest is None:
            self._stalled_seq = self._stalls = 0
            return
        if oldest.seq != self._stalled_seq:
            self._stalled_seq, self._stalls = oldest.seq, 0
        self._stalls += 1
        if self._stalls % STALL_WARN_AFTER == 0 and self._stalls // STALL_WARN_AFTER in (1, 10, 100, 1000):
            self.log.warn("link {link}: {count} connections in a row ended with seq {seq} on {topic} ({size} bytes "
                          "of payload) sent and not acknowledged: if the cloud closes the connection on it (a "
                          "message over its size or topic limits), set max_message_bytes or max_publish_bytes "
                          "to its limits so that the link skips such messages (links.md)", link=self.link,
                          count=self._stalls, seq=oldest.seq, topic=topic_for_log(oldest.topic),
                          size=len(oldest.payload))

    def stop(self) -> None:
        """Stop for good (the link service is stopping); save the cursor now, not after the interval."""
        self.stopped = True
        self.detach()
        if self._linger_call is not None:
            self._linger_call.cancel()
            self._linger_call = None
        if self._ack_timer is not None:
            self._ack_timer.cancel()
            self._ack_timer = None
        self._read_retry.stop()
        self._ack_cursor()

    # -- records in -------------------------------------------------------------------

    @property
    def behind(self) -> bool:
        """Whether the cursor is still in the backlog, so live records should be offered.

        A cursor that keeps up reads live records itself, straight from the journal's
        in-memory tail; offering them too would only make it skip them again.
        """
        return self._behind and self.interleave and self.protocol is not None

    def offer(self, record: Any) -> None:
        """A record just appended to the stream (with its seq): send it beside the backlog.

        Only while the cursor is behind and has not read that far yet; otherwise the
        cursor brings it.
        """
        taken = self._taken_live
        if (not self.behind or len(self.live) >= LIVE_LIMIT or record.seq < self._next_read
                or not self._next_read or taken and record.seq <= taken[-1]):
            return
        self.live.append(record)
        taken.append(record.seq)
        self.pump()

    def _read(self) -> None:
        if self._reading or self._waiting or self.stopped:
            return  # (while waiting, the stream has nothing new: it wakes us when it has)
        if len(self.live) >= LIVE_LIMIT:
            # A cloud slower than the publishers: the rest waits in the journal, not in memory
            # (reads took every record appended into ``live``, up to the whole stream); the
            # next pass that sends one reads on.
            return
        self._reading = True
        d = self.stream.read(self.cursor, max_records=max(256, self.window * 4), max_bytes=4 << 20)
        d.addCallbacks(self._got, self._read_failed)

    def _read_failed(self, failure: Any) -> None:
        """A read failed: tried again after :data:`READ_RETRY_INTERVAL`; logged at the first
        failure, then at most once per :data:`READ_FAILURE_LOG_INTERVAL`."""
        self._reading = False
        if self._read_retry.failed() is not None:
            log_read_failed(self.log, self.link, self._read_retry.failures, failure)

    def _got(self, records: list[Any]) -> None:
        self._reading = False
        log_read_again(self.log, self.link, self._read_retry.succeeded())
        if not records:  # (says nothing of _behind: backlog read so far may still wait here)
            if not self._waiting and not self.stopped:
                self._waiting = True
                self.stream.wait(self.cursor).addCallback(self._woken)
            return
        self._behind = self._is_backlog(records[-1])
        live_from, interleave, live, backlog = self._live_from, self.interleave, self.live, self.backlog
        taken = self._taken_live
        first, last = records[0].seq, records[-1].seq
        if not taken and last - first == len(records) - 1 and (not interleave or first >= live_from
                                                                or last < live_from):
            # The common read: consecutive seqs, none offered live, all live or all backlog;
            # what the loop below does, once for the first record and in bulk for the rest.
            if self._next_read and first > self._next_read:
                self._mark_done(range(self._next_read, first))  # dropped by the journal
            elif not self._next_read and first > self._floor + 1:  # (or skipped: acked above)
                self._floor = self._acked_floor = first - 1
            self._next_read = last + 1
            (live if interleave and first >= live_from else backlog).extend(records)
            self.pump()
            return
        for record in records:
            if self._next_read and record.seq > self._next_read:
                self._mark_done(range(self._next_read, record.seq))  # dropped by the journal
            elif not self._next_read and record.seq > self._floor + 1:  # (or skipped: acked above)
                self._floor = self._acked_floor = record.seq - 1
            self._next_read = record.seq + 1
            if taken:
                while taken and taken[0] < record.seq:  # never brought: skipped or dropped
                    taken.popleft()
                if taken and taken[0] == record.seq:
                    taken.popleft()
                    continue
            if interleave and record.seq >= live_from:  # live (see _is_backlog)
                live.append(record)
            else:
                backlog.append(record)
        self.pump()

    def _woken(self, _: Any) -> None:
        # Not now: the stream wakes us as each group commit becomes durable, and the local
        # PUBACKs it releases should reach the socket before our work. Lingering a few ms
        # also gathers several group commits into one pass: per record, a pass over a
        # handful costs several times a pass over dozens (a wake-up, a read, a write to
        # the cloud and a read of its PUBACKs each time).
        self._linger_call = self.clock.callLater(self.linger, self._woken_later)

    def _woken_later(self) -> None:
        self._linger_call = None
        self._waiting = False
        self.pump()

    # -- records out ------------------------------------------------------------------

    def _is_backlog(self, record: Any) -> bool:
        return bool(record.seq < self._live_from)

    def _next_record(self) -> Any | None:
        """The next record to send: alternate live and backlog when both wait."""
        if self.live and (self._turn_live or not self.backlog):
            self._turn_live = False
            return self.live.popleft()
        if self.backlog:
            record = self.backlog[0]
            if self.bucket is not None and self._is_backlog(record):
                wait = self.bucket.delay(len(record.payload))
                if wait > 0:
                    if self.live:
                        return self.live.popleft()
                    if self._timer is None:
                        self._timer = self.clock.callLater(wait, self._tick)
                    return None
            self._turn_live = True
            return self.backlog.popleft()
        return None

    def _tick(self) -> None:
        self._timer = None
        self.pump()

    def pump(self) -> None:
        """Send while the window has room and records wait; read more when they run out."""
        if self._pumping:  # a read that completed at once, inside the loop below
            self._again = True
            return
        self._pumping = True
        try:
            self._again = True
            while self._again:
                self._again = False
                self._pump_once()
        finally:
            self._pumping = False

    def _pump_once(self) -> None:
        protocol = self.protocol
        out: list[tuple[str, bytes, int, bool, int, bool]] = []
        unacked: list[int] = []  # QoS 0: done once sent
        skipped: list[Any] = []  # over the cloud's limits
        room = self.resend_limit - self._exposed
        inflight, window, live, backlog = self.inflight, self.window, self.live, self.backlog
        max_payload, topics = self._max_payload, self._topics
        while protocol is not None and not self.stopped and len(inflight) < window and room > 0:
            room -= 1
            if not backlog and not (self._reading or self._waiting):
                self._read()  # (a read served from the journal's tail lands in the backlog at once)
            if live and not backlog:  # (_next_record's answer then, without the call)
                self._turn_live = False
                record = live.popleft()
            else:
                record = self._next_record()
            if record is None:
                room += 1
                break
            if len(record.payload) > max_payload or topics is not None and self._over_topic(record, topics):
                room += 1
                skipped.append(record)
                continue
            if record.qos == 0:
                out.append((record.topic, record.payload, 0, record.retain, 0, False))
                unacked.append(record.seq)
                continue
            packet_id = self._next_id % MAX_PACKET_ID + 1  # (_packet_id, without the call)
            if packet_id in inflight:
                packet_id = self._packet_id()
            else:
                self._next_id = packet_id
            inflight[packet_id] = record
            out.append((record.topic, record.payload, 1, record.retain, packet_id, False))
        if out:
            assert protocol is not None
            self.sent += len(out)
            self._exposed += len(out)
            protocol.publish_all(out)
        if skipped:
            self._skip(skipped)
        if unacked:
            self._mark_done(unacked, sent=True)
        elif room <= 0:
            self._ack_cursor()  # at the resend limit: save the cursor now (sending resumes then)
        if protocol is not None and len(self.backlog) < self.window:
            self._read()

    def _over_topic(self, record: Any, topics: dict[str, int]) -> bool:
        """Whether the cloud refuses ``record`` for its topic or its whole packet's size (the
        topic's part cached per topic)."""
        topic_bytes = topics.get(record.topic)
        if topic_bytes is None:
            assert self.limits is not None
            if len(topics) >= TOPIC_CACHE_SIZE:  # bounded: device topics are many but few are hot
                topics.clear()
            topic_bytes = topics[record.topic] = self.limits.topic_bytes(record.topic)
        if topic_bytes < 0:
            return True
        max_packet = self._max_packet
        return bool(max_packet) and publish_size(topic_bytes, len(record.payload), record.qos) > max_packet

    def _skip(self, records: list[Any]) -> None:
        """Records the cloud would refuse: counted as lost (``over-cloud-limit``; one ledger
        entry per run of consecutive seqs), logged (once per interval), then done for the
        cursor, whose save writes the ledger first."""
        note_losses(self.stream, "over-cloud-limit", records)
        count = self._over_limit_lines.note(len(records))
        if count is not None:
            first = records[0]
            assert self.limits is not None
            self.log.warn("link {link}: seq {seq} on {topic} not sent, the cloud would refuse it: {why}; counted as "
                          "lost (over-cloud-limit){more}", link=self.link, seq=first.seq,
                          topic=topic_for_log(first.topic),
                          why=self.limits.problem(first.topic, len(first.payload), first.qos),
                          more=more_of_a_batch(count, len(records)))
        self._mark_done([record.seq for record in records])

    def _packet_id(self) -> int:
        while True:
            self._next_id = self._next_id % MAX_PACKET_ID + 1
            if self._next_id not in self.inflight:
                return self._next_id

    # -- acknowledgements -------------------------------------------------------------

    def pubacks(self, packet_ids: list[int]) -> None:
        """The cloud has these records: count them, move the cursor when the prefix is whole,
        then send what the window has room for."""
        records = list(map(self.inflight.pop, packet_ids, repeat(None, len(packet_ids))))
        if None in records:
            for packet_id, record in zip(packet_ids, records):
                if record is None:
                    self.log.debug("PUBACK for unknown packet id {id}", id=packet_id)
            records = [record for record in records if record is not None]
        done = list(map(_seq, records))
        if done:
            self.acked += len(done)
            self._mark_done(done, sent=True)
            self.pump()

    def _mark_done(self, seqs: list[int] | range, sent: bool = False) -> None:
        """Records done: acknowledged by the cloud (or QoS 0 and sent: ``sent``) or dropped
        by the journal before they were read (a ``range``, ascending)."""
        floor, done, dropped = self._floor, self._done, self._dropped
        if not done and seqs and (seqs.start == floor + 1 if isinstance(seqs, range)
                                  else min(seqs) == floor + 1 and max(seqs) - floor == len(seqs) == len(set(seqs))):
            # The whole run just above the floor, in any order: what the loop makes of it (a run
            # the journal dropped is ascending: checked without a pass over it, or a set of it,
            # for it may be millions of seqs).
            floor += len(seqs)
        elif isinstance(seqs, range):  # dropped above a floor that waits: kept as one run
            if seqs and seqs[-1] > floor:
                dropped.append((max(seqs.start, floor + 1), seqs[-1]))
        else:
            for seq in seqs:
                if seq == floor + 1 and not done:
                    floor = seq  # in order with nothing done above: the floor just moves on
                elif seq > floor:
                    done.add(seq)
        while True:
            if dropped and dropped[0][0] <= floor + 1:
                floor = max(floor, dropped.popleft()[1])
            elif floor + 1 in done:
                floor += 1
                done.discard(floor)
            else:
                break
        if floor > self._floor:  # the journal knows at once (in memory): a drop is then no loss
            self.stream.note_ack(self.cursor, floor)
        self._floor = floor
        if sent:
            self._done_unsaved += len(seqs)
        self._ack_cursor()

    def _ack_cursor(self) -> None:
        if self._acking or self._floor <= self._acked_floor and not self._done_unsaved:
            return
        # Every cursor save is a write, two fsyncs and a rename on the journal's I/O thread,
        # which appends share: saving on every cloud PUBACK starves the local acknowledgements.
        # So: after half the resend limit, at the limit, when stopping, else on a timer.
        now = steady_seconds(self.clock)
        if not (self.stopped or self._done_unsaved >= self._save_every or self._exposed >= self.resend_limit):
            if self._ack_timer is None:
                wait = self._next_save - now
                if wait > 0:
                    self._ack_timer = self.clock.callLater(wait, self._ack_later)
                    return
            else:
                return
        if self._ack_timer is not None:
            self._ack_timer.cancel()
            self._ack_timer = None
        self._next_save = now + self.ack_interval
        self._acking = True
        floor = self._floor
        saving, self._done_unsaved = self._done_unsaved, 0
        d = self.stream.ack(self.cursor, floor, _runs(self._done, self._dropped) if self._done or self._dropped else ())

        def acked(_: Any) -> None:
            self._acking = False
            done = steady_seconds(self.clock)
            self._next_save = max(self._next_save, done + CURSOR_SAVE_SPACING * (done - now))
            failing = self.save_failing.now
            if failing is not None:
                log_cursor_saved_again(self.log, self.link, self.cursor, failing)
                self.save_failing.recovered()
            self._acked_floor = max(self._acked_floor, floor)
            blocked = self._exposed >= self.resend_limit
            self._exposed -= saving
            if blocked:
                self.pump()
            self._ack_cursor()

        def failed(failure: Any) -> None:
            self._acking = False
            self._done_unsaved += saving
            failing = self.save_failing.failed(CURSOR_NOT_SAVED, failure.getErrorMessage(), self.clock.seconds())
            now = steady_seconds(self.clock)
            if failing.failures == 1 or now - self._failure_logged_at >= CURSOR_FAILURE_LOG_INTERVAL:
                # once, then once a minute: a full disk fails it every second
                self._failure_logged_at = now
                log_cursor_save_failed(self.log, self.link, self.cursor, failing)
            if self._ack_timer is None and not self.stopped:
                self._ack_timer = self.clock.callLater(CURSOR_RETRY_INTERVAL, self._ack_later)

        d.addCallbacks(acked, failed)

    def _ack_later(self) -> None:
        self._ack_timer = None
        self._ack_cursor()

    @property
    def topics_cached(self) -> int:
        """Topics whose part of the cloud's limits is cached now (at most :data:`TOPIC_CACHE_SIZE`:
        then the cache starts again empty; none when no limit looks at the topic)."""
        return len(self._topics) if self._topics is not None else 0

    @property
    def pending(self) -> int:
        """Records in memory not yet acknowledged by the cloud."""
        return len(self.inflight) + len(self.backlog) + len(self.live)
