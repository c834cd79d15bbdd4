"""The ``fleet`` service: polls a hawkBit DDI server and maps its actions onto the update
service's operations, reporting every step back as feedback.

Persist, then act: feedback goes into a persisted outbox before it is sent, and leaves it
only once the server accepted it; the update service persists the operations themselves,
so a restart resumes the operation (never installs twice) and sends what was not accepted.
"""

from __future__ import annotations

import copy
import hashlib
import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, DeferredLock, inlineCallbacks, succeed
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.atomic import set_aside
from gateway.clockstep import steady_seconds
from gateway.fleet.ddi import DDIClient, DDIError, poll_answer, refused_for_good
from gateway.fleet.deployment import Deployment, correlation_id, parse_deployment
from gateway.fleet.feedback import ddi_status, operation_feedback
from gateway.fleet.settings import FleetSettings
from gateway.fleet.snapshot import FleetActivity, FleetSnapshot
from gateway.fleet.state import Feedback, FleetState
from gateway.updates.errors import UpdateError
from gateway.updates.operation import FLEET_PREFIX, Operation, Status
from gateway.blocking import RunBlocking
from gateway.logthrottle import LogThrottle
from gateway.redaction import hide_inline_secrets

#: Actions whose end was said again in this process that are remembered, the last ones.
RESENT_KEPT = 100
#: Actions that ended remembered in the state (what was reported of them; apart, those the server
#: canceled before they installed anything), the last ones of each; besides them, every action the
#: state still needs (:meth:`FleetService._remembered`).
ENDED_KEPT = 1000
#: The longest ``config.polling.sleep`` taken from the server, in seconds: a day (hawkBit's own
#: limit is 23:59:59); a longer one (a mistake, a lie) would stop polling until a restart.
MAX_SLEEP = 86400.0
#: The spread of the wait after the first poll that goes well after a start or after failed polls
#: (a factor in 1 ± this, whatever ``poll_jitter``): a fleet restarted together (a power cut at a
#: site) or back together (the server's outage ended) spreads over a whole interval from then on.
RESPREAD = 0.5
#: Seconds between two log lines about feedback the server did not take, at least (it is sent
#: again after every backoff: a server refusing it for hours would write a line at each try).
FEEDBACK_LOG_INTERVAL = 600.0
#: Seconds between two log lines about failed polls for the same cause, at least (a short
#: ``retry_max_delay`` polls a server that is away every minute, a day long).
FAILING_LOG_INTERVAL = 600.0
#: The statuses that end an operation, as reported.
_FINAL = {status.value for status in Status if status.final}


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
                 uniform: Callable[[float, float], float] = random.uniform) -> None:
        self.settings = settings
        self.path = state_dir / "fleet" / "state.json"
        self.clock = clock
        self.ddi = ddi
        self.updates = updates
        self.attributes = attributes
        self.run_blocking = run_blocking
        self.uniform = uniform
        self.state = FleetState()
        #: polls failed in a row (0: the last poll went well)
        self._in_row = 0
        #: when the first of the failed polls in a row failed (None: the last poll went well)
        self._failing_since: float | None = None
        #: the steady time before which no request goes to the server (its Retry-After, spread)
        self._held_until = 0.0
        #: a feedback answer asking the gateway to slow down (429, a Retry-After) in this poll's flush
        self._slow_down: DDIError | None = None
        self._in_cycle = False
        #: feedback not taken in a row (no answer, 5xx...), and the steady time before which none is sent again
        self._feedback_failures = 0
        self._feedback_retry_at = 0.0
        #: polls tried and, of those, failed, since the start
        self._polls = 0
        self._poll_failures = 0
        #: the cause of the last failure (a poll's, a feedback's), cleared once a poll goes well
        self._last_error = ""
        #: for the snapshot: the last failure's cause and time (kept after a poll went well again)
        self._shown_error = ""
        self._shown_error_at: float | None = None
        #: when the last poll ended, how, and when a poll last went well (wall clock)
        self._last_poll_at: float | None = None
        self._last_outcome: Literal["ok", "failed", ""] = ""
        self._last_success_at: float | None = None
        #: the server's ``config.polling.sleep`` in force (None: it said none)
        self._sleep: float | None = None
        #: the action the last poll offered (its deploymentBase), "" when it offered none
        self._offered = ""
        self._refused_config = ""  # the digest of attributes the server refused as they are
        self._timer: IDelayedCall | None = None
        self._cycle_running: Deferred[Any] | None = None
        self._save_lock = DeferredLock()
        self._flushing = False
        self._feedback_lines = LogThrottle(FEEDBACK_LOG_INTERVAL, lambda: steady_seconds(clock))
        self._failing_lines = LogThrottle(FAILING_LOG_INTERVAL, lambda: steady_seconds(clock))
        self._unwatch: Callable[[], None] | None = None
        self._unhold: Callable[[], None] | None = None
        #: the actions whose end was said again in this process, the last :data:`RESENT_KEPT` (in order).
        self._resent: dict[str, None] = {}
        #: the actions left waiting for another deployment (logged once each): action -> its operation's id
        self._waiting: dict[str, str] = {}
        #: whether the update service has loaded its operations (which actions still have one)
        self._loaded = False

    # -- life -------------------------------------------------------------------------

    def startService(self) -> None:
        """Load the state; once the update service has loaded its operations, report the steps it
        took unseen and poll soon (after a random part of ``min_poll_interval``, so a fleet
        restarted together spreads out)."""
        super().startService()
        try:
            self.state = FleetState.load(self.path)
        except (ValueError, OSError) as error:  # (OSError: a directory or a loop of links in its place)
            self.log.error("fleet state unreadable ({error}), {kept}; starting afresh", error=str(error),
                           kept=set_aside(self.path))
            self.state = FleetState()
        for feedback in self.state.outbox:  # (a state from before queued_at was recorded: from now)
            if feedback.queued_at is None:
                feedback.queued_at = self.clock.seconds()
        if self.ddi.authorization:  # hawkBit's artifact links want the token too (that origin only)
            self.updates.downloader.credentials[self.ddi.origin] = self.ddi.authorization
        self._unwatch = self.updates.watch(self._operation_changed)
        self._unhold = self.updates.hold(self._needed)
        self.updates.when_loaded().addCallback(self._operations_loaded)

    def _operations_loaded(self, _: object) -> None:
        if not self.running:
            return
        self._loaded = True
        for operation in list(self.updates.operations.values()):
            if operation.correlation_id.startswith(FLEET_PREFIX):
                self._operation_changed(operation)
        self._schedule(self.uniform(0.0, self.settings.min_poll_interval))

    def stopService(self) -> Deferred[None]:
        """Stop polling and give up the DDI requests asked (the one under way is cancelled: a
        feedback stays in the saved outbox and is sent again after the start); fires when they, a
        poll under way and the last state write are done. A configuration change starts the next
        service only then: its first request never goes beside this one's last."""
        super().stopService()
        if self._unwatch is not None:
            self._unwatch()
        if self._unhold is not None:
            self._unhold()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        d: Deferred[Any] = self.ddi.close()  # (a feedback sent outside a poll is under way too)
        running = self._cycle_running
        if running is not None:
            running.cancel()
            d.addCallback(lambda _: running.addErrback(lambda _: None))
        return d.addCallback(lambda _: self._save_lock.run(lambda: succeed(None))).addCallback(lambda _: None)

    def snapshot(self) -> FleetSnapshot:
        """The fleet channel now: the server, the polls and their failures, the next poll, a
        ``Retry-After`` in force, the deployment under way, the feedback waiting."""
        now, steady = self.clock.seconds(), steady_seconds(self.clock)
        state: FleetActivity
        if not self.running:
            state = "stopped"
        elif self._cycle_running is not None:
            state = "polling"
        elif self._held_until > steady:
            state = "held"
        elif not self._loaded:
            state = "starting"
        else:
            state = "failing" if self._in_row else "waiting"
        timer = self._timer
        next_poll = max(0.0, timer.getTime() - now) if self.running and timer is not None and timer.active() else None
        action_id, action_status = self._action_now()
        queued = [f.queued_at for f in self.state.outbox if f.queued_at is not None]
        return FleetSnapshot(
            hide_inline_secrets(self.settings.base_url), self.settings.tenant, self.ddi.controller_id, state,
            self._polls, self._poll_failures, self._in_row, self._last_poll_at, self._last_outcome,
            self._last_success_at, self._shown_error, self._shown_error_at,
            now - (steady - self._failing_since) if self._failing_since is not None else None, next_poll,
            now + self._held_until - steady if self._held_until > steady else None, self._sleep,
            action_id, action_status, self.state.sw_version,
            len(self.state.outbox), max(0.0, now - min(queued)) if queued else None)

    def _action_now(self) -> tuple[str, str]:
        """The action under way and its step: the one whose operation runs, else the one the last
        poll offered (``DOWNLOADED`` once downloaded to wait for its maintenance window or the
        server's go, its operation's final status while the server has not taken that in,
        ``waiting`` before it starts: another deployment runs, or the server lets it not
        download yet); ``("", "")`` for none."""
        operation = self._running_deployment()
        if operation is not None:
            return operation.correlation_id[len(FLEET_PREFIX):], operation.status.value
        if not self._offered:
            return "", ""
        operation = self.updates.operations.get(correlation_id(self._offered))
        if operation is None:
            return self._offered, "waiting"
        if operation.action == "download" and operation.status == Status.FINISHED_SUCCESS:
            return self._offered, Status.DOWNLOADED.value
        return self._offered, operation.status.value

    def _schedule(self, delay: float) -> None:
        if self.running:
            self._timer = self.clock.callLater(max(delay, self._held_until - steady_seconds(self.clock)),
                                               self.poll_now)

    def _poll_wait(self, sleep: float, jitter: float) -> float:
        """The wait before the next poll: ``sleep`` (at least ``min_poll_interval``) times a random
        factor in 1 ± ``jitter``, the range moved up where it would start below ``min_poll_interval``
        (never sooner than that)."""
        base = max(sleep, self.settings.min_poll_interval)
        low = max(self.settings.min_poll_interval, base * (1 - jitter))
        return float(self.uniform(low, low + 2 * jitter * base))

    def _note_wait(self, error: DDIError) -> None:
        """Hold every request back as the server's ``Retry-After`` asks (at least that, plus a random
        part of up to half of it, at most ``retry_max_delay`` more: a fleet told to wait together
        comes back spread); a poll scheduled sooner is put off."""
        if error.retry_after is None:
            return
        wait = error.retry_after
        wait = float(self.uniform(wait, wait + min(wait / 2, self.settings.retry_max_delay)))
        now = steady_seconds(self.clock)
        if now + wait <= self._held_until:
            return
        self._held_until = now + wait
        if not self._in_cycle and self._timer is not None and self._timer.active() \
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
        self._in_cycle = True
        try:
            yield self._cycle_once()
        finally:
            self._in_cycle = False

    @inlineCallbacks
    def _cycle_once(self) -> Any:
        delay = self.settings.poll_interval
        try:
            self._slow_down = None
            yield self.flush(due=True)
            if self._slow_down is not None:
                raise self._slow_down  # the server asked to slow down: no poll now, a failed one
            body = yield self.ddi.poll()
            sleep, links = poll_answer(body)
            self._sleep = min(sleep, MAX_SLEEP) if sleep is not None else None
            sleep = self._sleep if self._sleep is not None else self.settings.poll_interval
            yield self._config_data("configData" in links)
            if "cancelAction" in links:
                yield self._cancel(links["cancelAction"])
            if "deploymentBase" in links:
                yield self._deploy(links["deploymentBase"])
            else:
                self._offered = ""
            if self._in_row:
                self._failing_lines.reset()  # (the next failed poll is logged at once)
                down = steady_seconds(self.clock) - (self._failing_since or steady_seconds(self.clock))
                self.log.info("fleet polls succeed again after {failures} failed in a row ({down:.0f}s down; the "
                              "last: {error})", failures=self._in_row, down=down, error=self._last_error)
            self._in_row, self._last_error, self._failing_since = 0, "", None
            self._polls += 1
            # (after the start or failed polls, the wait is respread over the interval)
            settled = self._last_outcome == "ok"
            self._last_poll_at = self._last_success_at = self.clock.seconds()
            self._last_outcome = "ok"
            delay = self._poll_wait(sleep, self.settings.poll_jitter if settled else RESPREAD)
        except DDIError as error:
            if not self.running:
                return  # given up by the stop: no failure of the server's, and no next poll
            previous = self._last_error
            if error is not self._slow_down:  # (that one was noted as the feedback failed)
                self._note_wait(error)
            delay = max(self._failed(str(error)), self._held_until - steady_seconds(self.clock))
            if self._failure_to_log(previous):
                log = self.log.error if error.code in (401, 403) else self.log.warn
                log("fleet poll failed ({failures} in a row), next in {delay:.0f}s: {error}",
                    failures=self._in_row, delay=delay, error=str(error))
        except Exception as error:  # (a state write on a full disk, say): polling must go on
            if isinstance(error, CancelledError) and not self.running:
                return  # given up by the stop while it waited for a state write: no next poll
            delay = self._failed("internal error (logged)")
            self.log.failure("fleet poll failed ({failures} in a row), next in {delay:.0f}s",
                             failures=self._in_row, delay=delay)
        self._schedule(delay)

    def _failure_to_log(self, previous: str) -> bool:
        """Whether the failed poll just counted is logged: the first of a run, one whose cause
        differs from the one before (``previous``), else at most one per
        :data:`FAILING_LOG_INTERVAL` (its count in a row says how many failed meanwhile)."""
        if self._in_row == 1 or self._last_error != previous:
            self._failing_lines.reset()
        return self._failing_lines.note() is not None

    def _failed(self, reason: str) -> float:
        """Count a failed poll; the delay before the next (half to all of the backoff's cap)."""
        if not self._in_row:
            self._failing_since = steady_seconds(self.clock)
        self._in_row += 1
        self._polls += 1
        self._poll_failures += 1
        self._error(reason)
        self._last_poll_at, self._last_outcome = self.clock.seconds(), "failed"
        return self._backoff(self._in_row)

    def _error(self, reason: str) -> None:
        """Note the cause of a failure (a poll's, a feedback's) and its time."""
        self._last_error = self._shown_error = reason
        self._shown_error_at = self.clock.seconds()

    def _backoff(self, failures: int) -> float:
        """The wait after ``failures`` in a row: half to all of ``min_poll_interval × 2^failures``,
        at most ``retry_max_delay``."""
        cap = min(self.settings.retry_max_delay, self.settings.min_poll_interval * 2 ** min(failures, 30))
        return float(self.uniform(cap / 2, cap))

    @inlineCallbacks
    def _config_data(self, asked: bool) -> Any:
        attributes = {**{str(k): str(v) for k, v in self.attributes().items()}, **self.settings.attributes}
        if self.state.sw_version:
            attributes["sw_version"] = self.state.sw_version
        digest = hashlib.sha256(json.dumps(attributes, sort_keys=True).encode()).hexdigest()
        if not asked and digest in (self.state.config_hash, self._refused_config):
            return
        try:
            yield self.ddi.put_config_data(attributes)
        except DDIError as error:
            if not refused_for_good(error):
                raise  # the server, the token or the way to it: the poll failed and is tried again
            # refused as it is (hawkBit: a value over 128 characters): sending it again changes
            # nothing, and failing the poll would keep every deployment from this device
            self._refused_config = digest
            self.log.warn("fleet configData refused, not sent again until the attributes change or the "
                          "server asks: {error}", error=str(error))
            return
        self.state.config_hash = digest
        yield self._save()
        self.log.info("fleet configData sent ({count} attributes)", count=len(attributes))

    # -- deployments ------------------------------------------------------------------

    @inlineCallbacks
    def _deploy(self, href: str) -> Any:
        body = yield self.ddi.get(href)
        try:
            deployment = parse_deployment(body)
        except UpdateError as error:
            action_id = str(body.get("id")) if isinstance(body, dict) and body.get("id") is not None else None
            self._offered = ""  # (refused: nothing under way)
            self.log.warn("fleet deployment refused: {error}", error=str(error))
            # Told once per process, as any action that ended (the server offers it until it has
            # taken the feedback in).
            if action_id is not None:
                yield self._say_again(action_id, ddi_status(
                    "closed", "failure", [f"deployment refused by the gateway: {error}"]), "refused")
            return
        self._offered = deployment.action_id
        yield self._start(deployment)

    @inlineCallbacks
    def _start(self, deployment: Deployment) -> Any:
        action_id = deployment.action_id
        if action_id in self.state.canceled:
            return
        operation: Operation | None = self.updates.operations.get(deployment.correlation_id)
        if operation is not None and not operation.status.final:
            return  # running: its steps are reported as they happen
        running = self._running_deployment(deployment.correlation_id)
        if running is not None:
            # One deployment at a time: run beside it, the earlier one could end last and leave the
            # gateway on its software. The server offers this one again at the next poll,
            # which decides then what it is (a new request, an end to tell again...).
            if self._waiting.get(action_id) != running.correlation_id:  # (said once, not at every poll)
                self._waiting[action_id] = running.correlation_id
                self.log.info("fleet action {id} waits: {running} is still {status}", id=action_id,
                              running=running.correlation_id, status=running.status.value)
            return
        self._waiting.clear()  # nothing runs: no action waits any more
        if self._installed_since(action_id):
            # gooseBit names an action by its software: an earlier software assigned again (a
            # rollback) comes back with its old action id. hawkBit never offers an action again
            # once another was installed after it.
            self.log.info("fleet action {id} offered again after action {last} was installed: a new request",
                          id=action_id, last=self.state.installed_action)
            del self.state.reported[action_id]
            self._resent.pop(action_id, None)
            operation = None
        if operation is not None and (operation.action == "install" or operation.status != Status.FINISHED_SUCCESS):
            # Done already (before a restart, say) and the server has not taken it in: say it again,
            # once per process; never install twice.
            yield self._say_again(action_id, operation_feedback(operation), operation.status.value)
            return
        ended = self.state.reported.get(action_id)
        if operation is None and ended in _FINAL:
            # Ended, and forgotten by the update service since (the server had taken in its final
            # feedback): said again from what was reported; never installed twice.
            result = "success" if ended == Status.FINISHED_SUCCESS.value else "failure"
            yield self._say_again(action_id, ddi_status("closed", result, [
                f"{ended.lower().replace('_', ' ')}: action {action_id} ended before; "
                "its operation is no longer kept"]), ended)
            return
        if operation is None and deployment.download == "skip":
            return  # the server does not let it download yet
        if not deployment.install_now and (operation is not None or (
                ended == Status.DOWNLOADED.value and action_id in self.state.download_only)):
            # downloaded; waiting for the window (or for the server to allow the update). A
            # download-only action whose operation is no longer kept is not downloaded again.
            return
        action: Literal["download", "install"] = "install" if deployment.install_now else "download"
        self.log.info("fleet action {id}: {action} (download {download}, update {update}, window {window})",
                      id=action_id, action=action, download=deployment.download, update=deployment.update,
                      window=deployment.window or "none")
        # (recorded before the start: its first step's feedback saves it)
        only = self.state.download_only
        if deployment.update == "skip" and action_id not in only:
            only.append(action_id)
        elif deployment.update != "skip" and action_id in only:
            only.remove(action_id)
        try:
            self.updates.start(deployment.operation(action))
        except UpdateError as error:
            if action_id in only:
                only.remove(action_id)
            yield self._queue(Feedback("deploymentBase", action_id, ddi_status("closed", "failure", [str(error)])),
                              action_id, "refused")

    def _running_deployment(self, correlation_id: str = "") -> Operation | None:
        """A deployment's operation that has not ended (another than ``correlation_id``'s), if there is one."""
        return next((op for cid, op in self.updates.operations.items()
                     if cid.startswith(FLEET_PREFIX) and cid != correlation_id and not op.status.final), None)

    def _installed_since(self, action_id: str) -> bool:
        """Whether ``action_id`` ended and another action was installed after it."""
        ended, last = list(self.state.reported), self.state.installed_action
        return (self.state.reported.get(action_id) in _FINAL and last not in ("", action_id) and last in ended
                and ended.index(last) > ended.index(action_id))

    def _say_again(self, action_id: str, feedback: dict[str, Any] | None, reported: str) -> Deferred[Any]:
        """Send the final ``feedback`` of an action the server offers again, once per process (for
        the last :data:`RESENT_KEPT` actions so told: the memory of them is bounded)."""
        if action_id in self._resent or any(f.action_id == action_id for f in self.state.outbox):
            return succeed(None)
        self._resent[action_id] = None
        if len(self._resent) > RESENT_KEPT:
            del self._resent[next(iter(self._resent))]
        if feedback is None:
            return succeed(None)
        return self._queue(Feedback("deploymentBase", action_id, feedback), action_id, reported)

    def _needed(self, operation: Operation) -> bool:
        """Whether the update service must keep the ended ``operation``: a deployment whose final
        step the server has not taken in yet (not reported, or its feedback in the outbox), and
        one downloaded to wait for its maintenance window (until it installs). A download ends
        at ``downloaded`` (nothing more is told): a download-only one (``update: skip``) is
        released once that is taken in; one not known as such (from a state written before
        ``download_only`` was) stays held."""
        if not operation.correlation_id.startswith(FLEET_PREFIX):
            return False
        action_id = operation.correlation_id[len(FLEET_PREFIX):]
        if any(f.kind == "deploymentBase" and f.action_id == action_id for f in self.state.outbox):
            return True
        reported = self.state.reported.get(action_id)
        if operation.action == "download" and operation.status == Status.FINISHED_SUCCESS:
            return reported != Status.DOWNLOADED.value or action_id not in self.state.download_only
        return reported != operation.status.value

    def _remembered(self) -> Callable[[str], bool]:
        """Whether the state must remember an action however long ago it ended: its operation is
        still kept (running, held, or among the update service's last ended: its steps are compared
        with what was reported), feedback or a cancel of it is pending, or it installed the software
        in place (offered again, it is told its end, never installed twice: :meth:`_installed_since`)."""
        pending = {f.action_id for f in self.state.outbox} | set(self.state.cancels) | {self.state.installed_action}
        return lambda action_id: action_id in pending or correlation_id(action_id) in self.updates.operations

    # -- cancel -----------------------------------------------------------------------

    @inlineCallbacks
    def _cancel(self, href: str) -> Any:
        body = yield self.ddi.get(href)
        try:
            cancel_id = str(body["id"])
            stop_id = str(body["cancelAction"]["stopId"])
        except (TypeError, KeyError):
            self.log.warn("fleet cancelAction without id/stopId: {body!r}", body=body)
            return
        operation: Operation | None = self.updates.operations.get(correlation_id(stop_id))
        if stop_id in self.state.cancels:
            if operation is not None and operation.status in (Status.STARTED, Status.DOWNLOADING):
                # Waiting for the operation to end; asked again, as a restart may have come between
                # the cancel recorded here and the download stopped (the update service resumed it).
                self.updates.cancel({"correlationId": operation.correlation_id})
            return
        if any(f.kind == "cancelAction" and f.action_id == cancel_id for f in self.state.outbox):
            return  # answered already
        ended = self.state.reported.get(stop_id) if operation is None else None
        if ended is not None and ended in _FINAL and ended != Status.CANCELED.value:
            # finished, and forgotten by the update service since: as finished as one still kept
            reason = f"action {stop_id} is {ended.lower()}; it can no longer be canceled"
        elif operation is None or operation.status == Status.CANCELED or (
                operation.action == "download" and operation.status == Status.FINISHED_SUCCESS):
            if stop_id not in self.state.canceled:
                self.state.canceled.append(stop_id)
            # (reported DOWNLOADED with no operation: a download-only action, its operation forgotten)
            why = "it had not started" if operation is None and ended is None else "nothing was installed"
            if operation is not None and operation.status == Status.FINISHED_SUCCESS:
                # downloaded for an install that will never come now: the files go
                yield self.updates.discard(operation.correlation_id)
                why += "; its downloaded files were removed"
            yield self._queue(Feedback("cancelAction", cancel_id, ddi_status("closed", "success",
                                                                              [f"action {stop_id} canceled: {why}"])))
            return
        elif operation.status in (Status.STARTED, Status.DOWNLOADING):
            self.state.cancels[stop_id] = cancel_id
            yield self._save()
            try:
                self.updates.cancel({"correlationId": operation.correlation_id})
                return  # answered when the operation ends (_operation_changed)
            except UpdateError as error:
                del self.state.cancels[stop_id]
                reason = str(error)
        else:
            reason = f"action {stop_id} is {operation.status.value.lower()}; it can no longer be canceled"
        yield self._queue(Feedback("cancelAction", cancel_id, ddi_status("rejected", "none", [reason])))

    # -- update steps -> feedback -------------------------------------------------------

    def _operation_changed(self, operation: Operation) -> None:
        cid = operation.correlation_id
        if not cid.startswith(FLEET_PREFIX):
            return
        action_id = cid[len(FLEET_PREFIX):]
        work: list[tuple[Feedback, str | None, str | None]] = []
        cancel_id = self.state.cancels.pop(action_id) if operation.status.final and action_id in self.state.cancels \
            else None
        if self.state.reported.get(action_id) != operation.status.value:
            # a cancel the server asked for is answered on its cancelAction (below); one asked for
            # on the gateway (a Kanto cancel) closes the deployment
            server_canceled = cancel_id is not None and operation.status == Status.CANCELED
            feedback = None if server_canceled else operation_feedback(operation)
            if feedback is not None:
                work.append((Feedback("deploymentBase", action_id, feedback), action_id, operation.status.value))
            # Only a success not reported yet is the latest install: at a start every finished
            # operation is seen again, in no particular order.
            if operation.status == Status.FINISHED_SUCCESS and operation.action == "install" and operation.modules:
                self.state.sw_version = operation.modules[0].version  # saved with its feedback, queued below
                self.state.installed_action = action_id
        if cancel_id is not None:
            if operation.status == Status.CANCELED:
                status = ddi_status("closed", "success", [f"action {action_id} canceled while downloading"])
            else:
                status = ddi_status("rejected", "none", [f"action {action_id} ended {operation.status.value} "
                                                         f"before it could be canceled: {operation.message}"])
            # (recorded as reported: after a restart the cancel is not taken for the gateway's own)
            work.append((Feedback("cancelAction", cancel_id, status), action_id, operation.status.value))
        for queued, reported_id, reported in work:
            self._queue(queued, reported_id, reported).addErrback(
                lambda f: self.log.failure("could not queue fleet feedback", f))

    # -- the outbox -------------------------------------------------------------------

    def _queue(self, feedback: Feedback, action_id: str | None = None, reported: str | None = None
               ) -> Deferred[Any]:
        """Persist ``feedback`` in the outbox (and what it reports), then send what is due."""
        if feedback.queued_at is None:
            feedback.queued_at = self.clock.seconds()
        self.state.outbox.append(feedback)
        if action_id is not None and reported is not None:
            if reported in _FINAL:
                self.state.reported.pop(action_id, None)  # (kept in the order the actions ended)
            self.state.reported[action_id] = reported
        d = self._save()
        d.addCallback(lambda _: self.flush() if self.running else None)
        return d

    def _save(self) -> Deferred[Any]:
        if self._loaded:  # (before, an action's operation is not known yet: nothing is forgotten)
            self.state.trim(ENDED_KEPT, self._remembered())
        snapshot = copy.deepcopy(self.state)  # the write runs in a thread; the state goes on changing
        writing = self._save_lock.run(self.run_blocking, snapshot.save, self.path)
        # A stop cancels the poll that waits here, not the write: the thread writes on, and the
        # lock (which the stop waits for) is held until it has written.
        waiting: Deferred[Any] = Deferred()

        def unwaited(failure: Failure) -> Failure | None:
            if not waiting.called:
                return failure  # (the poll waiting for it logs it)
            self.log.failure("fleet state write failed as the service stopped: the saved state is the one before",
                             failure)
            return None

        writing.addErrback(unwaited).chainDeferred(waiting)
        return waiting

    @inlineCallbacks
    def flush(self, due: bool = False) -> Any:
        """Send the outbox in order; stop at the first feedback the server does not take (it is
        sent again by the first poll after a backoff: half to all of ``min_poll_interval`` x
        2^failures, at most ``retry_max_delay``). Only a 2xx takes it out, or a refusal for good (4xx other
        than 401, 403, 408, 429), logged and dropped: it would block the rest forever. A ``429``
        or a ``Retry-After`` holds every request back (:meth:`_note_wait`) and fails the poll
        that sent it; nothing is sent while so held but by the poll that falls due then (``due``)."""
        now = steady_seconds(self.clock)
        if self._flushing or now < self._feedback_retry_at or (not due and now < self._held_until):
            return  # (backing off, or held back as the server asked: a later poll sends it)
        self._flushing = True
        try:
            while self.state.outbox and self.running:
                feedback = self.state.outbox[0]
                try:
                    yield self.ddi.feedback(feedback.kind, feedback.action_id, feedback.status)
                except DDIError as error:
                    if error.code is not None and 200 <= error.code < 300:
                        pass  # taken in; only the answer's body was not JSON
                    elif not self.running:
                        return  # given up by the stop; kept in the outbox for the next start
                    elif refused_for_good(error):
                        self.log.error("fleet feedback refused by the server, dropped: {error}", error=str(error))
                    else:
                        self._error(str(error))
                        self._note_wait(error)
                        if error.code == 429 or error.retry_after is not None:
                            self._slow_down = error
                        self._feedback_failures += 1
                        self._feedback_retry_at = steady_seconds(self.clock) + self._backoff(self._feedback_failures)
                        count = self._feedback_lines.note()
                        if count is not None:
                            self.log.warn("fleet feedback not accepted, kept for later ({count} since the last such"
                                          " line; logged at most once every {interval:g} minutes until one is"
                                          " accepted): {error}", count=count, interval=FEEDBACK_LOG_INTERVAL / 60,
                                          error=str(error))
                        return
                self._feedback_lines.reset()  # (out of the outbox: the next one not taken is news)
                self._feedback_failures, self._feedback_retry_at = 0, 0.0
                if not self.running:
                    # stopped meanwhile, the answer come all the same (a request that did not end when
                    # stopService gave it up): the next service has the state file now, and sends
                    # this feedback again
                    return
                if self.state.outbox and self.state.outbox[0] is feedback:
                    self.state.outbox.pop(0)
                yield self._save()
        finally:
            self._flushing = False
