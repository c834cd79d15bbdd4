"""ConfigChanger: check, write, restart, and the confirm window driven by task.Clock."""

from __future__ import annotations

import errno
import json
import tempfile
from pathlib import Path
from typing import Any, Callable

from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.logger import Logger, LogLevel, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from gateway import config as gateway_config
from gateway.clockstep import CLOCK_SET_SINCE, BootClock
from gateway.commands import dropin
from gateway.commands.dropin import dropin_path
from gateway.commands.reconfigure import ApplyResult, ConfigChanger
from gateway.errors import ConfigApplyConflict, ConfigKeyError, ConfigRevertError
from gateway.shown import shown_repr
from tests.logevents import capture_log_events
from tests.steppingclock import SteppingClock
from tests.test_filelayer import record_fsyncs

MAIN = """\
gateway:
  state_dir: {state}
  device_id: gw-1
links:
  links:
    a:
      endpoint: "tcp:host=127.0.0.1:port=1"
    b:
      endpoint: "tcp:host=127.0.0.1:port=2"
"""


CIK = "c0ffee" * 6 + "beef"


class _NotedReports(list[dict[str, Any]]):
    """The reports published, calling ``note`` as each comes (before it is kept)."""

    def __init__(self, reports: list[dict[str, Any]], note: Callable[[], None]) -> None:
        super().__init__(reports)
        self._note = note

    def append(self, report: dict[str, Any]) -> None:
        self._note()
        super().append(report)


class Harness:
    """A config on disk, a fake tree restart, link states the test sets, reports recorded."""

    def __init__(self, test: SynchronousTestCase) -> None:
        self.work = Path(test.mktemp()).resolve()
        self.work.mkdir(parents=True)
        self.main = self.work / "gateway.yaml"
        self.main.write_text(MAIN.format(state=self.work / "state"))
        self.clock = SteppingClock()
        self.clock.advance(1000)
        self.links: dict[str, tuple[bool, str]] = {"a": (True, ""), "b": (True, "")}
        self.restarts: list[gateway_config.Config] = []
        self.fail_next_restart = False
        self.reports: list[dict[str, Any]] = []
        self.hosted: list[tuple[str, str, str]] = []  # (program, app, version) of the installed apps
        self.boot = "boot-1"  # the machine's boot id: a test that reboots it sets another
        self.read_only: Path | None = None  # the directory the changer finds on a read-only filesystem
        self.changer = self.make()

    def make(self) -> ConfigChanger:
        """A ConfigChanger over the files, as the tree builds one after a restart."""
        config = gateway_config.load(self.main)
        return ConfigChanger(config, config.commands, self.clock, self.restart, lambda: dict(self.links),
                             self.publish, lambda work: maybeDeferred(work), poll_interval=0.5,
                             hosted_apps=lambda: list(self.hosted),
                             boot_clock=BootClock(self.boot, self.clock.steady_seconds),
                             read_only=lambda path: self.read_only)

    def restart(self, config: gateway_config.Config) -> Deferred[tuple[str, ...]]:
        self.restarts.append(config)
        if self.fail_next_restart:
            self.fail_next_restart = False
            return fail(RuntimeError("port in use"))
        return succeed(("journal", "broker", "links"))

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        assert topic == "edge/gateway/config/lastChange"
        self.reports.append(json.loads(payload))

    @property
    def statuses(self) -> list[str]:
        return [r["status"] for r in self.reports]

    @property
    def pending_file(self) -> Path:
        return self.work / "state" / "commands" / "pending-config.json"


class ApplyTests(SynchronousTestCase):
    """Applying without a confirm window."""

    def setUp(self) -> None:
        self.h = Harness(self)

    def test_valid_change_is_written_and_the_tree_restarted(self) -> None:
        """The drop-in holds the change, the tree restarts with it, a report says so."""
        result = self.successResultOf(self.h.changer.apply({"links.links.a.keepalive": 30}))
        self.assertEqual(result, ApplyResult(True, (), ("journal", "broker", "links"), None, "applied"))
        self.assertIn("keepalive: 30", dropin_path(self.h.main).read_text())
        [config] = self.h.restarts
        self.assertEqual(config.links.links["a"].keepalive, 30)
        self.assertEqual(self.h.changer.get("links.links.a.keepalive"), 30)
        self.assertEqual(self.h.statuses, ["applied"])
        self.assertFalse(self.h.pending_file.exists())

    def test_a_read_only_state_directory_refuses_the_change(self) -> None:
        """The state directory's filesystem remounted read-only (after an I/O error): a change
        is refused before anything is written (409 for the admin API and a remote config.set),
        saying so. It was applied: the services restarted for it could not start on the
        read-only disk (the apps' processes file), nor could the previous configuration's in
        the revert, and the gateway stopped (exit 1, seen on a real gateway), where it had gone
        on forwarding what its journal held and serving its local clients."""
        self.h.read_only = self.h.work / "state"
        failure = self.failureResultOf(self.h.changer.apply({"links.links.a.keepalive": 30}), ConfigApplyConflict)
        self.assertEqual(str(failure.value), f"{self.h.work / 'state'} is on a read-only filesystem: nothing changed;"
                                             " make it writable (remount it read-write) and send the change again")
        self.assertEqual((self.h.restarts, self.h.reports), ([], []))
        self.assertFalse(dropin_path(self.h.main).exists())
        self.h.read_only = None  # remounted read-write
        self.assertTrue(self.successResultOf(self.h.changer.apply({"links.links.a.keepalive": 30})).applied)

    def test_the_dropin_is_not_world_readable(self) -> None:
        """The values set may be secrets (docs/commands.md: reports never name them; install.md:
        files that hold secrets should not be world-readable): the drop-in is 0640, and the
        one restored by a revert too; it was 0644 in a world-readable conf.d."""
        self.successResultOf(self.h.changer.apply({"links.links.a.password": "hunter2",
                                                   "links.links.a.username": "u"}))
        self.assertEqual(dropin_path(self.h.main).stat().st_mode & 0o777, 0o640)
        self.h.fail_next_restart = True
        self.successResultOf(self.h.changer.apply({"links.links.a.keepalive": 30}))
        self.assertIn("hunter2", dropin_path(self.h.main).read_text())
        self.assertEqual(dropin_path(self.h.main).stat().st_mode & 0o777, 0o640)

    def test_the_pending_change_is_not_world_readable(self) -> None:
        """The pending change keeps the previous drop-in whole, secrets and all (docs/commands.md
        step 2): it is 0640 as that drop-in is; it was 0644."""
        self.successResultOf(self.h.changer.apply({"links.links.a.password": "hunter2",
                                                   "links.links.a.username": "u"}))
        self.successResultOf(self.h.changer.apply({"links.links.a.keepalive": 30}, 60.0))
        self.assertIn("hunter2", self.h.pending_file.read_text())
        self.assertEqual(self.h.pending_file.stat().st_mode & 0o777, 0o640)

    def test_changes_merge_into_the_existing_dropin(self) -> None:
        """A second change keeps the keys of the first."""
        self.successResultOf(self.h.changer.apply({"links.links.a.keepalive": 30}))
        self.successResultOf(self.h.changer.apply({"gateway.log_level": "debug"}))
        self.assertEqual(self.h.changer.get("links.links.a.keepalive"), 30)
        self.assertEqual(self.h.changer.get("gateway.log_level"), "debug")

    def test_a_mapping_replaces_what_earlier_changes_set_under_it(self) -> None:
        """A mapping is set as a whole: a program added by one change is gone after a change
        that sets ``apps.programs`` without it (the two were merged, and the second change
        was reported applied while removing nothing)."""
        self.successResultOf(self.h.changer.apply({"apps.programs.p": {"command": "sleep 1"},
                                                   "apps.programs.q": {"command": "sleep 2"}}))
        result = self.successResultOf(self.h.changer.apply({"apps.programs": {"q": {"command": "sleep 3"}}}))
        self.assertTrue(result.applied, result.errors)
        self.assertEqual(sorted(self.h.changer.get("apps.programs")), ["q"])
        self.assertEqual(self.h.changer.get("apps.programs.q.command"), "sleep 3")

    def test_a_mapping_that_cannot_remove_the_files_keys_is_refused(self) -> None:
        """What the main file (or another drop-in) sets under a mapping stays whatever the
        drop-in says, so a change whose mapping leaves it out would not be what it asks for:
        refused, naming the keys and the file, and nothing written."""
        site = self.h.work / "conf.d" / "50-site.yaml"
        site.parent.mkdir()
        site.write_text("links:\n  links:\n    a:\n      keepalive: 45\n")
        changes = {"links.links": {"a": {"endpoint": "tcp:host=127.0.0.1:port=3"}}}
        errors = self.successResultOf(self.h.changer.check(changes)).errors
        self.assertEqual(len(errors), 2, errors)
        self.assertIn(f"links.links: {self.h.main} sets links.links.b, which would stay", errors[0])
        self.assertIn(f"links.links: {site} sets links.links.a.keepalive, which would stay", errors[1])
        result = self.successResultOf(self.h.changer.apply(changes))
        self.assertEqual((result.applied, result.outcome), (False, "invalid"))
        self.assertEqual(list(result.errors), errors)
        self.assertFalse(dropin_path(self.h.main).exists())
        self.assertEqual(self.h.statuses, ["refused"])
        # the same key changed single: fine
        self.assertTrue(self.successResultOf(self.h.changer.apply(
            {"links.links.a.endpoint": "tcp:host=127.0.0.1:port=3"})).applied)

    def test_null_removes_a_link_an_earlier_change_added(self) -> None:
        """``links.links.c: null`` removes the link ``c`` an earlier change added, as a user
        removing it means. It was written as ``c: null``, which the loader reads as a link
        with every default (to 127.0.0.1:1883), so the link stayed and went on reconnecting."""
        self.assertTrue(self.successResultOf(self.h.changer.apply(
            {"links.links.c": {"endpoint": "tcp:host=127.0.0.1:port=5"}})).applied)
        result = self.successResultOf(self.h.changer.apply({"links.links.c": None}))
        self.assertTrue(result.applied, result.errors)
        self.assertEqual(sorted(self.h.restarts[-1].links.links), ["a", "b"])
        self.assertEqual(sorted(self.h.changer.get("links.links")), ["a", "b"])
        self.assertNotIn("c:", dropin_path(self.h.main).read_text())

    def test_null_removes_a_listener_an_earlier_change_added(self) -> None:
        """``broker.listeners.ws: null`` removes the listener an earlier change added (it was
        refused: ``must be a mapping, not empty (null)``)."""
        self.assertTrue(self.successResultOf(self.h.changer.apply(
            {"broker.listeners.ws": {"endpoint": "tcp:29950:interface=127.0.0.1"}})).applied)
        result = self.successResultOf(self.h.changer.apply({"broker.listeners.ws": None}))
        self.assertTrue(result.applied, result.errors)
        self.assertEqual([listener.name for listener in self.h.restarts[-1].broker.listeners], ["default"])

    def test_null_at_an_entry_the_files_set_is_refused(self) -> None:
        """``links.links.a: null`` for a link the main file sets cannot remove it (the files
        are merged under the change): refused, naming the file, nothing written. It made the
        link ``a`` one with every default, to 127.0.0.1:1883."""
        changes = {"links.links.a": None, "apps.programs.zzz": None}
        errors = self.successResultOf(self.h.changer.check(changes)).errors
        self.assertEqual(len(errors), 1, errors)
        self.assertIn(f"links.links.a: {self.h.main} sets it, which would stay", errors[0])
        result = self.successResultOf(self.h.changer.apply(changes))
        self.assertEqual((result.applied, result.outcome), (False, "invalid"))
        self.assertFalse(dropin_path(self.h.main).exists())

    def test_a_key_under_a_null_entry_is_refused(self) -> None:
        """``links.links.c: null`` with ``links.links.c.keepalive`` in one change cannot both
        hold: refused, whichever comes first, nothing written. With the null first it was
        applied: the key under it made ``c`` a link with every other default, to 127.0.0.1:1883
        (the other way round was refused, ``set twice``)."""
        self.assertTrue(self.successResultOf(self.h.changer.apply(
            {"links.links.c": {"endpoint": "tcp:host=127.0.0.1:port=5"}})).applied)
        before = dropin_path(self.h.main).read_text()
        changes = {"links.links.c": None, "links.links.c.keepalive": 30}
        result = self.successResultOf(self.h.changer.apply(changes))
        self.assertEqual((result.applied, result.errors),
                         (False, ("links.links.c.keepalive: another change sets c as a whole",)))
        self.assertEqual(dropin_path(self.h.main).read_text(), before)
        self.assertEqual(self.successResultOf(self.h.changer.check(dict(reversed(changes.items())))).errors,
                         ["links.links.c: set twice (or inside another change)"])

    def test_a_valid_change_says_what_it_may_not_mean(self) -> None:
        """A change after which two links share one cloud session is valid, and its check carries
        the warning ``--check-config`` prints for that configuration (it carried none: only the
        links' start logged it, after the change was applied); an invalid one carries none."""
        changes = {"links.links.b.endpoint": "tcp:host=127.0.0.1:port=1"}
        outcome = self.successResultOf(self.h.changer.check(changes))
        self.assertEqual(outcome.errors, [])
        [warning] = outcome.warnings
        self.assertIn("links a and b connect to the same broker 127.0.0.1:1 with the same client id 'gw-1'", warning)
        invalid = self.successResultOf(self.h.changer.check({**changes, "gateway.log_level": "loud"}))
        self.assertEqual((len(invalid.errors), invalid.warnings), (1, []))
        self.assertEqual(self.successResultOf(self.h.changer.check({"gateway.log_level": "warn"})).warnings, [])
        # the apply's result carries them too (POST /config/apply answers it): it carried none
        result = self.successResultOf(self.h.changer.apply(changes))
        self.assertEqual((result.outcome, list(result.warnings)), ("applied", outcome.warnings))
        # (of the resulting configuration: a later change that leaves the links sharing still says so)
        result = self.successResultOf(self.h.changer.apply({"gateway.log_level": "warn"}))
        self.assertEqual((result.outcome, list(result.warnings)), ("applied", outcome.warnings))

    def test_a_key_a_later_dropin_sets_is_refused(self) -> None:
        """A drop-in that sorts after 90-remote.yaml (95-site.yaml) is merged last and wins: a
        change of a key it sets, or of a key under a section it sets to null (back to the defaults), would be written and every service
        restarted while the value runs unchanged; it was reported ``applied`` and did nothing.
        Refused, naming the key and the drop-in; a key the drop-in leaves alone is fine."""
        late = self.h.work / "conf.d" / "95-site.yaml"
        late.parent.mkdir()
        late.write_text("links:\n  links:\n    a:\n      keepalive: 45\n"
                        "telemetry:\n  usage_report_interval: 900\nuploads:\n")
        changes = {"links.links.a.keepalive": 30, "telemetry.usage_report_interval": 600,
                   "uploads.max_attempts": 3}
        errors = self.successResultOf(self.h.changer.check(changes)).errors
        self.assertEqual([e.split(":")[0] for e in errors], sorted(changes), errors)
        for error in errors:
            self.assertIn(f"{late} sets it too, and that drop-in sorts after 90-remote.yaml", error)
        result = self.successResultOf(self.h.changer.apply(changes))
        self.assertEqual((result.applied, result.outcome, list(result.errors)), (False, "invalid", errors))
        self.assertFalse(dropin_path(self.h.main).exists())
        self.assertEqual((self.h.restarts, self.h.statuses), ([], ["refused"]))
        # beside another error of the change (every error is listed)
        errors = self.successResultOf(self.h.changer.check({"links.links.a.keepalive": 30,
                                                            "links.links.b.ping_timeout": 1e400})).errors
        self.assertEqual(len(errors), 2, errors)
        self.assertIn("links.links.b.ping_timeout: ", errors[0])
        self.assertTrue(errors[1].startswith(f"links.links.a.keepalive: {late} sets it too"), errors)
        # the same value as the drop-in's changes nothing either way: fine, as a key it does not set
        self.assertTrue(self.successResultOf(self.h.changer.apply(
            {"links.links.a.keepalive": 45, "links.links.b.keepalive": 30})).applied)
        self.assertEqual(self.h.changer.get("links.links.b.keepalive"), 30)

    def test_a_program_named_like_an_installed_apps_is_refused(self) -> None:
        """A program declared by a change (one key of it, ``apps.programs`` whole, or ``apps``
        whole) named like an installed app or one of its programs would take its place: the
        app would no longer be loaded. Refused, naming the app, beside the other errors."""
        self.h.hosted = [("sensor", "sensor", "2.1"), ("worker", "pump", "1.0")]
        for changes in ({"apps.programs.sensor.command": "sleep 1"},
                        {"apps.programs": {"sensor": {"command": "sleep 1"}}},
                        {"apps": {"programs": {"sensor": {"command": "sleep 1"}}}}):
            errors = self.successResultOf(self.h.changer.check(changes)).errors
            self.assertEqual(errors, ["apps.programs.sensor: 'sensor' is a program of the installed app sensor 2.1:"
                                      " declared in the configuration it would take that app's place, and the"
                                      " app would no longer run: uninstall the app first, or give the program"
                                      " another name"], changes)
        changes = {"apps.programs.pump": {"command": "sleep 1"}, "apps.programs.worker": {"command": "sleep 1"},
                   "gateway.log_level": "loud"}
        result = self.successResultOf(self.h.changer.apply(changes))
        self.assertEqual((result.applied, result.outcome, len(result.errors)), (False, "invalid", 3), result.errors)
        self.assertIn("'pump' is a program of the installed app pump 1.0", result.errors[1])
        self.assertIn("'worker' is a program of the installed app pump 1.0", result.errors[2])
        self.assertEqual((self.h.restarts, self.h.statuses), ([], ["refused"]))
        self.assertTrue(self.successResultOf(self.h.changer.apply({"apps.programs.poller.command": "sleep 1"})).applied)
        # a null removes a program (none here): it takes no installed app's name
        self.assertEqual(self.successResultOf(self.h.changer.check({"apps.programs.sensor": None})).errors, [])

    def test_invalid_change_lists_every_error_and_changes_nothing(self) -> None:
        """Every error of the resulting config, as --check-config words them; nothing written."""
        changes = {"links.links.a.keepalive": 0, "gateway.log_level": "loud", "links.links.a.colour": "red"}
        self.assertEqual(len(self.successResultOf(self.h.changer.check(changes)).errors), 3)
        result = self.successResultOf(self.h.changer.apply(changes))
        self.assertFalse(result.applied)
        self.assertEqual(len(result.errors), 3, result.errors)
        text = "\n".join(result.errors)
        self.assertIn(f"{dropin_path(self.h.main)}: links.links.a.keepalive: must be at least 1", text)
        self.assertIn("unknown key", text)
        self.assertFalse(dropin_path(self.h.main).exists())
        self.assertEqual((self.h.restarts, self.h.statuses), ([], ["refused"]))

    def test_a_refused_secret_is_not_in_the_report(self) -> None:
        """The report leaves the gateway: an error at a secret-looking key does not say why (its
        words may quote the value); the caller's own result says why, as ``--check-config``
        does (the value redacted), and other errors keep theirs."""
        changes = {"links.links.a.password": "hunter2\0", "links.links.a.keepalive": 0}  # (its error quotes it)
        result = self.successResultOf(self.h.changer.apply(changes))
        self.assertIn("links.links.a.password: must not hold a NUL character: <redacted>", "\n".join(result.errors))
        reason = self.h.reports[-1]["reason"]
        self.assertNotIn("hunter2", reason)
        self.assertIn(f"{dropin_path(self.h.main)}: links.links.a.password: not valid (why is not shown", reason)
        self.assertIn("links.links.a.keepalive: must be at least 1, not 0", reason)

    def test_a_change_refused_by_its_check_is_reported_as_an_apply_reports_it(self) -> None:
        """report_refused (a remote config.set answered 400 before any apply) sends the refused
        report: its keys sorted, every error, a secret's withheld."""
        changes = {"links.links.a.password": "hunter2\0", "links.links.a.keepalive": 0}  # (its error quotes it)
        errors = self.successResultOf(self.h.changer.check(changes)).errors
        self.h.changer.report_refused(changes, errors, "remote:r8")
        [report] = self.h.reports
        self.assertEqual((report["status"], report["origin"], report["keys"]),
                         ("refused", "remote:r8", ["links.links.a.keepalive", "links.links.a.password"]))
        self.assertNotIn("hunter2", report["reason"])
        self.assertIn("links.links.a.password: not valid (why is not shown", report["reason"])
        self.assertIn("links.links.a.keepalive: must be at least 1, not 0", report["reason"])
        self.assertEqual(self.h.restarts, [])

    def test_state_dir_cannot_change(self) -> None:
        """gateway.state_dir is refused: the pending change lives under it."""
        for changes in ({"gateway.state_dir": "/elsewhere"}, {"gateway": {"state_dir": "/elsewhere"}}):
            [error] = self.successResultOf(self.h.changer.check(changes)).errors
            self.assertEqual(error, "gateway.state_dir: cannot be changed while the gateway runs")

    def test_journal_directory_cannot_change(self) -> None:
        """journal.directory is refused and nothing is written: the journal restarted in another
        directory would leave what the old one holds (acknowledged, not yet sent) behind for good
        (docs/commands.md: nothing the journal holds is lost)."""
        for changes in ({"journal.directory": "/elsewhere"}, {"journal": {"directory": "journal2"}}):
            [error] = self.successResultOf(self.h.changer.check(changes)).errors
            self.assertEqual(error, "journal.directory: cannot be changed while the gateway runs")
        result = self.successResultOf(self.h.changer.apply({"journal.directory": "journal2"}))
        self.assertEqual(result.errors, ("journal.directory: cannot be changed while the gateway runs",))
        self.assertEqual(result.outcome, "invalid")
        self.assertFalse(dropin_path(self.h.main).exists())
        self.assertEqual((self.h.restarts, self.h.statuses), ([], ["refused"]))

    def test_a_null_section_cannot_move_the_state_dir_or_the_journal(self) -> None:
        """A section set to null is back to its defaults (docs/configuration.md): ``{"gateway":
        null}`` moved ``gateway.state_dir`` from the main file's to ``./var`` and ``{"journal":
        null}`` ``journal.directory`` to ``journal``, past the refusal of those keys, and was
        applied: the services restarted on a new state directory (the broker's sessions, the
        apps, the pending change all elsewhere) or a new journal, what the old one held left
        behind unsent. Refused, saying where each would go; a null section that leaves them
        where they are is fine."""
        self.h.main.write_text(self.h.main.read_text() + "journal:\n  directory: /var/tmp/gw-journal\n")
        self.h.changer = self.h.make()
        state = str(self.h.work / "state")
        errors = self.successResultOf(self.h.changer.check({"gateway": None, "journal": None})).errors
        self.assertEqual(errors, [
            f"gateway.state_dir: cannot be changed while the gateway runs, and the change would make it './var'"
            f" (it is {shown_repr(state)}): a section or key set to null is back to its defaults",
            "journal.directory: cannot be changed while the gateway runs, and the change would make it 'journal'"
            " (it is '/var/tmp/gw-journal'): a section or key set to null is back to its defaults"])
        result = self.successResultOf(self.h.changer.apply({"gateway": None}))
        self.assertEqual((result.applied, result.outcome, list(result.errors)), (False, "invalid", errors[:1]))
        self.assertFalse(dropin_path(self.h.main).exists())
        self.assertEqual((self.h.restarts, self.h.statuses), ([], ["refused"]))
        # the main file sets nothing in twin: null changes nothing fixed
        self.assertTrue(self.successResultOf(self.h.changer.apply({"twin": None})).applied)

    def test_a_hand_edited_dropin_the_loader_refuses_refuses_the_change(self) -> None:
        """``90-remote.yaml`` edited by hand after the gateway started, into a file the loader
        refuses (not YAML, not UTF-8, a key given twice, not a mapping): a check lists its
        problems as ``--check-config`` does, each naming the file, and an apply is refused
        with them; nothing is written. The check and the apply failed with the parser's
        exception (an internal error), and a key given twice was silently dropped."""
        path = dropin_path(self.h.main)
        path.parent.mkdir()
        for text, says in ((b"gateway: [\n", "line 2, column 1: not valid YAML"),
                           (b"gateway:\n  device_id: caf\xe9\n", "line 2: not valid UTF-8"),
                           (b"gateway:\n  device_id: a\n  device_id: b\n", "duplicate key 'device_id'"),
                           (b"- a\n", "<top>: must be a mapping of sections")):
            path.write_bytes(text)
            [error] = self.successResultOf(self.h.changer.check({"gateway.log_level": "debug"})).errors
            self.assertTrue(error.startswith(f"{path}: "), error)
            self.assertIn(says, error)
            result = self.successResultOf(self.h.changer.apply({"gateway.log_level": "debug"}))
            self.assertEqual((result.applied, result.outcome, result.errors), (False, "invalid", (error,)))
            self.assertEqual(path.read_bytes(), text)
        self.assertEqual((self.h.restarts, self.h.statuses), ([], ["refused"] * 4))


    def test_a_name_holding_a_dot_cannot_be_named_in_a_key_path(self) -> None:
        """docs/commands.md: each ``.`` of a key path separates two keys, so a link named
        ``eu.cloud`` (a name the configuration allows) is no key path's: a change of
        ``links.links.eu.cloud.keepalive`` is refused (a link ``eu`` has no key ``cloud``), and a
        read of it names nothing; what the link is goes on unchanged."""
        self.h.main.write_text(self.h.main.read_text().replace("    b:\n", "    eu.cloud:\n"))
        self.h.changer = self.h.make()
        self.assertEqual(self.h.changer.get("links.links")["eu.cloud"]["keepalive"], 60)
        self.assertRaises(ConfigKeyError, self.h.changer.get, "links.links.eu.cloud.keepalive")
        [error] = self.successResultOf(self.h.changer.check({"links.links.eu.cloud.keepalive": 30})).errors
        self.assertIn("links.links.eu.cloud: unknown key", error)
        self.assertFalse(self.successResultOf(self.h.changer.apply({"links.links.eu.cloud.keepalive": 30})).applied)

    def test_new_config_that_does_not_start_is_reverted_at_once(self) -> None:
        """A start failure restores the previous drop-in and restarts the tree with it."""
        self.h.fail_next_restart = True
        result = self.successResultOf(self.h.changer.apply({"links.links.a.keepalive": 30}))
        self.assertEqual((result.applied, result.outcome), (False, "not_started"))
        self.assertIn("port in use", result.errors[0])
        self.assertFalse(dropin_path(self.h.main).exists())
        self.assertEqual(len(self.h.restarts), 2)
        self.assertEqual(self.h.restarts[1].links.links["a"].keepalive, 60)
        self.assertEqual(self.h.statuses, ["reverted"])

    def test_get(self) -> None:
        """Dotted paths read the running config, defaults included; lists by index."""
        self.assertEqual(self.h.changer.get("gateway.device_id"), "gw-1")
        self.assertEqual(self.h.changer.get("commands.confirm_window"), 120.0)
        self.assertEqual(self.h.changer.get("links.links.a.routes.0.filter"), "telemetry/#")
        self.assertEqual(self.h.changer.get("links.links.a")["endpoint"], "tcp:host=127.0.0.1:port=1")
        for bad in ("nosuch.key", "links.links.c", "links.links.a.routes.99", "gateway.device_id.x", "a..b"):
            self.assertRaises(ConfigKeyError, self.h.changer.get, bad)


class GetByNameTests(SynchronousTestCase):
    """config.get takes the key form of the config file and config.set, secrets redacted."""

    def setUp(self) -> None:
        self.h = Harness(self)
        with self.h.main.open("a") as main:
            main.write("broker:\n  listeners:\n    default:\n      endpoint: 'tcp:19201:interface=127.0.0.1'\n"
                       "    lan:\n      endpoint: 'tcp:19202:interface=127.0.0.1'\n"
                       f"ingest:\n  auth: known\n  ciks: ['{CIK}']\n")
        self.h.changer = self.h.make()

    def test_a_listener_by_its_name_as_config_set_names_it(self) -> None:
        """broker.listeners.<name> (the key config.set writes) finds that listener; the index
        form still works; an unknown name is a key error naming the names there are."""
        get = self.h.changer.get
        self.assertEqual(self.successResultOf(self.h.changer.check({"broker.listeners.lan.max_connections": 5})).errors, [])
        self.assertEqual(get("broker.listeners.lan.endpoint"), "tcp:19202:interface=127.0.0.1")
        self.assertEqual(get("broker.listeners.default")["endpoint"], "tcp:19201:interface=127.0.0.1")
        self.assertEqual(get("broker.listeners.1.endpoint"), "tcp:19202:interface=127.0.0.1")
        with self.assertRaises(ConfigKeyError) as caught:
            get("broker.listeners.wan")
        self.assertIn("by name: 'default', 'lan'", str(caught.exception))
        self.assertRaises(ConfigKeyError, get, "broker.listeners.\u00b2")  # (a digit int() refuses)

    def test_a_numbered_item_is_refused_by_a_change(self) -> None:
        """broker.listeners.1.endpoint reads the second listener (config.get), but a change at
        that path named a new listener "1" (the config file's listeners are a mapping by name):
        it was valid, and applied it added a listener where the operator meant to move one. A
        change refuses a number where the running configuration has a list, saying how to set
        it (a named item by its name, another list as a whole); a listener named "1" is that one."""
        for path, error in (
                ("broker.listeners.1.endpoint", "broker.listeners.1.endpoint: broker.listeners numbers its items"
                 " from 0 only to read them (config.get): set an item of it by its name (default, lan)"),
                ("links.links.a.routes.0.filter", "links.links.a.routes.0.filter: links.links.a.routes numbers its"
                 " items from 0 only to read them (config.get): set links.links.a.routes as a whole")):
            errors = self.successResultOf(self.h.changer.check({path: "tcp:19203:interface=127.0.0.1"})).errors
            self.assertIn(error, errors)
            result = self.successResultOf(self.h.changer.apply({path: "tcp:19203:interface=127.0.0.1"}))
            self.assertEqual((result.applied, result.outcome), (False, "invalid"))
        self.assertFalse(dropin_path(self.h.main).exists())
        self.assertEqual(self.successResultOf(self.h.changer.check({"broker.listeners.wan.endpoint":
                                                                     "tcp:19203:interface=127.0.0.1"})).errors, [])
        self.h.main.write_text(self.h.main.read_text().replace("    lan:\n", "    '1':\n"))
        changer = self.h.make()
        self.assertEqual(self.successResultOf(changer.check({"broker.listeners.1.max_connections": 5})).errors, [])

    def test_a_long_key_is_quoted_by_its_start(self) -> None:
        """A key path of a megabyte (config.get's 404) is quoted by its first 100 characters and
        its length, in each place the error names it: it was repeated whole, twice."""
        for path in ("k" * 1_000_000, "broker." + "k" * 1_000_000, "broker.listeners." + "k" * 1_000_000,
                     "broker.max_packet_size." + "k" * 1_000_000):
            with self.assertRaises(ConfigKeyError) as caught:
                self.h.changer.get(path)
            self.assertLess(len(str(caught.exception)), 700, path[:30])
            self.assertIn(f"... ({len(path)} characters)", str(caught.exception))

    def test_a_change_at_a_key_path_of_a_megabyte_is_refused_by_its_start(self) -> None:
        """A change naming a key path longer than MAX_KEY_PATH is refused saying so, its path
        quoted by its start, in the errors and in the refused report (which leaves the gateway):
        the loader's errors and the report's keys repeated a megabyte's path whole, twice.
        A path of MAX_KEY_PATH characters is checked as any other (here: an unknown key)."""
        from gateway.commands.dropin import MAX_KEY_PATH

        long_path = "broker." + "k" * 1_000_000
        for check in (True, False):
            if check:
                errors = self.successResultOf(self.h.changer.check({long_path: 1})).errors
                self.h.changer.report_refused({long_path: 1}, errors, "remote:r9")
            else:
                errors = list(self.successResultOf(self.h.changer.apply({long_path: 1})).errors)
            self.assertEqual(len(errors), 1, errors)
            self.assertIn(f"... ({len(long_path)} characters)", errors[0])
            self.assertIn(f"a key path is at most {MAX_KEY_PATH} characters", errors[0])
            report = self.h.reports[-1]
            self.assertEqual(report["status"], "refused")
            self.assertLess(len(json.dumps(report)), 1000)
        self.assertFalse(dropin_path(self.h.main).exists())
        path = "broker." + "k" * (MAX_KEY_PATH - len("broker."))
        [error] = self.successResultOf(self.h.changer.check({path: 1})).errors
        self.assertNotIn("a key path is at most", error)

    def test_every_problem_of_the_key_paths_is_listed_at_once(self) -> None:
        """docs/commands.md: a refused change lists every error. A change naming a key path too
        long, an empty key and a key that cannot change listed only the first of them, so each
        was found only once the one before it was mended."""
        from gateway.commands.dropin import MAX_KEY_PATH

        long_path = "broker." + "k" * MAX_KEY_PATH
        changes = {long_path: 1, "x..y": 1, "gateway.state_dir": "/elsewhere",
                   "links.links.a.keepalive": 5, "links.links.a": {}}
        for check in (True, False):
            if check:
                errors = self.successResultOf(self.h.changer.check(changes)).errors
            else:
                errors = list(self.successResultOf(self.h.changer.apply(changes)).errors)
            self.assertEqual(errors, [
                f"'broker.{'k' * 93}... ({len(long_path)} characters)': a key path is at most {MAX_KEY_PATH}"
                " characters",
                "'x..y': not a dotted key path (section.key.subkey)",
                "links.links.a: set twice (or inside another change)",
                "gateway.state_dir: cannot be changed while the gateway runs"])
        self.assertFalse(dropin_path(self.h.main).exists())
        # The other way round: a key inside a mapping an earlier change sets whole was put into
        # that mapping (the request's own), whichever came first is refused the same.
        changes = {"links.links.a": {}, "links.links.a.keepalive": 5}
        self.assertEqual(self.successResultOf(self.h.changer.check(changes)).errors,
                         ["links.links.a.keepalive: another change sets a as a whole"])
        self.assertEqual(changes["links.links.a"], {})

    def test_a_key_path_is_repeated_whole_up_to_the_longest_a_change_may_name(self) -> None:
        """docs/commands.md: an error repeats a key path whole up to 256 characters (MAX_KEY_PATH,
        the longest a change may name; a link's name alone may have 95), else its first 100 and
        its length. config.get's error cut a path of 101 to 256 characters at 100, hiding the key
        at its end, while config.set's errors and its report repeated it whole."""
        from gateway.commands.dropin import MAX_KEY_PATH

        for path in ("broker." + "k" * 94, "broker." + "k" * (MAX_KEY_PATH - len("broker."))):
            [error] = self.successResultOf(self.h.changer.check({path: 1})).errors
            self.assertIn(f": {path}: unknown key (known: ", error)
            self.h.changer.report_refused({path: 1}, [error], "remote:r9")
            self.assertEqual(self.h.reports[-1]["keys"], [path])
            with self.assertRaises(ConfigKeyError) as caught:
                self.h.changer.get(path)
            self.assertTrue(str(caught.exception).startswith(f"{path}: broker has no key "), str(caught.exception))
        path = "broker." + "k" * MAX_KEY_PATH
        with self.assertRaises(ConfigKeyError) as caught:
            self.h.changer.get(path)
        self.assertIn(f"{path[:100]}... ({len(path)} characters)'", str(caught.exception))

    def test_the_keys_amqtt_takes_as_written(self) -> None:
        """The broker section's keys the gateway hands to amqtt (docs/commands.md: config.get's keys
        are the config file's) read as the files write them: they were "has no key"."""
        text = self.h.main.read_text().replace(
            "    lan:\n      endpoint: 'tcp:19202:interface=127.0.0.1'\n",
            "    lan:\n      type: tcp\n      bind: 127.0.0.1:19202\n")
        self.h.main.write_text(text.replace("broker:\n", "broker:\n  auth:\n    allow-anonymous: true\n", 1))
        changer = self.h.make()
        self.assertEqual(changer.get("broker.listeners.lan.bind"), "127.0.0.1:19202")
        self.assertEqual(changer.get("broker.listeners.lan.type"), "tcp")
        self.assertEqual(changer.get("broker.listeners.lan.endpoint"), "tcp:19202:interface=127.0.0.1")
        self.assertEqual(changer.get("broker.auth")["allow-anonymous"], True)
        self.assertEqual(changer.get("broker.max_packet_size"), 1 << 20)  # (the gateway's own: its default)
        self.assertRaises(ConfigKeyError, changer.get, "broker.auth.nope")
        self.assertRaises(ConfigKeyError, changer.get, "broker.plugins")  # (not written: amqtt's default)
        self.assertRaises(ConfigKeyError, changer.get, "ingest.nope")

    def test_no_form_of_the_path_shows_a_cik(self) -> None:
        """ingest.ciks by number, with a leading zero, as a whole or inside its section: redacted."""
        from gateway.commands.dispatcher import CommandRequest
        from gateway.commands.gateway_commands import GatewayCommands
        from gateway.commands.settings import CommandsSettings
        from tests.commands.test_dispatcher import FakeApps, FakeReports, FakeRestart

        commands = GatewayCommands(CommandsSettings(), self.h.clock, FakeApps(), None, list, self.h.changer,
                                   FakeRestart(), FakeReports())
        for key in ("ingest.ciks.0", "ingest.ciks.00", "ingest.ciks", "ingest", "broker.listeners.default"):
            reply = commands.config_get(CommandRequest("config.get", "r", json.dumps({"key": key}).encode()))
            self.assertEqual(reply.status, 200, key)
            self.assertNotIn(CIK, json.dumps(reply.body), key)
        self.assertEqual(commands.config_get(CommandRequest("config.get", "r", b'{"key": "ingest.ciks.0"}')).body,
                         {"key": "ingest.ciks.0", "value": "<redacted>"})


class ConfirmTests(SynchronousTestCase):
    """The confirm window: confirmed by the links coming back up, or reverted."""

    def setUp(self) -> None:
        self.h = Harness(self)
        self.h.links = {"a": (True, ""), "b": (False, "connection refused")}  # b was down already
        result = self.successResultOf(self.h.changer.apply({"links.links.a.keepalive": 30}, 10, "remote:r-1"))
        self.assertEqual(result.confirm_deadline, 1010)
        self.assertEqual(result.required_links, ("a",), "the answer names the links that confirm it")
        self.h.changer.startService()

    def test_pending_is_on_disk_before_the_dropin(self) -> None:
        """The pending change names the previous drop-in, the deadline and the links required."""
        pending = json.loads(self.h.pending_file.read_text())
        self.assertEqual((pending["previous"], pending["deadline"], pending["required_links"]), (None, 1010, ["a"]))
        self.assertEqual(self.h.changer.pending().origin, "remote:r-1")

    def test_confirmed_when_the_links_up_before_are_up_again(self) -> None:
        """While a is down nothing happens; a back up confirms (b, down before, is not waited for)."""
        self.h.links = {"a": (False, "connecting"), "b": (False, "connection refused")}
        self.h.clock.advance(5)
        self.assertIsNotNone(self.h.changer.pending())
        self.h.links["a"] = (True, "")
        self.h.clock.advance(0.5)
        self.assertIsNone(self.h.changer.pending())
        self.assertEqual(self.h.statuses, ["applied", "confirmed"])
        self.assertFalse(self.h.pending_file.exists())
        self.h.clock.advance(60)
        self.assertEqual(len(self.h.restarts), 1)
        self.assertIn("keepalive: 30", dropin_path(self.h.main).read_text())

    def test_a_confirmation_is_durable_before_it_is_reported(self) -> None:
        """The pending change's file, removed when the change is confirmed, is removed durably
        (its directory fsynced) before "confirmed" is reported: it was only unlinked, so a power
        cut could bring it back and the next start revert a change the cloud was told was
        confirmed."""
        directory = str(self.h.pending_file.parent.absolute())
        fsynced = record_fsyncs(self)
        reported: list[bool] = []
        self.h.reports = _NotedReports(self.h.reports, lambda: reported.append(directory in fsynced))
        self.h.clock.advance(0.5)
        self.assertFalse(self.h.pending_file.exists())
        self.assertEqual((self.h.statuses, reported), (["applied", "confirmed"], [True]))

    def test_the_confirmation_line_names_the_links_that_came_back(self) -> None:
        """The log line of a confirmation names the links that confirmed it: with an MQTT link
        down before and after the change and an HTTP link up, "the cloud link is up" read as
        if the MQTT link were back."""
        events = capture_log_events(self)
        self.h.clock.advance(0.5)
        self.assertEqual(self.h.statuses, ["applied", "confirmed"])
        self.assertIn("config change by remote:r-1 confirmed: link a is up",
                      [formatEvent(e) for e in events if e["log_level"] == LogLevel.info])

    def test_a_change_no_link_was_up_for_is_confirmed_by_the_links_up(self) -> None:
        """With no link up when the change was made, any link up confirms it: the line names
        every link up then."""
        harness = Harness(self)
        harness.links = {"a": (False, "connection refused"), "b": (False, "connection refused"),
                         "c": (False, "connection refused")}
        self.successResultOf(harness.changer.apply({"links.links.a.keepalive": 30}, 10, "admin"))
        harness.changer.startService()
        events = capture_log_events(self)
        harness.links = {"a": (False, "connection refused"), "b": (True, ""), "c": (True, "")}
        harness.clock.advance(0.5)
        self.assertEqual(harness.statuses, ["applied", "confirmed"])
        self.assertIn("config change by admin confirmed: links b, c are up",
                      [formatEvent(e) for e in events if e["log_level"] == LogLevel.info])

    def test_reverted_when_not_confirmed_in_time(self) -> None:
        """At the deadline the previous drop-in is restored, the tree restarted, the reason reported."""
        self.h.links = {"a": (False, "connection refused"), "b": (False, "connection refused")}
        self.h.clock.advance(9.9)
        self.assertEqual(len(self.h.restarts), 1)
        self.h.clock.advance(0.1)
        self.assertEqual(len(self.h.restarts), 2)
        self.assertEqual(self.h.restarts[1].links.links["a"].keepalive, 60)
        self.assertFalse(dropin_path(self.h.main).exists())
        self.assertIsNone(self.h.changer.pending())
        self.assertEqual(self.h.statuses, ["applied", "reverted"])
        self.assertEqual(self.h.reports[1]["reason"],
                         "no cloud link came back up within 10 s: a (connection refused)")
        self.assertFalse(self.h.pending_file.exists())

    def test_a_link_up_by_the_deadline_confirms_it(self) -> None:
        """A link that comes back up after the last look at the links (every half second) and
        by the deadline confirms the change: it was reverted, for the reason 'no cloud link
        configured to confirm it' (none was down). On a slow CPU the services' restart takes
        seconds of the window, and the link's CONNACK may come in its last moments; the
        deadline's verdict waits for the reactor's next turn, which reads it."""
        self.h.links = {"a": (False, "connecting"), "b": (False, "connection refused")}
        self.h.clock.advance(9.8)  # (the last look, at 9.5 s, found a down)
        self.h.links["a"] = (True, "")
        self.h.clock.advance(0.2)
        self.assertEqual(self.h.statuses, ["applied", "confirmed"])
        self.assertEqual(len(self.h.restarts), 1)
        self.assertIsNone(self.h.changer.pending())
        self.assertIn("keepalive: 30", dropin_path(self.h.main).read_text())

    def test_a_busy_reactor_reads_the_links_connack_before_the_deadline_reverts(self) -> None:
        """The deadline's timer runs at the end of a long turn of the reactor (9.8 s to
        10.2 s), while the link's CONNACK that came in it waits for the next turn's reads:
        the verdict waits for that turn, and the link's connection confirms the change. (The
        clock runs what is due in the order of the times it was due at: the read is due
        between the deadline and the turn's end.)"""
        self.h.links = {"a": (False, "connecting"), "b": (False, "connection refused")}
        self.h.clock.advance(9.8)
        self.h.clock.callLater(0.3, self.h.links.__setitem__, "a", (True, ""))
        self.h.clock.advance(0.4)
        self.assertEqual(self.h.statuses, ["applied", "confirmed"])
        self.assertEqual(len(self.h.restarts), 1)

    def refuse_removing_the_pending_file_once(self) -> Path:
        """The next removal of the pending change's file fails (permission denied); the file."""
        pending_file = self.h.pending_file
        unlink = Path.unlink
        refusals = [PermissionError(13, "Permission denied", str(pending_file))]

        def flaky_unlink(path: Path, missing_ok: bool = False) -> None:
            if path == pending_file and refusals:
                raise refusals.pop()
            unlink(path, missing_ok)

        self.patch(Path, "unlink", flaky_unlink)
        return pending_file

    def test_a_confirmation_that_cannot_be_recorded_is_tried_again(self) -> None:
        """Removing the pending change fails (an error other than "not found"): it stays
        pending with its watch running, and the next look confirms it; it was left pending
        with no watch, and every later change was refused (409) until a restart."""
        pending_file = self.refuse_removing_the_pending_file_once()
        self.h.clock.advance(0.5)
        self.assertEqual(len(self.flushLoggedErrors(PermissionError)), 1)
        self.assertIsNotNone(self.h.changer.pending())
        self.assertEqual(self.h.statuses, ["applied"])
        self.h.clock.advance(0.5)
        self.assertIsNone(self.h.changer.pending())
        self.assertEqual(self.h.statuses, ["applied", "confirmed"])
        self.assertFalse(pending_file.exists())
        self.assertIsNone(self.h.changer.refusal())
        self.h.clock.advance(60)
        self.assertEqual(len(self.h.restarts), 1)

    def test_a_confirmation_never_recorded_is_reverted_at_the_deadline(self) -> None:
        """While the pending change cannot be removed it is not confirmed: at its deadline it
        is reverted, as a start after the deadline would revert it from the file."""
        pending_file = self.h.pending_file
        unlink = Path.unlink

        def refused(path: Path, missing_ok: bool = False) -> None:
            if path == pending_file and len(self.h.restarts) == 1:
                raise PermissionError(13, "Permission denied", str(path))
            unlink(path, missing_ok)

        self.patch(Path, "unlink", refused)
        self.h.clock.advance(10)
        self.flushLoggedErrors(PermissionError)
        self.assertEqual(len(self.h.restarts), 2)
        self.assertEqual(self.h.statuses, ["applied", "reverted"])
        self.assertIsNone(self.h.changer.pending())

    def test_a_step_while_pending_moves_the_deadline_told(self) -> None:
        """NTP steps the clock forward while the change waits: the pending change the status
        gives (``config_pending``) is still reverted 6 s after now, and a confirmation that
        cannot be recorded is watched again with what is left of the window. Both read the
        deadline on the wall clock before the step: the status said the revert was overdue, and
        the watch after a failed record reverted the change at once."""
        self.h.links = {"a": (False, "connecting")}
        self.h.clock.advance(4)
        self.h.clock.step(CLOCK_SET_SINCE)
        self.assertAlmostEqual(self.h.changer.pending().deadline, self.h.clock.seconds() + 6)
        self.refuse_removing_the_pending_file_once()
        self.h.links = {"a": (True, "")}
        self.h.clock.advance(0.5)  # the confirmation cannot be recorded
        self.assertEqual(len(self.flushLoggedErrors(PermissionError)), 1)
        self.h.links = {"a": (False, "connecting")}
        self.h.clock.advance(5.4)
        self.assertIsNotNone(self.h.changer.pending())
        self.assertEqual(self.h.statuses, ["applied"])
        self.h.clock.advance(0.1)
        self.assertEqual(self.h.statuses, ["applied", "reverted"])

    def test_another_change_waits(self) -> None:
        """While a change is pending, another apply fails with ConfigApplyConflict."""
        self.failureResultOf(self.h.changer.apply({"gateway.log_level": "debug"}), ConfigApplyConflict)

    def test_a_deadline_that_passes_once_the_gateways_stop_began_is_left_to_the_next_start(self) -> None:
        """The confirm deadline passing while the gateway stops (its apps take their
        ``shutdown_timeout``, say) does not revert now: the pending change stays on disk and the
        next start reverts it before anything starts (docs/commands.md step 5). The revert ran
        beside the stop, which no longer waited for it: on a real gateway it restored the drop-in
        and restarted the tree while the services stopped, and ended with the process."""
        self.h.links = {"a": (False, "connection refused"), "b": (False, "connection refused")}
        self.h.changer.close()
        self.h.clock.advance(60)
        self.assertEqual((len(self.h.restarts), self.h.statuses), (1, ["applied"]))
        self.assertTrue(self.h.pending_file.exists())
        self.assertIn("keepalive: 30", dropin_path(self.h.main).read_text())

    def test_a_change_applied_as_the_stop_begins_is_not_watched(self) -> None:
        """A change still being applied when the stop begins is waited for (when_idle), and is
        then not watched: its deadline is the next start's."""
        h = Harness(self)
        h.links = {"a": (False, "connection refused"), "b": (False, "connection refused")}
        gate: Deferred[tuple[str, ...]] = Deferred()
        self.patch(h, "restart", lambda config: gate)  # (the tree restarts until gate fires)
        h.changer = h.make()
        h.changer.startService()
        applying = h.changer.apply({"links.links.a.keepalive": 30}, 10, "remote:r-2")
        h.changer.close()
        self.assertNoResult(h.changer.when_idle())
        gate.callback(("journal",))
        self.assertTrue(self.successResultOf(applying).applied)
        h.clock.advance(60)
        self.assertEqual((h.statuses, h.pending_file.exists()), (["applied"], True))

    def test_stop_keeps_the_pending_change(self) -> None:
        """Stopping the gateway stops the watch; the pending change stays on disk."""
        self.h.changer.stopService()
        self.h.clock.advance(60)
        self.assertEqual(len(self.h.restarts), 1)
        self.assertTrue(self.h.pending_file.exists())


class RestartInsideTheWindowTests(SynchronousTestCase):
    """The pending change survives a restart of the gateway."""

    def setUp(self) -> None:
        self.h = Harness(self)
        dropin_path(self.h.main).parent.mkdir()
        dropin_path(self.h.main).write_text("gateway:\n  log_level: warn\n")
        self.successResultOf(self.h.changer.apply({"links.links.a.keepalive": 30}, 10, "remote:r-1"))
        self.h.changer.stopService()  # the process goes away

    def started_again_reverts_after(self, seconds: float) -> None:
        """The gateway started again (the change's keep-alive 30 in force) waits and reverts
        the change ``seconds`` after its start, not 0.1 s before: the previous drop-in back."""
        changer = self.h.make()
        self.assertEqual(changer.recover().links.links["a"].keepalive, 30)
        changer.startService()
        changer.resume()
        self.h.clock.advance(seconds - 0.1)
        self.assertIsNotNone(changer.pending())
        self.h.clock.advance(0.1)
        self.assertIsNone(changer.pending())
        self.assertEqual(dropin_path(self.h.main).read_text(), "gateway:\n  log_level: warn\n")

    def test_started_again_before_the_deadline_resumes_the_wait(self) -> None:
        """Started at +4 s: the new config runs, and it is reverted at the original deadline."""
        self.h.clock.advance(4)
        self.h.links = {"a": (False, "connecting")}
        changer = self.h.make()
        config = changer.recover()
        self.assertEqual(config.links.links["a"].keepalive, 30)
        changer.startService()
        changer.resume()
        self.h.clock.advance(5.9)
        self.assertIsNotNone(changer.pending())
        self.h.clock.advance(0.1)
        self.assertIsNone(changer.pending())
        self.assertEqual(dropin_path(self.h.main).read_text(), "gateway:\n  log_level: warn\n")

    def test_started_with_the_clock_behind_waits_at_most_the_window(self) -> None:
        """Started again on a gateway without a real-time clock (its clock back at 1970, or
        at a time saved before the change): the change is reverted at the latest a whole
        window after the start, whatever the clock says of the deadline. It waited until the
        clock reached the deadline, which without the link the change broke (no NTP) was never."""
        self.h.boot, self.h.clock.rightNow = "boot-2", 0.0  # rebooted at 1970; the deadline says 1010
        self.h.links = {"a": (False, "connecting")}
        self.started_again_reverts_after(10)
        self.assertEqual(self.h.statuses, ["applied", "reverted"])

    def test_a_start_that_dies_with_the_clock_behind_still_ends_in_a_revert(self) -> None:
        """The change breaks the start (the process dies before its watch runs, and is started
        again) on a gateway whose clock is behind the change: the window is counted from the
        first such start, on disk, so a start a window later reverts before anything starts.
        Waiting a whole window from every start, a change that kills the start was never
        reverted."""
        self.h.boot, self.h.clock.rightNow = "boot-2", 0.0  # rebooted at 1970; the deadline says 1010
        self.assertEqual(self.h.make().recover().links.links["a"].keepalive, 30)  # dies
        self.h.clock.advance(5)
        self.assertEqual(self.h.make().recover().links.links["a"].keepalive, 30)  # dies again
        self.h.clock.advance(5)
        changer = self.h.make()
        self.assertEqual(changer.recover().links.links["a"].keepalive, 60)
        self.assertEqual(dropin_path(self.h.main).read_text(), "gateway:\n  log_level: warn\n")
        self.assertIsNone(changer.pending())

    def test_the_pending_change_counted_from_now_stays_unreadable_to_others(self) -> None:
        """A start with the clock behind writes the pending change again (its window counted
        from now): it keeps mode 0640, as the previous drop-in it holds (secrets and all). It
        was rewritten 0644, whatever the umask: readable by every user of the machine."""
        self.h.boot, self.h.clock.rightNow = "boot-2", 0.0  # rebooted at 1970; the deadline says 1010
        self.h.make().recover()
        self.assertLess(json.loads(self.h.pending_file.read_text())["deadline"], 1010)
        self.assertEqual(self.h.pending_file.stat().st_mode & 0o777, 0o640)

    def test_started_again_after_a_step_forward_waits_out_the_window(self) -> None:
        """The change was made while the clock was not set yet (1970, no real-time clock); NTP
        stepped it forward by years, and the gateway is started again 4 s into the window: the
        change is reverted at its deadline, 6 s later, not at once. The deadline on disk was the
        wall clock's, long past by the new clock, and the start reverted the change."""
        self.h.clock.step(CLOCK_SET_SINCE)
        self.h.clock.advance(4)
        self.h.links = {"a": (False, "connecting")}
        changer = self.h.make()
        self.assertEqual(changer.recover().links.links["a"].keepalive, 30)
        changer.startService()
        changer.resume()
        self.assertAlmostEqual(changer.pending().deadline, self.h.clock.seconds() + 6)
        self.h.clock.advance(5.9)
        self.assertIsNotNone(changer.pending())
        self.h.clock.advance(0.1)
        self.assertIsNone(changer.pending())
        self.assertEqual(self.h.statuses, ["applied", "reverted"])
        self.assertEqual(dropin_path(self.h.main).read_text(), "gateway:\n  log_level: warn\n")

    def test_started_again_after_a_step_back_waits_only_what_is_left(self) -> None:
        """NTP stepped the clock back an hour while the gateway was stopped, 4 s into the
        window: started again, the change is reverted 6 s later, at its deadline; the whole
        window was counted again from that start."""
        self.h.clock.advance(4)
        self.h.clock.step(-3600.0)
        self.h.links = {"a": (False, "connecting")}
        changer = self.h.make()
        self.assertEqual(changer.recover().links.links["a"].keepalive, 30)
        changer.startService()
        changer.resume()
        self.h.clock.advance(6)
        self.assertIsNone(changer.pending())
        self.assertEqual(self.h.statuses, ["applied", "reverted"])

    def test_a_start_after_the_deadline_reverts_whatever_the_clock_stepped(self) -> None:
        """Stepped back an hour while stopped, and started again 11 s after the change: the
        deadline has passed on the boot's clock, so the start reverts before anything starts."""
        self.h.clock.advance(11)
        self.h.clock.step(-3600.0)
        changer = self.h.make()
        self.assertEqual(changer.recover().links.links["a"].keepalive, 60)
        self.assertIsNone(changer.pending())

    def test_a_reboot_that_finds_the_clock_set_waits_the_whole_window(self) -> None:
        """The change was made before the clock was set (1970); the gateway reboots, and its
        clock is set at that start (by a real-time clock, or NTP before the gateway starts): how
        long it was down cannot be told, so the whole window is counted from the start, on
        disk with the new boot's deadline. The start reverted the change at once, its deadline
        at 1970."""
        self.h.boot, self.h.clock.rightNow = "boot-2", CLOCK_SET_SINCE + 86400.0
        self.h.links = {"a": (False, "connecting")}
        changer = self.h.make()
        self.assertEqual(changer.recover().links.links["a"].keepalive, 30)
        self.assertEqual(json.loads(self.h.pending_file.read_text())["boot"], "boot-2")
        changer.startService()
        changer.resume()
        self.h.clock.advance(9.9)
        self.assertIsNotNone(changer.pending())
        self.h.clock.advance(0.1)
        self.assertIsNone(changer.pending())
        self.assertEqual(self.h.statuses, ["applied", "reverted"])

    def test_a_change_kept_by_an_earlier_version_still_resumes(self) -> None:
        """A pending change written without the boot's deadline (by an earlier version of the
        gateway) is read, waited for on the wall clock, and written again with it."""
        data = json.loads(self.h.pending_file.read_text())
        del data["boot"], data["boot_deadline"]
        self.h.pending_file.write_text(json.dumps(data))
        self.h.clock.advance(4)
        changer = self.h.make()
        self.assertEqual(changer.recover().links.links["a"].keepalive, 30)
        written = json.loads(self.h.pending_file.read_text())
        self.assertEqual((written["boot"], written["boot_deadline"]), ("boot-1", data["deadline"]))

    def test_a_change_as_the_previous_version_wrote_it_is_resumed(self) -> None:
        """The file as d1caff6 (the version a failed self-update rolls back to) writes it,
        literally: read, its drop-in kept, and reverted at its wall-clock deadline."""
        self.h.pending_file.write_text(
            '{\n "applied_at": 1000.0,\n "deadline": 1010.0,\n "keys": [\n  "links.links.a.keepalive"\n ],\n'
            ' "origin": "remote:r-1",\n "previous": "gateway:\\n  log_level: warn\\n",\n'
            ' "required_links": [\n  "a",\n  "b"\n ]\n}')
        self.h.clock.advance(4)
        self.h.links = {"a": (False, "connecting")}
        self.started_again_reverts_after(6)

    def test_what_is_written_holds_what_the_previous_version_reads(self) -> None:
        """A rolled-back gateway (d1caff6) reads the pending change with
        ``str(origin)``, ``tuple(keys)``, ``previous`` (text or null), ``float(deadline)``,
        ``tuple(required_links)`` and ``float(applied_at)``, and waits on the wall clock: those
        keys are there with those types, the deadline on the wall clock, beside the boot's
        fields it ignores; also as a start rewrites it (here: counted from a new boot)."""
        for written in (self.h.pending_file.read_text(), self._rewritten()):
            data = json.loads(written)
            self.assertIsInstance(data["origin"], str)
            self.assertTrue(all(isinstance(key, str) for key in data["keys"]))
            self.assertIsInstance(data["previous"], str)
            self.assertTrue(all(isinstance(link, str) for link in data["required_links"]))
            self.assertEqual(sorted(data["required_links"]), ["a", "b"])
            self.assertEqual(float(data["deadline"]) - float(data["applied_at"]), 10.0)
            self.assertEqual(set(data) - {"boot", "boot_deadline"},
                             {"origin", "keys", "previous", "deadline", "required_links", "applied_at"})
        self.assertEqual(json.loads(self.h.pending_file.read_text())["deadline"], self.h.clock.seconds() + 10)

    def _rewritten(self) -> str:
        """The pending change as a start on a new boot, 1970 by its clock, writes it again."""
        self.h.boot, self.h.clock.rightNow = "boot-2", 0.0
        self.h.make().recover()
        return self.h.pending_file.read_text()

    def test_started_after_the_deadline_reverts_before_anything_starts(self) -> None:
        """Started at +30 s: recover restores the previous drop-in and returns its config;
        the report goes out once the tree has started."""
        self.h.clock.advance(30)
        changer = self.h.make()
        config = changer.recover()
        self.assertEqual(config.links.links["a"].keepalive, 60)
        self.assertEqual(config.gateway.log_level, "warn")
        self.assertEqual(dropin_path(self.h.main).read_text(), "gateway:\n  log_level: warn\n")
        self.assertIsNone(changer.pending())
        self.assertFalse(self.h.pending_file.exists())
        changer.startService()
        changer.resume()
        self.assertEqual(self.h.statuses, ["applied", "reverted"])
        self.assertIn("not running when the confirm deadline passed", self.h.reports[-1]["reason"])

    def test_an_unusable_pending_change_is_set_aside_and_the_gateway_starts(self) -> None:
        """A pending-config.json the gateway cannot use (not JSON, not a pending change) once
        stopped the gateway at start with a traceback: it is moved aside to
        pending-config.json.damaged, logged as an error naming it, and the gateway starts on
        the configuration the files hold (the change it recorded is neither confirmed nor
        reverted: its way back is lost); other changes are taken again."""
        from twisted.logger import LogLevel, formatEvent

        from tests.logevents import capture_log_events

        for damage in ("{bad", '{"origin": "remote:r-1"}', "[1]", '"x"'):
            self.h.pending_file.write_text(damage)
            events = capture_log_events(self)
            changer = self.h.make()
            config = changer.recover()
            self.assertEqual(config.links.links["a"].keepalive, 30, damage)
            self.assertIsNone(changer.pending())
            self.assertFalse(self.h.pending_file.exists())
            aside = self.h.pending_file.with_name("pending-config.json.damaged")
            self.assertEqual(aside.read_text(), damage)
            [error] = [formatEvent(e) for e in events if e["log_level"] == LogLevel.error]
            self.assertTrue(error.startswith(f"unusable {self.h.pending_file} ("), error)
            self.assertIn(f"moved to {aside}); the configuration change it recorded is neither"
                          " confirmed nor reverted: the configuration as the files hold it runs", error)
            changer.startService()
            changer.resume()
            self.assertIsNone(changer.refusal())
            changer.stopService()

    def test_unusable_owed_reports_are_set_aside_and_the_gateway_starts(self) -> None:
        """A reverted-report.json the gateway cannot use once stopped the gateway at start with
        a traceback: it is moved aside (the reports it owed are lost, which the error says)
        and the start goes on, its pending change handled as usual."""
        from twisted.logger import LogLevel, formatEvent

        from tests.logevents import capture_log_events

        owed = self.h.work / "state" / "commands" / "reverted-report.json"
        for damage in ("[1", '{"a": 1}', "[1, 2]"):
            owed.write_text(damage)
            events = capture_log_events(self)
            changer = self.h.make()
            self.assertEqual(changer.recover().links.links["a"].keepalive, 30, damage)
            self.assertIsNotNone(changer.pending())
            self.assertEqual(owed.with_name("reverted-report.json.damaged").read_text(), damage)
            [error] = [formatEvent(e) for e in events if e["log_level"] == LogLevel.error]
            self.assertTrue(error.startswith(f"unusable {owed} ("), error)
            self.assertIn("the configuration change reports it owed are not sent", error)
            changer.stopService()

    def test_a_revert_report_owed_when_the_gateway_died_is_sent_at_the_next_start(self) -> None:
        """The gateway dies after the start-up revert, before the tree has started and the
        ``reverted`` report was published: the next start sends it (kept on disk until
        published: a publish that fails keeps it owed), and once only."""
        self.h.clock.advance(30)
        self.h.make().recover()  # reverted; the process dies before resume()
        self.assertEqual(self.h.statuses, ["applied"])
        self.assertFalse(self.h.pending_file.exists())
        owed = self.h.work / "state" / "commands" / "reverted-report.json"
        self.assertTrue(owed.exists())

        refused = self.h.make()  # started again, but the report cannot be published this time
        self.assertEqual(refused.recover().gateway.log_level, "warn")
        refused._publish = lambda topic, payload, qos, retain: fail(RuntimeError("the bus is closed"))
        refused.startService()
        refused.resume()
        self.assertEqual((self.h.statuses, owed.exists()), (["applied"], True))

        again = self.h.make()
        self.assertEqual(again.recover().gateway.log_level, "warn")
        again.startService()
        fsynced = record_fsyncs(self)
        again.resume()
        self.assertEqual(self.h.statuses, ["applied", "reverted"])
        self.assertEqual(self.h.reports[-1]["origin"], "remote:r-1")
        self.assertIn("not running when the confirm deadline passed", self.h.reports[-1]["reason"])
        self.assertFalse(owed.exists())
        self.assertIn(str(owed.parent), fsynced)  # removed durably: a power cut must not send it twice
        later = self.h.make()
        later.recover()
        later.resume()
        self.assertEqual(self.h.statuses, ["applied", "reverted"])


class FailedTests(SynchronousTestCase):
    """Even the previous configuration does not start again."""

    def test_the_next_start_runs_the_restored_dropin_with_nothing_pending(self) -> None:
        """A remote change whose new and previous configurations both fail to start is
        reported failed; the process exits, and started again it runs the restored drop-in:
        no change waits, none is confirmed later (docs/commands.md, failed)."""
        h = Harness(self)
        fatal: list[Any] = []
        config = gateway_config.load(h.main)
        changer = ConfigChanger(config, config.commands, h.clock, lambda c: fail(RuntimeError("port in use")),
                                lambda: dict(h.links), h.publish, lambda work: maybeDeferred(work),
                                on_fatal=fatal.append)
        result = self.successResultOf(changer.apply({"links.links.a.keepalive": 30}, 10, "remote:r-1"))
        self.assertFalse(result.applied)
        self.assertEqual((h.statuses, len(fatal)), (["failed"], 1))
        self.flushLoggedErrors(RuntimeError)
        self.assertFalse(dropin_path(h.main).exists())
        self.assertFalse(h.pending_file.exists())
        again = h.make()  # the process started again (systemd)
        self.assertEqual(again.recover().links.links["a"].keepalive, 60)
        self.assertIsNone(again.pending())
        again.startService()
        again.resume()
        h.clock.advance(1)
        self.assertEqual(h.statuses, ["failed"])
        self.assertIsNone(again.refusal())

    def test_the_failed_report_goes_out_at_the_next_start(self) -> None:
        """The broker is down with the services when the change fails, so the failed report
        cannot be published then: it is kept on disk and published by the next start, once
        (docs/commands.md: every step is reported on the report topic, failed among them;
        it was lost, the publish refused by a stopped broker)."""
        h = Harness(self)
        config = gateway_config.load(h.main)

        def broker_down(topic: str, payload: bytes, qos: int, retain: bool) -> Deferred[None]:
            return fail(RuntimeError("the local broker is not running"))

        changer = ConfigChanger(config, config.commands, h.clock, lambda c: fail(RuntimeError("port in use")),
                                lambda: dict(h.links), broker_down, lambda work: maybeDeferred(work),
                                on_fatal=lambda failure: None)
        self.successResultOf(changer.apply({"links.links.a.keepalive": 30}, 10, "remote:r-1"))
        self.flushLoggedErrors(RuntimeError)
        self.assertEqual(h.statuses, [])
        again = h.make()  # the process started again (systemd)
        again.recover()
        again.startService()
        again.resume()
        self.assertEqual(h.statuses, ["failed"])
        self.assertEqual((h.reports[0]["origin"], h.reports[0]["keys"]), ("remote:r-1", ["links.links.a.keepalive"]))
        self.assertIn("did not start again either: port in use", h.reports[0]["reason"])
        later = h.make()
        later.recover()
        later.startService()
        later.resume()
        self.assertEqual(h.statuses, ["failed"])


    def test_a_failed_report_does_not_replace_an_owed_revert_report(self) -> None:
        """A revert made at start whose report could not be published yet, then a change
        that fails: both reports are kept and both are published by the next start, once
        each (they shared one file, and the failed report replaced the reverted one)."""
        h = Harness(self)
        h.links = {"a": (False, "connection refused"), "b": (False, "connection refused")}
        self.successResultOf(h.changer.apply({"links.links.a.keepalive": 30}, 10, "remote:r-1"))
        h.changer.stopService()
        h.clock.advance(30)  # the gateway was down when the deadline passed

        def broker_down(topic: str, payload: bytes, qos: int, retain: bool) -> Deferred[None]:
            return fail(RuntimeError("the local broker is not running"))

        config = gateway_config.load(h.main)
        started = ConfigChanger(config, config.commands, h.clock, lambda c: fail(RuntimeError("port in use")),
                                lambda: dict(h.links), broker_down, lambda work: maybeDeferred(work),
                                on_fatal=lambda failure: None)
        started.recover()  # reverted at start; its report is owed
        started.startService()
        started.resume()  # not published
        self.successResultOf(started.apply({"gateway.log_level": "debug"}, None, "admin"))
        self.flushLoggedErrors(RuntimeError)
        self.assertEqual(h.statuses, ["applied"])
        again = h.make()
        again.recover()
        again.startService()
        again.resume()
        self.assertEqual(h.statuses, ["applied", "reverted", "failed"])
        self.assertEqual([r["origin"] for r in h.reports[1:]], ["remote:r-1", "admin"])
        self.assertFalse((h.work / "state" / "commands" / "reverted-report.json").exists())
        later = h.make()
        later.recover()
        later.resume()
        self.assertEqual(len(h.reports), 3)


class OverlapTests(SynchronousTestCase):
    """A remote config.set (checked, answered 202, then applied) that overlaps another change
    or the gateway's stop: one change at a time, each answered for what it did."""

    def setUp(self) -> None:
        from gateway.commands.gateway_commands import GatewayCommands
        from gateway.commands.settings import CommandsSettings
        from tests.commands.test_dispatcher import FakeApps, FakeReports, FakeRestart

        self.h = Harness(self)
        self.commands = GatewayCommands(CommandsSettings(), self.h.clock, FakeApps(), None, list, self.h.changer,
                                        FakeRestart(), FakeReports())

    def config_set(self, request_id: str, changes: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """A remote config.set's reply: (status, body)."""
        from gateway.commands.dispatcher import CommandError, CommandRequest

        d = maybeDeferred(self.commands.config_set,
                          CommandRequest("config.set", request_id, json.dumps({"changes": changes}).encode()))
        result = self.successResultOf(d.addErrback(lambda f: f.trap(CommandError) and f.value))
        if isinstance(result, CommandError):
            return result.status, {"error": result.message}
        return result.status, result.body

    def test_an_admin_apply_before_an_accepted_config_set_begins_is_409(self) -> None:
        """A config.set answered 202 is under way from its reply on: an admin API apply that comes
        before it begins (on the reactor's next turn) is refused (409), and the remote change is
        applied and reported (docs/commands.md). The admin's was applied, and the remote change,
        answered 202, was dropped, reported nowhere but as a traceback in the log."""
        status, _ = self.config_set("r1", {"links.links.a.keepalive": 30})
        self.assertEqual(status, 202)
        failure = self.failureResultOf(self.h.changer.apply({"gateway.log_level": "debug"}, None, "admin"),
                                       ConfigApplyConflict)
        self.assertEqual(str(failure.value), "a change is being applied")
        self.assertEqual(self.h.restarts, [])  # (the reply goes out first)
        self.h.clock.advance(0)
        [config] = self.h.restarts
        self.assertEqual((config.links.links["a"].keepalive, config.gateway.log_level), (30, "info"))
        self.assertEqual([(r["status"], r["origin"]) for r in self.h.reports], [("applied", "remote:r1")])

    def test_a_config_set_checked_before_the_first_is_applied_is_409(self) -> None:
        """Two config.set whose checks end in one turn (a command delivered twice, two sent at
        once): the second is 409, as while the first is applied (docs/commands.md)."""
        self.assertEqual(self.config_set("r1", {"links.links.a.keepalive": 30})[0], 202)
        self.assertEqual(self.config_set("r2", {"links.links.a.keepalive": 40}),
                         (409, {"error": "a change is being applied"}))
        self.h.clock.advance(0)
        [config] = self.h.restarts
        self.assertEqual(config.links.links["a"].keepalive, 30)

    def test_no_change_begins_once_the_gateways_stop_has_begun(self) -> None:
        """Once the gateway's stop has begun (:meth:`close`, the tree's stop calls it), a change
        is refused (409: the admin API's and a remote config.set's, nothing written), so none is
        written and its services restarted while the gateway stops."""
        self.h.changer.close()
        failure = self.failureResultOf(self.h.changer.apply({"gateway.log_level": "debug"}, None, "admin"),
                                       ConfigApplyConflict)
        stopping = "the gateway is stopping: nothing changed; send the change again once it is back"
        self.assertEqual(str(failure.value), stopping)
        self.assertEqual(self.config_set("r1", {"links.links.a.keepalive": 30}), (409, {"error": stopping}))
        self.h.clock.advance(1)
        self.assertEqual((self.h.restarts, self.h.reports, self.h.pending_file.exists(),
                          dropin_path(self.h.main).exists()), ([], [], False, False))


class UnwritableTests(SynchronousTestCase):
    """The remote drop-in cannot be written (a conf.d the gateway may not write)."""

    def test_reported_at_once_and_nothing_waits(self) -> None:
        """The change is reported refused with the reason, nothing restarts, and no change is
        left pending (it waited for its deadline, every other change 409, then was reported
        reverted for a cloud link that had never gone down)."""
        from gateway.commands import dropin

        h = Harness(self)
        written = dropin.write_dropin

        def unwritable(main: Path, text: str | None) -> None:
            if text is not None:
                raise PermissionError(13, "Permission denied", str(dropin_path(main)))
            written(main, text)

        self.patch(dropin, "write_dropin", unwritable)
        result = self.successResultOf(h.changer.apply({"links.links.a.keepalive": 30}, 10, "remote:r-1"))
        self.assertEqual((result.applied, result.outcome), (False, "not_written"))
        self.assertEqual(h.statuses, ["refused"])
        self.assertEqual(h.reports[0]["reason"], f"{dropin_path(h.main)}: cannot be written: Permission denied")
        self.assertEqual((h.restarts, h.changer.refusal(), h.pending_file.exists()), ([], None, False))


class UncheckableTests(SynchronousTestCase):
    """The check's trial copy cannot be made (a full or read-only /tmp): the change is
    refused saying why, as one whose drop-in cannot be written; it was an internal error."""

    def setUp(self) -> None:
        self.h = Harness(self)
        blocker = self.h.work / "not-a-directory"
        blocker.write_text("")
        self.patch(tempfile, "tempdir", str(blocker / "tmp"))
        self.reason = (f"the configuration cannot be checked (its trial copy in a temporary directory):"
                       f" {blocker / 'tmp'}")

    def test_an_apply_is_refused_saying_why(self) -> None:
        """apply ends ``not_checked`` with the reason, reported refused; nothing written or restarted."""
        result = self.successResultOf(self.h.changer.apply({"links.links.a.keepalive": 30}, 10, "remote:r-1"))
        self.assertEqual((result.applied, result.outcome), (False, "not_checked"))
        [reason] = result.errors
        self.assertTrue(reason.startswith(self.reason), reason)
        self.assertIn("Not a directory", reason)
        self.assertEqual(self.h.statuses, ["refused"])
        self.assertEqual(self.h.reports[0]["reason"], reason)
        self.assertEqual((self.h.restarts, self.h.changer.refusal(), self.h.pending_file.exists(),
                          dropin_path(self.h.main).exists()), ([], None, False, False))

    def test_a_remote_config_set_is_answered_500_saying_why(self) -> None:
        """config.set answers 500 with the reason (not ``internal error``), and reports the
        change refused; nothing is applied."""
        from gateway.commands.dispatcher import CommandError, CommandRequest
        from gateway.commands.gateway_commands import GatewayCommands
        from gateway.commands.settings import CommandsSettings
        from tests.commands.test_dispatcher import FakeApps, FakeReports, FakeRestart

        commands = GatewayCommands(CommandsSettings(), self.h.clock, FakeApps(), None, list, self.h.changer,
                                   FakeRestart(), FakeReports())
        request = CommandRequest("config.set", "r8", b'{"key": "links.links.a.keepalive", "value": 30}')
        failure = self.failureResultOf(commands.config_set(request), CommandError)
        self.assertEqual(failure.value.status, 500)
        self.assertTrue(failure.value.message.startswith(self.reason), failure.value.message)
        self.assertTrue(failure.value.message.endswith("; nothing changed"), failure.value.message)
        self.assertEqual(self.h.statuses, ["refused"])
        self.assertEqual(self.h.reports[0]["origin"], "remote:r8")
        self.h.clock.advance(1)
        self.assertEqual((self.h.restarts, dropin_path(self.h.main).exists()), ([], False))


class UnremovableTests(SynchronousTestCase):
    """pending-config.json cannot be removed (a stand-in refuses to unlink it): the change
    still ends in a defined state, reported, and the log gets no line per attempt."""

    def setUp(self) -> None:
        self.h = Harness(self)
        self.refuse = True
        pending_file = self.h.pending_file
        unlink = Path.unlink

        def refusing(path: Path, missing_ok: bool = False) -> None:
            if path == pending_file and self.refuse:
                raise PermissionError(13, "Permission denied", str(path))
            unlink(path, missing_ok)

        self.patch(Path, "unlink", refusing)
        self.events: list[dict[str, Any]] = []
        self.patch(self.h.changer, "log", Logger(observer=self.events.append))
        self.h.changer.startService()

    @property
    def logged(self) -> int:
        """Lines logged at warn or above."""
        return len([e for e in self.events if e["log_level"] >= LogLevel.warn])

    def test_a_confirmation_that_keeps_failing_is_logged_at_most_once_a_minute(self) -> None:
        """Each look at the links (every 0.5 s) tries to record the confirmation again; the
        first failure is logged, then one line a minute saying how many failed (one a look)."""
        self.successResultOf(self.h.changer.apply({"links.links.a.keepalive": 30}, 300, "remote:r-1"))
        self.h.clock.pump([0.5] * 300)  # 150 s: 300 attempts
        self.assertEqual(self.logged, 3)  # at the first attempt, 60 s and 120 s after it
        self.assertEqual(self.events[-1]["count"], 241)  # the line at 120 s counts every failure so far
        self.refuse = False
        self.h.clock.advance(0.5)
        self.assertEqual(self.h.statuses, ["applied", "confirmed"])
        self.assertIsNone(self.h.changer.refusal())

    def test_the_log_of_failures_across_a_step_back_of_the_wall_clock(self) -> None:
        """NTP steps the clock back an hour: the line a minute still comes a minute later
        (the log was silent for the hour)."""
        self.successResultOf(self.h.changer.apply({"links.links.a.keepalive": 30}, 300, "remote:r-1"))
        self.h.clock.advance(0.5)
        self.assertEqual(self.logged, 1)
        self.h.clock.step(-3600.0)
        self.h.clock.pump([0.5] * 120)
        self.assertEqual(self.logged, 2)

    def test_a_revert_whose_file_cannot_be_removed_ends_reverted(self) -> None:
        """At the deadline the revert restores the previous drop-in and restarts the tree even
        though the file cannot be removed: reported ``reverted`` saying so, and no other change
        is taken (409) while the file would revert again at the next start; it is removed as
        soon as it can be, and changes are taken again. The removal's failure went unhandled,
        nothing was reported and the change stayed pending with no watch."""
        self.successResultOf(self.h.changer.apply({"links.links.a.keepalive": 30}, 10, "remote:r-1"))
        self.h.links = {"a": (False, "connection refused"), "b": (False, "connection refused")}
        self.h.clock.advance(10)
        self.assertEqual(len(self.h.restarts), 2)
        self.assertFalse(dropin_path(self.h.main).exists())
        self.assertEqual(self.h.statuses, ["applied", "reverted"])
        self.assertEqual(self.h.reports[1]["reason"],
                         "no cloud link came back up within 10 s: a (connection refused), b (connection refused);"
                         " pending-config.json "
                         "cannot be removed (Permission denied): no other change is taken until it is")
        self.assertIsNone(self.h.changer.pending())
        refused = self.failureResultOf(self.h.changer.apply({"gateway.log_level": "debug"}), ConfigApplyConflict)
        self.assertIn("was reverted", refused.getErrorMessage())
        self.assertEqual(self.logged, 2)  # "not confirmed; reverting", and the removal's failure
        self.h.clock.pump([0.5] * 240)  # 120 s of attempts
        self.assertEqual(self.logged, 4)  # and one line 60 s and 120 s after it
        self.assertTrue(self.h.pending_file.exists())
        self.refuse = False
        self.h.clock.advance(0.5)
        self.assertFalse(self.h.pending_file.exists())
        self.assertIsNone(self.h.changer.refusal())
        self.assertTrue(self.successResultOf(self.h.changer.apply({"gateway.log_level": "debug"})).applied)
        self.assertEqual(self.h.statuses, ["applied", "reverted", "applied"])

    def start_after_the_deadline(self) -> ConfigChanger:
        """A change made with a 10 s window; the gateway stops, and starts again 30 s later."""
        dropin_path(self.h.main).parent.mkdir()
        dropin_path(self.h.main).write_text("gateway:\n  log_level: warn\n")
        self.successResultOf(self.h.changer.apply({"links.links.a.keepalive": 30}, 10, "remote:r-1"))
        self.h.changer.stopService()
        self.h.clock.advance(30)
        changer = self.h.make()
        self.patch(changer, "log", Logger(observer=self.events.append))
        return changer

    def test_a_start_whose_revert_file_cannot_be_removed_starts_reverted(self) -> None:
        """Started after the deadline with pending-config.json that cannot be removed (its
        directory read-only for the gateway): the previous drop-in is restored and runs, the
        revert is reported saying the file cannot be removed, other changes are refused (409)
        until it is, and it is tried again every half second. The start failed with a
        traceback."""
        changer = self.start_after_the_deadline()
        config = changer.recover()
        self.assertEqual((config.links.links["a"].keepalive, config.gateway.log_level), (60, "warn"))
        self.assertEqual(dropin_path(self.h.main).read_text(), "gateway:\n  log_level: warn\n")
        self.assertIsNone(changer.pending())
        self.assertEqual([e["log_level"] for e in self.events if e["log_level"] >= LogLevel.warn],
                         [LogLevel.error, LogLevel.warn])  # the file, and the revert
        changer.startService()
        changer.resume()
        self.assertEqual(self.h.statuses, ["applied", "reverted"])
        self.assertTrue(self.h.reports[1]["reason"].endswith(
            "; pending-config.json cannot be removed (Permission denied): no other change is taken until it is"))
        refused = self.failureResultOf(changer.apply({"gateway.log_level": "debug"}), ConfigApplyConflict)
        self.assertIn("was reverted", refused.getErrorMessage())
        self.h.clock.pump([0.5] * 10)
        self.assertTrue(self.h.pending_file.exists())
        self.refuse = False
        self.h.clock.advance(0.5)
        self.assertFalse(self.h.pending_file.exists())
        self.assertTrue(self.successResultOf(changer.apply({"gateway.log_level": "debug"})).applied)

    def test_a_start_whose_reverted_report_cannot_be_kept_still_reverts(self) -> None:
        """The whole commands directory is read-only: the reverted report cannot be kept on
        disk either. The revert still happens before anything starts, and the report is
        published from memory once the services have started."""
        changer = self.start_after_the_deadline()

        def read_only(owed: list[dict[str, Any]]) -> None:
            raise OSError(errno.EROFS, "Read-only file system", str(self.h.work / "state" / "commands"))

        self.patch(changer, "_write_owed", read_only)
        self.assertEqual(changer.recover().links.links["a"].keepalive, 60)
        self.assertEqual(len([e for e in self.events if e["log_level"] >= LogLevel.warn]), 3)
        changer.startService()
        changer.resume()
        self.assertEqual(self.h.statuses, ["applied", "reverted"])
        self.assertIn("cannot be removed (Permission denied)", self.h.reports[1]["reason"])


class UnrestorableTests(SynchronousTestCase):
    """docs/commands.md step 5: a start after a pending change's deadline whose previous
    drop-in cannot be restored (conf.d read-only for the gateway)."""

    def past_its_deadline(self) -> tuple[Harness, ConfigChanger]:
        """A change applied by remote:r-1 whose confirm deadline passed while the gateway was
        stopped, and the changer of the next start (not recovered yet)."""
        h = Harness(self)
        dropin_path(h.main).parent.mkdir()
        self.successResultOf(h.changer.apply({"links.links.a.keepalive": 30}, 10, "remote:r-1"))
        h.changer.stopService()
        h.clock.advance(30)
        return h, h.make()

    def test_a_start_that_cannot_restore_the_previous_dropin_refuses_to_start(self) -> None:
        """recover() fails with one ConfigRevertError naming the drop-in, the change, the
        error and what to do; nothing is changed: the change still waits on disk, no
        ``reverted`` report is owed (nothing was reverted), so the next start tries again.
        It failed with an OSError, a traceback at start."""
        h, changer = self.past_its_deadline()

        def read_only(main: Path, text: str | None) -> None:
            raise OSError(errno.EROFS, "Read-only file system", str(dropin_path(main)))

        self.patch(dropin, "write_dropin", read_only)
        with self.assertRaises(ConfigRevertError) as raised:
            changer.recover()
        path = dropin_path(h.main)
        self.assertEqual(str(raised.exception),
                         f"cannot restore the previous {path} of the config change by remote:r-1, whose confirm"
                         " deadline passed while the gateway was stopped (Read-only file system): make"
                         f" {path.parent} writable for the gateway and start it again")
        self.assertIn("keepalive: 30", path.read_text())
        self.assertTrue(h.pending_file.exists())
        self.assertFalse((h.work / "state" / "commands" / "reverted-report.json").exists())

    def test_a_refused_revert_whose_report_cannot_be_taken_back_is_reported_once(self) -> None:
        """A start refuses the revert (conf.d read-only) and cannot take its ``reverted``
        report back off disk either (the commands directory turned read-only): the next start,
        which reverts, publishes one ``reverted`` report (without the key that names the
        change on disk), not two. It published the refused revert's report too."""
        h, changer = self.past_its_deadline()
        write_owed = changer._write_owed
        writes: list[int] = []

        def second_refused(owed: list[dict[str, Any]]) -> None:
            writes.append(len(owed))
            if len(writes) == 2:
                raise OSError(errno.EROFS, "Read-only file system")
            write_owed(owed)

        def read_only(main: Path, text: str | None) -> None:
            raise OSError(errno.EROFS, "Read-only file system", str(dropin_path(main)))

        self.patch(changer, "_write_owed", second_refused)
        patched = self.patch(dropin, "write_dropin", read_only)
        self.assertRaises(ConfigRevertError, changer.recover)
        patched.restore()
        self.assertEqual(writes, [1, 0])
        changer = h.make()
        self.assertEqual(changer.recover().links.links["a"].keepalive, 60)
        changer.startService()
        changer.resume()
        self.assertEqual(h.statuses, ["applied", "reverted"])
        self.assertNotIn("revertedChange", h.reports[1])
        self.assertFalse((h.work / "state" / "commands" / "reverted-report.json").exists())
