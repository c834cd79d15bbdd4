"""The ``fleet`` service: polls a hawkBit DDI server and maps its actions onto the update
service's operations, reporting every step back as feedback.

Persist, then act: feedback goes into a persisted outbox before it is sent, and leaves it
only once the server accepted it; the update service persists the operations themselves,
so a restart resumes the operation (never installs twice) and sends what was not accepted.

This module owns the service's life and its poll; its parts: :mod:`gateway.fleet.pacing` (when
the next request may go), :mod:`gateway.fleet.pollrecord` (how the polls went),
:mod:`gateway.fleet.configdata`, :mod:`gateway.fleet.actions` (deployments, cancels, steps as
feedback), :mod:`gateway.fleet.outbox` (the feedback, sent in order) and
:mod:`gateway.fleet.statefile`.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, inlineCallbacks
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from gateway.blocking import RunBlocking
from gateway.clockstep import BootClock, ClockOf, clock_of, same_clock, steady_seconds, watch_steps
from gateway.fleet.actions import FleetActions
from gateway.fleet.configdata import ConfigDataSender
from gateway.fleet.ddi import DDIClient, DDIError, poll_answer
from gateway.fleet.outbox import FeedbackOutbox
from gateway.fleet.pacing import MAX_SLEEP, RESPREAD, RequestPacing
from gateway.fleet.pollrecord import PollRecord
from gateway.fleet.settings import FleetSettings
from gateway.fleet.snapshot import FleetActivity, FleetSnapshot
from gateway.fleet.state import Feedback, FleetState
from gateway.fleet.statefile import FleetStateFile
from gateway.updates.operation import FLEET_PREFIX
from gateway.redaction import hide_inline_secrets

#: Actions that ended remembered in the state (what was reported of them; apart, those the server
#: canceled before they installed anything), the last ones of each; besides them, every action the
#: state still needs (:meth:`gateway.fleet.actions.FleetActions.remembered`).
ENDED_KEPT = 1000


class FleetService(Service):
    """One gateway's DDI controller.

    :param settings: the ``fleet`` section.
    :param state_dir: the state directory (``<state_dir>/fleet/state.json``).
    :param clock: the reactor's clock.
    :param ddi: the DDI client.
    :param updates: the update service (``operations``, ``start``, ``cancel``, ``watch``).
    :param attributes: the gateway's attributes for ``configData`` (strings only).
    :param run_blocking: runs the state file's writes off the reactor.
    :param uniform: ``random.uniform`` (tests pass a fixed one).
    """

    name = "fleet"  # type: ignore[assignment]
    log = Logger()

    def __init__(self, settings: FleetSettings, state_dir: Path, clock: Any, ddi: DDIClient, updates: Any,
                 attributes: Callable[[], dict[str, str]], run_blocking: RunBlocking,
                 uniform: Callable[[float, float], float] = random.uniform, boot: BootClock | None = None) -> None:
        self.settings = settings
        self.boot = boot
        self.clock = clock
        self.ddi = ddi
        self.updates = updates
        self.state = FleetState()
        self.file = FleetStateFile(state_dir / "fleet" / "state.json", run_blocking, self.log)
        self.pacing = RequestPacing(settings, clock, uniform)
        self.record = PollRecord(clock, self.log)
        self.outbox = FeedbackOutbox(lambda: self.state, clock, ddi, self.pacing, self._save, self._note_wait,
                                     self.record.error, lambda: bool(self.running), self.log)
        self.actions = FleetActions(lambda: self.state, updates, ddi, self.outbox.queue, self._save, self.log)
        self.config_data = ConfigDataSender(lambda: self.state, settings.attributes, attributes, ddi, self._save,
                                            self.record.error, self.log)
        #: the server's ``config.polling.sleep`` in force (None: it said none)
        self._sleep: float | None = None
        # The next poll's timer. It is never active while a poll runs (poll_now cancels it, the
        # poll's end sets the next), which is how a Retry-After noted during a poll (_note_wait)
        # knows to leave the scheduling to that poll's end.
        self._timer: IDelayedCall | None = None
        self._cycle_running: Deferred[Any] | None = None
        self._unwatch: Callable[[], None] | None = None
        self._unwatch_steps: Callable[[], None] = lambda: None  # (while running: stops hearing of clock steps)
        # The feedback whose queued_at (by id: the objects kept alive here), and whether the hold's
        # end, were read at the start off another wall clock than this one (another boot's): a
        # step of this one does not move them.
        self._elsewhere: dict[int, Feedback] = {}
        self._hold_elsewhere = False
        self._unhold: Callable[[], None] | None = None
        #: whether the update service has loaded its operations (which actions still have one)
        self._loaded = False

    # -- life -------------------------------------------------------------------------

    def startService(self) -> None:
        """Load the state; once the update service has loaded its operations, report the steps it
        took unseen and poll soon (after a random part of ``min_poll_interval``, so a fleet
        restarted together spreads out; after a configuration change, :meth:`goes_on_from`)."""
        super().startService()
        self.state = self.file.load(self.clock.seconds())
        self.pacing.resume(self.state.held_until)  # (the server's Retry-After, before a restart)
        if self.pacing.held_for() <= 0:
            self.state.held_until = 0.0  # (a hold that ended: no time to keep, nor to move)
        here = self._clock_here()
        if here is None or not same_clock(self.state.clock, here):
            self._elsewhere = {id(f): f for f in self.state.outbox if f.queued_at is not None}
            self._hold_elsewhere = bool(self.state.held_until)
        if self.ddi.authorization:  # hawkBit's artifact links want the token too (that origin only)
            self.updates.downloader.credentials[self.ddi.origin] = self.ddi.authorization
        self._unwatch = self.updates.watch(self.actions.operation_changed)
        self._unwatch_steps = watch_steps(self.clock, self._clock_stepped)
        self._unhold = self.updates.hold(self.actions.needed)
        self.updates.when_loaded().addCallback(self._operations_loaded)

    def _operations_loaded(self, _: object) -> None:
        if not self.running:
            return
        self._loaded = True
        for operation in list(self.updates.operations.values()):
            if operation.correlation_id.startswith(FLEET_PREFIX):
                self.actions.operation_changed(operation)
        self._schedule(self.pacing.first_poll_wait())

    def _clock_here(self) -> ClockOf | None:
        """The wall clock as it reads now in this boot (None: the boot is not known)."""
        return clock_of(self.boot, self.clock.seconds()) if self.boot is not None else None

    def _clock_stepped(self, step: float) -> None:
        """The wall clock stepped by ``step`` seconds: the times of the state read on it (when each
        feedback was queued, the end of a ``Retry-After`` hold) follow it, so that the oldest
        feedback's wait and a hold kept across a restart stay what they were; saved again. Those
        read at the start off another clock (before a reboot: a gateway booted at 1970 that NTP
        sets) were not on the clock that stepped, and stay."""
        moved = False
        for feedback in self.state.outbox:
            if feedback.queued_at is not None and id(feedback) not in self._elsewhere:
                feedback.queued_at += step
                moved = True
        if self.state.held_until and not self._hold_elsewhere:  # (0: no hold)
            self.state.held_until += step
            moved = True
        if moved:
            self._save().addErrback(lambda f: self.log.failure("could not save the fleet's state after a step of"
                                                               " the wall clock", f))

    def goes_on_from(self, previous: FleetService) -> None:
        """A configuration change restarted the tree, not the process: when ``previous`` (stopped)
        polled the same server (``base_url`` and ``tenant``), the first poll comes no sooner than
        ``min_poll_interval`` after its last poll that went well; otherwise it is a start's (a
        ``Retry-After`` in force is kept in the state file, whatever the server)."""
        last_success = previous.record.last_success_steady
        if last_success is not None and (previous.settings.base_url, previous.settings.tenant) == (
                self.settings.base_url, self.settings.tenant):
            self.pacing.first_poll_after(last_success)

    def stopService(self) -> Deferred[None]:
        """Stop polling and give up the DDI requests asked (the one under way is cancelled: a
        feedback stays in the saved outbox and is sent again after the start); fires when they, a
        poll under way and the last state write are done. A configuration change starts the next
        service only then: its first request never goes beside this one's last."""
        super().stopService()
        if self._unwatch is not None:
            self._unwatch()
        self._unwatch_steps()
        if self._unhold is not None:
            self._unhold()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        d: Deferred[Any] = self.ddi.close()  # (a feedback sent outside a poll is under way too)
        running = self._cycle_running
        if running is not None:
            running.cancel()
            d.addCallback(lambda _: running.addErrback(lambda _: None))
        return d.addCallback(lambda _: self.file.written())

    def snapshot(self) -> FleetSnapshot:
        """The fleet channel now: the server, the polls and their failures, the next poll, a
        ``Retry-After`` in force, the deployment under way, the feedback waiting."""
        now, steady = self.clock.seconds(), steady_seconds(self.clock)
        record, held_until = self.record, self.pacing.held_until
        state: FleetActivity
        if not self.running:
            state = "stopped"
        elif self._cycle_running is not None:
            state = "polling"
        elif not self._loaded:
            state = "starting"  # (a Retry-After kept from before the restart shows in held_until)
        elif held_until > steady:
            state = "held"
        else:
            state = "failing" if record.in_row else "waiting"
        timer = self._timer
        next_poll = max(0.0, timer.getTime() - now) if self.running and timer is not None and timer.active() else None
        action_id, action_status = self.actions.under_way()
        queued = [f.queued_at for f in self.state.outbox if f.queued_at is not None]
        return FleetSnapshot(
            hide_inline_secrets(self.settings.base_url), self.settings.tenant, self.ddi.controller_id, state,
            record.polls, record.failures, record.in_row, record.last_poll_at, record.last_outcome,
            record.last_success_at, record.shown_error, record.shown_error_at,
            now - (steady - record.failing_since) if record.failing_since is not None else None, next_poll,
            now + held_until - steady if held_until > steady else None, self._sleep,
            action_id, action_status, self.state.sw_version,
            len(self.state.outbox), max(0.0, now - min(queued)) if queued else None, self.outbox.dropped)

    def _save(self) -> Deferred[Any]:
        """Persist the state (trimmed to what must be remembered once the operations are known)."""
        if self._loaded:  # (before, an action's operation is not known yet: nothing is forgotten)
            self.state.trim(ENDED_KEPT, self.actions.remembered())
        if self._elsewhere:
            sent = self._elsewhere.keys() - {id(f) for f in self.state.outbox}
            for gone in sent:  # (taken by the server: let go)
                del self._elsewhere[gone]
        if self._hold_elsewhere and self.pacing.held_for() <= 0:  # (ended: no time of another clock to keep)
            self.state.held_until, self._hold_elsewhere = 0.0, False
        # (times of two clocks: none is named, and a start reads them all as of another clock)
        self.state.clock = self._clock_here() if not (self._elsewhere or self._hold_elsewhere) else None
        return self.file.save(self.state)

    # -- when the next poll goes -------------------------------------------------------

    def _schedule(self, delay: float) -> None:
        if self.running:
            self._timer = self.clock.callLater(max(delay, self.pacing.held_for()), self.poll_now)

    def _note_wait(self, error: DDIError) -> None:
        """Hold every request back as the server's ``Retry-After`` asks
        (:meth:`~gateway.fleet.pacing.RequestPacing.hold`); a poll scheduled sooner is put off (one
        under way schedules the next itself, at its end). The hold is saved: the service started
        after a restart keeps to it."""
        wait = self.pacing.hold(error)
        if wait is not None:
            self.state.held_until = self.clock.seconds() + wait
            self._hold_elsewhere = False
            self._save().addErrback(lambda f: self.log.failure("could not save the fleet's Retry-After hold", f))
        if wait is not None and self._timer is not None and self._timer.active() \
                and self._timer.getTime() - self.clock.seconds() < wait:
            self._timer.reset(wait)

    def poll_now(self) -> Deferred[Any]:
        """Poll once now (unless a poll is under way), then schedule the next."""
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        if self._cycle_running is not None:
            return self._cycle_running
        d = self._cycle_running = self._cycle()

        def done(result: Any) -> Any:
            self._cycle_running = None
            return result

        return d.addBoth(done)

    # -- one poll ---------------------------------------------------------------------

    @inlineCallbacks
    def _cycle(self) -> Any:
        delay = self.settings.poll_interval
        try:
            self.outbox.slow_down = None
            yield self.outbox.flush(due=True)
            if self.outbox.slow_down is not None:
                raise self.outbox.slow_down  # the server asked to slow down: no poll now, a failed one
            body = yield self.ddi.poll()
            sleep, links = poll_answer(body)
            self._sleep = min(sleep, MAX_SLEEP) if sleep is not None else None
            sleep = self._sleep if self._sleep is not None else self.settings.poll_interval
            yield self.config_data.send("configData" in links)
            if "cancelAction" in links:
                yield self.actions.cancel(links["cancelAction"])
            if "deploymentBase" in links:
                yield self.actions.deploy(links["deploymentBase"])
            else:
                self.actions.offered = ""
                if "confirmationBase" in links and (yield self.actions.confirm(links["confirmationBase"])):
                    sleep = 0.0  # its deploymentBase comes with the next poll: as soon as min_poll_interval
            # (after the start or failed polls, the wait is respread over the interval)
            settled = self.record.succeeded()
            delay = self.pacing.poll_wait(sleep, self.settings.poll_jitter if settled else RESPREAD)
        except DDIError as error:
            if not self.running:
                return  # given up by the stop: no failure of the server's, and no next poll
            if error is not self.outbox.slow_down:  # (that one was noted as the feedback failed)
                self._note_wait(error)
            delay = max(self.pacing.backoff(self.record.failed(str(error))), self.pacing.held_for())
            if self.record.failure_to_log():
                log = self.log.error if error.code in (401, 403) else self.log.warn
                log("fleet poll failed ({failures} in a row), next in {delay:.0f}s: {error}",
                    failures=self.record.in_row, delay=delay, error=str(error))
        except Exception as error:  # (a state write on a full disk, say): polling must go on
            if isinstance(error, CancelledError) and not self.running:
                return  # given up by the stop while it waited for a state write: no next poll
            delay = self.pacing.backoff(self.record.failed("internal error (logged)"))
            self.log.failure("fleet poll failed ({failures} in a row), next in {delay:.0f}s",
                             failures=self.record.in_row, delay=delay)
        self._schedule(delay)
