"""What an HTTP link's cloud refuses for good, and how the link counts what it refused.

Sent again, a request the cloud refused for what it carries gets the same answer, for ever,
and everything behind it in the stream waits. So the link splits a refused request until
the record it is refused for goes alone (unless the cloud refused its URL, which names
the alias in ``exosite`` mode: then all of them are refused); that record is counted as lost (``over-cloud-limit``
when the cloud said it is too large, else ``refused-by-cloud``), logged, and passed by the
cursor, and the rest goes on, provided the cloud took another request of the batch, or of
the records after a full batch sent as its probe (else no record is shown to be at fault:
the link backs off and sends the batch again, grown by what came meanwhile). A refusal that
no record can avoid (credentials, the URL, the content type) is not a record's: it is
retried with backoff, and nothing is dropped. The gateway's own reports refused with 404 (an
alias the product does not have) are lost at once instead (:mod:`gateway.links.reportaliases`).
"""

from __future__ import annotations

from functools import partial
from typing import Any, Literal

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from gateway.clockstep import steady_seconds
from gateway.journal.losses import LossReason
from gateway.links.exosite import RequestFailed
from gateway.links.stream import LinkStream, note_losses
from gateway.logthrottle import REFUSED_LOG_INTERVAL, LogThrottle, more_of_a_batch
from gateway.mqtt.topics import topic_for_log

#: Statuses by which a cloud refuses what one request carries, so that sending it again
#: cannot help: 413 (too large) and 414 (its URL too long: an Exosite record's URL names its
#: alias) say it is over the cloud's limits.
REFUSED: dict[int, LossReason] = {400: "refused-by-cloud", 404: "refused-by-cloud", 409: "refused-by-cloud",
                                  413: "over-cloud-limit", 414: "over-cloud-limit", 422: "refused-by-cloud"}
#: Statuses that refuse a request's URL, not its body. In ``json`` mode every batch goes to
#: one URL: they say the URL is wrong, for every batch alike, not that a record is. In
#: ``exosite`` mode a record's URL names its alias: they refuse every value of the alias
#: (404: an alias the product does not have), so the request is not split.
URL_REFUSALS = frozenset({404, 414})
#: How many times the cloud must close the connection on one record's request without an
#: answer, each time answering the small request sent just after, for the record to count
#: as over its limits (a proxy refusing a body too large does that; a network that fails
#: does not answer the next request either).
CLOSES_TO_REFUSE = 2


def refusal(mode: Literal["exosite", "json"], status: int) -> LossReason | None:
    """Why a record that the cloud refused alone with ``status`` is lost, or ``None`` when
    the status is no refusal of that record (retried with backoff).

    :param mode: the link's mode.
    :param status: the HTTP status of the answer.
    """
    if mode == "json" and status in URL_REFUSALS:
        return None
    return REFUSED.get(status)


class RefusedRecords:
    """The records of a batch that the cloud refused: counted in the loss ledger and logged
    once the rest of the batch is sent, just before the cursor passes them.

    A record refused by a status is held (:meth:`hold`) until the cloud takes one of the
    batch's requests, its probe's included (:meth:`confirm`): only then is the refusal the
    record's fault. While the cloud took none, :meth:`unconfirmed` gives the refusal, and the
    link forgets them (:meth:`forget`) and sends the batch again.

    A loss report the cloud refuses (its ``loss_topic`` is no alias of the product, say) is
    not counted: that would change the ledger, so make a new report, refused again, for ever.
    An error says so instead.

    :param link: the link's name, for the log.
    :param stream: the link's stream.
    :param loss_topic: the cloud topic of the link's loss reports (``None``: it sends none).
    :param clock: for the throttle of the warnings.
    """

    log = Logger()

    def __init__(self, link: str, stream: LinkStream, loss_topic: str | None, clock: IReactorTime) -> None:
        self.link = link
        self.stream = stream
        self.loss_topic = loss_topic
        self.records: list[tuple[Any, LossReason, str]] = []
        #: refused by a status, counted only once the cloud took another request of the batch
        self.held: list[tuple[Any, LossReason, str]] = []
        #: refused with their alias, which the link logged once (the gateway's reports): no warning each
        self.unsent: list[tuple[Any, LossReason, str]] = []
        #: every request of the last batch was refused: it is to be sent again whole
        self.whole = False
        self._taken = False  # the cloud took one of the batch's requests
        self._refusal: RequestFailed | None = None  # the last refusal of a held record
        self._lines = LogThrottle(REFUSED_LOG_INTERVAL, partial(steady_seconds, clock))

    def __len__(self) -> int:
        return len(self.records) + len(self.held) + len(self.unsent)

    def add(self, record: Any, reason: LossReason, why: str) -> None:
        """The cloud refused ``record`` (read from the stream) for good, for ``why`` (words for the log)."""
        self.records.append((record, reason, why))

    def drop(self, record: Any) -> None:
        """``record`` (read from the stream) is lost with its alias, which the product does not
        have (``refused-by-cloud``): counted as :meth:`add` says, without a warning of its own
        (the link said it once for the alias: :class:`~gateway.links.reportaliases.ReportAliases`)."""
        self.unsent.append((record, "refused-by-cloud", ""))

    def hold(self, record: Any, reason: LossReason, why: str, refusal: RequestFailed) -> None:
        """The cloud refused ``record`` with a status (``refusal``): counted as :meth:`add`
        says once it took another request of the batch (a loss report at once: it is never counted)."""
        if record.topic == self.loss_topic:
            self.add(record, reason, why)
        else:
            self.held.append((record, reason, why))
            self._refusal = refusal

    def confirm(self) -> None:
        """The cloud took one of the batch's requests: what it refused of the batch (held
        before or after) is the records' fault."""
        self._taken = True

    def unconfirmed(self) -> RequestFailed | None:
        """The last refusal of a held record while the cloud took none of the batch's
        requests (no record is shown to be at fault), else ``None``."""
        return self._refusal if self.held and not self._taken else None

    def forget(self, whole: bool = False) -> None:
        """Forget the records refused so far, counted or held, uncounted: the batch is to be
        read again (``whole``: because the cloud refused every request of it, see :attr:`whole`)."""
        self.records, self.held, self.unsent = [], [], []
        self._taken, self._refusal = False, None
        self.whole = whole

    def note(self) -> None:
        """Count the records refused so far as lost (one ledger entry per reason and run of
        seqs), log the first (at most once per interval, with a count of the others), and
        forget them. The held ones must be confirmed (:meth:`unconfirmed` is ``None``)."""
        assert self.unconfirmed() is None
        records, unsent = self.records + self.held, self.unsent
        self.forget()
        for record, _, why in records:
            if record.topic == self.loss_topic:
                self.log.error("link {link}: the journal loss report was refused by the cloud on {topic}: {why}; it"
                               " is not sent (does loss_topic name an alias of the product?)", link=self.link,
                               topic=topic_for_log(record.topic), why=why)
        lost = [entry for entry in records if entry[0].topic != self.loss_topic]
        counted = lost + unsent
        for reason in dict.fromkeys(reason for _, reason, _ in counted):
            note_losses(self.stream, reason, [record for record, why_lost, _ in counted if why_lost == reason])
        count = self._lines.note(len(lost)) if lost else None
        if count is not None:
            record, reason, why = lost[0]
            self.log.warn("link {link}: seq {seq} on {topic} refused by the cloud: {why}; counted as lost ({reason})"
                          "{more}", link=self.link, seq=record.seq, topic=topic_for_log(record.topic), why=why,
                          reason=reason, more=more_of_a_batch(count, len(lost)))
