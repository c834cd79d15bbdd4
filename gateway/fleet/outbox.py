"""The fleet's feedback outbox: each feedback is persisted before it is sent, sent in order, and
leaves only once the server took it in (or refused it for good); while it does not, the outbox
backs off.

In order, and no later one first: the steps of one action must reach the server in the order
they happened, as hawkBit refuses any feedback on an action once it is closed (``410 Gone``,
refused for good: that step would be lost), and it offers the next action only once the one
before is closed, so what waits behind a feedback not taken is, with hawkBit, that action's own
(its later steps, its cancel). A feedback the server never takes (a ``5xx`` for ever) is tried again after
every backoff, never dropped: dropping a final step would leave the action open on the server
for ever, a rollout stalled; the snapshot shows it waiting (``feedback_waiting``,
``feedback_oldest_age_s``, ``last_error``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.logger import Logger

from gateway.clockstep import steady_seconds
from gateway.fleet.ddi import DDIClient, DDIError, refused_for_good
from gateway.fleet.pacing import RequestPacing
from gateway.fleet.state import Feedback, FleetState
from gateway.logthrottle import LogThrottle, since_last_line
from gateway.updates.operation import Status

#: Seconds between two log lines about feedback the server did not take, at least (it is sent
#: again after every backoff: a server refusing it for hours would write a line at each try).
FEEDBACK_LOG_INTERVAL = 600.0
#: The statuses that end an operation, as reported.
FINAL = frozenset(status.value for status in Status if status.final)


class FeedbackOutbox:
    """The outbox of one fleet service (``state().outbox``, persisted with the state).

    :param state: the fleet state in force (the service reads it anew at its start).
    :param clock: the reactor's clock.
    :param ddi: the DDI client.
    :param pacing: the service's backoff and ``Retry-After`` hold.
    :param save: persists the state; fires once written.
    :param note_wait: takes a ``Retry-After`` in (holds every request back, puts a poll off).
    :param noted_error: notes the cause of a feedback not taken, kept or dropped (the snapshot's last error).
    :param running: whether the service runs.
    :param log: the service's logger (its lines keep the service's namespace).
    """

    def __init__(self, state: Callable[[], FleetState], clock: Any, ddi: DDIClient, pacing: RequestPacing,
                 save: Callable[[], Deferred[Any]], note_wait: Callable[[DDIError], None],
                 noted_error: Callable[[str], None], running: Callable[[], bool], log: Logger) -> None:
        self.state = state
        self.clock = clock
        self.ddi = ddi
        self.pacing = pacing
        self.save = save
        self.note_wait = note_wait
        self.noted_error = noted_error
        self.running = running
        self.log = log
        #: a feedback answer asking the gateway to slow down (429, a Retry-After) since the poll cleared it
        self.slow_down: DDIError | None = None
        self._flushing = False
        #: feedback the server refused for good, dropped, since the start
        self.dropped = 0
        #: feedback not taken in a row (no answer, 5xx...), and the steady time before which none is sent again
        self._failures = 0
        self._retry_at = 0.0
        self._lines = LogThrottle(FEEDBACK_LOG_INTERVAL, lambda: steady_seconds(clock))

    def queue(self, kind: str, action_id: str, status: dict[str, Any], reported_id: str | None,
              reported: str | None) -> Deferred[Any]:
        """Persist a feedback in the outbox (queued now) and what it reports, then send what is due.

        :param kind: ``deploymentBase`` or ``cancelAction``.
        :param action_id: the action (or cancel action) it is about.
        :param status: the DDI ``status`` object.
        :param reported_id: the action whose step it reports (None: a cancel's answer that reports none).
        :param reported: that step (an operation status, ``refused``...), recorded as reported.
        """
        state = self.state()
        state.outbox.append(Feedback(kind, action_id, status, self.clock.seconds()))
        if reported_id is not None and reported is not None:
            if reported in FINAL:
                state.reported.pop(reported_id, None)  # (kept in the order the actions ended)
            state.reported[reported_id] = reported
        d = self.save()
        d.addCallback(lambda _: self.flush() if self.running() else None)
        return d

    @inlineCallbacks
    def flush(self, due: bool = False) -> Any:
        """Send the outbox in order; stop at the first feedback the server does not take (it is
        sent again by the first poll after a backoff: half to all of ``min_poll_interval`` x
        2^failures, at most ``retry_max_delay``). Only a 2xx takes it out, or a refusal for good (4xx other
        than 401, 403, 408, 429, or a quota exceeded: :func:`~gateway.fleet.ddi.refused_for_good`), logged
        and dropped: it would block the rest forever. A ``3xx`` is kept (a ``base_url`` put right
        delivers it). A ``429``
        or a ``Retry-After`` holds every request back (``note_wait``) and is kept in
        :attr:`slow_down` for the poll that sent it; nothing is sent while so held but by the
        poll that falls due then (``due``)."""
        now = steady_seconds(self.clock)
        if self._flushing or now < self._retry_at or (not due and now < self.pacing.held_until):
            return  # (backing off, or held back as the server asked: a later poll sends it)
        self._flushing = True
        try:
            while self.state().outbox and self.running():
                feedback = self.state().outbox[0]
                try:
                    yield self.ddi.feedback(feedback.kind, feedback.action_id, feedback.status, feedback.queued_at)
                except DDIError as error:
                    if not self.running():
                        return  # given up by the stop; kept in the outbox for the next start
                    elif refused_for_good(error):
                        self.dropped += 1
                        self.noted_error(str(error))  # (not taken: on the read side too)
                        self.log.error("fleet feedback refused by the server, dropped: {error}", error=str(error))
                    else:
                        self._not_taken(error)
                        return
                self._lines.reset()  # (out of the outbox: the next one not taken is news)
                self._failures, self._retry_at = 0, 0.0
                if not self.running():
                    # stopped meanwhile, the answer come all the same (a request that did not end when
                    # stopService gave it up): the next service has the state file now, and sends
                    # this feedback again
                    return
                outbox = self.state().outbox
                if outbox and outbox[0] is feedback:
                    outbox.pop(0)
                yield self.save()
        finally:
            self._flushing = False

    def _not_taken(self, error: DDIError) -> None:
        """Keep the feedback the server did not take for later: note why, take its
        ``Retry-After`` in, back off, log (at most once per :data:`FEEDBACK_LOG_INTERVAL`)."""
        self.noted_error(str(error))
        self.note_wait(error)
        if error.code == 429 or error.retry_after is not None:
            self.slow_down = error
        self._failures += 1
        self._retry_at = steady_seconds(self.clock) + self.pacing.backoff(self._failures)
        count = self._lines.note()
        if count is not None:
            self.log.warn("fleet feedback not accepted, kept for later ({since}): {error}", error=str(error),
                          since=since_last_line(count, "", f"logged at most once every {FEEDBACK_LOG_INTERVAL / 60:g}"
                                                " minutes until one is accepted"))
