"""The journal's loss report, sent upstream by a link (MQTT or HTTP) when it changes."""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Callable

from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.clockstep import steady_seconds
from gateway.journal.record import Record, with_seq
from gateway.links.cloudlimits import CloudLimits
from gateway.links.settings import fill_identity
from gateway.links.stream import LinkStream
from gateway.logthrottle import NOT_PUBLISHED_LOG_INTERVAL, LogThrottle, not_published_since

#: Seconds between checks of the journal's loss report.
LOSS_CHECK_INTERVAL = 30.0
#: The most bytes of JSON a report's ``entries`` take: the newest entries that fit are sent
#: (``omitted`` counts the older ones left out; ``totals`` still counts them all). A full
#: ledger (1,000 entries) is about 190 KB, over what clouds take in one message (AWS IoT
#: Core 128 KB): a report that large would be refused, and sent again, for ever.
MAX_ENTRIES_BYTES = 64 * 1024


def newest_that_fit(entries: list[Any], budget: int = MAX_ENTRIES_BYTES) -> tuple[list[Any], int]:
    """The newest of ``entries`` (JSON-able, oldest first) whose JSON fits ``budget`` bytes,
    oldest first, and how many older ones were left out."""
    kept: list[Any] = []
    used = 2  # the list's brackets
    for entry in reversed(entries):
        used += len(json.dumps(entry, default=str)) + 2  # (", " between items)
        if used > budget:
            break
        kept.append(entry)
    kept.reverse()
    return kept, len(entries) - len(kept)


class LossReporter:
    """Queues the stream's loss report on ``loss_topic`` when it differs from the last one queued.

    What was last queued is kept in the stream's loss ledger (written with the report's own
    append), so a restart does not queue the same report again.

    :param link: the link's name (in the report and the logs).
    :param loss_topic: the cloud topic (``{tenant}``/``{device}`` filled in); empty or None: off.
    :param stream: the link's stream: the report comes from it and goes into it.
    :param identity: ``(tenant, device)``.
    :param clock: for the report's timestamp.
    :param offer: hands the queued record to the link's sender beside a draining backlog.
    :param limits: what the cloud takes (``None``: anything): a report keeps the newest
        entries that fit them, and one that cannot fit even without entries is not queued
        (the sender would skip it as a new loss, which would change the report, for ever).
    """

    log = Logger()

    def __init__(self, link: str, loss_topic: str | None, stream: LinkStream, identity: tuple[str, str],
                 clock: Any, offer: Callable[[Any], None], limits: CloudLimits | None = None) -> None:
        self.link = link
        self.limits = limits
        self.loss_topic = loss_topic
        self.stream = stream
        self.identity = identity
        self.clock = clock
        self.offer = offer
        # (a disk that stays full refuses every check's report, every 30 s, for hours)
        self._refused_lines = LogThrottle(NOT_PUBLISHED_LOG_INTERVAL, lambda: steady_seconds(clock))

    def check(self) -> None:
        """Queue the report if it changed (call only while connected: the report made at the
        next connect covers what happens meanwhile). It uses the stream's reserve, so a full
        stream (reject-new) does not refuse it, and goes beside the backlog as live data."""
        if not self.loss_topic:
            return
        report = self.stream.loss_report()
        entries = getattr(report, "entries", ())
        totals = json.dumps(getattr(report, "totals", None) or {}, sort_keys=True)
        summary = f"{len(entries)} {totals}"
        if not entries or summary == self.stream.losses_reported:
            return
        self.stream.mark_losses_reported(summary)
        tenant, device = self.identity
        topic = fill_identity(self.loss_topic, tenant, device)
        body: dict[str, Any] = {"link": self.link, "totals": json.loads(totals), "entries": [],
                                "timestamp": self.clock.seconds()}
        budget = self._entries_budget(topic, body, len(entries))
        if budget is None:
            return
        shown, omitted = newest_that_fit([
            dataclasses.asdict(e) if dataclasses.is_dataclass(e) and not isinstance(e, type) else repr(e)
            for e in entries], budget)
        body["entries"] = shown
        if omitted:
            body["omitted"] = omitted
        payload = json.dumps(body, default=str).encode()
        record = Record(topic, payload, 1, False, self.clock.seconds())

        def queued(seq: int) -> None:
            self._refused_lines.reset()
            self.offer(with_seq(record, seq))  # (taken only while a backlog drains)

        def refused(failure: Failure) -> None:
            if self.stream.losses_reported == summary:
                self.stream.mark_losses_reported(None)  # the next check tries again
            count = self._refused_lines.note()
            if count is not None:
                self.log.error("link {link}: the journal loss report could not be queued ({error}): the next check "
                               "tries again ({since})", link=self.link, error=failure.getErrorMessage(),
                               since=not_published_since(count))

        self.stream.append(record, reserved=True).addCallbacks(queued, refused)

    def _entries_budget(self, topic: str, body: dict[str, Any], count: int) -> int | None:
        """Bytes of JSON the report's entries may take on ``topic`` within the cloud's limits,
        or ``None`` (logged) when the report does not fit them even without its ``count`` entries."""
        room = self.limits.payload_room(topic, 1) if self.limits is not None else None
        if room is None:
            return MAX_ENTRIES_BYTES
        bare = len(json.dumps({**body, "omitted": count}, default=str).encode())  # (its entries: [])
        budget = min(MAX_ENTRIES_BYTES, room - bare + 2)
        if budget >= 2:
            return budget
        assert self.limits is not None
        why = self.limits.problem(topic, bare, 1) or f"it would be {bare} bytes, the cloud takes {room}"
        self.log.error("link {link}: the journal loss report is not sent on {topic}, the cloud would refuse it "
                       "even without its entries: {why}", link=self.link, topic=topic, why=why)
        return None
