"""The HTTP link against an Exosite-like API through StubTreq and a fake clock."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

from treq.testing import StubTreq
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import ResponseNeverReceived
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from gateway import config
from gateway.certwindow import CertificateTimeError
from gateway.errors import ConfigError
from gateway.journal.record import Record
from gateway.links.http_settings import AliasDownlinkSettings, HTTPLinkSettings
from gateway.links.httplink import HTTPLink
from gateway.links.reportaliases import report_aliases
from gateway.links.router import Router, Rule
from tests.links.exositeserver import ExositeAPI
from tests.links.memory import MemoryStream
from tests.steppingclock import SteppingClock
from tests.test_netfailures import NGINX_502
from tests.unreadable import refuse_reading

T0 = 1_700_000_000


class Answering(Resource):
    """A server that answers every request with one status and body, noting when each came."""

    isLeaf = True

    def __init__(self, clock: Clock, status: int, body: bytes) -> None:
        super().__init__()
        self.clock, self.status, self.body = clock, status, body
        self.times: list[float] = []

    def render(self, request: Any) -> bytes:
        self.times.append(self.clock.seconds())
        request.setResponseCode(self.status)
        return self.body


class WritesRefused(ExositeAPI):
    """A product that takes its CIKs for long-polls and answers every write 401 (while
    :attr:`refusing`); with ``same_cik``, every activation answers that one CIK."""

    def __init__(self, clock: Clock, same_cik: str | None = None) -> None:
        super().__init__(clock)
        self.same_cik = same_cik
        self.refusing = True

    def _activate(self, request: Any) -> bytes:
        cik = super()._activate(request)
        if self.same_cik is None or request.code != 200:
            return cik
        del self.ciks[cik.decode()]
        self.ciks[self.same_cik] = "gw1"
        return self.same_cik.encode()

    def render(self, request: Any) -> Any:  # type: ignore[override]
        if self.refusing and request.method == b"POST" and request.path.startswith(b"/onep:v1/stack/alias/"):
            self.requests.append((self.clock.seconds(), "POST", request.path.decode()))
            request.setResponseCode(401)
            return b"CIK may not write"
        return super().render(request)


class PollsRefused(ExositeAPI):
    """A product that takes its CIKs for writes and answers every long-poll 401."""

    def render(self, request: Any) -> Any:  # type: ignore[override]
        if request.method == b"GET" and request.path == b"/onep:v1/stack/alias":
            self.requests.append((self.clock.seconds(), "GET", request.path.decode()))
            request.setResponseCode(401)
            return b"CIK may not read"
        return super().render(request)


class NewCIKsRefused(ExositeAPI):
    """A product whose first CIK works for everything until :meth:`revoke`; the CIKs it
    issues after that are refused (401) for long-polls (``refused_method`` GET), or for
    writes (POST), and taken for the other."""

    def __init__(self, clock: Clock, refused_method: bytes) -> None:
        super().__init__(clock)
        self.first: str | None = None
        self.refused_method = refused_method

    def _activate(self, request: Any) -> bytes:
        cik = super()._activate(request)
        if self.first is None and request.code == 200:
            self.first = cik.decode()
        return cik

    def render(self, request: Any) -> Any:  # type: ignore[override]
        cik = (request.getHeader(b"x-exosite-cik") or b"").decode()
        if request.method == self.refused_method and request.path.startswith(b"/onep:v1/stack/alias") and \
                cik != self.first:
            self.requests.append((self.clock.seconds(), self.refused_method.decode(), request.path.decode()))
            request.setResponseCode(401)
            return b"CIK refused"
        return super().render(request)


class HTTPLinkCase(SynchronousTestCase):
    """An HTTP link on a fake clock against :class:`ExositeAPI` through StubTreq (no tests of its own)."""

    def setUp(self) -> None:
        self.clock = SteppingClock()
        self.clock.advance(T0)
        self.server = ExositeAPI(self.clock)
        self.treq = StubTreq(self.server)
        self.stream = MemoryStream("link-cloud")
        self.statuses: list[tuple[bool, str]] = []
        self.published: list[tuple[str, bytes]] = []
        self.cik_path = Path(self.mktemp()) / "cloud.cik"

    def start(self, **changes: Any) -> HTTPLink:
        self.link = self.make(**changes)
        self.successResultOf(self.link.start())
        self.addCleanup(self.link.stop)
        return self.link

    def make(self, **changes: Any) -> HTTPLink:
        """The link, not started: ``changes`` to its settings, and its ``on_cloud_value``."""
        on_cloud_value = changes.pop("on_cloud_value", None)
        retry_policy = changes.pop("retry_policy", lambda attempt: 3.0)
        options = dict(url="https://acme.example", vendor="acme", model="box", serial="gw1", batch_wait=0.5,
                       request_timeout=5.0)
        options.update(changes)
        settings = HTTPLinkSettings(**options)
        router = Router([Rule.compile("cloud", r.filter, r.topic, r.qos) for r in settings.routes], "t", "gw1")
        return HTTPLink("cloud", settings, self.stream, self.clock, ("t", "gw1"),
                        self.treq, self.local_publish, lambda name, up, cause: self.statuses.append((up, cause)),
                        self.cik_path, lambda f, *a: succeed(f(*a)), retry_policy=retry_policy,
                        on_cloud_value=on_cloud_value, report_aliases=report_aliases(router, "cloud"))

    def local_publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> Any:
        self.published.append((topic, payload))
        return succeed(None)

    def pass_time(self, seconds: float, step: float = 0.25) -> None:
        """Let ``seconds`` pass on the fake clock, serving every request as it comes."""
        for _ in range(int(seconds / step)):
            self.treq.flush()
            self.clock.advance(step)
            self.treq.flush()

    def write(self, alias: str, value: str, at: float | None = None) -> None:
        received = self.clock.seconds() if at is None else at
        self.stream.append(Record(alias, value.encode(), 1, False, received))

    def assert_backed_off(self, times: list[float]) -> None:
        """Requests at ``times`` came again and again, each after the retry policy's 3 s."""
        gaps = [later - earlier for earlier, later in zip(times, times[1:])]
        self.assertTrue(gaps and all(gap >= 3.0 for gap in gaps), gaps)


class HTTPLinkTests(HTTPLinkCase):
    """Exosite mode: activation, record batches, rate limit, failures; JSON mode; downlink."""

    def test_activates_stores_cik_0600_and_sends_records_with_timestamps(self):
        """No CIK: activate, keep it (0600), then one record request per alias with the original times."""
        self.write("temp", "20", T0 - 100)
        self.write("temp", "21", T0 - 50)
        self.write("hum", "40", T0 - 50)
        link = self.start()
        self.pass_time(5)
        self.assertEqual(self.server.activations, 1)
        self.assertEqual(self.cik_path.read_text().strip(), link.cik)
        self.assertEqual(stat.S_IMODE(os.stat(self.cik_path).st_mode), 0o600)
        self.assertEqual(self.server.values, {"temp": [(T0 - 100, "20"), (T0 - 50, "21")], "hum": [(T0 - 50, "40")]})
        self.assertEqual(self.stream.acked["cloud"], 3)
        self.assertEqual(self.statuses[-1], (True, ""))

    def test_a_value_s_own_timestamp_goes_up(self) -> None:
        """A record of the ingest received now with an older timestamp of its own (its
        ``timestamp`` header) goes up with that timestamp, in both modes."""
        from gateway.links.valuetime import timestamp_headers

        self.stream.append(Record("temp", b"20", 1, False, T0, timestamp_headers(T0 - 3600.5)))
        self.start()
        self.pass_time(3)
        self.assertEqual(self.server.values, {"temp": [(T0 - 3601, "20")]})

    def test_values_received_before_a_step_of_the_clock_go_up_at_their_real_time(self) -> None:
        """A gateway without a real-time clock that received values at 1970, before NTP stepped
        its clock: the journal notes the step (its ``steps``), and the link sends those values
        at the time they really came (they went up at 1970: Exosite kept them 56 years back);
        a value received after the step, and one with a time of its own, as they are."""
        from gateway.links.valuetime import timestamp_headers

        boot = 60.0
        self.write("temp", "20", boot)
        self.stream.append(Record("temp", b"19", 1, False, boot, timestamp_headers(30.0)))  # (the app's own time)
        self.stream.steps.append((3, T0 - boot - 10))  # NTP: 1970-01-01 00:01:00 was T0 - 10
        self.write("temp", "21", T0)
        self.start()
        self.pass_time(3)
        self.assertEqual(self.server.values, {"temp": [(T0 - 10, "20"), (30, "19"), (T0, "21")]})

    def test_a_cik_the_disk_refuses_is_used_and_written_once_it_can_be(self) -> None:
        """A CIK whose file the disk refuses (full) is used from memory, said once in the log,
        and written as soon as the disk takes it: the platform issues a CIK once (a second
        activation is 409), so dropping it lost the device for good. The link dropped it,
        reported an internal error and activated again, refused with 409 forever."""
        from twisted.internet.defer import fail

        self.write("temp", "20")
        link = self.make()
        save = link.cik_file.save
        full = [True]

        def refuse(cik: str, claim: bool = True) -> Any:
            return fail(OSError(28, "No space left on device")) if full[0] else save(cik, claim)
        link.cik_file.save = refuse  # type: ignore[method-assign]
        self.link = link
        self.successResultOf(link.start())
        self.addCleanup(link.stop)
        self.pass_time(5)
        self.assertEqual(self.server.activations, 1)
        self.assertEqual(self.server.sequence("temp"), ["20"])
        self.assertEqual(self.statuses[-1], (True, ""))
        self.assertFalse(self.cik_path.exists())
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 0)
        full[0] = False
        self.write("temp", "21")
        self.pass_time(5)
        self.assertEqual(self.server.sequence("temp"), ["20", "21"])
        self.assertEqual(self.cik_path.read_text().strip(), link.cik)
        self.assertEqual(self.server.activations, 1)

    def test_a_stored_cik_is_used_without_activating(self):
        """A CIK on disk from before: no activation."""
        self.cik_path.parent.mkdir(parents=True)
        self.server.ciks["b" * 40] = "gw1"
        self.cik_path.write_text("b" * 40 + "\n")
        self.write("temp", "1")
        link = self.start()
        self.pass_time(3)
        self.assertEqual(self.server.activations, 0)
        self.assertEqual(self.server.sequence("temp"), ["1"])
        # Put there by hand (GWE's), it is the configured device's from now on: not another's.
        self.successResultOf(link.stop())
        self.server.devices.add(("acme", "box", "gw2"))
        other = self.start(serial="gw2")
        self.pass_time(3)
        self.assertEqual(self.server.activations, 1)
        self.assertEqual(self.server.ciks[other.cik], "gw2")

    def test_a_link_stopped_during_its_activation_keeps_the_cik_the_platform_issued(self) -> None:
        """A link stopped while its activation request is out (a configuration change
        restarting the links, a SIGTERM) waits for the answer and saves the CIK before its stop
        fires, and a link started next (the new configuration's) uses it without activating.
        The stop cancelled the request: the platform, which had issued the CIK, answered every
        later activation 409 (already activated), and the device was lost."""
        held: list[Any] = []
        server = self.server

        class HeldActivation(Resource):
            isLeaf = True

            def render(self, request: Any) -> Any:
                if request.path == b"/provision/activate":
                    held.append(request)
                    return NOT_DONE_YET
                return server.render(request)

        self.treq = StubTreq(HeldActivation())
        self.write("temp", "1")
        link = self.start()
        self.pass_time(1)
        self.assertEqual(len(held), 1)
        stopped = link.stop()
        self.assertNoResult(stopped)
        held[0].write(server._activate(held[0]))
        held[0].finish()
        self.treq.flush()
        self.successResultOf(stopped)
        issued = list(server.ciks)
        self.assertEqual(self.cik_path.read_text().strip(), issued[0])
        self.assertEqual(link.snapshot().state, "stopped")
        self.start()
        self.pass_time(3)
        self.assertEqual(server.activations, 1)
        self.assertEqual(server.sequence("temp"), ["1"])

    def late_answer(self, first_answered: str) -> tuple[HTTPLink, HTTPLink]:
        """A link of gw1 stopped while its activation is out, then (the gateway gave up
        waiting after shutdown_timeout) the link of a configuration change naming gw2, on the
        same CIK file; both activations are held, and answered ``first_answered`` first."""
        held: dict[str, Any] = {}
        server = self.server
        server.devices.add(("acme", "box", "gw2"))

        class HeldActivations(Resource):
            isLeaf = True

            def render(self, request: Any) -> Any:
                if request.path == b"/provision/activate":
                    held[request.content.getvalue().decode().rsplit("sn=", 1)[1]] = request
                    return NOT_DONE_YET
                return server.render(request)

        def answer(serial: str) -> None:
            request = held.pop(serial)
            request.write(server._activate(request))
            request.finish()
            self.treq.flush()

        self.treq = StubTreq(HeldActivations())
        old = self.start()
        self.pass_time(1)
        stopping = old.stop()
        self.write("temp", "1")
        new = self.start(serial="gw2")
        self.pass_time(2)
        self.assertEqual(sorted(held), ["gw1", "gw2"])
        answer(first_answered)
        answer(({"gw1", "gw2"} - {first_answered}).pop())
        self.successResultOf(stopping)
        self.pass_time(3)
        return old, new

    def assert_each_cik_kept_for_its_device(self, old: HTTPLink, new: HTTPLink) -> None:
        """The CIK file is the running link's (gw2), gw1's CIK is aside and used again, without
        activating, by a link configured for gw1 (a reverted change)."""
        self.assertEqual(self.server.sequence("temp"), ["1"])
        self.assertEqual(self.server.ciks[new.cik], "gw2")
        self.assertEqual(self.cik_path.read_text().strip(), new.cik)
        self.assertIn("sn=gw2", new.cik_file.device_path.read_text())
        self.successResultOf(new.stop())
        self.write("temp", "2")
        reverted = self.start()
        self.pass_time(3)
        self.assertEqual(reverted.cik, old.cik)
        self.assertEqual(self.server.activations, 2)
        self.assertEqual(self.server.sequence("temp"), ["1", "2"])

    def test_a_stopped_link_s_late_cik_does_not_overwrite_another_device_s(self) -> None:
        """A link stopped during its activation, whose answer comes after the gateway stopped
        waiting (shutdown_timeout) and after the next link, for another serial, saved its own
        CIK: the late CIK is kept aside for its device, the file stays the running link's. It
        overwrote the file and its .device: the running link's CIK was lost at the next start
        (set aside as gw1's), and gw2, activated once already, was refused for good (409)."""
        self.assert_each_cik_kept_for_its_device(*self.late_answer(first_answered="gw2"))

    def test_a_late_cik_saved_while_the_next_link_activates_is_put_aside_by_it(self) -> None:
        """The same, the stopped link's late answer coming first, while the next link's
        activation is out: the next link's save puts the other device's CIK aside before
        writing its own. It wrote over it: gw1's CIK was lost."""
        self.assert_each_cik_kept_for_its_device(*self.late_answer(first_answered="gw1"))

    def test_a_cik_put_in_the_file_while_activation_is_refused_is_used(self) -> None:
        """While the platform refuses the activation (409: already activated, the CIK lost
        elsewhere), each retry reads the CIK file again: a CIK put there meanwhile (GWE's, by
        hand, as the migration says; or saved by the link a configuration change replaced) is
        used. The link read the file only at its start and went on activating, refused for ever."""
        server = self.server
        server.enabled = False
        self.write("temp", "1")
        link = self.start()
        self.pass_time(2)
        self.assertIn("already activated", link.cause)
        server.ciks["c" * 40] = "gw1"
        self.cik_path.parent.mkdir(parents=True, exist_ok=True)
        self.cik_path.write_text("c" * 40 + "\n")
        self.pass_time(5)
        self.assertEqual(link.cik, "c" * 40)
        self.assertEqual(server.activations, 0)
        self.assertEqual(server.sequence("temp"), ["1"])
        self.assertEqual(self.statuses[-1], (True, ""))

    def test_a_cik_goes_only_with_the_device_it_was_issued_for(self) -> None:
        """A link whose serial (or vendor, or model: another product) a configuration change
        changed does not use the CIK of the device it was before: it keeps that one aside and
        activates; changed back (a revert), it uses it again, without activating (a second
        activation is 409). The link sent the other device's CIK: a new serial's data went up
        as the old device's, and another product answered 401, which deleted the CIK file, so
        the reverted link activated again, refused for good."""
        server = self.server
        server.devices.add(("acme", "box", "gw2"))
        self.write("temp", "1")
        first = self.start()
        self.pass_time(3)
        self.successResultOf(first.stop())
        self.write("temp", "2")
        second = self.start(serial="gw2")
        self.pass_time(3)
        self.successResultOf(second.stop())
        self.assertEqual(server.activations, 2)
        self.assertNotEqual(second.cik, first.cik)
        self.assertEqual(server.ciks[second.cik], "gw2")
        self.write("temp", "3")
        third = self.start()
        self.pass_time(3)
        self.assertEqual(third.cik, first.cik)
        self.assertEqual(server.activations, 2)
        self.assertEqual(server.sequence("temp"), ["1", "2", "3"])

    def test_a_switch_of_device_cut_short_is_finished_by_the_next_load(self) -> None:
        """The process killed in the middle of putting one device's CIK aside and bringing
        another's back (its own .device removed already, nothing back yet): the next load
        brings the configured device's CIK back, and the other's comes back in its turn."""
        from gateway.links.exosite import CIKFile

        def files(serial: str) -> CIKFile:
            return CIKFile("cloud", self.cik_path, lambda f, *a: succeed(f(*a)), ("acme", "box", serial))

        self.successResultOf(files("gw1").save("a" * 40))
        gw2 = files("gw2")
        self.assertIsNone(self.successResultOf(gw2.load()))
        self.successResultOf(gw2.save("b" * 40))
        # switching back to gw1, killed after its first two steps:
        self.cik_path.replace(gw2._aside(gw2.device))
        gw2.device_path.unlink()
        self.assertEqual(self.successResultOf(files("gw1").load()), "a" * 40)
        self.assertEqual(self.successResultOf(files("gw2").load()), "b" * 40)
        self.assertEqual(self.successResultOf(files("gw1").load()), "a" * 40)

    def test_a_cik_whose_device_cannot_be_written_is_used(self) -> None:
        """A CIK put there by hand whose .device the disk refuses (full) is used all the same,
        not moved aside as damaged (the link would activate: 409 for a device activated
        before)."""
        from gateway.links import exosite
        from gateway.links.exosite import CIKFile

        self.cik_path.parent.mkdir(parents=True)
        self.cik_path.write_text("d" * 40 + "\n")
        cik_file = CIKFile("cloud", self.cik_path, lambda f, *a: succeed(f(*a)), ("acme", "box", "gw1"))

        def full(path: Path, data: bytes, mode: int) -> None:
            raise OSError(28, os.strerror(28))
        self.patch(exosite, "write_atomically", full)
        self.assertEqual(self.successResultOf(cik_file.load()), "d" * 40)
        self.assertEqual(self.cik_path.read_text(), "d" * 40 + "\n")
        self.assertFalse(cik_file.device_path.exists())

    def test_a_damaged_device_file_is_told_once_and_set_aside(self) -> None:
        """A ``.device`` the gateway did not write (random bytes, a huge value, a directory, a
        symbolic link to nothing) is logged once, naming it, and moved aside to
        ``cloud.cik.device.damaged`` (mode 0600, as a damaged CIK file); the CIK beside it is the
        configured device's, used without activating, and its .device written afresh. Read
        past in silence, a random or huge value was taken for another device's: the CIK was
        put aside and the link activated again (409 for a device activated before)."""
        from gateway.links.exosite import CIKFile

        self.cik_path.parent.mkdir(parents=True)
        aside = self.cik_path.parent / "cloud.cik.device.damaged"
        damages: list[tuple[str, Any]] = [
            ("not UTF-8 text", lambda p: p.write_bytes(os.urandom(16) + b"\xff")),
            ("no device", lambda p: p.write_bytes(b"\x01garbage")),
            ("more than 4096 bytes", lambda p: p.write_bytes(b"vendor=" + b"a" * 10**6)),
            ("Is a directory", lambda p: p.mkdir()),
            ("symbolic link to 'gone', which does not exist", lambda p: p.symlink_to("gone")),
        ]
        for why, damage in damages:
            self.cik_path.write_text("d" * 40 + "\n")
            cik_file = CIKFile("cloud", self.cik_path, lambda f, *a: succeed(f(*a)), ("acme", "box", "gw1"))
            cik_file.device_path.unlink(missing_ok=True)
            damage(cik_file.device_path)
            with capturedLogs() as events:
                self.assertEqual(self.successResultOf(cik_file.load()), "d" * 40)
                self.assertEqual(self.successResultOf(cik_file.load()), "d" * 40)
            [line] = [formatEvent(e) for e in events if "unusable" in formatEvent(e)]
            self.assertIn(f"link cloud: unusable {cik_file.device_path} (", line)
            self.assertIn(why, line)
            self.assertIn(f"moved to {aside}", line)
            self.assertEqual(cik_file.device_path.read_text().strip(), cik_file.device)
            self.assertEqual(self.cik_path.read_text(), "d" * 40 + "\n")
            if aside.is_symlink():
                aside.unlink()
            elif aside.is_dir():
                aside.rmdir()
            else:
                self.assertEqual(aside.stat().st_mode & 0o777, 0o600)
                aside.unlink()

    def test_a_cik_file_holding_no_cik_is_set_aside_and_the_link_activates(self) -> None:
        """A CIK file that is not UTF-8 (its start failed, and with it the whole gateway's), or
        holds what no CIK holds (spaces: a wrong file put there in the migration),
        is moved aside to cloud.cik.damaged as it was, mode 0600 whatever its mode was (it may
        hold a CIK still); the link activates and sends."""
        self.cik_path.parent.mkdir(parents=True)
        self.write("temp", "1")
        for content in (b"\xff\xfe garbage\n", b'{"cik": "not this way"}\n'):
            self.cik_path.write_bytes(content)
            self.cik_path.chmod(0o644)  # (an operator's copy, readable by all)
            link = self.start()
            self.pass_time(3)
            damaged = self.cik_path.parent / "cloud.cik.damaged"
            self.assertEqual(damaged.read_bytes(), content)
            self.assertEqual(damaged.stat().st_mode & 0o777, 0o600)  # (it may be a CIK: it kept 0644)
            self.assertEqual(self.cik_path.read_text().strip(), link.cik)
            self.successResultOf(link.stop())
        self.assertEqual(self.server.activations, 2)
        self.assertEqual(self.server.sequence("temp"), ["1"])

    def test_a_cik_file_that_is_a_link_to_nothing_is_set_aside_and_told(self) -> None:
        """A CIK file that is a symbolic link to nothing (a migration's link to a GWE file
        since removed) is told as unusable and moved aside: it was taken for no file in
        silence, and the activation's CIK written through it; the link activates and sends."""
        self.cik_path.parent.mkdir(parents=True)
        self.cik_path.symlink_to("gwe.cik")
        self.write("temp", "1")
        with capturedLogs() as events:
            link = self.start()
            self.pass_time(3)
        [line] = [formatEvent(e) for e in events if "unusable CIK file" in formatEvent(e)]
        self.assertIn("it is a symbolic link to 'gwe.cik', which does not exist; moved to", line)
        self.assertTrue((self.cik_path.parent / "cloud.cik.damaged").is_symlink())
        self.assertFalse((self.cik_path.parent / "gwe.cik").exists())
        self.assertEqual(self.cik_path.read_text().strip(), link.cik)
        self.assertEqual(self.server.sequence("temp"), ["1"])
        self.successResultOf(link.stop())

    def test_the_cik_file_s_log_lines_name_the_link(self) -> None:
        """What the CIK file's load says (a damaged file set aside, another device's CIK kept
        aside) starts with ``link <name>:`` as every line of a link does: it named only the
        file, so a gateway with several HTTP links (or a cik_file of any name) did not say
        whose it was."""
        self.cik_path.parent.mkdir(parents=True)
        self.cik_path.write_bytes(b"not a cik\n")
        self.server.devices.add(("acme", "box", "gw2"))
        with capturedLogs() as events:
            link = self.start()
            self.pass_time(3)
            self.successResultOf(link.stop())
            self.start(serial="gw2")
            self.pass_time(3)
        lines = [formatEvent(e) for e in events if str(self.cik_path) in formatEvent(e)]
        self.assertEqual(len(lines), 2, lines)
        for line in lines:
            self.assertTrue(line.startswith("link cloud: "), line)

    def test_a_cik_file_the_user_may_not_read_stops_the_start_and_stays(self) -> None:
        """A CIK file the gateway's user may not read (root's, after ``sudo twistd gateway``; the
        refusal injected: tests run as root) is not damaged: the link's start fails saying what
        to do, the file stays, nothing is activated. It was moved aside and the link activated
        again, which the platform refuses (409) for a device it gave a CIK."""
        from gateway.stateaccess import StateAccessError

        self.cik_path.parent.mkdir(parents=True)
        self.cik_path.write_text("b" * 40 + "\n")
        refuse_reading(self, self.cik_path)
        link = self.make(mode="exosite")
        failure = self.failureResultOf(link.start(), StateAccessError)
        self.assertTrue(failure.getErrorMessage().startswith(f"{self.cik_path} (owner "), failure.getErrorMessage())
        self.assertEqual(sorted(p.name for p in self.cik_path.parent.iterdir()), ["cloud.cik"])
        self.pass_time(3)
        self.assertEqual(self.server.activations, 0)

    def test_an_activation_answer_that_is_no_cik_is_a_failure(self) -> None:
        """An activation answered 200 with what is no CIK (40 visible ASCII characters without
        spaces: here an HTML page of 40 characters, which the link kept and sent as its CIK) is a failure saying so, not a CIK to keep and send."""
        self.treq = StubTreq(Answering(self.clock, 200, b"<html>we are down for maintenance</html>\n"))
        link = self.start()
        self.pass_time(2)
        self.assertIsNone(link.cik)
        self.assertFalse(self.cik_path.exists())
        self.assertEqual(self.statuses[-1][0], False)
        self.assertIn("not a CIK", self.statuses[-1][1])

    def test_an_activation_token_of_another_length_is_not_repeated(self) -> None:
        """An activation answered with one token that is no CIK by its length (a credential of
        another kind, which the platform issues once) is a failure that gives its length, never
        the token: it was quoted in the log, the link's last_error and its status on
        edge/connection/remote/status."""
        token = "SECRET" + "f" * 58
        self.treq = StubTreq(Answering(self.clock, 200, token.encode() + b"\n"))
        link = self.start()
        self.pass_time(2)
        self.assertIsNone(link.cik)
        self.assertEqual(self.statuses[-1], (False, "activation answered a token of 64 characters, not a CIK (40; the"
                                                    " token is not shown: it may be a credential)"))

    def test_an_answer_over_a_mebibyte_is_a_failure(self) -> None:
        """An answer larger than the device API ever gives (a CIK, a timestamp, a few values)
        is not read past 1 MiB (an endless answer filled the gateway's memory): a failure
        saying so, like an error status; a POST answered 2xx is still taken (any 2xx
        acknowledges a batch), its body left unread, but for an activation, whose answer is
        the CIK: its failure says the answer is too large. It said "activation answered '',
        not a CIK", as if the platform had answered nothing."""
        from gateway.links.exosite import CloudAPI, RequestFailed

        huge = Answering(self.clock, 200, b"x" * (2**20 + 1))
        api = CloudAPI(StubTreq(huge), "https://acme.example", self.clock, 30)
        failure = self.failureResultOf(api.timestamp(), RequestFailed)
        self.assertEqual(failure.getErrorMessage(), "HTTP 200, the answer is over 1048576 bytes")
        self.successResultOf(api.record("0" * 40, "temp", [(1, "2")]))
        self.successResultOf(api.post_json({}, []))
        self.treq = StubTreq(huge)
        link = self.start()
        self.pass_time(2)
        self.assertIsNone(link.cik)
        self.assertEqual(self.statuses[-1], (False, "HTTP 200, the answer is over 1048576 bytes"))

    def test_a_tls_failure_for_the_clock_says_so(self) -> None:
        """An https link started at 1970, before NTP set the clock: the failure says the
        server's certificate is not valid yet by the clock, with its window, and that the
        clock is not set (it said that no CA vouches for it, or that it has expired or is not
        valid yet, and to check ca_file)."""
        from gateway.links.exosite import CloudAPI, RequestFailed

        class Unverified:
            def request(self, *args: Any, **kwargs: Any) -> Any:
                refused = CertificateTimeError(0.0, 1798761600.0, 1830297600.0, "CN=m2.exosite.io", 0)
                return fail(ResponseNeverReceived([Failure(refused)]))

        api = CloudAPI(Unverified(), "https://acme.example", Clock(), 30)
        failure = self.failureResultOf(api.timestamp(), RequestFailed)
        self.assertEqual("no answer: the TLS connection failed: the certificate of the server (CN=m2.exosite.io) is "
                         "not valid yet by the gateway's clock: it is valid from 2027-01-01 00:00:00 UTC to "
                         "2028-01-01 00:00:00 UTC, and the clock reads 1970-01-01; the clock is not set yet (no "
                         "real-time clock, and NTP has not set it)", failure.getErrorMessage())

    def test_snapshot_in_the_mqtt_links_shape(self):
        """The read side sees an HTTP link as it sees an MQTT link: state, counters, bodies' bytes."""
        self.write("temp", "20")
        self.write("hum", "40")
        link = self.start()  # (the stub answers at once: activated)
        self.assertEqual(link.snapshot().backlog, 2)
        self.pass_time(5)
        snap = link.snapshot()
        self.assertEqual((snap.name, snap.endpoint, snap.state), ("cloud", "https://acme.example", "connected"))
        self.assertEqual((snap.connects, snap.sent, snap.acked, snap.backlog, snap.in_flight), (1, 2, 2, 0, 0))
        self.assertEqual(snap.connected_since, T0)
        self.assertGreater(snap.bytes_up, 0)
        self.assertGreater(snap.bytes_down, 0)  # the CIK
        self.assertGreater(snap.drain_rate, 0)
        self.successResultOf(link.stop())
        self.assertEqual(link.snapshot().state, "stopped")

    def test_drain_rate_across_a_step_of_the_wall_clock(self) -> None:
        """docs/readside.md: drain_rate, records acknowledged per second over the last 10 s.
        NTP steps the clock back an hour just after a batch went: the rate is still the
        records of the last 10 s (it was negative, counted over minus an hour)."""
        for i in range(4):
            self.write("temp", str(i))
        link = self.start()
        self.pass_time(3)
        self.clock.step(-3600.0)
        self.pass_time(1)
        self.assertEqual(link.snapshot().acked, 4)
        self.assertGreater(link.snapshot().drain_rate, 0)

    def test_snapshot_last_error(self) -> None:
        """``last_error`` as docs/readside.md says and an MQTT link keeps it: ``""`` before any
        failure, then why the last request failed, still there once the cloud answers again."""
        self.write("temp", "1")
        self.assertEqual(self.make(serial="nobody").snapshot().last_error, "")
        link = self.start(serial="nobody")
        self.pass_time(5)
        self.assertIn("unknown device", link.snapshot().last_error)
        self.server.ciks["b" * 40] = "nobody"
        link.cik = "b" * 40
        self.pass_time(10)
        snap = link.snapshot()
        self.assertEqual(snap.state, "connected")
        self.assertIn("unknown device", snap.last_error)

    def test_snapshot_lists_the_ca_file_of_an_https_link(self) -> None:
        """An https link's ``ca_file`` is in its snapshot's certificates (docs/readside.md: with
        a TLS endpoint, the CA), so device_info and gateway_certificate_expiry_seconds watch it;
        one that cannot be read is listed with its error; a plain http link has none."""
        from tests.tlscerts import make_pki

        pki = make_pki(Path(self.mktemp()))
        [ca] = self.make(ca_file=pki["ca"]).snapshot().certificates
        self.assertEqual((ca.role, ca.path, ca.subject, ca.error), ("link cloud ca", pki["ca"], "CN=test CA", ""))
        self.assertGreater(ca.not_after, T0)  # (its days_left: none, T0 is before CLOCK_SET_SINCE)
        missing = str(Path(self.mktemp()) / "ca.pem")
        [unreadable] = self.make(ca_file=missing).snapshot().certificates
        self.assertEqual((unreadable.path, unreadable.days_left), (missing, None))
        self.assertIn("No such file", unreadable.error)
        self.assertEqual(self.make(url="http://acme.example", ca_file=pki["ca"]).snapshot().certificates, ())

    def test_at_most_one_request_per_second(self):
        """A backlog over many aliases goes out at most one request per min_interval."""
        for i in range(50):
            self.write(f"a{i % 10}", str(i))
        self.start(batch_records=20)
        self.pass_time(30)
        times = [t for t, method, path in self.server.requests]
        self.assertTrue(all(later - earlier >= 1.0 for earlier, later in zip(times, times[1:])), times)
        self.assertEqual(sum(len(self.server.sequence(f"a{i}")) for i in range(10)), 50)

    def test_a_step_back_of_the_wall_clock_does_not_hold_the_requests(self) -> None:
        """NTP steps the clock back an hour: the next request waits min_interval, not an hour
        (the last request looked an hour ahead)."""
        self.write("temp", "1")
        self.start()
        self.pass_time(2)  # activated, the record sent
        self.assertEqual(self.server.sequence("temp"), ["1"])
        self.clock.step(-3600.0)
        self.write("temp", "2")
        self.pass_time(5)
        self.assertEqual(self.server.sequence("temp"), ["1", "2"])

    def test_5xx_backs_off_and_loses_nothing_in_order(self):
        """500s: the batch is resent after the backoff; the cursor moves only after the 204."""
        for i in range(5):
            self.write("temp", str(i))
        self.start()
        self.pass_time(2)  # activated
        self.server.fail("500", 3)
        for i in range(5, 10):
            self.write("temp", str(i))
        self.pass_time(30)
        self.assertEqual(self.server.sequence("temp"), [str(i) for i in range(10)])
        self.assertEqual(self.stream.acked["cloud"], 10)
        self.assertIn((False, "HTTP 500: planned failure"), self.statuses)

    def test_the_backoff_starts_over_once_the_cloud_takes_part_of_a_batch(self) -> None:
        """On a lossy network every few requests fails, and a batch of several aliases (one
        request each) rarely went through whole: the backoff grew with every failure though
        the cloud took the requests between them, up to ``backoff_max`` (300 s by default)
        between retries of a cloud that answers. A request the cloud takes since the last
        failure starts the backoff over, as a whole batch taken does."""
        api = self.server
        attempts: list[int] = []

        class FirstOfEachAliasFails(Resource):
            isLeaf = True
            failed: set[bytes] = set()

            def render(self, request: Any) -> Any:
                if request.method == b"POST" and request.path.startswith(b"/onep:v1/stack/alias/") \
                        and request.path not in self.failed:
                    self.failed.add(request.path)
                    request.setResponseCode(500)
                    return b"lost on the way"
                return api.render(request)

        self.treq = StubTreq(FirstOfEachAliasFails())
        for alias in ("a", "b", "c", "d"):
            self.write(alias, "1")
        self.start(retry_policy=lambda attempt: attempts.append(attempt) or 1.0)
        self.pass_time(30)
        self.assertEqual([self.server.sequence(alias) for alias in "abcd"], [["1"]] * 4)
        self.assertEqual(attempts, [0, 0, 0, 0])

    def test_records_the_cloud_took_count_before_the_batch_ends(self) -> None:
        """docs/readside.md: ``sent`` and ``acked`` count records as the cloud takes them. A
        batch of two aliases whose second request keeps failing: the first alias's records
        are counted (they were counted only once the whole batch's cursor was saved, so the
        status showed nothing sent while the cloud had them), the second's are in flight."""
        api = self.server

        class SecondAliasFails(Resource):
            isLeaf = True

            def render(self, request: Any) -> Any:
                if request.method == b"POST" and request.path == b"/onep:v1/stack/alias/hum":
                    request.setResponseCode(500)
                    return b"down"
                return api.render(request)

        self.treq = StubTreq(SecondAliasFails())
        self.write("temp", "20")
        self.write("temp", "21")
        self.write("hum", "40")
        link = self.start()
        self.pass_time(10)
        self.assertEqual(self.server.sequence("temp"), ["20", "21"])
        snap = link.snapshot()
        self.assertEqual((snap.sent, snap.acked, snap.in_flight, snap.pending, snap.backlog), (2, 2, 1, 3, 3))

    def test_429_waits_as_retry_after_says(self):
        """429 with Retry-After: 20 -> no request for 20 s, then the batch goes."""
        self.write("temp", "1")
        self.start()
        self.pass_time(2)
        self.server.fail("429", 1, 20)
        self.write("temp", "2")
        self.pass_time(5)
        refused_at = self.server.requests[-1][0]
        self.pass_time(25)
        after = [t for t, _, _ in self.server.requests if t > refused_at]
        self.assertGreaterEqual(after[0] - refused_at, 20)
        self.assertEqual(self.server.sequence("temp"), ["1", "2"])

    def test_401_reactivates_once_then_backs_off(self):
        """A revoked CIK: re-activate and resend; when activation is refused (409), back off and report."""
        self.write("temp", "1")
        link = self.start()
        self.pass_time(2)
        first = link.cik
        self.server.revoke()
        self.write("temp", "2")
        self.pass_time(5)
        self.assertNotEqual(link.cik, first)
        self.assertEqual(self.server.sequence("temp"), ["1", "2"])
        self.server.revoke()
        self.server.enabled = False
        self.write("temp", "3")
        self.pass_time(10)
        self.assertFalse(link.is_connected)
        self.assertIn("activation refused", link.cause)
        activations = self.server.activations
        self.pass_time(10)
        self.assertLessEqual(self.server.activations, activations + 4)  # backing off, not hammering
        self.server.enabled = True
        self.pass_time(10)
        self.assertEqual(self.server.sequence("temp"), ["1", "2", "3"])

    def test_a_write_401_right_after_activation_backs_off_while_long_polls_go_well(self) -> None:
        """docs/exosite.md: "a 401 right after a fresh activation backs off instead". The CIK
        works for the long-polls but every write is answered 401 (a product whose CIK may read
        and not write, a proxy's 401): the link activates again once, then backs off. A
        long-poll answered meanwhile counted as the uplink's proof of the new CIK, so the link
        activated again at every write, once a second, for ever (a warning each time)."""
        server = WritesRefused(self.clock)
        self.treq = StubTreq(server)
        self.addCleanup(server.close)
        self.write("temp", "1")
        link = self.start(downlink=(AliasDownlinkSettings("setpoint"),), poll_timeout_ms=1000)
        self.pass_time(60)
        self.assertLessEqual(server.activations, 2)
        self.assertFalse(link.is_connected)
        self.assertIn("CIK refused right after activation", link.cause)
        self.assertEqual(server.sequence("temp"), [])

    def test_a_401_to_the_cik_an_activation_gave_again_backs_off(self) -> None:
        """The uplink's writes were taken with a CIK, then refused 401; the activation answers
        that very CIK again (a platform that reissues it): one activation, then backoff. The
        proof was kept by the CIK's text, so the CIK the writes had proven before passed for
        proven again, and the link activated at every write, once a second, for ever (seen on
        a real gateway against a local device API)."""
        server = WritesRefused(self.clock, same_cik="ab" * 20)
        server.refusing = False
        self.treq = StubTreq(server)
        self.addCleanup(server.close)
        self.write("temp", "1")
        link = self.start(downlink=(AliasDownlinkSettings("setpoint"),), poll_timeout_ms=1000)
        self.pass_time(3)
        self.assertEqual(server.sequence("temp"), ["1"])
        server.refusing = True
        self.write("temp", "2")
        self.pass_time(60)
        self.assertLessEqual(server.activations, 2)
        self.assertIn("CIK refused right after activation", link.cause)

    def test_a_long_poll_401_right_after_activation_backs_off_while_writes_go_well(self) -> None:
        """The same the other way round: writes are taken, every long-poll is answered 401. The
        long-poll activates again once, then backs off (a write taken counted as the poll's
        proof: an activation at every poll)."""
        server = PollsRefused(self.clock)
        self.treq = StubTreq(server)
        self.addCleanup(server.close)
        self.start(downlink=(AliasDownlinkSettings("setpoint"),), poll_timeout_ms=1000, batch_wait=0.0)
        for n in range(60):
            self.write("temp", str(n))
            self.pass_time(1)
        self.assertLessEqual(server.activations, 2)
        self.assertEqual(server.sequence("temp"), [str(n) for n in range(60)])

    def activated_once(self, refused: bytes, poll_timeout_ms: int) -> tuple[NewCIKsRefused, HTTPLink]:
        """A link with a downlink on a :class:`NewCIKsRefused` server (``refused``: the method
        its new CIKs are refused for), activated once and its first write taken."""
        server = NewCIKsRefused(self.clock, refused)
        self.treq = StubTreq(server)
        self.addCleanup(server.close)
        link = self.start(downlink=(AliasDownlinkSettings("setpoint"),), poll_timeout_ms=poll_timeout_ms,
                          batch_wait=0.0)
        self.write("temp", "1")
        self.pass_time(2)
        self.assertEqual((server.sequence("temp"), server.activations), (["1"], 1))
        return server, link

    def test_a_long_poll_answered_to_the_cik_before_an_activation_proves_nothing_of_the_new_one(self) -> None:
        """A long-poll held with the old CIK while the uplink activates again (its writes were
        refused 401) is answered (304) after the activation: that answer proves the old CIK,
        not the new one. When the new CIK's first long-poll is refused 401 the loop backs off;
        it counted the old CIK's answer as the new one's proof, forgot the CIK the writes use
        (its file removed) and activated again (on Exosite, where a device activates once, a
        409: the device lost)."""
        server, link = self.activated_once(b"GET", poll_timeout_ms=20000)
        server.revoke()  # (the long-poll held with the first CIK is answered 304 all the same)
        self.write("temp", "2")
        self.pass_time(60)
        self.assertEqual(server.sequence("temp"), ["1", "2"])
        self.assertEqual(server.activations, 2)
        self.assertIsNotNone(link.cik)

    def test_a_write_answered_to_the_cik_before_an_activation_proves_nothing_of_the_new_one(self) -> None:
        """The same for the uplink: a write sent with the old CIK is answered after the
        long-poll activated again; the new CIK's first write refused 401 backs off (the old
        CIK's answer counted as the new one's proof: one more activation)."""
        server, link = self.activated_once(b"POST", poll_timeout_ms=1000)
        server.fail("slow", arg=3.0)
        self.write("temp", "2")
        self.pass_time(0.5)  # (its write is out, taken, answered in 3 s)
        server.revoke()  # (the next long-poll is refused: the link activates again)
        self.write("temp", "3")  # (sent with the new CIK: refused)
        self.pass_time(60)
        self.assertEqual(server.sequence("temp"), ["1", "2"])
        self.assertEqual(server.activations, 2)
        self.assertIsNotNone(link.cik)

    def test_activation_404_is_reported(self):
        """An unknown device: the status says so, nothing is acknowledged."""
        self.write("temp", "1")
        link = self.start(serial="nobody")
        self.pass_time(5)
        self.assertIn("unknown device", link.cause)
        self.assertEqual(self.stream.acked["cloud"], 0)

    def test_activation_401_backs_off(self) -> None:
        """A 401 to an activation (a URL that is not the product's API, say) is retried with
        backoff like any other 4xx: the activation carries no CIK to forget. It was taken for a
        refused CIK: activations every min_interval, the status saying "activating again"."""
        refuser = Answering(self.clock, 401, b"auth required")
        self.treq = StubTreq(refuser)
        self.write("temp", "1")
        link = self.start()
        self.pass_time(30)
        self.assertEqual(link.cause, "HTTP 401: auth required")
        self.assert_backed_off(refuser.times)

    def test_an_html_error_page_is_told_on_one_line(self) -> None:
        """A proxy in front of the platform answering its HTML 502 page: the link's cause and
        its log line say ``HTTP 502: Bad Gateway`` (the page's title), on one line; the page's
        first 200 characters, line breaks and markup included, went into both."""
        self.treq = StubTreq(Answering(self.clock, 502, NGINX_502))
        self.write("temp", "1")
        with capturedLogs() as events:
            link = self.start()
            self.pass_time(2)
        self.assertEqual(link.cause, "HTTP 502: Bad Gateway")
        self.assertEqual(self.statuses[-1], (False, "HTTP 502: Bad Gateway"))
        self.assertIn("link cloud: HTTP 502: Bad Gateway", [formatEvent(e) for e in events])

    def test_slow_answers_time_out_and_are_resent(self):
        """An answer later than request_timeout: sent again; at least once, order kept."""
        self.write("temp", "1")
        self.start()
        self.pass_time(2)
        self.server.fail("slow", 1, 60)
        self.write("temp", "2")
        self.pass_time(30)
        self.assertEqual(self.server.sequence("temp"), ["1", "2"])
        self.assertIn("timed out", " ".join(cause for _, cause in self.statuses).lower())

    def test_a_batch_too_large_for_a_slow_link_goes_in_halves(self) -> None:
        """A backlog over a 20 kbit/s cellular link: a 256 KiB batch takes 105 s to go, past
        the 30 s request_timeout. The link sent it again whole after each timeout, for ever,
        and nothing after it went (measured: 780 kB sent in 2.5 minutes, nothing taken). Now a
        body larger than every one the cloud has taken is split in two at each timeout, until
        the pieces go in time: everything arrives, in order."""
        self.server.crawl_over = 300  # bodies over 300 bytes never arrive within request_timeout
        for n in range(8):
            self.write("temp", f"{n}" + "x" * 100)
        with capturedLogs():
            self.start(batch_records=100)
            self.pass_time(120)
        self.assertEqual(self.server.sequence("temp"), [f"{n}" + "x" * 100 for n in range(8)])
        self.assertEqual(self.link.pending, 0)

    def test_a_request_that_timed_out_connecting_is_not_split(self) -> None:
        """A cloud gone during an outage (no TCP connection within request_timeout) says
        nothing of the batch's size: it is sent again whole, not split down to one value per
        request for when the cloud is back."""

        class Connecting:
            """An HTTP client whose requests never get a connection."""

            def __init__(self) -> None:
                self.bodies: list[int] = []

            def request(self, method: str, url: str, **kwargs: Any) -> Any:
                self.bodies.append(len(kwargs.get("data") or b""))
                return Deferred()  # (cancelled: a CancelledError, as a connection attempt's)

            def flush(self) -> None:
                """Nothing to serve (pass_time flushes the client)."""

        self.treq = Connecting()  # type: ignore[assignment]
        for n in range(8):
            self.write("temp", f"{n}" + "x" * 100)
        with capturedLogs():
            self.start(mode="json", url="https://ingest.example/data", batch_records=100)
            self.pass_time(60)
        self.assertGreater(len(self.treq.bodies), 3)
        self.assertEqual(len(set(self.treq.bodies)), 1, self.treq.bodies)

    def test_a_timeout_of_a_body_no_larger_than_one_taken_sends_it_again_whole(self) -> None:
        """The cloud took a body that large before: its timeout is the cloud's slowness (or a
        network gone), not the body's size, and the batch is sent again as it was."""
        self.write("temp", "a" * 200)
        self.write("temp", "b" * 200)
        self.start(batch_records=100)
        self.pass_time(3)
        self.assertEqual(self.server.sequence("temp"), ["a" * 200, "b" * 200])
        bodies_before = len(self.server.requests)
        self.server.fail("slow", 1, 60)
        self.write("temp", "c" * 100)
        self.write("temp", "d" * 100)
        with capturedLogs():
            self.pass_time(30)
        posts = [r for r in self.server.requests[bodies_before:] if r[1] == "POST"]
        self.assertEqual(len(posts), 2)  # the slow one, then the same batch again: not split in two
        self.assertEqual(self.server.sequence("temp"), ["a" * 200, "b" * 200, "c" * 100, "d" * 100])

    def test_json_mode_posts_batches(self):
        """JSON mode: one POST per batch with topic, payload, timestamp, seq and the configured headers."""
        import json


        posted: list[Any] = []

        class Collector(Resource):
            isLeaf = True

            def render_POST(self, request: Any) -> bytes:
                posted.append((request.getHeader(b"authorization"), json.loads(request.content.read())))
                request.setResponseCode(202)
                return b""

        self.treq = StubTreq(Collector())
        self.write("up/a", "1")
        self.stream.append(Record("up/b", b"\xff\x00", 1, False, T0, (("timestamp", repr(T0 - 10.5)),)))
        self.start(mode="json", url="https://ingest.example/v1", headers={"Authorization": "Bearer x"})
        self.pass_time(3)
        self.assertEqual(len(posted), 1)
        auth, body = posted[0]
        self.assertEqual(auth, b"Bearer x")
        self.assertEqual(body["records"][0], {"topic": "up/a", "payload": "1", "timestamp": T0, "qos": 1, "seq": 1})
        self.assertEqual(body["records"][1]["encoding"], "base64")
        self.assertEqual(body["records"][1]["timestamp"], T0 - 10.5)  # (a value's own time)
        self.assertEqual(self.stream.acked["cloud"], 2)

    def test_a_configured_content_type_replaces_the_gateway_s(self) -> None:
        """A json link's ``headers`` naming ``content-type`` in lower case went out beside the
        gateway's own ``Content-Type: application/json``: two values of one header. The
        configured one is sent alone (exosite.md), whatever its case; without one, ours."""
        sent: list[list[bytes] | None] = []

        class Collector(Resource):
            isLeaf = True

            def render_POST(self, request: Any) -> bytes:
                sent.append(request.requestHeaders.getRawHeaders(b"content-type"))
                return b""

        self.treq = StubTreq(Collector())
        self.write("up/a", "1")
        self.start(mode="json", url="https://ingest.example/v1",
                   headers={"content-type": "application/vnd.acme+json"})
        self.pass_time(3)
        self.assertEqual(sent, [[b"application/vnd.acme+json"]])
        from gateway.links.exosite import CloudAPI

        api = CloudAPI(StubTreq(Collector()), "https://ingest.example/v1", self.clock, 30)
        self.successResultOf(api.post_json({"Authorization": "Bearer x"}, []))
        self.assertEqual(sent[1:], [[b"application/json"]])

    def test_a_json_url_s_query_is_sent_but_never_shown(self) -> None:
        """A json link posts to its URL as it is, query and all (it may carry a key), but its
        status and its ``reaches`` line show the URL without the query (exosite.md)."""
        queries: list[bytes] = []

        class Collector(Resource):
            isLeaf = True

            def render_POST(self, request: Any) -> bytes:
                queries.append(request.uri.partition(b"?")[2])
                return b""

        self.treq = StubTreq(Collector())
        self.write("up/a", "1")
        with capturedLogs() as events:
            link = self.start(mode="json", url="https://ingest.example/v1?code=s3cret")
            self.pass_time(3)
        self.assertEqual(queries, [b"code=s3cret"])
        self.assertEqual(link.snapshot().endpoint, "https://ingest.example/v1")
        lines = [formatEvent(event) for event in events]
        self.assertIn("link cloud reaches https://ingest.example/v1", lines)
        self.assertFalse([line for line in lines if "s3cret" in line], lines)

    def test_json_mode_is_connected_from_its_first_accepted_batch(self) -> None:
        """JSON mode asks nothing of its URL while it has nothing to send (a generic ingestion
        URL has no ``/timestamp`` to probe): its status stays ``not connected yet`` until the
        first batch is answered 2xx, as exosite.md says, and is connected from then on."""
        posted: list[bytes] = []

        class Collector(Resource):
            isLeaf = True

            def render(self, request: Any) -> bytes:
                posted.append(request.method)
                return b""

        self.treq = StubTreq(Collector())
        link = self.start(mode="json", url="https://ingest.example/v1")
        self.pass_time(30)
        self.assertEqual((posted, link.is_connected, link.cause), ([], False, "not connected yet"))
        self.write("up/a", "1")
        self.pass_time(3)
        self.assertEqual((posted, link.is_connected, self.statuses[-1]), ([b"POST"], True, (True, "")))

    def test_failing_cursor_saves_show_in_its_status(self) -> None:
        """A batch the cloud took whose cursor save fails (a full disk) puts ``cursor_failing``
        in the link's snapshot, as an MQTT link's; the first save that works clears it."""
        class Collector(Resource):
            isLeaf = True

            def render(self, request: Any) -> bytes:
                return b""

        self.treq = StubTreq(Collector())
        full = [True]
        real_ack = self.stream.ack

        def ack(cursor: str, seq: int, above: Any = ()) -> Any:
            return fail(OSError(28, "No space left on device")) if full[0] else real_ack(cursor, seq, above)

        self.stream.ack = ack  # type: ignore[method-assign]
        link = self.start(mode="json", url="https://ingest.example/v1")
        self.write("up/a", "1")
        self.pass_time(7)
        failing = link.snapshot().cursor_failing
        self.assertIsNotNone(failing)
        assert failing is not None
        self.assertEqual((failing.reason, failing.error), ("cursor-not-saved", "[Errno 28] No space left on device"))
        self.assertGreaterEqual(failing.failures, 2)
        # The cloud took the record: counted so while the save waits (not only once it works).
        snap = link.snapshot()
        self.assertEqual((snap.sent, snap.acked, snap.in_flight, snap.pending, snap.backlog), (1, 1, 0, 1, 1))
        self.assertGreater(snap.drain_rate, 0)
        full[0] = False
        self.pass_time(7)
        self.assertEqual((self.stream.acked["cloud"], link.snapshot().cursor_failing), (1, None))
        self.flushLoggedErrors(OSError)

    def test_json_mode_401_backs_off_like_any_4xx(self) -> None:
        """JSON mode has no CIK: a 401 (a wrong ``Authorization`` header) is retried with backoff
        and reported as it is, like any other 4xx; it was taken for a refused CIK: resent every
        ``min_interval`` without backing off, "activating again" in the status."""
        refuser = Answering(self.clock, 401, b"bad token")
        self.treq = StubTreq(refuser)
        self.write("up/a", "1")
        link = self.start(mode="json", url="https://ingest.example/v1", headers={"Authorization": "Bearer x"})
        self.pass_time(30)
        self.assertEqual(link.cause, "HTTP 401: bad token")
        self.assert_backed_off(refuser.times)
        self.assertEqual(self.stream.acked.get("cloud", 0), 0)

    def test_only_a_2xx_takes_a_batch(self) -> None:
        """A POST answered 304 or with a redirect has not been stored: the batch is resent with
        backoff and the cursor stays (a 304 counted as success, and a 303 was followed with a
        GET whose answer acknowledged the batch)."""

        answers: list[int] = []

        class NotStoring(Resource):
            isLeaf = True

            def render(self, request: Any) -> bytes:
                answers.append(request.method)
                request.setResponseCode(304 if len(answers) == 1 else 303)
                if len(answers) > 1:
                    request.setHeader(b"location", b"https://ingest.example/elsewhere")
                return b""

        self.treq = StubTreq(NotStoring())
        self.write("up/a", "1")
        link = self.start(mode="json", url="https://ingest.example/v1")
        self.pass_time(10)
        self.assertEqual(self.stream.acked.get("cloud", 0), 0)
        self.assertEqual(set(answers), {b"POST"})  # no redirect followed
        self.assertIn("HTTP 30", link.cause)

    def test_a_downlink_alias_named_like_a_gateway_command_runs_it(self) -> None:
        """docs/exosite.md: the default downlink topic, ``command//<device>/req//<alias>``, is a
        one-way command to the gateway's own device id, so the gateway's command dispatcher
        takes it too: a value of an alias named like one of its commands runs that command
        (a JSON object is its arguments), a value of any other alias is answered 404 in the
        log only; neither gets a reply. Seen on a real gateway: ``command ping (one-way): 400``
        for an alias ``ping`` with a plain value."""
        from gateway.commands.dispatcher import CommandDispatcher, CommandRequest, Reply
        from tests.updates.test_commands import FakeBus

        bus = FakeBus()
        ran: list[dict[str, Any]] = []

        def ping(request: CommandRequest) -> Reply:
            ran.append(request.args())
            return Reply(200, {})

        dispatcher = CommandDispatcher(bus, "gw1", {"ping": ping}, Clock())
        dispatcher.startService()
        self.addCleanup(dispatcher.stopService)

        def local_publish(topic: str, payload: bytes, qos: int, retain: bool) -> Any:
            bus.deliver(topic, payload, retain)
            return succeed(None)

        self.local_publish = local_publish  # type: ignore[method-assign]
        self.start(downlink=(AliasDownlinkSettings("ping"), AliasDownlinkSettings("reboot")), poll_timeout_ms=10000)
        self.pass_time(2)
        with capturedLogs() as events:
            self.server.set_value("ping", '{"x": 1}')
            self.server.set_value("reboot", "now")
            self.pass_time(1)
        self.assertEqual(ran, [{"x": 1}])
        self.assertEqual(bus.published, [])
        self.assertIn("command reboot (one-way): 404 (logged at most once every"
                      " 10 s while they go on)", [formatEvent(e) for e in events])

    def test_downlink_long_poll_publishes_changes(self):
        """A cloud write to a downlink alias is published locally as a command, once per change."""
        self.start(downlink=(AliasDownlinkSettings("reboot"),), poll_timeout_ms=10000)
        self.pass_time(2)
        self.server.set_value("reboot", "now")
        self.pass_time(1)
        self.assertEqual(self.published, [("command//gw1/req//reboot", b"now")])
        self.pass_time(25)  # long-polls time out (304) and start again: no repeat
        self.assertEqual(len(self.published), 1)
        self.clock.advance(1)
        self.server.set_value("reboot", "later")
        self.pass_time(1)
        self.assertEqual(self.published[-1], ("command//gw1/req//reboot", b"later"))

    def test_a_command_long_polled_before_a_restart_is_not_run_again(self):
        """A value published before the link restarted (a ``restart`` command restarts the
        gateway, a configuration change the links) came down again at the first poll, which
        had no If-Modified-Since: a ``restart`` ran for ever. The link polls from the last
        value's Last-Modified, kept beside the CIK, and a value written meanwhile still comes."""
        self.start(downlink=(AliasDownlinkSettings("restart"),), poll_timeout_ms=5000)
        self.pass_time(2)
        self.server.set_value("restart", "{}")
        self.pass_time(2)
        self.assertEqual(self.published, [("command//gw1/req//restart", b"{}")])
        self.successResultOf(self.link.stop())
        self.start(downlink=(AliasDownlinkSettings("restart"),), poll_timeout_ms=5000)
        self.pass_time(12)
        self.assertEqual(len(self.published), 1)
        self.successResultOf(self.link.stop())
        self.clock.advance(2)
        self.server.set_value("restart", '{"again": 1}')  # while the gateway was away
        self.start(downlink=(AliasDownlinkSettings("restart"),), poll_timeout_ms=5000)
        self.pass_time(2)
        self.assertEqual(self.published[1:], [("command//gw1/req//restart", b'{"again": 1}')])

    def test_a_damaged_poll_marks_file_is_logged_and_the_polls_start_without_a_mark(self):
        """A ``<cik_file>.polls`` that is no JSON is said in the log; the long-poll starts
        without If-Modified-Since (the alias's current value comes), and the file is written
        whole again with the next value's mark."""
        import json

        self.cik_path.parent.mkdir(parents=True)
        marks = self.cik_path.with_name("cloud.cik.polls")
        marks.write_text("{half")
        self.server.set_value("restart", "{}")
        with capturedLogs() as events:
            self.start(downlink=(AliasDownlinkSettings("restart"),), poll_timeout_ms=5000)
            self.pass_time(2)
        self.assertIn(f"link cloud: {marks} not read (", "\n".join(formatEvent(e) for e in events))
        self.assertEqual(self.published, [("command//gw1/req//restart", b"{}")])
        self.assertEqual(list(json.loads(marks.read_text())["since"]), ["restart"])

    def test_a_stop_waits_for_the_poll_mark_being_written(self):
        """A link stopped while the mark of a value it published was being written (a
        configuration change restarts the links) returned at once: the next link's start could
        read the file before that write landed, poll from the mark before, and publish (run)
        the value again. The stop fires once the mark is written."""
        import json

        from tests.twin.fakes import HeldRunner

        link = self.start(downlink=(AliasDownlinkSettings("restart"),), poll_timeout_ms=5000)
        runner = HeldRunner()
        self.patch(link.poll_marks, "run_blocking", runner)
        self.pass_time(2)
        self.server.set_value("restart", "{}")
        self.pass_time(2)
        self.assertEqual(self.published, [("command//gw1/req//restart", b"{}")])
        stopped = link.stop()
        self.assertNoResult(stopped)
        runner.run_one()
        self.successResultOf(stopped)
        self.assertEqual(list(json.loads(self.cik_path.with_name("cloud.cik.polls").read_text())["since"]),
                         ["restart"])

    def test_a_poll_mark_that_is_no_header_value_is_not_used(self):
        """A ``<cik_file>.polls`` that is JSON but whose mark cannot be an HTTP header (a
        character beyond Latin-1: the file edited, or written by something else) stopped the
        alias's long-poll for good (the mark's encoding raised before the poll loop, with
        nothing in the log). Such a mark is not used: the long-poll starts without it."""
        import json

        self.cik_path.parent.mkdir(parents=True)
        marks = self.cik_path.with_name("cloud.cik.polls")
        device = "vendor=acme&model=box&sn=gw1"
        marks.write_text(json.dumps({"device": device, "since": {"restart": "Mon, 07 Dec 2026 \u20ac"}}))
        self.server.set_value("restart", "{}")
        with capturedLogs() as events:
            self.start(downlink=(AliasDownlinkSettings("restart"),), poll_timeout_ms=5000)
            self.pass_time(2)
        self.assertEqual(self.link.poll_marks.device, device)
        self.assertIn(f"link cloud: {marks}: the marks of restart are no Last-Modified: their long-polls start"
                      " without If-Modified-Since", [formatEvent(e) for e in events])
        self.assertEqual(self.published, [("command//gw1/req//restart", b"{}")])

    def test_loss_reports_go_up_like_the_mqtt_links(self):
        """Journal losses: the MQTT link's report, on the configured loss alias, once per change."""
        import json

        from tests.links.memory import MemoryLossReport

        self.stream.losses = MemoryLossReport("link-cloud", entries=({"reason": "dropped", "count": 3},),
                                              totals={"dropped": 3})
        self.start(loss_topic="gateway_losses")
        self.pass_time(35)  # the check runs every 30 s and at each (re)connection
        values = self.server.values.get("gateway_losses", [])
        self.assertEqual(len(values), 1)
        report = json.loads(values[0][1])
        self.assertEqual((report["link"], report["totals"]), ("cloud", {"dropped": 3}))

    def test_downlink_reactivates_after_a_revoke_without_uplink_traffic(self):
        """A revoked CIK seen by a long-poll: the link activates again, once, and commands still come."""
        link = self.start(downlink=(AliasDownlinkSettings("reboot"),), poll_timeout_ms=5000)
        self.pass_time(2)
        first = link.cik
        self.server.revoke()
        self.pass_time(8)  # the poll under way times out; the next one gets 401
        self.assertNotEqual(link.cik, first)
        self.assertEqual(self.server.activations, 2)
        self.server.set_value("reboot", "now")
        self.pass_time(2)
        self.assertEqual(self.published, [("command//gw1/req//reboot", b"now")])

    def test_long_poll_failures_set_the_status(self) -> None:
        """An idle link with a downlink: a failed long-poll sets the status to not connected with
        the reason, as every failure does, and a poll the platform answers brings it back (the
        status said "connected" all through an outage when no data went up)."""

        api = self.server

        class Outage(Resource):
            isLeaf = True
            down = False

            def render(self, request: Any) -> Any:
                if self.down:
                    request.setResponseCode(503)
                    return b"maintenance"
                return api.render(request)

        outage = Outage()
        self.treq = StubTreq(outage)
        self.cik_path.parent.mkdir(parents=True)
        self.server.ciks["b" * 40] = "gw1"
        self.cik_path.write_text("b" * 40)
        link = self.start(downlink=(AliasDownlinkSettings("reboot"),), poll_timeout_ms=5000)
        self.pass_time(2)
        self.assertEqual(self.statuses, [(True, "")])
        outage.down = True
        self.pass_time(10)  # the poll under way ends (304); the next ones get 503
        self.assertEqual(self.statuses[-1], (False, "long-poll of reboot: HTTP 503: maintenance"))
        self.assertEqual(link.snapshot().state, "disconnected")
        outage.down = False
        self.pass_time(10)
        self.assertEqual(self.statuses[-1], (True, ""))
        self.server.set_value("reboot", "now")
        self.pass_time(1)
        self.assertEqual(self.published, [("command//gw1/req//reboot", b"now")])

    def test_a_redirected_long_poll_does_not_take_the_cik_elsewhere(self) -> None:
        """A long-poll answered with a redirect to another host is a failure, not followed:
        following it sent ``X-Exosite-CIK`` (the device's secret) to whatever host the
        answer named, since Twisted strips only the standard sensitive headers."""
        api = self.server
        elsewhere: list[tuple[bytes, bytes | None]] = []

        class Redirecting(Resource):
            isLeaf = True

            def render(self, request: Any) -> Any:
                host = request.getHeader(b"host") or b""
                if host.startswith(b"evil.example"):
                    elsewhere.append((request.uri, request.getHeader(b"x-exosite-cik")))
                    return b""
                if request.method == b"GET" and request.uri.startswith(b"/onep:v1/stack/alias?"):
                    request.setResponseCode(302)
                    request.setHeader(b"location", b"http://evil.example/collect")
                    return b""
                return api.render(request)

        self.treq = StubTreq(Redirecting())
        self.cik_path.parent.mkdir(parents=True)
        self.server.ciks["b" * 40] = "gw1"
        self.cik_path.write_text("b" * 40)
        self.start(downlink=(AliasDownlinkSettings("reboot"),), poll_timeout_ms=5000)
        self.pass_time(5)
        self.assertEqual(elsewhere, [])
        self.assertEqual(self.statuses[-1], (False, "long-poll of reboot: HTTP 302"))

    def test_long_polls_answered_at_once_are_paced(self) -> None:
        """A server that answers every long-poll at once (a 304 without waiting, or the same value
        again whatever If-Modified-Since says: a proxy that does not hold requests) is polled at
        most once a second (``min_interval``'s floor), not in a loop as fast as the network goes
        (the gateway polled again at once, spinning), and a value repeated so with the same
        Last-Modified is published once (the command ran again at every answer)."""
        clock = self.clock
        polls: list[float] = []

        class Hasty(Resource):
            isLeaf = True
            status = 304

            def render(self, request: Any) -> Any:
                if not request.uri.startswith(b"/onep:v1/stack/alias?"):
                    return str(int(clock.seconds())).encode()  # (GET /timestamp: the link is idle)
                polls.append(clock.seconds())
                if len(polls) > 100:
                    return NOT_DONE_YET  # (the spin stopped here: the test ends)
                request.setResponseCode(self.status)
                if self.status == 200:
                    request.setHeader(b"last-modified", b"Tue, 14 Nov 2023 22:13:20 GMT")
                    return b"reboot=now"
                return b""

        hasty = Hasty()
        self.treq = StubTreq(hasty)
        self.cik_path.parent.mkdir(parents=True)
        self.cik_path.write_text("b" * 40)
        self.start(downlink=(AliasDownlinkSettings("reboot"),), poll_timeout_ms=5000)
        self.pass_time(5)
        self.assertLessEqual(len(polls), 6, polls)
        del polls[:]
        hasty.status = 200
        self.pass_time(5)
        self.assertLessEqual(len(polls), 6, polls)
        # The value that comes again with its Last-Modified is published once (it was at each answer).
        self.assertEqual(self.published, [("command//gw1/req//reboot", b"now")])

    def test_a_cloud_down_with_a_downlink_is_one_line_per_cause(self) -> None:
        """A platform that answers nothing but 503 for an hour, to a link with data to send and a
        downlink: its uplink and its long-poll failed in turn, each with its own cause, and since
        a cause was logged only when it differed from the last one, every failure of either was
        a warning, one at each retry, for as long as it lasted. Now each loop's cause is logged
        once until the link reaches the platform again."""

        class Outage(Resource):
            isLeaf = True

            def render(self, request: Any) -> Any:
                request.setResponseCode(503)
                return b"maintenance"

        self.write("temp", "1")
        self.treq = StubTreq(Outage())
        self.cik_path.parent.mkdir(parents=True)
        self.cik_path.write_text("b" * 40)
        with capturedLogs() as events:
            self.start(downlink=(AliasDownlinkSettings("reboot"),), poll_timeout_ms=2000)
            self.pass_time(3600, step=1.0)
        lines = [formatEvent(e) for e in events if e["log_level"].name == "warn"]
        self.assertEqual(sorted(lines), ["link cloud: HTTP 503: maintenance",
                                         "link cloud: long-poll of reboot: HTTP 503: maintenance"])
        self.assertEqual(self.statuses[-1][0], False)

    def test_long_poll_answers_do_not_hide_an_uplink_failure(self) -> None:
        """A batch the cloud keeps refusing: the status keeps saying why while the long-polls work."""
        self.write("temp", "1")
        self.start(downlink=(AliasDownlinkSettings("reboot"),), poll_timeout_ms=2000)
        self.pass_time(2)
        self.server.fail("500", 100)
        self.write("temp", "2")
        self.pass_time(30)
        self.assertEqual(self.statuses[-1], (False, "HTTP 500: planned failure"))
        self.assertEqual(self.server.sequence("temp"), ["1"])

    def test_data_after_a_long_poll_forgot_the_cik_waits_for_the_activation(self) -> None:
        """A long-poll's 401 makes the link forget its CIK while nothing goes up, and the new
        activation is refused (409): data that comes meanwhile waits for the activation, the
        status saying why; it was sent without a CIK (an AssertionError logged as an internal
        error, the status "internal error: ")."""
        self.start(downlink=(AliasDownlinkSettings("reboot"),), poll_timeout_ms=2000)
        self.pass_time(2)
        self.server.revoke()
        self.server.enabled = False
        self.pass_time(10)
        self.write("temp", "1")
        self.pass_time(3)
        self.assertEqual(self.flushLoggedErrors(), [])
        self.assertNotIn((False, "internal error: "), self.statuses)
        self.assertIn("activation refused", self.statuses[-1][1])
        self.server.enabled = True
        self.pass_time(30)
        self.assertEqual(self.server.sequence("temp"), ["1"])
        self.assertEqual(self.statuses[-1], (True, ""))

    def test_a_cik_forgotten_while_a_piece_waits_its_turn_is_activated_once_then_it_goes(self) -> None:
        """A long-poll's 401 makes the link forget its CIK while the uplink waits its
        ``min_interval`` turn to send the next piece of a batch (a cloud revoking the CIK while
        data flows): the piece waits for the one activation the long-poll started, then goes
        with the new CIK, nothing lost and nothing logged. It was sent with no CIK at all: an
        AssertionError logged with its traceback, the status "internal error: ", and the
        piece sent again only after a backoff."""
        api = self.server
        polls: list[Any] = []

        class HeldPolls(Resource):
            """The API, but long-polls are held until the test answers them."""

            isLeaf = True

            def render(self, request: Any) -> Any:
                if request.method == b"GET" and request.uri.startswith(b"/onep:v1/stack/alias?"):
                    polls.append(request)
                    return NOT_DONE_YET
                return api.render(request)

        self.treq = StubTreq(HeldPolls())
        self.cik_path.parent.mkdir(parents=True)
        self.server.ciks["b" * 40] = "gw1"
        self.cik_path.write_text("b" * 40)
        self.write("temp", "1")
        self.write("hum", "2")
        link = self.start(downlink=(AliasDownlinkSettings("reboot"),), poll_timeout_ms=5000)
        while "temp" not in self.server.values:
            self.pass_time(0.25)
        self.assertNotIn("hum", self.server.values)  # (the uplink waits its turn for the next piece)
        self.server.revoke()
        polls[-1].setResponseCode(401)
        polls[-1].finish()
        self.treq.flush()
        self.assertIsNone(link.cik)
        self.pass_time(5)
        self.assertEqual(self.flushLoggedErrors(AssertionError), [])
        self.assertNotIn((False, "internal error: "), self.statuses)
        self.assertEqual(self.server.activations, 1)
        self.assertIn(link.cik, self.server.ciks)
        self.assertEqual((self.server.sequence("temp"), self.server.sequence("hum")), (["1"], ["2"]))
        self.assertEqual((link.sent, link.pending), (2, 0))
        self.assertEqual(self.statuses[-1], (True, ""))

    def test_an_idle_link_reports_whether_it_reaches_the_platform(self):
        """No data yet: GET /timestamp tells the status topic the platform answers (or not)."""
        self.cik_path.parent.mkdir(parents=True)
        self.server.ciks["b" * 40] = "gw1"
        self.cik_path.write_text("b" * 40)
        link = self.start()
        self.pass_time(1)
        self.assertEqual(self.statuses, [(True, "")])
        self.assertTrue(link.is_connected)
        self.assertIn((T0, "GET", "/timestamp"), self.server.requests)


class PiecesTests(SynchronousTestCase):
    """Retry-After parsing and the links service's check of link names."""

    def test_retry_after_seconds_or_date(self):
        """Delta seconds, an HTTP date (relative to now), nothing or garbage."""
        from twisted.web import http

        from gateway.httpdate import retry_after

        self.assertEqual(retry_after(b"120", T0), 120.0)
        self.assertEqual(retry_after(http.datetimeToString(T0 + 30), T0), 30.0)
        self.assertEqual(retry_after(http.datetimeToString(T0 - 30), T0), 0.0)
        self.assertIsNone(retry_after(b"", T0))
        self.assertIsNone(retry_after(b"soon", T0))
        self.assertIsNone(retry_after(b"  ", T0))  # blank: Twisted's date parser raised IndexError
        # at most a day: a number too large for a float raised OverflowError, one of more than
        # 4300 digits ValueError (from the fleet's poll: a failure with a traceback)
        for huge in (b"86401", b"9" * 400, b"9" * 5000, http.datetimeToString(T0 + 10 ** 9)):
            self.assertEqual(retry_after(huge, T0), 86400.0, huge[:20])
        self.assertEqual(retry_after(b"0000000000005", T0), 5.0)

    def test_a_name_in_both_links_and_http_links_is_refused(self):
        """Streams are per link name: an HTTP link may not share a name with an MQTT link."""
        from gateway.links.http_settings import HTTPLinksSettings
        from gateway.links.service import LinksService
        from gateway.links.settings import LinkSettings, LinksSettings

        with self.assertRaises(ValueError) as caught:
            LinksService(LinksSettings(links={"cloud": LinkSettings()}), Clock(), None, None,
                         http_links=HTTPLinksSettings(links={"cloud": HTTPLinkSettings()}))
        self.assertIn("cloud", str(caught.exception))


class DownlinkSettingsTests(SynchronousTestCase):
    """A downlink's local topic template is checked with the configuration."""

    def test_downlink_topic_checked_at_load(self) -> None:
        """An unknown placeholder or a template that gives no topic name is a configuration error
        at its key (the long-poll published nowhere and backed off forever)."""
        path = Path(self.mktemp())
        path.write_text("http_links:\n  links:\n    m:\n      url: 'https://x.example.com'\n      downlink:\n"
                        "        - {alias: a, topic: 'cmd/{serial}/{alias}'}\n"
                        "        - {alias: b, topic: 'cmd/+/{alias}'}\n"
                        "        - {alias: c, topic: 'cmd/{tenant}/{device}/{alias}'}\n")
        errors = self.assertRaises(ConfigError, config.load, path).errors
        self.assertEqual(len(errors), 2, errors)
        self.assertIn("http_links.links.m.downlink.0.topic: unknown placeholder {serial}", errors[0])
        self.assertIn("http_links.links.m.downlink.1.topic: not a valid topic name: 'cmd/+/{alias}'", errors[1])
