"""The one dispatcher of commands to the gateway, and the gateway's own commands, with fakes."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ReactorNotRunning
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from gateway.apps.errors import AmbiguousProgramError, DesiredStateError, InstallError, UnknownAppError
from gateway.commands.dispatcher import CommandDispatcher, CommandError, CommandRequest, Reply
from gateway.commands.dropin import CheckOutcome
from gateway.commands.gateway_commands import GatewayCommands, tail_within
from gateway.commands.reconfigure import ApplyResult
from gateway.commands.restart import ProcessRestart
from gateway.commands.settings import CommandsSettings
from gateway import config
from gateway.errors import ConfigError, ConfigKeyError
from gateway.journal.errors import RecordTooLargeError, StreamFullError
from gateway.payloadlimits import REQUEST_BYTES
from gateway.redaction import WITHHELD, redact
from gateway.stopsignals import HANDLER_NAMES, queue_stop_signals
from gateway.telemetry.errors import ReportNotPublished, ReportTooLarge
from tests.logevents import first_line
from tests.updates.test_commands import FakeBus


class DispatcherTests(SynchronousTestCase):
    """Topics, replies and errors."""

    def setUp(self) -> None:
        self.bus = FakeBus()

        def boom(request: CommandRequest) -> Reply:
            raise RuntimeError("kaput")

        def bad(request: CommandRequest) -> Reply:
            raise CommandError(400, "x: required", {"errors": ["a", "b"]})

        self.clock = Clock()
        self.dispatcher = CommandDispatcher(self.bus, "gw-1", {
            "echo": lambda request: Reply(200, request.args()),
            "later": lambda request: succeed(Reply(202, {})),
            "boom": boom, "bad": bad}, self.clock)
        self.dispatcher.startService()

    def replies(self) -> list[tuple[str, Any]]:
        return [(topic, json.loads(payload)) for topic, payload, _, _ in self.bus.published]

    def test_reply_on_the_reply_topic(self) -> None:
        """A command's reply goes to command//<device>/res/<req-id>/<status> with QoS 1, into the
        journal's reserve if need be (docs/commands.md: a stream full under reject-new, its
        cloud just back, refused the reply and the cloud never got one)."""
        self.bus.deliver("command//gw-1/req/42/echo", b'{"a": 1}')
        self.bus.deliver("command//gw-1/req/43/later", b"")
        self.assertEqual(self.replies(), [("command//gw-1/res/42/200", {"a": 1}), ("command//gw-1/res/43/202", {})])
        self.assertEqual(self.bus.published[0][2], 1)
        self.assertEqual(self.bus.reserved, ["command//gw-1/res/42/200", "command//gw-1/res/43/202"])

    def test_a_command_over_the_request_limit_is_a_413_unread(self) -> None:
        """A command body of REQUEST_BYTES reaches its handler; one byte more is answered 413 by
        its size, its handler never called (nor the body parsed), and an unknown name likewise."""
        body = b'{"a": 1}'.ljust(REQUEST_BYTES)
        self.bus.deliver("command//gw-1/req/1/echo", body)
        self.bus.deliver("command//gw-1/req/2/echo", body + b" ")
        self.bus.deliver("command//gw-1/req/3/nope", body + b" ")
        error = f"the message is {REQUEST_BYTES + 1} bytes, more than the {REQUEST_BYTES} bytes a request may have"
        self.assertEqual(self.replies(), [("command//gw-1/res/1/200", {"a": 1}),
                                          ("command//gw-1/res/2/413", {"error": error}),
                                          ("command//gw-1/res/3/413", {"error": error})])

    def test_a_name_or_request_id_with_a_newline_is_logged_on_one_line(self) -> None:
        """A command's request id and name are levels of its topic, where MQTT allows a newline:
        the command's log line shows them escaped, so that they cannot end the line and forge
        the next (they were written raw)."""
        with capturedLogs() as events:
            self.bus.deliver("command//gw-1/req/4\n2/echo\n2026-12-06T19:00:00+0000 [gateway] forged", b"{}")
        [line] = [formatEvent(e) for e in events if e.get("log_namespace", "").startswith("gateway.commands")]
        self.assertEqual(line, "command echo\\n2026-12-06T19:00:00+0000 [gateway] forged (4\\n2): 404 ("
                               "logged at most once every 10 s while they go on)")

    def test_a_withdrawn_retained_command_is_no_command(self) -> None:
        """docs/commands.md: when a link's cloud withdraws a retained command, the link publishes
        the removal as an empty retained message (docs/topics.md): it is neither run (an empty
        body is a command without arguments: a withdrawn ``restart`` ran once more) nor
        refused with a warning; the same empty message live is a command."""
        with capturedLogs() as events:
            self.bus.deliver("command//gw-1/req/42/echo", b"", retain=True)
        self.assertEqual((self.bus.published, [e for e in events if e["log_level"] >= LogLevel.info]), ([], []))
        self.bus.deliver("command//gw-1/req/43/echo", b"")
        self.assertEqual(self.replies(), [("command//gw-1/res/43/200", {})])

    def test_a_retained_command_with_a_body_is_not_run_nor_answered(self) -> None:
        """docs/commands.md: a command that comes retained (a local client's retained publish
        included: the dispatcher cannot tell it from a link's stored copy) is not run and gets
        no answer, only a warning naming it."""
        with capturedLogs() as events:
            self.bus.deliver("command//gw-1/req/41/echo", b"{}", retain=True)
        self.assertEqual(self.bus.published, [])
        [line] = [formatEvent(e) for e in events if e["log_level"] >= LogLevel.warn]
        self.assertTrue(line.startswith("command echo (41) not run: it came retained"), line)

    def test_a_burst_of_refused_commands_is_one_line_then_one_summary(self) -> None:
        """docs/commands.md: a client sending bad commands in a loop (unknown, or refused 4xx)
        wrote a line for each, and one sending retained commands a warning for each. The first
        of each is logged at once, then at most one line per 10 s saying how many since; each
        bad command is still answered, and a command that runs is logged each time."""
        def burst(commands: int, retain: bool = False) -> list[str]:
            with capturedLogs() as events:
                for n in range(commands):
                    self.bus.deliver(f"command//gw-1/req/{n}/nope", b"{}", retain=retain)
                    self.bus.deliver("command//gw-1/req/x/bad", b"{}", retain=retain)
            return [formatEvent(e) for e in events if e.get("log_namespace", "").startswith("gateway.commands")]

        since = "({count} refused since the last such line; logged at most once every 10 s while they go on)"
        self.assertEqual(burst(500), ["command nope (0): 404 " + first_line(since)])
        self.assertEqual(len(self.bus.published), 1000)  # each answered
        retained = ("command nope (0) not run: it came retained, a copy the broker kept and sends again on every"
                    " subscription (each reconnect); send commands without retain " + since)
        self.assertEqual(burst(500, retain=True), [first_line(retained)])
        self.clock.advance(9)
        self.assertEqual(burst(1) + burst(1, retain=True), [])
        self.clock.advance(1)
        self.assertEqual(burst(1), ["command nope (0): 404 " + since.format(count=1002)])
        self.assertEqual(burst(1, retain=True), [retained.format(count=1002)])
        with capturedLogs() as events:
            self.bus.deliver("command//gw-1/req/42/echo", b"{}")
            self.bus.deliver("command//gw-1/req/43/echo", b"{}")
        self.assertEqual([formatEvent(e) for e in events], ["command echo (42): 200", "command echo (43): 200"])

    def test_replies_not_published_are_logged_once_per_interval(self) -> None:
        """While the journal refuses every reply (a stream full for hours, a cloud pinging the
        gateway every 10 s) or the broker raises (stopping), the first reply not published is a
        warning, then at most one every 10 minutes with their count, and the first after a
        reply published again at once: each one was a warning."""
        refusing = [True]
        publish = self.bus.publish

        def refused(topic: str, payload: bytes, qos: int = 0, retain: bool = False,
                    reserved: bool = False) -> Deferred[None] | None:
            if refusing[0]:
                return fail(StreamFullError("link-cloud", "max-bytes"))
            return publish(topic, payload, qos, retain)

        def raising(topic: str, payload: bytes, qos: int = 0, retain: bool = False, reserved: bool = False) -> None:
            raise RuntimeError("the broker is stopping")

        self.patch(self.bus, "publish", refused)
        with capturedLogs() as events:
            for _ in range(120):  # 20 minutes
                self.bus.deliver("command//gw-1/req/1/echo", b"{}")
                self.clock.advance(10)
            self.patch(self.bus, "publish", raising)  # at 1200 s
            self.bus.deliver("command//gw-1/req/1/echo", b"{}")
        lines = [formatEvent(e) for e in events if "not published" in e.get("log_format", "")]
        self.assertEqual(lines, [
            "reply to echo not published: journal stream 'link-cloud' is full (max-bytes); append rejected ("
            "logged at most once every 10 minutes until one is)",
            "reply to echo not published: journal stream 'link-cloud' is full (max-bytes); append rejected (60 not"
            " published since the last such line; logged at most once every 10 minutes until one is)",
            "reply to echo not published: the broker is stopping (60 not published since the last such line;"
            " logged at most once every 10 minutes until one is)"])
        self.patch(self.bus, "publish", refused)
        refusing[0] = False
        self.bus.deliver("command//gw-1/req/1/echo", b"{}")
        refusing[0] = True
        with capturedLogs() as events:
            self.bus.deliver("command//gw-1/req/1/echo", b"{}")
        self.assertEqual(len([e for e in events if "not published" in e.get("log_format", "")]), 1)

    def test_a_reply_refused_beyond_the_reserve_is_published_again_as_any(self) -> None:
        """A reply the journal refuses even with its reserve (used up) goes again as any
        message: under drop-oldest the stream then makes room for it (dropping its oldest
        records), as it did before replies used the reserve; under reject-new it is refused
        again, and only that is logged."""
        def publish(topic: str, payload: bytes, qos: int = 0, retain: bool = False,
                    reserved: bool = False) -> Deferred[None]:
            self.bus.published.append((topic, payload, qos, retain))
            return fail(StreamFullError("link-cloud", "max-bytes")) if reserved else succeed(None)

        self.patch(self.bus, "publish", publish)
        with capturedLogs() as events:
            self.bus.deliver("command//gw-1/req/9/echo", b'{"a": 1}')
        self.assertEqual(self.replies(), [("command//gw-1/res/9/200", {"a": 1})] * 2)
        self.assertFalse([e for e in events if "not published" in e.get("log_format", "")])

    def test_a_reply_no_stream_can_hold_is_replaced_by_a_413(self) -> None:
        """A reply larger than the max_bytes of the journal stream that carries it to the cloud
        was only logged: the cloud never got an answer, and waited or sent the command again.
        The cloud gets a 413 saying so now (docs/commands.md)."""
        too_large = RecordTooLargeError("link-cloud", 70000, 8192)

        def publish(topic: str, payload: bytes, qos: int = 0, retain: bool = False,
                    reserved: bool = False) -> Deferred[None]:
            self.bus.published.append((topic, payload, qos, retain))
            return fail(too_large) if topic.endswith("/200") else succeed(None)

        self.patch(self.bus, "publish", publish)
        with capturedLogs() as events:
            self.bus.deliver("command//gw-1/req/9/echo", b'{"a": 1}')
        self.assertEqual(self.replies(), [
            ("command//gw-1/res/9/200", {"a": 1}),
            ("command//gw-1/res/9/413", {"error": "the reply (200) can never be stored: journal stream 'link-cloud'"
                                                  " refused the append (max-bytes): a record of 70000 bytes is larger"
                                                  " than max_bytes (8192 bytes)"})])
        self.assertIn("reply to echo not published: journal stream 'link-cloud' refused the append (max-bytes): a"
                      " record of 70000 bytes is larger than max_bytes (8192 bytes) ("
                      "logged at most once every 10 minutes until one is)",
                      [formatEvent(e) for e in events])

    def test_ditto_envelope_is_unwrapped(self) -> None:
        """The value of a Ditto envelope is the command's arguments."""
        self.bus.deliver("command//gw-1/req/1/echo", b'{"topic": "t", "path": "/p", "value": {"b": 2}}')
        self.assertEqual(self.replies(), [("command//gw-1/res/1/200", {"b": 2})])

    def test_unknown_command_is_404_and_names_the_known_ones(self) -> None:
        """A name no handler has is answered 404, listing the names there are."""
        self.bus.deliver("command//gw-1/req/1/reboot", b"{}")
        [(topic, body)] = self.replies()
        self.assertEqual(topic, "command//gw-1/res/1/404")
        self.assertEqual(body["error"], "unknown command 'reboot' (known: bad, boom, echo, later)")

    def test_a_name_nested_deeper_is_404_too(self) -> None:
        """A name of several levels (command//<device>/req/<req-id>/a/b) is no command's: 404, not
        silence, even when its first level is a known name."""
        self.bus.deliver("command//gw-1/req/7/echo/extra", b"{}")
        self.bus.deliver("command//gw-1/req/8/app/start/now", b"{}")
        [(t1, b1), (t2, b2)] = self.replies()
        self.assertEqual((t1, t2), ("command//gw-1/res/7/404", "command//gw-1/res/8/404"))
        self.assertEqual(b1["error"], "unknown command 'echo/extra' (known: bad, boom, echo, later)")
        self.assertEqual(b2["error"], "unknown command 'app/start/now' (known: bad, boom, echo, later)")

    def test_a_long_unknown_name_is_quoted_by_its_start(self) -> None:
        """An unknown name of 30000 characters is quoted in the 404 and the log by its first 100
        characters and its length (docs/topics.md): the 404 repeated it whole."""
        with capturedLogs() as events:
            self.bus.deliver("command//gw-1/req/1/" + "z" * 30_000, b"{}")
        [(_, body)] = self.replies()
        self.assertEqual(body["error"], "unknown command '" + "z" * 100 + "... (30000 characters)'"
                                        " (known: bad, boom, echo, later)")
        self.assertLess(max(len(formatEvent(event)) for event in events), 500)

    def test_bad_arguments_are_400_with_why(self) -> None:
        """Not JSON, not an object, or refused by the handler: 400 and the reason."""
        self.bus.deliver("command//gw-1/req/1/echo", b"{nope")
        self.bus.deliver("command//gw-1/req/2/echo", b"[1]")
        self.bus.deliver("command//gw-1/req/3/bad", b"{}")
        [(t1, b1), (t2, b2), (t3, b3)] = self.replies()
        self.assertEqual((t1, t2, t3), ("command//gw-1/res/1/400", "command//gw-1/res/2/400",
                                        "command//gw-1/res/3/400"))
        self.assertIn("not JSON", b1["error"])
        self.assertIn("JSON object", b2["error"])
        self.assertEqual(b3, {"error": "x: required", "errors": ["a", "b"]})

    def test_a_body_that_is_no_object_is_named_in_jsons_words(self) -> None:
        """A body (or a Ditto envelope's value) that is JSON but no object is 400 naming what
        it is as JSON does: before, Python's type name (``not NoneType`` for ``null``)."""
        for n, body in enumerate((b"null", b"[1]", b'"x"', b"5", b'{"topic": "t", "path": "/", "value": true}')):
            self.bus.deliver(f"command//gw-1/req/{n}/echo", body)
        self.assertEqual([b["error"] for _, b in self.replies()],
                         [f"the body must be a JSON object, not {what}"
                          for what in ("null", "an array", "a string", "a number", "true")])

    def test_json_nested_too_deeply_is_400_as_other_bad_json(self) -> None:
        """A body nested deeper than the parser goes is "not JSON" (400), not an internal error."""
        self.bus.deliver("command//gw-1/req/1/echo", b"[" * 100000)
        [(topic, body)] = self.replies()
        self.assertEqual(topic, "command//gw-1/res/1/400")
        self.assertIn("not JSON", body["error"])

    def test_a_body_that_is_not_rfc_8259_json_is_400(self) -> None:
        """docs/commands.md: a body holding NaN, Infinity, 1e400, an integer of 5000 digits or
        a key given twice is 400 ``the body is not JSON: ...``, as the admin API refuses it
        (a NaN went on into a configuration change, a key given twice was one of two values)."""
        for n, (body, why) in enumerate(((b'{"a": NaN}', "NaN is not JSON"), (b'{"a": Infinity}', "Infinity is not JSON"),
                                         (b'{"a": 1e400}', "the number 1e400 is too large"),
                                         (b'{"a": %s}' % (b"9" * 5000), "an integer of 5000 digits"),
                                         (b'{"a": 1, "a": 2}', "key 'a' given twice in one object"))):
            self.bus.deliver(f"command//gw-1/req/{n}/echo", body)
            topic, reply = self.replies()[-1]
            self.assertEqual(topic, f"command//gw-1/res/{n}/400")
            self.assertIn(f"the body is not JSON: {why}", reply["error"])

    def test_a_body_nested_too_deeply_is_400(self) -> None:
        """A JSON body whose objects and arrays nest deeper than 100 levels is refused with 400
        before any handler sees it (config.set's YAML writer ran out of stack on one: a 500)."""
        deep = b'{"a": ' + b"[" * 150 + b"]" * 150 + b"}"
        self.bus.deliver("command//gw-1/req/1/echo", deep)
        [(topic, body)] = self.replies()
        self.assertEqual((topic, body["error"]), ("command//gw-1/res/1/400", "the body nests deeper than 100 levels"))

    def test_handler_crash_is_500(self) -> None:
        """A handler's unexpected exception is answered 500 (and logged), never left unanswered."""
        self.bus.deliver("command//gw-1/req/1/boom", b"{}")
        self.assertEqual(self.replies(), [("command//gw-1/res/1/500", {"error": "internal error: kaput"})])
        self.flushLoggedErrors(RuntimeError)

    def test_one_way_command_gets_no_reply(self) -> None:
        """An empty request id (Hono's one-way command) runs without a reply."""
        self.bus.deliver("command//gw-1/req//echo", b"{}")
        self.assertEqual(self.bus.published, [])

    def test_a_retained_command_is_not_run(self) -> None:
        """A command with the retain flag is a copy a broker kept: the cloud's sends it again
        on every subscription, that is after each reconnect, and a retained ``restart`` would
        restart the gateway over and over. It is not run nor answered; a warning says why."""
        with capturedLogs() as events:
            self.bus.deliver("command//gw-1/req/42/echo", b'{"a": 1}', retain=True)
        self.assertEqual(self.bus.published, [])
        [warning] = [formatEvent(e) for e in events if e["log_level"] == LogLevel.warn]
        self.assertEqual(warning, "command echo (42) not run: it came retained, a copy the broker kept and sends "
                                  "again on every subscription (each reconnect); send commands without retain ("
                                  "logged at most once every 10 s while they go"
                                  " on)")
        self.bus.deliver("command//gw-1/req/43/echo", b'{"a": 1}')  # the same sent live is run
        self.assertEqual(self.replies(), [("command//gw-1/res/43/200", {"a": 1})])

    def test_other_devices_are_left_alone_and_stop_unsubscribes(self) -> None:
        """Commands to other device ids are their apps'; once stopped, nothing is taken."""
        self.bus.deliver("command//sensor-9/req/1/echo", b"{}")
        self.dispatcher.stopService()
        self.bus.deliver("command//gw-1/req/1/echo", b"{}")
        self.assertEqual(self.bus.published, [])


class FakeApps:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.log = [f"line {i}" for i in range(2000)]

    def _do(self, what: str, name: str) -> Deferred[None]:
        self.calls.append((what, name))
        if name == "ghost":
            return fail(UnknownAppError(f"no app or program {name!r}"))
        if name == "busy":
            return fail(InstallError("being installed"))
        if name == "full":
            return fail(DesiredStateError("cannot keep the wish (desired.json: No space left on device)"))
        return succeed(None)

    def start(self, name: str) -> Deferred[None]:
        return self._do("start", name)

    def stop(self, name: str) -> Deferred[None]:
        return self._do("stop", name)

    def restart(self, name: str) -> Deferred[None]:
        return self._do("restart", name)

    def tail(self, name: str, lines: int = 100, stderr: bool = False) -> Deferred[list[str]]:
        if name == "ghost":
            return fail(UnknownAppError("no such log"))
        if name == "duo":
            return fail(AmbiguousProgramError("'duo' has several programs: name one"))
        return succeed(self.log[-lines:])


class FakeChanger:
    def __init__(self) -> None:
        self.refused: str | None = None  # what refusal() says
        self.applied: list[tuple[Mapping[str, Any], float | None, str, bool]] = []
        self.reported: list[tuple[list[str], list[str], str]] = []  # report_refused's
        self.values: dict[str, Any] = {"links.links.c": {"endpoint": "tcp:x", "password": "hunter2"},
                                       "links.links.c.password": "p"}

    def get(self, path: str) -> Any:
        if path not in self.values:
            raise ConfigKeyError(f"{path}: no such key")
        return self.values[path]

    def check(self, changes: Mapping[str, Any]) -> Deferred[CheckOutcome]:
        return succeed(CheckOutcome([f"{k}: bad" for k, v in changes.items() if v == "bad"]
                                    + [f"f.yaml: {k}: must be a string, not {v!r}" for k, v in changes.items()
                                       if isinstance(v, list)],
                                    [f"{k} shares a session" for k, v in changes.items() if v == "shared"]))

    def refusal(self) -> str | None:
        return self.refused

    def apply(self, changes: Mapping[str, Any], confirm_within: float | None, origin: str,
              next_turn: bool = False) -> Deferred[ApplyResult]:
        self.applied.append((changes, confirm_within, origin, next_turn))
        self.refused = "a change is being applied"
        return succeed(ApplyResult(True, (), (), None, "applied"))

    def report_refused(self, keys: Iterable[str], errors: Sequence[str], origin: str) -> None:
        self.reported.append((sorted(keys), list(errors), origin))


class FakeReports:
    def report_names(self) -> tuple[str, ...]:
        return ("device_info", "engine_report", "usage_report")

    def request_report(self, name: str) -> Deferred[Mapping[str, Any]]:
        if name == "device_info":  # as if the journal refused it
            return fail(ReportNotPublished("report device_info was built but not published: full"))
        if name == "usage_report":  # as if larger than its stream's max_bytes
            return fail(ReportTooLarge("report usage_report was built but not published: too large"))
        return succeed({"report": name})


class FakeRestart:
    def restart(self) -> str:
        return "re-exec"


class GatewayCommandsTests(SynchronousTestCase):
    """Each gateway command's arguments and replies."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.apps, self.changer = FakeApps(), FakeChanger()
        self.commands = GatewayCommands(CommandsSettings(confirm_window=60, logs_max_bytes=1024), self.clock,
                                        self.apps, type("View", (), {"apps": lambda self: ("a", "b")})(),
                                        list, self.changer, FakeRestart(), FakeReports())
        self.handlers = self.commands.handlers()

    def command(self, name: str, body: Any = None, request_id: str = "r") -> Reply:
        """Run one command as the dispatcher would; its reply (errors as their status)."""
        handler, request = self.handlers[name], CommandRequest(name, request_id, json.dumps(body or {}).encode())
        try:
            result = handler(request)
        except CommandError as exc:
            return Reply(exc.status, {"error": exc.message, **exc.details})
        if isinstance(result, Deferred):
            failure = result.addCallback(lambda reply: (reply, None)).addErrback(lambda f: (None, f))
            reply, error = self.successResultOf(failure)
            if error is not None:
                error.trap(CommandError)
                return Reply(error.value.status, {"error": error.value.message, **error.value.details})
            return reply
        return result

    def test_a_long_report_name_is_quoted_by_its_start(self) -> None:
        """``report`` with a name of a megabyte is a 404 quoting its first 100 characters and its
        length: it repeated the name whole."""
        reply = self.command("report", {"name": "r" * 1_000_000})
        self.assertEqual((reply.status, reply.body["error"]),
                         (404, "unknown report '" + "r" * 100 + "... (1000000 characters)'"
                               " (known: device_info, engine_report, usage_report)"))

    def test_ping_and_apps(self) -> None:
        """ping answers pong; apps answers the read side's apps as JSON data."""
        self.assertEqual(self.command("ping").body["pong"], True)
        self.assertEqual(self.command("apps"), Reply(200, {"apps": ["a", "b"]}))

    def test_app_actions(self) -> None:
        """200 when done, 404 for an unknown app, 409 when its state forbids it, 400 without a
        name, 500 saying why when its wish cannot be kept (desired.json on a full disk)."""
        self.assertEqual(self.command("app.restart", {"name": "x"}), Reply(200, {"name": "x", "result": "restarted"}))
        self.assertEqual(self.command("app.stop", {"name": "ghost"}).status, 404)
        self.assertEqual(self.command("app.start", {"name": "busy"}).status, 409)
        self.assertEqual(self.command("app.start", {}).status, 400)
        self.assertEqual(self.command("app.stop", {"name": "full"}),
                         Reply(500, {"error": "cannot keep the wish (desired.json: No space left on device)"}))
        self.assertEqual(self.apps.calls, [("restart", "x"), ("stop", "ghost"), ("start", "busy"), ("stop", "full")])

    def test_an_unknown_key_is_400_naming_it_and_the_known_ones(self) -> None:
        """A key a command does not take is refused (400, nothing done), naming it and the
        keys the command takes, as the admin API does: before, it was dropped silently (a
        config.set with ``confirm_within``, which only a local change takes, was applied with
        the remote window; app.logs with ``line`` sent 100 lines)."""
        for name, body, error in (
                ("config.set", {"key": "gateway.device_id", "value": "a", "confirm_within": 30},
                 "unknown key 'confirm_within' (known: changes, key, value)"),
                ("config.get", {"key": "gateway.device_id", "redact": False}, "unknown key 'redact' (known: key)"),
                ("app.logs", {"name": "x", "line": 5}, "unknown key 'line' (known: lines, name, stderr)"),
                ("app.stop", {"name": "x", "force": True}, "unknown key 'force' (known: name)"),
                ("report", {"name": "device_info", "now": 1}, "unknown key 'now' (known: name)"),
                ("ping", {"x": 1}, "unknown key 'x' (this request takes none: send {} or no body)"),
                ("apps", {"all": True}, "unknown key 'all' (this request takes none: send {} or no body)"),
                ("restart", {"force": True}, "unknown key 'force' (this request takes none: send {} or no body)")):
            self.assertEqual(self.command(name, body), Reply(400, {"error": error}), name)
        self.assertEqual((self.apps.calls, self.changer.applied, self.changer.reported, self.clock.getDelayedCalls()),
                         ([], [], [], []))

    def test_app_logs_is_bounded(self) -> None:
        """The newest lines that fit logs_max_bytes; truncated says some were left out."""
        reply = self.command("app.logs", {"name": "x", "lines": 1000})
        self.assertTrue(reply.body["truncated"])
        self.assertEqual(reply.body["lines"][-1], "line 1999")
        self.assertLessEqual(len(json.dumps(reply.body)), 1024)
        self.assertEqual(self.command("app.logs", {"name": "x", "lines": 2}).body,
                         {"name": "x", "lines": ["line 1998", "line 1999"], "truncated": False})
        for bad in (0, 10001, "5", True):
            self.assertEqual(self.command("app.logs", {"name": "x", "lines": bad}).status, 400)
        self.assertEqual(self.command("app.logs", {"name": "ghost"}).status, 404)
        self.assertEqual(self.command("app.logs", {"name": "duo"}).status, 400)  # name one of its programs

    def test_app_logs_bound_holds_for_a_long_name(self) -> None:
        """The reply body stays within logs_max_bytes whatever the app's name (up to the 64
        characters a name may have), and lines with characters JSON escapes."""
        name = "n" * 64
        self.apps.log = [f"line \u00e9 {i}" for i in range(2000)]
        reply = self.command("app.logs", {"name": name, "lines": 1000})
        self.assertTrue(reply.body["truncated"])
        self.assertEqual(reply.body["lines"][-1], "line \u00e9 1999")
        self.assertLessEqual(len(json.dumps(reply.body).encode()), 1024)
        self.assertGreater(len(json.dumps(reply.body).encode()), 1024 - 24)  # (and fills it, less one line)

    def test_report(self) -> None:
        """A known report is built and returned; an unknown name is 404 with the known ones."""
        self.assertEqual(self.command("report", {"name": "engine_report"}), Reply(200, {"report": "engine_report"}))
        reply = self.command("report", {"name": "weather"})
        self.assertEqual(reply.status, 404)
        self.assertIn("device_info, engine_report", reply.body["error"])

    def test_a_report_not_published_is_500_saying_why(self) -> None:
        """A report the journal refused (docs/commands.md): 500 with the reason; it was a bug's
        500, ``internal error: ...``, with a traceback in the log."""
        self.assertEqual(self.command("report", {"name": "device_info"}),
                         Reply(500, {"error": "report device_info was built but not published: full"}))

    def test_a_report_no_stream_can_hold_is_413(self) -> None:
        """A report larger than its journal stream's ``max_bytes`` is 413 saying why, as a reply
        the stream can never hold is (docs/commands.md): asking again never helps; it was 500."""
        self.assertEqual(self.command("report", {"name": "usage_report"}),
                         Reply(413, {"error": "report usage_report was built but not published: too large"}))

    def test_config_get_redacts_secrets(self) -> None:
        """Passwords are redacted, in a mapping or as the key asked for; unknown keys 404."""
        self.assertEqual(self.command("config.get", {"key": "links.links.c"}).body["value"],
                         {"endpoint": "tcp:x", "password": "<redacted>"})
        self.assertEqual(self.command("config.get", {"key": "links.links.c.password"}).body["value"], "<redacted>")
        # the diagnostics bundle's rule (gateway.redaction): an Authorization header, CIKs, keys
        self.changer.values = {"x": {"headers": {"Authorization": "Bearer t"}, "ciks": {"sn1": "c" * 40},
                                     "key_file": "/etc/k.pem", "keepalive": 60}}
        self.assertEqual(self.command("config.get", {"key": "x"}).body["value"],
                         {"headers": {"Authorization": "<redacted>"}, "ciks": "<redacted>", "key_file": "<redacted>",
                          "keepalive": 60})
        self.assertEqual(self.command("config.get", {"key": "nope"}).status, 404)
        self.assertEqual(self.command("config.get", {}).status, 400)

    def test_config_get_redacts_a_value_under_a_secret_key(self) -> None:
        """A key path through a secret-looking key (an item of ingest.ciks, a header under
        "credentials") is redacted like the mapping or list that key names."""
        self.changer.values = {"ingest.ciks.0": "c" * 40, "x.credentials.user": "admin",
                               "x.headers.Accept": "text/plain", "ingest.ciks_note": "", "y.password": None}
        self.assertEqual(self.command("config.get", {"key": "ingest.ciks.0"}).body,
                         {"key": "ingest.ciks.0", "value": "<redacted>"})
        self.assertEqual(self.command("config.get", {"key": "x.credentials.user"}).body["value"], "<redacted>")
        self.assertEqual(self.command("config.get", {"key": "x.headers.Accept"}).body["value"], "text/plain")
        self.assertEqual(self.command("config.get", {"key": "ingest.ciks_note"}).body["value"], "")
        # one not set is shown as it is (docs/commands.md): a link without a password answers null
        self.assertIsNone(self.command("config.get", {"key": "y.password"}).body["value"])

    def test_config_get_redacts_the_secret_query_parameters_of_a_url(self) -> None:
        """A json link's ``url`` may carry its key in the query (an Azure SAS's ``sig``, an Azure
        Functions ``code``, an ``api_key``): config.get answers it with those values redacted, the
        other parameters as they are (docs/commands.md); it answered the whole URL."""
        self.changer.values = {"http_links.links.j.url": "https://in.example/api?code=SECRET-1&format=json&sig=S2"}
        self.assertEqual(self.command("config.get", {"key": "http_links.links.j.url"}).body["value"],
                         "https://in.example/api?code=<redacted>&format=json&sig=<redacted>")

    def test_config_set(self) -> None:
        """Checked first (400 with every error, and the change reported refused as an apply
        reports it: docs/commands.md, refused), 409 while busy, else 202 and applied next
        with the confirm window."""
        reply = self.command("config.set", {"changes": {"a.b": "bad", "a.c": "bad"}})
        self.assertEqual((reply.status, reply.body["errors"]), (400, ["a.b: bad", "a.c: bad"]))
        reply = self.command("config.set", {"changes": {"x.token": ["s3cr3t"], "x.port": ["80"]}})
        self.assertEqual(reply.body["errors"], [f"f.yaml: x.token: {WITHHELD}",
                                                "f.yaml: x.port: must be a string, not ['80']"])
        self.assertEqual(self.command("config.set", {"key": "a.b"}).status, 400)
        self.assertEqual(self.changer.reported, [
            (["a.b", "a.c"], ["a.b: bad", "a.c: bad"], "remote:r"),
            (["x.port", "x.token"], ["f.yaml: x.token: must be a string, not ['s3cr3t']",
                                     "f.yaml: x.port: must be a string, not ['80']"], "remote:r")])
        reply = self.command("config.set", {"key": "a.b", "value": 5}, request_id="r-9")
        self.assertEqual(reply, Reply(202, {"keys": ["a.b"], "confirmWithin": 60.0,
                                            "reportTopic": "edge/gateway/config/lastChange", "warnings": []}))
        # under way at once, begun on the next turn (after the reply): ConfigChanger.apply's next_turn
        self.assertEqual(self.changer.applied, [({"a.b": 5}, 60.0, "remote:r-9", True)])
        reply = self.command("config.set", {"key": "a.b", "value": 6})
        self.assertEqual(reply, Reply(409, {"error": "a change is being applied"}))

    def test_config_set_says_what_the_change_may_not_mean(self) -> None:
        """The 202 of a change its check warns about carries the check's ``warnings`` (two links
        sharing one cloud session), as ``POST /config/check`` does: it carried none, and the
        cloud learnt of them only from the links' log, on the gateway (docs/commands.md)."""
        reply = self.command("config.set", {"changes": {"links.links.b.endpoint": "shared", "a.c": 1}})
        self.assertEqual((reply.status, reply.body["warnings"]), (202, ["links.links.b.endpoint shares a session"]))

    def test_restart(self) -> None:
        """restart is accepted with 202 and says how the gateway comes back."""
        self.assertEqual(self.command("restart"), Reply(202, {"restarting": True, "how": "re-exec"}))

    def test_helpers(self) -> None:
        """redact reaches into lists and leaves None alone; tail_within keeps what fits."""
        self.assertEqual(redact({"a": [{"password": "x", "token": None}]}), {"a": [{"password": "<redacted>",
                                                                                   "token": None}]})
        self.assertEqual(tail_within(["a", "b"], 1000), (["a", "b"], False))


class FakeReactor(Clock):
    """A clock that stops as a reactor does: its "before shutdown" triggers run as the stop
    begins, and once it has stopped it runs no more timers."""

    def __init__(self) -> None:
        super().__init__()
        self.stopped = False
        self.before_shutdown: list[tuple[Any, tuple[Any, ...]]] = []

    def addSystemEventTrigger(self, phase: str, event: str, f: Any, *args: Any) -> object:
        assert (phase, event) == ("before", "shutdown")
        self.before_shutdown.append((f, args))
        return object()

    def stop(self) -> None:
        if self.stopped:  # as a reactor's stop does, once its stop has begun
            raise ReactorNotRunning("Can't stop reactor that isn't running.")
        self.stopped = True
        for f, args in self.before_shutdown:
            f(*args)

    def advance(self, amount: float) -> None:
        if not self.stopped:
            super().advance(amount)


class ProcessRestartTests(SynchronousTestCase):
    """Under systemd the gateway exits (Restart=always brings it back); without, it re-executes."""

    def test_under_systemd_it_stops(self) -> None:
        """With INVOCATION_ID set the reactor stops a second later, and nothing re-executes."""
        reactor, registered = FakeReactor(), []
        restart = ProcessRestart(reactor, {"INVOCATION_ID": "abc"}, registered.append, lambda *a: None, ("twistd",))
        self.assertEqual(restart.restart(), "systemd")
        self.assertFalse(reactor.stopped)
        reactor.advance(1)
        self.assertTrue(reactor.stopped)
        self.assertEqual(registered, [])

    def test_without_systemd_it_reexecutes_after_the_shutdown(self) -> None:
        """Without systemd the same command line is executed again at interpreter exit."""
        reactor, registered, execs = FakeReactor(), [], []
        restart = ProcessRestart(reactor, {}, registered.append, lambda path, argv: execs.append(argv),
                                 ("/venv/bin/twistd", "-n", "gateway"))
        self.assertEqual(restart.restart(), "re-exec")
        reactor.advance(1)
        self.assertTrue(reactor.stopped)
        [at_exit] = registered
        at_exit()
        self.assertEqual(execs[0][1:], ["/venv/bin/twistd", "-n", "gateway"])

    def test_a_stop_signal_while_the_restart_stops_it_ends_it(self) -> None:
        """A SIGTERM (or Ctrl-C) that comes while the restart stops the gateway is logged as
        "received SIGTERM while already stopping: the gateway ends once its services have
        stopped", and it does: by that signal, as after a stop the signal began. The gateway
        re-executed itself anyway and ran on (seen on a real gateway: a user's stop undone)."""
        self.assertEqual(self.restart_signalled(loop_runs=True), ([], [signal.SIGTERM]))

    def test_a_stop_signal_after_the_loops_last_turn_ends_it(self) -> None:
        """A SIGTERM that comes once the reactor's loop has run its last turn, before the
        re-execution (twistd's exit, the interpreter joining threads: up to
        exitdeadline.EXIT_GRACE), is queued for a loop that never runs again: the restart
        still ends the process by it. It re-executed itself and ran on (the signal lost)."""
        self.assertEqual(self.restart_signalled(loop_runs=False), ([], [signal.SIGTERM]))

    def restart_signalled(self, loop_runs: bool) -> tuple[list[Any], list[int]]:
        """A restart, then a SIGTERM once its reactor stopped (handed to the loop, which runs it
        at once if ``loop_runs``, else never), then the process's exit: what it executed and
        the signal it ended by."""
        reactor, registered, execs, ended = FakeReactor(), [], [], []
        for name in HANDLER_NAMES:  # (Twisted's: they stop the reactor)
            setattr(reactor, name, lambda number, frame: reactor.stop())
        reactor.callFromThread = (lambda f, *args: f(*args)) if loop_runs else (  # type: ignore[attr-defined]
            lambda f, *args: None)
        queue_stop_signals(reactor)
        restart = ProcessRestart(reactor, {}, registered.append, lambda path, argv: execs.append(argv),
                                 ("/venv/bin/twistd", "-n", "gateway"), end_by_signal=ended.append)
        restart.restart()
        reactor.advance(1)
        reactor.sigTerm(signal.SIGTERM, None)
        [at_exit] = registered
        at_exit()
        return execs, ended

    def test_a_restart_the_gateways_stop_overtook_does_nothing(self) -> None:
        """SIGTERM in the second between a ``restart`` reply and its stop: the gateway is stopping
        already, and stays stopped (no re-execution is registered); it is said without a
        traceback. The restart stopped the reactor again, which logged ReactorNotRunning with its
        traceback (seen on a real gateway), after registering the re-execution. Said as the stop
        begins: a gateway's stop takes a tenth of a second, and its reactor, once stopped, never
        ran the restart's call (the line was missing from a real gateway's log)."""
        reactor, registered = FakeReactor(), []
        restart = ProcessRestart(reactor, {}, registered.append, lambda *a: None, ("twistd",))
        restart.restart()
        with capturedLogs() as events:
            reactor.stop()  # SIGTERM: the stop (0.1 s on a real gateway) ends before the second
        self.assertEqual(registered, [])
        self.assertEqual(reactor.getDelayedCalls(), [])
        self.assertEqual([formatEvent(e) for e in events],
                         ["not restarting on the remote command: the gateway is stopping already"])


class SettingsTests(SynchronousTestCase):
    """The commands: section is checked with the configuration."""

    def test_report_topic_must_be_a_topic_name(self) -> None:
        """report_topic is published to: a wildcard is a configuration error at its key (every
        report was lost, each publish only logged)."""
        path = Path(self.mktemp())
        path.write_text("commands:\n  report_topic: 'edge/gateway/config/#'\n")
        errors = self.assertRaises(ConfigError, config.load, path).errors
        self.assertEqual(len(errors), 1, errors)
        self.assertIn("commands.report_topic: not a valid topic name: 'edge/gateway/config/#'", errors[0])
