"""Safe configuration changes: check the whole result, write the remote drop-in, restart
the services, and (when asked) confirm the change by the cloud links or revert it.

A change is a mapping of dotted key paths to new values. :meth:`ConfigChanger.apply`
checks the whole resulting configuration with the loader (every error, worded as
``--check-config`` words them), writes ``conf.d/90-remote.yaml`` atomically, and restarts
the service tree with it. With ``confirm_within`` the change is *pending*: it is kept once
the cloud links that were up before it are up again (any link, when none was), and
reverted when they are not within that many seconds: the previous drop-in is restored
and the tree restarted with it. The pending change is on disk before the new drop-in is,
so a restart (a crash, a reboot) inside the window resumes the wait, and one after the
deadline reverts before anything starts (its deadline is kept on the boot's clock too, which
no step of the wall clock moves: :func:`_wait`); the report of that revert is owed on disk before
the revert, so a crash before it is published sends it at the next start. Every outcome is
reported on a local topic (``commands.report_topic``) that the default routes take upstream
as telemetry.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Mapping, Sequence

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredLock, fail, inlineCallbacks, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway import config as gateway_config
from gateway.atomic import read_json, remove_durably, set_aside, write_json_atomically
from gateway.clockstep import CLOCK_SET_SINCE, STEP_TOLERANCE, BootClock, in_boot, steady_seconds
from gateway.commands import dropin
from gateway.commands.settings import CommandsSettings
from gateway.deadlinecall import DeadlineCall
from gateway.errors import ConfigApplyConflict, ConfigCheckError, ConfigError, ConfigKeyError, ConfigRevertError
from gateway.readonlyfs import read_only_at
from gateway.readside import NEVER_SHOWN
from gateway.redaction import redact_error
from gateway.shown import shown_key_path

#: Runs a blocking callable off the reactor thread.
Blocking = Callable[[Callable[[], Any]], "Deferred[Any]"]
#: Link name -> (connected, cause of the last disconnection).
LinkStates = Callable[[], Mapping[str, tuple[bool, str]]]
#: Restarts the service tree with a configuration; fires with the names of the services started.
TreeRestart = Callable[[gateway_config.Config], "Deferred[tuple[str, ...]]"]
#: Where the pending change is kept, under the state directory.
PENDING_FILE = Path("commands") / "pending-config.json"
#: Its mode, at every write: the previous drop-in it holds may hold secrets (a link's password).
PENDING_MODE = 0o640
#: The reports owed (a revert done at start, a change that failed), a list kept until each
#: is published, under the state directory.
OWED_REPORT_FILE = Path("commands") / "reverted-report.json"

#: The key of an owed ``reverted`` report made by a start that names the pending change it
#: reverts (its origin and ``applied_at``): kept on disk, never published. A start that finds
#: that change still pending drops the report: its revert was refused (or did not finish),
#: and the revert that does finish owes its own.
REVERTED_CHANGE = "revertedChange"
#: Seconds between log lines while removing the pending change's file keeps failing (it is
#: tried again every ``poll_interval``; the first failure is logged at once).
FORGET_LOG_INTERVAL = 60.0


@dataclass(frozen=True)
class ApplyResult:
    """How an apply ended.

    :ivar applied: the new configuration runs.
    :ivar errors: why it was refused (every configuration error) or failed.
    :ivar restarted: the services restarted with it.
    :ivar confirm_deadline: when it is reverted unless confirmed (clock seconds), or None.
    :ivar outcome: ``applied``; ``invalid`` (refused by its check: nothing written);
        ``not_written`` (the drop-in or the pending change could not be written: nothing
        changed); ``not_checked`` (its check could not be run, see
        :class:`~gateway.errors.ConfigCheckError`: nothing written); ``not_started`` (valid,
        but the services did not start with it: the previous configuration was restored).
    :ivar required_links: with a ``confirm_deadline``, the links that confirm it once all are
        up again (those connected when it was made); empty: any one link up confirms it.
    :ivar warnings: when applied, what the new configuration asks for that it may not mean (its
        check's :attr:`~gateway.commands.dropin.CheckOutcome.warnings`, as ``--check-config``
        prints them); else empty.
    """

    applied: bool
    errors: tuple[str, ...]
    restarted: tuple[str, ...]
    confirm_deadline: float | None
    outcome: Literal["applied", "invalid", "not_written", "not_checked", "not_started"]
    required_links: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class PendingChange:
    """A change waiting for its confirmation, as kept on disk.

    :ivar origin: who asked (``remote:<request-id>``, ``admin``...).
    :ivar keys: the key paths it changed (values are left out: they may be secrets).
    :ivar previous: the remote drop-in before it (None: there was none); never shown
        (:data:`~gateway.readside.NEVER_SHOWN`): its text may hold secrets set earlier.
    :ivar deadline: clock seconds by which it must be confirmed.
    :ivar required_links: the links that were connected when it was made: it is confirmed once
        all of those still configured are up again (none: any one link up).
    :ivar applied_at: clock seconds when it was applied.
    :ivar boot: the id of the boot whose clock ``boot_deadline`` is on ("": none, as in a
        change kept by an earlier version of the gateway).
    :ivar boot_deadline: the deadline on that boot's clock (:class:`~gateway.clockstep.BootClock`).
    """

    origin: str
    keys: tuple[str, ...]
    previous: str | None = field(metadata={NEVER_SHOWN: True})
    deadline: float
    required_links: tuple[str, ...]
    applied_at: float
    boot: str = ""
    boot_deadline: float = 0.0

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "PendingChange":
        """Read it back from :func:`dataclasses.asdict` output.

        :raises KeyError, TypeError, ValueError: when ``data`` is not such output.
        """
        if not isinstance(data["previous"], (str, type(None))):
            raise ValueError("previous: not the text of a drop-in")
        return cls(str(data["origin"]), tuple(data["keys"]), data["previous"], float(data["deadline"]),
                   tuple(data["required_links"]), float(data["applied_at"]), str(data.get("boot", "")),
                   float(data.get("boot_deadline", 0.0)))


def _wait(pending: PendingChange, now: float, boot: BootClock | None) -> float:
    """Seconds from ``now`` (the wall clock) until ``pending`` is reverted, never more than its
    whole window.

    While the machine has not rebooted since the change was made, its deadline on the boot's
    clock, which no step of the wall clock moves: a gateway without a real-time clock that
    made the change at 1970 and was stepped forward by NTP before a restart reverted it at
    that start, the wall deadline long past. After a reboot only the wall clock is left: its
    deadline, unless the change was made before the clock was set (before
    :data:`~gateway.clockstep.CLOCK_SET_SINCE`) and it is set now (the time between cannot be
    told: the whole window from now). Never more than the whole window: a clock behind the time
    the change was made (a gateway started again at 1970, or at a time saved before the change)
    would otherwise put the deadline years away, and a change that broke the link (and so NTP)
    would never be reverted."""
    window = pending.deadline - pending.applied_at
    if boot is not None and in_boot(boot, pending.boot):
        left = pending.boot_deadline - boot.seconds()
    elif pending.applied_at < CLOCK_SET_SINCE <= now:
        left = window
    else:
        left = pending.deadline - now
    return max(0.0, min(left, window))


def _counted_from(pending: PendingChange, now: float, boot: BootClock | None) -> PendingChange:
    """``pending`` with its deadline :func:`_wait` seconds after ``now`` on the wall clock (and
    on ``boot``'s clock, when there is one), its window kept."""
    left = _wait(pending, now, boot)
    window = pending.deadline - pending.applied_at
    counted = dataclasses.replace(pending, deadline=now + left, applied_at=now + left - window)
    if boot is None:
        return counted
    return dataclasses.replace(counted, boot=boot.boot, boot_deadline=boot.seconds() + left)


class ConfigChanger(Service):
    """Applies configuration changes, one at a time, confirming or reverting them.

    A child of the root that the tree restart keeps: its watch outlives the services it
    restarts. Call :meth:`recover` before the tree is built and :meth:`resume` once it
    has started.

    :param config: the configuration running now.
    :param settings: the ``commands`` section.
    :param clock: for the confirm window.
    :param restart_tree: restarts every other service with a new configuration.
    :param link_states: the cloud links' states now.
    :param publish: publishes a report locally ``(topic, payload, qos, retain)``.
    :param blocking: runs file work off the reactor thread.
    :param on_fatal: called when even the previous configuration does not start again.
    :param poll_interval: seconds between looks at the links while a change is pending.
    :param hosted_apps: ``(program, app, version)`` of each installed app's and container
        app's program running now, those the configuration declares left out: a change may
        not declare a program of one of their names (:func:`~gateway.commands.dropin.hosted_names_taken`).
    :param boot_clock: this boot's clock, on which a pending change's deadline is kept beside
        the wall clock's (None: on the wall clock only).
    """

    name = "config"  # type: ignore[assignment]
    log = Logger()

    def __init__(self, config: gateway_config.Config, settings: CommandsSettings, clock: IReactorTime,
                 restart_tree: TreeRestart, link_states: LinkStates,
                 publish: Callable[[str, bytes, int, bool], Any], blocking: Blocking,
                 on_fatal: Callable[[Failure], None] | None = None, poll_interval: float = 0.5,
                 hosted_apps: Callable[[], Iterable[tuple[str, str, str]]] = lambda: (),
                 boot_clock: BootClock | None = None,
                 read_only: Callable[[Path], Path | None] = read_only_at) -> None:
        self.config = config
        self.settings = settings
        self.clock = clock
        self._restart_tree = restart_tree
        self._link_states = link_states
        self._publish = publish
        self._blocking = blocking
        self._on_fatal = on_fatal
        self._poll_interval = poll_interval
        self._hosted_apps = hosted_apps
        self._boot_clock = boot_clock
        self._read_only = read_only
        self._pending_file = config.state_dir / PENDING_FILE
        self._owed_report_file = config.state_dir / OWED_REPORT_FILE
        self._pending: PendingChange | None = None
        self._busy = False
        self._idle_waiters: list[Deferred[None]] = []  # when_idle's, fired when _busy goes
        self._closed = False  # the gateway's stop has begun: no change is taken
        self._poll: LoopingCall | None = None
        self._timer: DeadlineCall | None = None
        self._looked_at_deadline: PendingChange | None = None  # the change its deadline last looked at the links for
        self._owed: list[dict[str, Any]] = []  # reports not yet published, as on disk
        self._owed_lock = DeferredLock()  # one write of the owed reports at a time
        self._unremoved: str | None = None  # origin of a reverted change whose file is still there
        self._forget_failures = 0  # failed removals of the pending change's file in a row
        self._forget_logged_at = 0.0

    # -- reading --------------------------------------------------------------------------

    def get(self, path: str) -> Any:
        """The value at a dotted key path of the running configuration (defaults included;
        secrets are not redacted: callers decide).

        :raises ConfigKeyError: when the path names nothing.
        """
        return dropin.get_value(self.config, path)

    def check(self, changes: Mapping[str, Any]) -> Deferred[dropin.CheckOutcome]:
        """Every error the whole configuration would have with ``changes`` (none when valid), and
        then its warnings.

        Fires once the check (file reads, a trial load in a temporary directory) has run off
        the reactor thread; fails with :class:`~gateway.errors.ConfigCheckError` when that trial
        load cannot be set up.
        """
        config = self.config
        hosted = list(self._hosted_apps())  # (a snapshot: on the reactor thread)

        def check() -> dropin.CheckOutcome:
            try:
                text = dropin.dropin_text(changes, dropin.read_dropin(config.path))
                taken = dropin.hosted_names_taken(changes, hosted)
            except ConfigKeyError as exc:
                return dropin.CheckOutcome([str(exc)])
            except ConfigError as exc:
                return dropin.CheckOutcome(list(exc.errors))
            return dropin.whole_check(config, text, changes, taken)

        return self._blocking(check)

    def pending(self) -> PendingChange | None:
        """The change waiting for confirmation, if any, its deadline on the wall clock as it
        reads now (which may have stepped since the change was made)."""
        if self._pending is None:
            return None
        return _counted_from(self._pending, self.clock.seconds(), self._boot_clock)

    @property
    def applying(self) -> bool:
        """An apply or a revert is under way (the services are being restarted)."""
        return self._busy

    def when_idle(self) -> Deferred[None]:
        """Fires once no apply, revert or recording of a confirmation is under way (at once when
        none is): the gateway's stop waits for it, so that it stops the services a change is
        starting, not only those that ran when it was asked to stop."""
        if not self._busy:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._idle_waiters.append(waiter)
        return waiter

    def _idle(self) -> None:
        """The apply, revert or confirmation under way has ended."""
        self._busy = False
        waiters, self._idle_waiters = self._idle_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def refusal(self) -> str | None:
        """Why a change cannot begin now, or None when it can: the gateway's stop has begun
        (:meth:`close`), an apply or a revert is under way, a change waits for confirmation, or
        the file of a reverted one could not be removed yet (it would revert again at the next
        start), or the state directory (or the journal's) is on a read-only filesystem: the
        services restarted for the change could not start there, nor could the previous
        configuration's, and the gateway would stop."""
        if self._closed:
            return "the gateway is stopping: nothing changed; send the change again once it is back"
        if self._pending is not None:
            return f"a change by {self._pending.origin} waits for its confirmation"
        if self._busy:
            return "a change is being applied"
        if self._unremoved is not None:
            return (f"the change by {self._unremoved} was reverted, but {self._pending_file} cannot be"
                    " removed yet; it is tried again until it is")
        state = self.config.state_dir
        for directory in (state, state / self.config.journal.directory):
            read_only = self._read_only(directory)
            if read_only is not None:
                return (f"{read_only} is on a read-only filesystem: nothing changed; make it writable (remount it"
                        " read-write) and send the change again")
        return None

    def close(self) -> None:
        """The gateway's stop has begun: every change asked for from now is refused (one under
        way has its :meth:`when_idle`, which the stop waits for), and a pending change is no
        longer watched: its deadline is the next start's (:meth:`recover`). A change accepted,
        or a revert begun, as the gateway stops would write the drop-in and restart the
        services beside the stop, which no longer waits for it."""
        self._closed = True
        self._stop_watch()

    # -- life -----------------------------------------------------------------------------

    def recover(self) -> gateway_config.Config:
        """Before the tree is built: read a pending change; if its deadline has passed,
        restore the drop-in before it and return the configuration to run instead. The
        ``reverted`` report is kept on disk before the revert, and until :meth:`resume` has
        published it: those owed by an earlier start that died first (or by a change that
        failed) are sent too.

        Blocks (small file reads and writes): call it before the reactor runs.

        :raises ConfigRevertError: when the previous drop-in cannot be restored (``conf.d``
            read-only for the gateway): nothing is changed and the gateway must not start.
        """
        self._owed = self._read_owed()
        try:
            data = read_json(self._pending_file)
            if data is None:
                return self.config
            self._pending = PendingChange.from_json(data)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            self.log.error("unusable {path} ({error}; {aside}); the configuration change it recorded is neither"
                           " confirmed nor reverted: the configuration as the files hold it runs",
                           path=str(self._pending_file), error=exc, aside=set_aside(self._pending_file))
            return self.config
        change = [self._pending.origin, self._pending.applied_at]
        unfinished = [owed for owed in self._owed if owed.get(REVERTED_CHANGE) == change]
        if unfinished:
            self.log.info("dropping the reverted report of the config change by {origin} owed by an earlier start:"
                          " that change is still pending", origin=self._pending.origin)
            self._owed = [owed for owed in self._owed if owed not in unfinished]
        if _wait(self._pending, self.clock.seconds(), self._boot_clock) > 0:
            self._rebase()
            self.log.info("config change by {origin} still waits for its confirmation", origin=self._pending.origin)
            return self.config
        pending, self._pending = self._pending, None
        report = self._report_body(
            "reverted", pending.origin, pending.keys,
            "the gateway was not running when the confirm deadline passed; the previous configuration"
            " was restored before it started")
        report[REVERTED_CHANGE] = [pending.origin, pending.applied_at]
        self._owed.append(report)
        # Persist, then act: the report is owed on disk before the revert, so that a gateway
        # that dies before publishing it still sends it on its next start. A disk that refuses
        # it does not stop the revert: the report is published from memory.
        try:
            self._write_owed(list(self._owed))
        except OSError as exc:
            self.log.error("cannot keep the reverted report on disk ({error}): it is published once the"
                           " services have started, but not after a crash before that", error=exc)
        try:
            dropin.write_dropin(self.config.path, pending.previous)
        except OSError as exc:
            # Nothing is reverted, so nothing is reported: the next start tries again.
            self._owed.remove(report)
            try:
                self._write_owed(list(self._owed))
            except OSError:
                pass  # (its write was already refused, or is refused now: the report stays owed)
            path = dropin.dropin_path(self.config.path)
            raise ConfigRevertError(
                f"cannot restore the previous {path} of the config change by {pending.origin}, whose confirm"
                f" deadline passed while the gateway was stopped ({exc.strerror or exc}): make"
                f" {path.parent} writable for the gateway and start it again") from exc
        try:
            self._forget_pending()
        except OSError as exc:  # the revert stands; the file goes once it can (see resume)
            self._forget_failures, self._forget_logged_at = 1, steady_seconds(self.clock)
            self._unremoved = pending.origin
            report["reason"] += self._unremoved_reason(exc)
            self.log.error("config change by {origin} reverted, but {path} cannot be removed ({error}): no"
                           " other change is taken until it is", origin=pending.origin,
                           path=str(self._pending_file), error=exc.strerror or exc)
        self._use(gateway_config.load(self.config.path))
        self.log.warn("config change by {origin} reverted: its confirm deadline passed while stopped",
                      origin=pending.origin)
        return self.config

    def _read_owed(self) -> list[dict[str, Any]]:
        """The reports an earlier start owes; none when their file is unusable (damaged from
        outside: moved aside to ``.damaged``, logged). Blocks (a small file read)."""
        try:
            owed = read_json(self._owed_report_file)
            if owed is None:
                return []
            if not isinstance(owed, list) or not all(isinstance(report, dict) for report in owed):
                raise ValueError("not a list of reports")
            return owed
        except (OSError, ValueError) as exc:
            self.log.error("unusable {path} ({error}; {aside}): the configuration change reports it owed are"
                           " not sent", path=str(self._owed_report_file), error=exc,
                           aside=set_aside(self._owed_report_file))
            return []

    def _rebase(self) -> None:
        """Count what is left of the pending change's window (:func:`_wait`) from now, on disk
        when that moves its deadline on the wall clock (a clock behind the time the change was
        made, or stepped since) or the boot's clock is a new one: a start that dies before the
        watch runs then does not wait a whole window again at every start, and the deadline
        holds on this boot's clock from now on. Blocks (a small file write)."""
        pending = self._pending
        assert pending is not None
        rebased = _counted_from(pending, self.clock.seconds(), self._boot_clock)
        self._pending = rebased
        if abs(rebased.deadline - pending.deadline) < STEP_TOLERANCE and rebased.boot == pending.boot:
            return
        try:
            write_json_atomically(self._pending_file, dataclasses.asdict(rebased), PENDING_MODE)
        except OSError as exc:
            self.log.error("cannot count the pending change's window from now: {error}", error=exc)

    def resume(self) -> None:
        """Once the tree has started: publish the reports owed (a revert done by
        :meth:`recover`, a failed change), and wait for the confirmation of a pending change."""
        for report in list(self._owed):
            self._send(report).addCallback(self._owed_report_sent, report)
        if self._pending is not None and self.running:
            self._watch()
        if self._unremoved is not None and self.running:
            self._retry_removal()

    def stopService(self) -> None:
        """Stop watching; a pending change stays on disk and is resumed on the next start."""
        super().stopService()
        self._stop_watch()

    # -- applying -------------------------------------------------------------------------

    def apply(self, changes: Mapping[str, Any], confirm_within: float | None = None,
              origin: str = "local", next_turn: bool = False) -> Deferred[ApplyResult]:
        """Check, write and apply ``changes``; revert unless confirmed in ``confirm_within`` s.

        :param changes: dotted key path -> new value.
        :param confirm_within: seconds for the cloud links to come back up, or None.
        :param origin: who asks, for the reports.
        :param next_turn: begin on the reactor's next turn, so that the caller's answer goes out
            first (the restart stops the services it goes through); the change is under way,
            and any other refused, from now on all the same.
        :return: fires once the services run the new configuration (or it was refused, or
            reverted because the services did not start); fails with
            :class:`ConfigApplyConflict` when a change cannot begin now (:meth:`refusal`).
        """
        refused = self.refusal()
        if refused is not None:
            return fail(ConfigApplyConflict(refused))
        self._busy = True
        if next_turn:
            d = deferLater(self.clock, 0, self._apply, dict(changes), confirm_within, origin)
        else:
            d = self._apply(dict(changes), confirm_within, origin)

        def done(result: Any) -> Any:
            self._idle()
            return result

        return d.addBoth(done)

    @inlineCallbacks
    def _apply(self, changes: dict[str, Any], confirm_within: float | None, origin: str) -> Any:
        keys = tuple(sorted(changes))
        main = self.config.path
        try:
            previous = yield self._blocking(lambda: dropin.read_dropin(main))
            text = dropin.dropin_text(changes, previous)
            config = self.config
            taken = dropin.hosted_names_taken(changes, self._hosted_apps())
            outcome = yield self._blocking(lambda: dropin.whole_check(config, text, changes, taken))
            errors = outcome.errors
        except ConfigKeyError as exc:
            errors = [str(exc)]
        except ConfigError as exc:
            errors = list(exc.errors)
        except ConfigCheckError as exc:
            reason = str(exc)
            self.log.error("config change by {origin} not applied: {reason}", origin=origin, reason=reason)
            self._send(self._report_body("refused", origin, keys, reason))
            return ApplyResult(False, (reason,), (), None, "not_checked")
        if errors:
            self.report_refused(keys, errors, origin)
            return ApplyResult(False, tuple(errors), (), None, "invalid")
        pending = None
        try:
            if confirm_within is not None:
                now = self.clock.seconds()
                up = tuple(sorted(name for name, (connected, _) in self._link_states().items() if connected))
                pending = PendingChange(origin, keys, previous, now + confirm_within, up, now)
                if self._boot_clock is not None:
                    pending = dataclasses.replace(pending, boot=self._boot_clock.boot,
                                                  boot_deadline=self._boot_clock.seconds() + confirm_within)
                # Persist, then act: the way back is on disk before the new drop-in is.
                yield self._blocking(lambda: write_json_atomically(self._pending_file, dataclasses.asdict(pending),
                                                                   PENDING_MODE))
                self._pending = pending
            yield self._blocking(lambda: dropin.write_dropin(main, text))
        except OSError as exc:  # (the drop-in is replaced atomically: the running one is still there)
            reason = f"{exc.filename or dropin.dropin_path(main)}: cannot be written: {exc.strerror or exc}"
            self.log.error("config change by {origin} not applied: {reason}", origin=origin, reason=reason)
            if self._pending is not None:
                yield self._blocking(self._forget_pending)
                self._pending = None
            self._send(self._report_body("refused", origin, keys, reason))
            return ApplyResult(False, (reason,), (), None, "not_written")
        try:
            new_config = yield self._blocking(lambda: gateway_config.load(main))
            restarted = yield self._restart_tree(new_config)
        except Exception as exc:  # noqa: BLE001 - any start failure means: go back
            reason = f"the new configuration did not start: {exc}"
            self.log.error("config change by {origin} failed: {reason}", origin=origin, reason=reason)
            yield self._revert(previous, origin, keys, reason)
            return ApplyResult(False, (reason,), (), None, "not_started")
        self._use(new_config)
        deadline = pending.deadline if pending else None
        self.log.info("config change by {origin} applied: {keys}", origin=origin, keys=", ".join(keys))
        self._send(self._report_body("applied", origin, keys, "", restarted=restarted, deadline=deadline))
        if pending is not None:
            self._watch()
        return ApplyResult(True, (), tuple(restarted), deadline, "applied",
                           pending.required_links if pending else (), tuple(outcome.warnings))

    def report_refused(self, keys: Iterable[str], errors: Sequence[str], origin: str) -> None:
        """Report a change refused for the errors its whole configuration would have: what
        :meth:`apply` reports, for a change checked before it is applied (a remote
        ``config.set`` is checked before its reply). Errors at secret-looking keys are
        withheld: the report leaves the gateway."""
        self._send(self._report_body("refused", origin, tuple(sorted(keys)), "; ".join(map(redact_error, errors))))

    # -- confirm or revert ----------------------------------------------------------------

    def _watch(self, look_now: bool = True) -> None:
        self._stop_watch()
        if self._closed:  # (the gateway stops: the next start watches)
            return
        pending = self._pending
        assert pending is not None
        # (judged once the reactor has read the sockets: a link's CONNACK that came by the
        # deadline may wait unread behind a long turn, gateway.deadlinecall)
        self._timer = DeadlineCall(self.clock, _wait(pending, self.clock.seconds(), self._boot_clock), self._expired)
        self._poll = LoopingCall(self._look)
        self._poll.clock = self.clock
        self._poll.start(self._poll_interval, now=look_now)

    def _stop_watch(self) -> None:
        if self._poll is not None and self._poll.running:
            self._poll.stop()
        self._poll = None
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _confirming(self, pending: PendingChange) -> list[str]:
        """The links that confirm ``pending`` now, for its log line (none: not confirmed):
        every one of its required links still configured, once all are up; else any link up."""
        states = self._link_states()
        required = [name for name in pending.required_links if name in states]
        if required:
            return required if all(states[name][0] for name in required) else []
        return sorted(name for name, (connected, _) in states.items() if connected)

    def _look(self) -> None:
        pending = self._pending
        if pending is None or self._busy:
            return
        links = self._confirming(pending)
        if not links:
            return
        self._stop_watch()
        self._busy = True
        d = self._blocking(self._forget_pending)

        def confirmed(_: Any) -> None:
            self._pending = None
            self._forget_failures = 0
            names = ", ".join(links)
            self.log.info("config change by {origin} confirmed: {up}", origin=pending.origin,
                          up=f"link {names} is up" if len(links) == 1 else f"links {names} are up")
            self._send(self._report_body("confirmed", pending.origin, pending.keys, "the cloud link came back up"))
            self._idle()

        def failed(failure: Failure) -> None:
            # Still pending, on disk as here: the next look confirms it again, the deadline
            # still reverts it (as a start after the deadline would, reading the file).
            self._forget_failed(failure, "cannot record the confirmation; the change still waits for it")
            if self.running:
                self._watch(look_now=False)
            self._idle()

        d.addCallbacks(confirmed, failed)

    def _expired(self) -> Deferred[None] | None:
        self._timer = None
        pending = self._pending
        if pending is None or self._busy:
            return None
        if self._looked_at_deadline is not pending and self._confirming(pending):
            # The links came up after the last look (every poll_interval) and by the deadline:
            # confirmed, as that look would have. (Once: a confirmation that cannot be recorded
            # is reverted at the deadline, as a start after it would revert it from the file.)
            self._looked_at_deadline = pending
            self._look()
            return None
        self._stop_watch()
        states = self._link_states()
        waited = pending.deadline - pending.applied_at
        required = [n for n in pending.required_links if n in states] or sorted(states)
        down = [f"{name} ({states[name][1] or 'down'})" for name in required if not states[name][0]]
        reason = (f"no cloud link came back up within {waited:g} s: " + ", ".join(down)) if down else \
            f"no cloud link configured to confirm it within {waited:g} s"
        self.log.warn("config change by {origin} not confirmed: {reason}; reverting", origin=pending.origin,
                      reason=reason)
        self._busy = True
        d = self._revert(pending.previous, pending.origin, pending.keys, reason)

        def done(result: Any) -> Any:
            self._idle()
            return result

        return d.addBoth(done)

    @inlineCallbacks
    def _revert(self, previous: str | None, origin: str, keys: tuple[str, ...], reason: str) -> Any:
        """Restore ``previous`` as the drop-in, restart the tree with it, forget the pending change.

        When the tree does not start again, the pending change is forgotten all the same once
        the previous drop-in is back: the next start runs it, with no change left to confirm,
        and publishes the ``failed`` report, kept on disk since the broker is down.
        """
        main = self.config.path
        restored = False
        try:
            yield self._blocking(lambda: dropin.write_dropin(main, previous))
            restored = True
            config = yield self._blocking(lambda: gateway_config.load(main))
            yield self._restart_tree(config)
        except Exception:  # noqa: BLE001 - nothing is left to fall back on
            failure = Failure()
            self.log.failure("the previous configuration did not start again", failure)
            if restored:
                try:
                    yield self._blocking(self._forget_pending)
                    self._pending = None
                except Exception:  # noqa: BLE001 - the failure below is what is reported
                    self.log.failure("cannot forget the reverted change", Failure())
            report = self._report_body("failed", origin, keys,
                                       f"{reason}; the previous configuration did not start again either:"
                                       f" {failure.getErrorMessage()}")
            # The broker is down with the services, so the report is owed on disk first: the
            # next start sends it, as it sends a revert made at start.
            self._owed.append(report)
            try:
                yield self._save_owed()
            except Exception:  # noqa: BLE001 - the process is going down all the same
                self.log.failure("cannot keep the failed report for the next start", Failure())
            self._send(report).addCallback(self._owed_report_sent, report)
            if self._on_fatal is not None:
                self._on_fatal(failure)
            return None
        self._use(config)
        self._pending = None
        try:
            yield self._blocking(self._forget_pending)
        except Exception:  # noqa: BLE001 - the revert stands; its file goes as soon as it can
            failure = Failure()
            self._forget_failures, self._forget_logged_at = 1, steady_seconds(self.clock)
            self.log.failure("config change by {origin} reverted, but {path} cannot be removed: no other change"
                             " is taken until it is", failure, origin=origin, path=str(self._pending_file))
            reason += self._unremoved_reason(failure.value)
            self._unremoved = origin
            if self.running:
                self._retry_removal()
        self._send(self._report_body("reverted", origin, keys, reason))
        return None

    def _unremoved_reason(self, error: BaseException) -> str:
        """What a ``reverted`` report's reason ends with when the pending change's file
        cannot be removed (``error``)."""
        why = (error.strerror if isinstance(error, OSError) else None) or str(error)
        return f"; {self._pending_file.name} cannot be removed ({why}): no other change is taken until it is"

    def _retry_removal(self) -> None:
        """Try to remove the file of a reverted change every poll interval until it is gone."""
        self._stop_watch()
        self._poll = LoopingCall(self._remove_unremoved)
        self._poll.clock = self.clock
        self._poll.start(self._poll_interval, now=False)

    def _remove_unremoved(self) -> Deferred[None]:
        """Try again to remove the file of a reverted change; once it is gone, changes are
        taken again."""
        def removed(_: Any) -> None:
            self._stop_watch()
            self.log.info("{path} removed after {count} failed attempts: changes are taken again",
                          path=str(self._pending_file), count=self._forget_failures)
            self._unremoved, self._forget_failures = None, 0

        return self._blocking(self._forget_pending).addCallbacks(
            removed, self._forget_failed, errbackArgs=(f"cannot remove {self._pending_file} of the reverted change",))

    def _forget_failed(self, failure: Failure, what: str) -> None:
        """Log a failed removal of the pending change's file: the first of a run at once, then
        at most once per :data:`FORGET_LOG_INTERVAL`, with how many have failed so far."""
        self._forget_failures += 1
        now = steady_seconds(self.clock)
        if self._forget_failures == 1:
            self.log.failure(what, failure)
        elif now - self._forget_logged_at >= FORGET_LOG_INTERVAL:
            self.log.warn("{what}: {count} attempts have failed so far; the last: {error}", what=what,
                          count=self._forget_failures, error=failure.getErrorMessage())
        else:
            return
        self._forget_logged_at = now

    def _owed_report_sent(self, published: bool, report: dict[str, Any]) -> Deferred[None] | None:
        """Forget an owed report once it is published; one that was not is sent again at the next start."""
        if not published:
            return None
        self._owed = [owed for owed in self._owed if owed is not report]
        return self._save_owed().addErrback(lambda f: self.log.failure("cannot forget the published report", f))

    def _save_owed(self) -> Deferred[None]:
        """Write the owed reports as they are once the writes before have finished, off the reactor thread."""
        def save() -> Deferred[None]:
            owed = list(self._owed)  # as they are when this write's turn comes
            return self._blocking(lambda: self._write_owed(owed))

        return self._owed_lock.run(save)

    def _write_owed(self, owed: list[dict[str, Any]]) -> None:
        """Keep ``owed`` on disk, atomically (none: no file). Blocks."""
        if owed:
            write_json_atomically(self._owed_report_file, owed)
        else:
            remove_durably(self._owed_report_file)

    def _use(self, config: gateway_config.Config) -> None:
        self.config = config
        self.settings = config.commands

    def _forget_pending(self) -> None:
        # (durably: a power cut must not bring back the file of a change confirmed, which the
        # next start would revert)
        remove_durably(self._pending_file)

    # -- reports --------------------------------------------------------------------------

    def _report_body(self, status: str, origin: str, keys: tuple[str, ...], reason: str,
                     restarted: tuple[str, ...] = (), deadline: float | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"status": status, "origin": origin, "keys": [shown_key_path(key) for key in keys],
                                "reason": reason,
                                "timestamp": self.clock.seconds()}
        if restarted:
            body["restarted"] = list(restarted)
        if deadline is not None:
            body["confirmDeadline"] = deadline
        return body

    def _send(self, body: Mapping[str, Any]) -> Deferred[bool]:
        """Publish a report; fires with whether it was published (a failure is logged, never raised)."""
        published = {key: value for key, value in body.items() if key != REVERTED_CHANGE}
        try:
            d = self._publish(self.settings.report_topic, json.dumps(published).encode(), 1, False)
        except Exception as exc:  # noqa: BLE001 - a report must never break an apply
            self.log.warn("config report not published: {error}", error=str(exc))
            return succeed(False)
        if not isinstance(d, Deferred):
            return succeed(True)

        def failed(failure: Failure) -> bool:
            self.log.warn("config report not published: {error}", error=failure.getErrorMessage())
            return False

        return d.addCallbacks(lambda _: True, failed)
