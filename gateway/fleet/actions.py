"""What the gateway does with its fleet server's actions: a deployment offered becomes an update
operation (one at a time, never installed twice), a cancel stops one or is refused, and every
step of those operations becomes feedback in the outbox."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.logger import Logger

from gateway.fleet.ddi import DDIClient, DDIError
from gateway.fleet.deployment import Deployment, correlation_id, parse_deployment
from gateway.fleet.feedback import ddi_status, operation_feedback
from gateway.fleet.outbox import FINAL
from gateway.fleet.state import FleetState
from gateway.shown import shown_repr
from gateway.updates.errors import UpdateError
from gateway.updates.operation import FLEET_PREFIX, Operation, Status

#: Actions whose end was said again in this process that are remembered, the last ones.
RESENT_KEPT = 100

#: Queues one feedback: ``(kind, action_id, status, reported_id, reported)``
#: (:meth:`gateway.fleet.outbox.FeedbackOutbox.queue`).
Queue = Callable[[str, str, dict[str, Any], str | None, str | None], Deferred[Any]]


class FleetActions:
    """The server's actions on one gateway.

    :param state: the fleet state in force.
    :param updates: the update service (``operations``, ``start``, ``cancel``, ``discard``).
    :param ddi: the DDI client (follows the poll's links).
    :param queue: puts a feedback in the outbox.
    :param save: persists the state; fires once written.
    :param log: the service's logger (its lines keep the service's namespace).
    """

    def __init__(self, state: Callable[[], FleetState], updates: Any, ddi: DDIClient, queue: Queue,
                 save: Callable[[], Deferred[Any]], log: Logger) -> None:
        self.state = state
        self.updates = updates
        self.ddi = ddi
        self.queue = queue
        self.save = save
        self.log = log
        #: the action the last poll offered (its deploymentBase), "" when it offered none
        self.offered = ""
        #: the action confirmed last (hawkBit's confirmation flow), "" before any
        self.confirmed = ""
        #: the actions whose end was said again in this process, the last :data:`RESENT_KEPT` (in order).
        self.resent: dict[str, None] = {}
        #: the actions left waiting for another deployment (logged once each): action -> its operation's id
        self._waiting: dict[str, str] = {}

    def under_way(self) -> tuple[str, str]:
        """The action under way and its step: the one whose operation runs, else the one the last
        poll offered (``DOWNLOADED`` once downloaded to wait for its maintenance window or the
        server's go, its operation's final status while the server has not taken that in,
        ``waiting`` before it starts: another deployment runs, or the server lets it not
        download yet); ``("", "")`` for none."""
        operation = self._running_deployment()
        if operation is not None:
            return operation.correlation_id[len(FLEET_PREFIX):], operation.status.value
        if not self.offered:
            return "", ""
        operation = self.updates.operations.get(correlation_id(self.offered))
        if operation is None:
            return self.offered, "waiting"
        if operation.action == "download" and operation.status == Status.FINISHED_SUCCESS:
            return self.offered, Status.DOWNLOADED.value
        return self.offered, operation.status.value

    # -- deployments ------------------------------------------------------------------

    @inlineCallbacks
    def deploy(self, href: str) -> Any:
        """Follow the poll's ``deploymentBase`` link and act on the deployment it offers."""
        body = yield self.ddi.get(href)
        try:
            deployment = parse_deployment(body)
        except UpdateError as error:
            action_id = str(body.get("id")) if isinstance(body, dict) and body.get("id") is not None else None
            self.offered = ""  # (refused: nothing under way)
            self.log.warn("fleet deployment refused: {error}", error=str(error))
            # Told once per process, as any action that ended (the server offers it until it has
            # taken the feedback in).
            if action_id is not None:
                yield self._say_again(action_id, ddi_status(
                    "closed", "failure", [f"deployment refused by the gateway: {error}"]), "refused")
            return
        self.offered = deployment.action_id
        yield self._start(deployment)

    @inlineCallbacks
    def confirm(self, href: str) -> Any:
        """Follow the poll's ``confirmationBase`` link (hawkBit's confirmation flow: the action
        waits for the device's consent) and confirm the action: the gateway has no user to ask,
        as for a ``download: attempt``. The server offers its ``deploymentBase`` from then on.

        :return: (the Deferred's result) whether the action is another than the one confirmed
            last: one linked again (a server that did not take the confirmation in) is
            confirmed again, but at the server's pace.
        :raises DDIError: for an answer that names no action (a failed poll).
        """
        body = yield self.ddi.get(href)
        action_id = body.get("id") if isinstance(body, dict) else None
        if not isinstance(action_id, (str, int)) or isinstance(action_id, bool) or str(action_id) == "":
            raise DDIError(f"the confirmationBase answer names no action (id: {shown_repr(action_id)})")
        yield self.ddi.confirm(str(action_id), ["confirmed by the gateway, which has no user to ask"])
        self.log.info("fleet action {action_id} confirmed (the server waited for the device's consent)",
                      action_id=str(action_id))
        again, self.confirmed = self.confirmed == str(action_id), str(action_id)
        return not again

    @inlineCallbacks
    def _start(self, deployment: Deployment) -> Any:
        state = self.state()
        action_id = deployment.action_id
        if action_id in state.canceled:
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
                          id=action_id, last=state.installed_action)
            del state.reported[action_id]
            self.resent.pop(action_id, None)
            operation = None
        if operation is not None and (operation.action == "install" or operation.status != Status.FINISHED_SUCCESS):
            # Done already (before a restart, say) and the server has not taken it in: say it again,
            # once per process; never install twice.
            yield self._say_again(action_id, operation_feedback(operation), operation.status.value)
            return
        ended = state.reported.get(action_id)
        if operation is None and ended in FINAL:
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
                ended == Status.DOWNLOADED.value and action_id in state.download_only)):
            # downloaded; waiting for the window (or for the server to allow the update). A
            # download-only action whose operation is no longer kept is not downloaded again.
            return
        action: Literal["download", "install"] = "install" if deployment.install_now else "download"
        self.log.info("fleet action {id}: {action} (download {download}, update {update}, window {window})",
                      id=action_id, action=action, download=deployment.download, update=deployment.update,
                      window=deployment.window or "none")
        # (recorded before the start: its first step's feedback saves it)
        only = state.download_only
        if deployment.update == "skip" and action_id not in only:
            only.append(action_id)
        elif deployment.update != "skip" and action_id in only:
            only.remove(action_id)
        try:
            self.updates.start(deployment.operation(action))
        except UpdateError as error:
            if action_id in only:
                only.remove(action_id)
            yield self.queue("deploymentBase", action_id, ddi_status("closed", "failure", [str(error)]),
                             action_id, "refused")

    def _running_deployment(self, correlation_id: str = "") -> Operation | None:
        """A deployment's operation that has not ended (another than ``correlation_id``'s), if there is one."""
        return next((op for cid, op in self.updates.operations.items()
                     if cid.startswith(FLEET_PREFIX) and cid != correlation_id and not op.status.final), None)

    def _installed_since(self, action_id: str) -> bool:
        """Whether ``action_id`` ended and another action was installed after it."""
        state = self.state()
        ended, last = list(state.reported), state.installed_action
        return (state.reported.get(action_id) in FINAL and last not in ("", action_id) and last in ended
                and ended.index(last) > ended.index(action_id))

    def _say_again(self, action_id: str, feedback: dict[str, Any] | None, reported: str) -> Deferred[Any]:
        """Send the final ``feedback`` of an action the server offers again, once per process (for
        the last :data:`RESENT_KEPT` actions so told: the memory of them is bounded)."""
        if action_id in self.resent or any(f.action_id == action_id for f in self.state().outbox):
            return succeed(None)
        self.resent[action_id] = None
        if len(self.resent) > RESENT_KEPT:
            del self.resent[next(iter(self.resent))]
        if feedback is None:
            return succeed(None)
        return self.queue("deploymentBase", action_id, feedback, action_id, reported)

    def needed(self, operation: Operation) -> bool:
        """Whether the update service must keep the ended ``operation``: a deployment whose final
        step the server has not taken in yet (not reported, or its feedback in the outbox), and
        one downloaded to wait for its maintenance window (until it installs). A download ends
        at ``downloaded`` (nothing more is told): a download-only one (``update: skip``) is
        released once that is taken in; one not known as such (from a state written before
        ``download_only`` was) stays held."""
        if not operation.correlation_id.startswith(FLEET_PREFIX):
            return False
        state = self.state()
        action_id = operation.correlation_id[len(FLEET_PREFIX):]
        if any(f.kind == "deploymentBase" and f.action_id == action_id for f in state.outbox):
            return True
        reported = state.reported.get(action_id)
        if operation.action == "download" and operation.status == Status.FINISHED_SUCCESS:
            return reported != Status.DOWNLOADED.value or action_id not in state.download_only
        return reported != operation.status.value

    def remembered(self) -> Callable[[str], bool]:
        """Whether the state must remember an action however long ago it ended: its operation is
        still kept (running, held, or among the update service's last ended: its steps are compared
        with what was reported), feedback or a cancel of it is pending, or it installed the software
        in place (offered again, it is told its end, never installed twice: :meth:`_installed_since`)."""
        state = self.state()
        pending = {f.action_id for f in state.outbox} | set(state.cancels) | {state.installed_action}
        return lambda action_id: action_id in pending or correlation_id(action_id) in self.updates.operations

    # -- cancel -----------------------------------------------------------------------

    @inlineCallbacks
    def cancel(self, href: str) -> Any:
        """Follow the poll's ``cancelAction`` link: stop the action it names, or answer why not."""
        body = yield self.ddi.get(href)
        try:
            cancel_id = str(body["id"])
            stop_id = str(body["cancelAction"]["stopId"])
        except (TypeError, KeyError):
            self.log.warn("fleet cancelAction without id/stopId: {body!r}", body=body)
            return
        state = self.state()
        operation: Operation | None = self.updates.operations.get(correlation_id(stop_id))
        if stop_id in state.cancels:
            if operation is not None and operation.status in (Status.STARTED, Status.DOWNLOADING):
                # Waiting for the operation to end; asked again, as a restart may have come between
                # the cancel recorded here and the download stopped (the update service resumed it).
                self.updates.cancel({"correlationId": operation.correlation_id})
            return
        if any(f.kind == "cancelAction" and f.action_id == cancel_id for f in state.outbox):
            return  # answered already
        ended = state.reported.get(stop_id) if operation is None else None
        if ended is not None and ended in FINAL and ended != Status.FINISHED_CANCELED.value:
            # finished, and forgotten by the update service since: as finished as one still kept
            reason = f"action {stop_id} is {ended.lower()}; it can no longer be canceled"
        elif operation is None or operation.status == Status.FINISHED_CANCELED or (
                operation.action == "download" and operation.status == Status.FINISHED_SUCCESS):
            if stop_id not in state.canceled:
                state.canceled.append(stop_id)
            # (reported DOWNLOADED with no operation: a download-only action, its operation forgotten)
            why = "it had not started" if operation is None and ended is None else "nothing was installed"
            if operation is not None and operation.status == Status.FINISHED_SUCCESS:
                # downloaded for an install that will never come now: the files go
                yield self.updates.discard(operation.correlation_id)
                why += "; its downloaded files were removed"
            yield self.queue("cancelAction", cancel_id, ddi_status("closed", "success",
                                                                  [f"action {stop_id} canceled: {why}"]), None, None)
            return
        elif operation.status in (Status.STARTED, Status.DOWNLOADING):
            state.cancels[stop_id] = cancel_id
            yield self.save()
            try:
                self.updates.cancel({"correlationId": operation.correlation_id})
                return  # answered when the operation ends (operation_changed)
            except UpdateError as error:
                del state.cancels[stop_id]
                reason = str(error)
        else:
            reason = f"action {stop_id} is {operation.status.value.lower()}; it can no longer be canceled"
        yield self.queue("cancelAction", cancel_id, ddi_status("rejected", "none", [reason]), None, None)

    # -- update steps -> feedback -------------------------------------------------------

    def operation_changed(self, operation: Operation) -> None:
        """Turn a deployment's new step into feedback (and the end of one the server asked to
        cancel into its cancel's answer); other operations are not the server's business."""
        cid = operation.correlation_id
        if not cid.startswith(FLEET_PREFIX):
            return
        state = self.state()
        action_id = cid[len(FLEET_PREFIX):]
        work: list[tuple[str, str, dict[str, Any], str]] = []
        cancel_id = state.cancels.pop(action_id) if operation.status.final and action_id in state.cancels \
            else None
        if state.reported.get(action_id) != operation.status.value:
            # a cancel the server asked for is answered on its cancelAction (below); one asked for
            # on the gateway (a Kanto cancel) closes the deployment
            server_canceled = cancel_id is not None and operation.status == Status.FINISHED_CANCELED
            feedback = None if server_canceled else operation_feedback(operation)
            if feedback is not None:
                work.append(("deploymentBase", action_id, feedback, operation.status.value))
            # Only a success not reported yet is the latest install: at a start every finished
            # operation is seen again, in no particular order.
            if operation.status == Status.FINISHED_SUCCESS and operation.action == "install" and operation.modules:
                state.sw_version = operation.modules[0].version  # saved with its feedback, queued below
                state.installed_action = action_id
        if cancel_id is not None:
            if operation.status == Status.FINISHED_CANCELED:
                status = ddi_status("closed", "success", [f"action {action_id} canceled while downloading"])
            else:
                status = ddi_status("rejected", "none", [f"action {action_id} ended {operation.status.value} "
                                                         f"before it could be canceled: {operation.message}"])
            # (recorded as reported: after a restart the cancel is not taken for the gateway's own)
            work.append(("cancelAction", cancel_id, status, operation.status.value))
        for kind, feedback_id, status, reported in work:
            self.queue(kind, feedback_id, status, action_id, reported).addErrback(
                lambda f: self.log.failure("could not queue fleet feedback", f))
