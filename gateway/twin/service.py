"""The twin service: Ditto twin commands from local apps, carried out, persisted, announced.

Apps publish Ditto commands on ``e/#`` or ``event/#`` (Kanto's local contract). For each
command that changes a thing, the change is made durable first, then its event is
published locally (``command///req//modified`` for the gateway's thing,
``command//<thing id>/req//modified`` for a child; ``created`` for what a ``modify`` created,
as Ditto names it), then the response
(``...//modify-response``) when the command asked for one. The twin answers while the
gateway is offline: it never waits for a cloud.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any, Callable

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, FirstError, gatherResults, maybeDeferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.broker.bus import BusMessage
from gateway.clockstep import steady_seconds
from gateway.logthrottle import (NOT_PUBLISHED_LOG_INTERVAL, REFUSED_LOG_INTERVAL, LogThrottle, not_published_since,
                                 refused_since)
from gateway.mqtt.topics import topic_for_log, valid_topic
from gateway.payloadlimits import too_large
from gateway.shown import escaped, shown, shown_repr
from gateway.twin import commands
from gateway.twin.ditto import (Command, DittoError, error_envelope, event_action, local_topic, parse_command,
                                response_headers)
from gateway.twin.document import MISSING
from gateway.twin.settings import TwinSettings
from gateway.twin.snapshot import TwinSnapshot
from gateway.blocking import RunBlocking
from gateway.twin.store import TwinStore, encode_thing
from gateway.twin.unparsed import command_topic

#: Seconds between two log lines of commands refused because the disk refuses the twin's writes.
NOT_STORED_LOG_INTERVAL = 60.0

#: ``(thing_id, before, after)`` once a change is durable (``None``: absent); may return a
#: Deferred, which the event and the response wait for, firing with ``None`` or with why the
#: cloud is behind on the change (the response's ``cloud-behind`` header).
ChangeListener = Callable[[str, "dict[str, Any] | None", "dict[str, Any] | None"],
                          "Deferred[str | None] | None"]
#: ``(thing_id, before, after)`` -> raises :class:`DittoError` to refuse a change.
Validator = Callable[[str, "dict[str, Any] | None", "dict[str, Any] | None"], None]
#: ``(thing_id, before, after)`` of a change taken, before it is written: may return a
#: Deferred, which the write of ``things.json`` holding the change waits for (the shadow sync's
#: mark of a shadow the change deletes, durable first: a crash after the write still deletes it).
Preparer = Callable[[str, "dict[str, Any] | None", "dict[str, Any] | None"], "Deferred[None] | None"]


def iso_time(seconds: float) -> str:
    """Ditto's timestamp format (ISO 8601, UTC, milliseconds)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{int(seconds * 1000) % 1000:03d}Z"


class TwinService(Service):
    """Holds the gateway's thing and its child things.

    :param settings: the ``twin:`` section.
    :param state_dir: the twin keeps ``twin/things.json`` here.
    :param reactor: the clock (event timestamps).
    :param bus: the broker's :class:`~gateway.broker.bus.LocalBus`.
    :param identity: ``(tenant, device)``: the default thing id is ``tenant:device``.
    :param run_blocking: runs file writes off the reactor thread.
    """

    name = "twin"  # type: ignore[assignment]
    log = Logger()

    def __init__(self, settings: TwinSettings, state_dir: Path, reactor: Any, bus: Any,
                 identity: tuple[str, str], run_blocking: RunBlocking) -> None:
        self.settings = settings
        self.reactor = reactor
        self.bus = bus
        self.root = settings.root_thing(*identity)
        self.store = TwinStore(Path(state_dir) / "twin" / "things.json", run_blocking, reactor)
        self.listeners: list[ChangeListener] = []
        self.validators: list[Validator] = []
        self.preparers: list[Preparer] = []
        #: What a stop waits for once every change is told to the listeners (the shadow sync's
        #: marks of the shadows behind, written whole to shadows-behind.json): fires once it is done.
        self.flushers: list[Callable[[], Deferred[None]]] = []
        self._telling: set[Deferred[None]] = set()  # fire as the listeners' work on a change is done
        self._unsubscribe: list[Callable[[], None]] = []
        #: Things a change of which the disk refused (answered 503; it stays in memory and goes
        #: to disk with the next write that succeeds) -> the thing as the listeners last knew it
        #: (in a tuple of its own: each refusal is told once).
        self._untold: dict[str, tuple[dict[str, Any] | None]] = {}
        #: The shadow sync, once one is attached (for the snapshot).
        self.sync: Any = None
        # (a stream full for hours refuses the events and responses of every command an app sends)
        self._refused_lines = LogThrottle(NOT_PUBLISHED_LOG_INTERVAL, lambda: steady_seconds(reactor))
        #: commands refused because they would have created a thing past ``max_things``
        self.things_refused = 0
        self._full_said = False  # the warning that the twin is full was logged (until it has room)
        # (a disk full or read-only for hours refuses every change an app sends, ten a second maybe)
        self._not_stored_lines = LogThrottle(NOT_STORED_LOG_INTERVAL, lambda: steady_seconds(reactor))
        self._not_stored_spell: float | None = None  # the failed writes' ``since`` the lines count in
        # (an app may send bad commands in a loop: one line per interval)
        self._command_refused_lines = LogThrottle(REFUSED_LOG_INTERVAL, lambda: steady_seconds(reactor))

    def startService(self) -> Deferred[None]:
        """Load the things (the gateway's own exists from the first start), then listen."""
        super().startService()

        def loaded(_: Any) -> Deferred[None] | None:
            for topic_filter in self.settings.command_topics:
                self._unsubscribe.append(self.bus.subscribe(topic_filter, self._message))
            if self.root not in self.store.things:
                self.store.things[self.root] = {"thingId": self.root, "attributes": {}, "features": {}}
                self.store.bump(self.root)
                # (a disk full or read-only at boot: the twin serves what it holds all the same)
                return self.store.save().addErrback(
                    self._not_written, "the gateway's thing is kept in memory and written with the next change the disk takes")
            return None

        return self.store.load().addCallback(loaded)

    def _not_written(self, failure: Failure, outcome: str) -> None:
        """Log a write the disk refused (an error that is no disk's goes on as it is)."""
        failure.trap(OSError)
        self.log.error("twin: cannot write {path} ({error}): {outcome}", path=str(self.store.path),
                       error=str(failure.value), outcome=outcome)

    def stopService(self) -> Deferred[None]:
        """Stop listening; fires once every change made is durable and told to the change
        listeners (the shadow sync, stopped before, journals it), what they do with it done
        (a shadow request journaled, or refused and its shadow's mark written), and the
        :attr:`flushers` done, which are then let go."""
        super().stopService()
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe = []

        def let_go(result: Any) -> Any:
            self.listeners.clear()
            self.validators.clear()
            self.preparers.clear()
            self.flushers.clear()
            return result

        def told(_: Any) -> Deferred[Any]:
            # (a change told before the flush may still be journaling: a refusal writes its mark then)
            return DeferredList(list(self._telling)).addCallback(
                lambda _: DeferredList([flush() for flush in self.flushers]))

        untold = self._untold_now()
        return self.store.flushed().addCallback(lambda _: self._tell_untold(untold)).addErrback(
            self._not_written, "the changes it refused (answered 503) are not kept").addCallback(told).addBoth(let_go)

    def snapshot(self) -> TwinSnapshot:
        """What the twin holds and how its shadow sync stands (no I/O)."""
        seconds, size = self.store.last_write if self.store.last_write is not None else (None, None)
        return TwinSnapshot(self.root, len(self.store.things), self.store.revisions.get(self.root, 0),
                            self.sync.snapshot() if self.sync is not None else None, self.store.failing.now,
                            seconds, size, self.settings.max_things, self.things_refused)

    # -- commands -------------------------------------------------------------------------

    def owns(self, thing_id: str) -> bool:
        """Whether ``thing_id`` is the gateway's thing or one of its children (``<root>:<child>``)."""
        return thing_id == self.root or (thing_id.startswith(self.root + ":") and len(thing_id) > len(self.root) + 1)

    def _topic_thing(self, thing_id: str) -> str:
        """The thing whose local topics answer a command for ``thing_id``: itself, or the
        gateway's thing when its id cannot be a topic level (``command//<id>/req//...``)."""
        return thing_id if valid_topic(thing_id) else self.root

    def _message(self, message: BusMessage) -> Deferred[None] | None:
        oversized = too_large(message.payload)
        if oversized is not None:
            return self._oversized(message.payload, oversized)
        try:
            command = parse_command(message.payload)
        except DittoError as exc:
            # (what parse_command kept of the command for its answer: the envelope as parsed,
            # or, for JSON its strict parse refused, the topic, path and headers mended)
            envelope = exc.envelope
            if envelope is None:  # (none does: parse_command gives every error of a command one)
                return None
            topic = str(envelope.get("topic", ""))
            headers = envelope.get("headers")
            return self._answer_error(topic, envelope.get("path", "/"), headers if isinstance(headers, dict) else {},
                                      exc, self._thing_of_topic(topic))
        if command is None:
            return None
        return self.handle(command)

    def _oversized(self, payload: bytes, oversized: str) -> Deferred[None] | None:
        """A message over :data:`~gateway.payloadlimits.REQUEST_BYTES` is not parsed: an
        event, unless its top-level object's ``topic`` names a twin command
        (:func:`~gateway.twin.unparsed.command_topic`), which is refused (413) on the errors
        topic of the thing it names (its headers unread: the answer has none)."""
        topic = command_topic(payload)
        if topic is None:
            return None
        return self._answer_error(topic, "/", {}, DittoError(413, "things:command.toolarge", oversized),
                                  self._thing_of_topic(topic))

    def _thing_of_topic(self, topic: str) -> str:
        """The thing whose errors topic answers a command written for ``topic``
        (``<namespace>/<name>/things/...``): ``<namespace>:<name>``, or the gateway's thing when
        the topic names none or a thing whose id cannot be a topic level."""
        namespace, name = (topic.split("/") + ["", ""])[:2]
        return self._topic_thing(f"{namespace}:{name}" if namespace and name else self.root)

    def handle(self, command: Command) -> Deferred[None]:
        """Carry out one command: change, persist, announce, respond (errors are responses)."""
        thing_id = command.thing_id
        topic = f"{command.namespace}/{command.name}/things/twin/commands/{command.action}"
        if commands.is_retrieve_of_things(command):
            return self._retrieve_things(command, topic)
        try:
            if self._topic_thing(thing_id) != thing_id:
                raise DittoError(400, "things:id.invalid",
                                 f"the thing id {shown_repr(thing_id)} cannot be in a topic: it holds '+', '#' or NUL")
            if not self.owns(thing_id):
                raise DittoError(404, "things:thing.notfound",
                                 f"the local twin holds {self.root} and its children ({self.root}:<child>) only")
            outcome = commands.apply(self.store.things.get(thing_id), thing_id, command)
            if outcome.changed and outcome.before is None:
                self._check_room(thing_id)
            encoded = None
            if outcome.changed and outcome.after is not None:
                encoded = self._check_size(thing_id, outcome.before, outcome.after)
            if outcome.changed:
                for validate in self.validators:
                    validate(thing_id, outcome.before, outcome.after)
        except DittoError as exc:
            return self._refuse(command, topic, exc)
        untold = self._untold_now()
        if not outcome.changed:  # retrieve, or a write that changed nothing: no event
            d = self.store.flushed()  # never reveal a change that is not durable yet
            d.addCallback(lambda _: self._tell_untold(untold))
            d.addCallback(lambda _: self._respond(command, outcome.status, outcome.value))
            d.addErrback(self._not_stored, command, topic, "pending changes were")
            return d
        if outcome.after is None:
            del self.store.things[thing_id]
        else:
            self.store.things[thing_id] = outcome.after
        revision = self.store.bump(thing_id, encoded)
        for prepare in self.preparers:
            ready = prepare(thing_id, outcome.before, outcome.after)
            if ready is not None:
                self.store.write_after(ready)
        d = self.store.save()
        d.addErrback(self._refused_write, thing_id, outcome.before)
        d.addCallback(lambda _: self._tell_untold(untold))
        d.addCallback(lambda _: self._changed(command, outcome, revision))
        d.addCallback(lambda behind: self._respond(command, outcome.status, outcome.value, behind))
        d.addErrback(self._not_stored, command, topic, "the change was")
        return d

    def _retrieve_things(self, command: Command, topic: str) -> Deferred[None]:
        """Kanto's retrieve of several things (``_/_/things/twin/commands/retrieve``, the value
        ``{"thingIds": [...]}``): answered 200 with those the twin holds, in the order asked
        (the others left out), on ``command//_:_/req//retrieve-response``."""
        try:
            ids = commands.thing_ids(command)
        except DittoError as exc:
            return self._refuse(command, topic, exc)
        found = [copy.deepcopy(self.store.things[i]) for i in dict.fromkeys(ids) if i in self.store.things]
        untold = self._untold_now()
        d = self.store.flushed()  # never reveal a change that is not durable yet
        d.addCallback(lambda _: self._tell_untold(untold))
        d.addCallback(lambda _: self._respond(command, 200, found))
        d.addErrback(self._not_stored, command, topic, "pending changes were")
        return d

    def _check_size(self, thing_id: str, before: dict[str, Any] | None, after: dict[str, Any]) -> bytes:
        """Refuse (413) a change that makes ``thing_id`` larger than ``max_thing_bytes`` (its JSON
        as ``things.json`` holds it): every thing stays in memory and is written whole after each
        change. A change that shrinks a thing already larger (a lowered limit) is taken.

        :returns: ``after``'s JSON (:func:`~gateway.twin.store.encode_thing`), for the store's next write.
        """
        encoded = encode_thing(after)
        size, limit = len(encoded), self.settings.max_thing_bytes
        if size > limit and (before is None or size > len(encode_thing(before))):
            raise DittoError(413, "things:thing.toolarge",
                             f"the thing {shown_repr(thing_id)} would be {size} bytes, more than its max_thing_bytes"
                             f" ({limit}): store less in it, or raise twin.max_thing_bytes")
        return encoded

    def _check_room(self, thing_id: str) -> None:
        """Refuse (403) a command that would create ``thing_id`` while the twin holds
        ``max_things`` (the gateway's own thing is never refused): counted, and a warning the
        first time since the twin last had room (each refusal counts in the refused commands'
        info lines). The gateway's own thing counts while deleted too: its place is kept, so
        that creating it again never takes the twin past ``max_things``."""
        things = len(self.store.things) + (self.root not in self.store.things)
        limit = self.settings.max_things
        if things < limit:
            self._full_said = False
            return
        if thing_id == self.root:
            return
        self.things_refused += 1
        if not self._full_said:
            self._full_said = True
            self.log.warn("twin: it holds {things} things, its max_things: commands creating more are refused"
                          " (403) until things are deleted (or twin.max_things is raised)", things=things)
        raise DittoError(403, "things:thing.notcreatable",
                         f"the twin holds {things} things, its max_things ({limit}): delete things no longer"
                         " used, or raise twin.max_things")

    def _refuse(self, command: Command, topic: str, error: DittoError) -> Deferred[None]:
        """Answer a refused command once the changes before it are durable: a refusal may
        rest on one that is not yet (a 409 for a thing whose create is being written)."""
        untold = self._untold_now()
        d = self.store.flushed()
        d.addCallback(lambda _: self._tell_untold(untold))
        d.addCallback(lambda _: self._answer_error(topic, command.path, command.headers, error,
                                                   self._topic_thing(command.thing_id)))
        d.addErrback(self._not_stored, command, topic, "pending changes were")
        return d

    def _changed(self, command: Command, outcome: commands.Outcome, revision: int) -> Deferred[str | None]:
        """Tell the listeners (the shadow sync journals its requests), then publish the event;
        fires with why the cloud is behind on the change, if a listener said so."""
        def told(behind: str | None) -> str | None:
            self._event(command, outcome, revision)
            return behind

        return self._tell(command.thing_id, outcome.before, outcome.after).addCallback(told)

    def _tell(self, thing_id: str, before: dict[str, Any] | None, after: dict[str, Any] | None) -> Deferred[str | None]:
        """Tell the listeners of a durable change; fires with why the cloud is behind on it, if
        a listener said so."""
        waits = [maybeDeferred(listener, thing_id, before, after) for listener in self.listeners]
        d: Deferred[Any] = gatherResults(waits, consumeErrors=True) if waits else succeed([])
        if not d.called:  # (a stop waits for it)
            telling: Deferred[None] = Deferred()
            self._telling.add(telling)
            d.addBoth(self._told, telling)
        d.addErrback(lambda f: f.value.subFailure if f.check(FirstError) else f)  # (the listener's own error)
        return d.addCallback(lambda behind: next((why for why in behind if why), None))

    def _told(self, result: Any, telling: Deferred[None]) -> Any:
        """The listeners are done with a change (``result``, passed on): a stop waits no more."""
        self._telling.discard(telling)
        telling.callback(None)
        return result

    def _refused_write(self, failure: Failure, thing_id: str, before: dict[str, Any] | None) -> Failure:
        """A change's write failed: the change stays in memory, and goes to disk with the next
        write that succeeds; the listeners are told of it then (:meth:`_tell_untold`)."""
        self._untold.setdefault(thing_id, (before,))
        return failure

    def _untold_now(self) -> list[tuple[str, tuple[dict[str, Any] | None], dict[str, Any] | None]]:
        """The things with changes the listeners were not told of: each with how they last knew
        it and how it is now, which the next write that succeeds holds."""
        return [(thing_id, known, self.store.things.get(thing_id)) for thing_id, known in self._untold.items()]

    def _tell_untold(self, untold: list[tuple[str, tuple[dict[str, Any] | None], dict[str, Any] | None]]
                     ) -> Deferred[None]:
        """A write that holds ``untold`` (:meth:`_untold_now`) succeeded: tell the listeners of
        those changes, but of those told already (by an earlier write)."""
        waits = []
        for thing_id, known, now in untold:
            if self._untold.get(thing_id) is known:
                del self._untold[thing_id]
                waits.append(self._tell(thing_id, known[0], now))
        d: Deferred[Any] = gatherResults(waits, consumeErrors=True) if waits else succeed(None)
        d.addErrback(lambda f: f.value.subFailure if f.check(FirstError) else f)  # (the listener's own error)
        return d.addCallback(lambda _: None)

    def _event(self, command: Command, outcome: commands.Outcome, revision: int) -> None:
        action = event_action(command.action, outcome.status)
        event: dict[str, Any] = {
            "topic": f"{command.namespace}/{command.name}/things/twin/events/{action}",
            "headers": response_headers(command.headers), "path": command.path,
            "revision": revision, "timestamp": iso_time(self.reactor.seconds())}
        if action == "created":
            # what was created, as the 201 answers it: a created thing with its thingId
            event["value"] = outcome.value
        elif action != "deleted":
            event["value"] = command.value
        self._publish(local_topic(self.root, command.thing_id, action), event)

    def _respond(self, command: Command, status: int, value: Any, cloud_behind: str | None = None) -> None:
        """Publish the response (when the command wants one).

        :param cloud_behind: why the cloud is behind on the change (the twin holds it): said in
            the ``cloud-behind`` header.
        """
        if not command.response_required:
            return
        headers = response_headers(command.headers)
        if cloud_behind is not None:
            headers["cloud-behind"] = cloud_behind
        response: dict[str, Any] = {
            "topic": f"{command.namespace}/{command.name}/things/twin/commands/{command.action}",
            "headers": headers, "path": command.path, "status": status}
        if value is not MISSING:
            response["value"] = value
        self._publish(local_topic(self.root, command.thing_id, f"{command.action}-response"), response)

    def _answer_error(self, topic: str, path: Any, headers: Any, error: DittoError, thing_id: str,
                      log: bool = True) -> Deferred[None]:
        count = self._command_refused_lines.note() if log else None
        if count is not None:
            self.log.info("twin command on {topic} {path} refused: {status} {reason} ({since})",
                          topic=escaped(shown(topic)), path=escaped(shown(str(path))), status=error.status,
                          reason=escaped(error.message), since=refused_since(count))
        if headers.get("response-required", True) in (False, "false"):
            return succeed(None)
        envelope = error_envelope(topic, str(path), dict(headers), error)
        self._publish(local_topic(self.root, thing_id, "errors-response"), envelope)
        return succeed(None)

    def _not_stored(self, failure: Failure, command: Command, topic: str, what: str) -> None:
        """Answer 503 to a command whose write failed (a change), or the write it waited for
        (a retrieve, a write that changed nothing): nothing not durable is revealed. A disk
        that refuses it (full, read-only) is logged as the refusal, one line; anything else is
        a bug's traceback besides. (The shadow sync's journal stream refusing a request is no
        failure here: the change is stored, and answered so, with the cloud behind on it.)"""
        error = DittoError(503, "things:unavailable", f"{what} not stored: {failure.getErrorMessage()}")
        disk = failure.check(OSError) is not None
        if disk:
            self._log_not_stored(topic, command.path, error)
        else:
            self.log.failure("twin change to {thing} not stored", failure, thing=command.thing_id)
        self._answer_error(topic, command.path, command.headers, error, self._topic_thing(command.thing_id),
                           log=not disk)

    def _log_not_stored(self, topic: str, path: Any, error: DittoError) -> None:
        """Log a command refused because the disk refuses the twin's writes: the first of each
        spell of failed writes, then at most once a minute with how many were refused since
        (an app changing a property ten times a second on a read-only disk wrote 36,000 lines
        an hour)."""
        failing = self.store.failing.now
        spell = failing.since if failing is not None else None
        if spell != self._not_stored_spell:  # (a write worked since the last line)
            self._not_stored_spell = spell
            self._not_stored_lines.reset()
        count = self._not_stored_lines.note()
        if count is not None:
            self.log.info("twin command on {topic} {path} refused: {status} {reason} ({count} refused so since the"
                          " last such line; logged at most once a minute while the disk refuses the twin's writes)",
                          topic=escaped(shown(topic)), path=escaped(shown(str(path))), status=error.status,
                          reason=escaped(error.message), count=count)

    def _publish(self, topic: str, envelope: dict[str, Any]) -> None:
        """Publish a message (an event, a response) on the local bus; one the broker or the
        journal refuses is a warning, the first, then at most one per
        :data:`~gateway.logthrottle.NOT_PUBLISHED_LOG_INTERVAL` until one is published."""
        payload = json.dumps(envelope).encode()

        def refused(failure: Failure) -> None:
            count = self._refused_lines.note()
            if count is not None:
                self.log.warn("twin message on {topic} not published: {error} ({since})",
                              topic=topic_for_log(topic),
                              error=failure.getErrorMessage(), since=not_published_since(count))

        self.bus.publish(topic, payload, 1, False).addCallbacks(lambda _: self._refused_lines.reset(), refused)

    # -- from the cloud -------------------------------------------------------------------

    def apply_desired(self, thing_id: str, feature: str, delta: dict[str, Any]) -> Deferred[None]:
        """Merge a shadow's desired ``delta`` into a feature's ``desiredProperties``.

        Persisted like a local change, then announced as a ``merged`` event (so apps see
        what the cloud wants) on the thing's local topic. No response is published.
        """
        namespace, _, name = thing_id.partition(":")
        command = Command(namespace, name, "merge", f"/features/{feature}/desiredProperties", delta,
                          {"response-required": False, "origin": "shadow"})
        return self.handle(command)

    def live_command(self, thing_id: str, path: str, value: Any) -> None:
        """Tell apps that the cloud wants a change the twin has no desired state for (attributes):
        a Ditto live ``merge`` command on the thing's local topic (``command///req//merge``)."""
        namespace, _, name = thing_id.partition(":")
        self._publish(local_topic(self.root, thing_id, "merge"), {
            "topic": f"{namespace}/{name}/things/live/commands/merge",
            "headers": {"response-required": False, "origin": "shadow"}, "path": path, "value": value})
