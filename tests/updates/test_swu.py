"""SWUpdate bundles: the libconfig reader, the cpio walk, digests, handlers, and installs of
bundles through the update service (in memory)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from treq.testing import StubTreq
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.apps.operations import InstallResult
from gateway.updates.service import UpdateService
from gateway.updates.settings import UpdatesSettings
from gateway.updates.swu.bundle import UnknownHandler, parse_description, unpack
from gateway.updates.swu.cpio import BundleError
from gateway.updates.swu.libconfig import LibconfigError, loads
from tests.updates.resources import RangeFile
from tests.updates.swubundle import bundle, cpio
from tests.updates.test_downloader import run_inline
from tests.updates.test_service import FakeInstaller

APP = b"app tarball bytes " * 1000
URL = "https://updates.example/gw-2.0.swu"


class LibconfigTests(SynchronousTestCase):
    """The sw-description subset of libconfig."""

    def test_swupdate_syntax(self) -> None:
        """Groups, lists with a trailing comma, arrays, joined strings, escapes, numbers, booleans, comments."""
        text = """
        # a comment
        software = {
            version = "1.0" ".2";   // joined
            hardware-compatibility: [ "1.0", "1.2" ];
            images: ( { filename = "a\\tb"; size = 0x10L; offset = -3; ratio = 1.5e2; flag = TRUE; }, );
            /* block
               comment */
        };
        """
        self.assertEqual(loads(text), {"software": {
            "version": "1.0.2", "hardware-compatibility": ["1.0", "1.2"],
            "images": [{"filename": "a\tb", "size": 16, "offset": -3, "ratio": 150.0, "flag": True}]}})

    def test_errors_name_line_and_column(self) -> None:
        """A syntax error says where it is; @include and duplicate names are refused."""
        with self.assertRaises(LibconfigError) as caught:
            loads('software = {\n  version = "1";\n  images = ( { filename = ; } );\n};')
        self.assertIn("line 3 column 27", str(caught.exception))
        self.assertRaises(LibconfigError, loads, '@include "other.cfg"')
        self.assertRaises(LibconfigError, loads, "a = 1; a = 2;")
        self.assertRaises(LibconfigError, loads, "a = { b = 1;")

    def test_numbers_are_ascii_digits(self) -> None:
        """A number in Arabic-Indic or fullwidth digits (``size = ١٦;``) was read by ``int()``
        and ``float()`` as 16: libconfig's numbers are ASCII digits, anything else is refused."""
        for text in ("a = \u0661\u0666;", "a = \uff11\uff16;", "a = \u0661.\u0665;"):
            self.assertRaises(LibconfigError, loads, text)

    def test_what_the_parser_cannot_hold_is_a_libconfig_error(self) -> None:
        """Nesting deeper than 64 levels (the parser recursed until Python's stack ran out) and
        integers of more digits than int() takes (ValueError) are LibconfigErrors saying where."""
        for text in ("a = " + "(" * 5000 + ")" * 5000 + ";", "a = " + "[" * 65 + "]" * 65 + ";",
                     "a = " + "9" * 5000 + ";"):
            with self.assertRaises(LibconfigError) as caught:
                loads(text)
            self.assertIn("line 1 column", str(caught.exception))
        value = loads("a = " + "[" * 64 + "]" * 64 + ";")["a"]  # 64 levels are read
        for _ in range(63):
            value = value[0]
        self.assertEqual(value, [])


class BundleTests(SynchronousTestCase):
    """Unpacking and checking bundles."""

    def write(self, data: bytes) -> Path:
        path = Path(self.mktemp())
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path

    def test_unpack_verifies_each_image(self) -> None:
        """Each image is extracted under its name and matches its sha256; the newc checksum is checked too."""
        for crc in (False, True):
            path = self.write(bundle("2.0", [("app.tar.gz", "gateway-app", APP)], [("post.sh", b"echo hi\n")], crc=crc))
            out = Path(self.mktemp())
            description, images = unpack(path, out)
            self.assertEqual(description.version, "2.0")
            self.assertEqual([(i.filename, i.handler) for i, _ in images],
                             [("app.tar.gz", "gateway-app"), ("post.sh", "shellscript")])
            self.assertEqual(images[0][1].read_bytes(), APP)

    def test_a_member_failing_its_newc_checksum_is_refused(self) -> None:
        """In a ``070702`` archive a member whose bytes do not add up to its header's checksum
        is refused naming the member, and deleted (docs/updates.md: the newc checksum when
        there is one)."""
        good = bundle("2.0", [("app.tar.gz", "gateway-app", APP)], crc=True)
        at = good.rindex(APP[:18])  # (the image's data: the description holds only its digest)
        path = self.write(good[:at] + b"X" + good[at + 1:])
        out = Path(self.mktemp())
        with self.assertRaises(BundleError) as caught:
            unpack(path, out)
        self.assertEqual(str(caught.exception), f"{path.name}: member app.tar.gz fails its cpio checksum")
        self.assertFalse((out / "app.tar.gz").exists())

    def test_digest_mismatch_is_refused(self) -> None:
        """An image whose bytes do not match the sha256 in sw-description is refused and deleted."""
        path = self.write(bundle("2.0", [("app.tar.gz", "gateway-app", APP)], digests={"app.tar.gz": "0" * 64}))
        out = Path(self.mktemp())
        with self.assertRaises(BundleError) as caught:
            unpack(path, out)
        self.assertIn("sw-description says 0000", str(caught.exception))
        self.assertFalse((out / "app.tar.gz").exists())

    def test_unknown_handler_is_refused_before_extracting(self) -> None:
        """A raw rootfs image (a handler the gateway lacks) is named in the refusal; nothing is written."""
        path = self.write(bundle("2.0", [("rootfs.ext4", "raw", b"x" * 100), ("app.tar.gz", "gateway-app", APP)]))
        out = Path(self.mktemp())
        with self.assertRaises(UnknownHandler) as caught:
            unpack(path, out)
        self.assertEqual(caught.exception.handlers, ["raw"])
        self.assertFalse(out.exists())

    def test_description_must_come_first(self) -> None:
        """sw-description must be the archive's first member; a non-cpio file is refused."""
        path = self.write(cpio([("app.tar.gz", APP), ("sw-description", b"software = {};")]))
        self.assertRaises(BundleError, unpack, path, Path(self.mktemp()))
        self.assertRaises(BundleError, unpack, self.write(b"PK\x03\x04 not a cpio" * 20), Path(self.mktemp()))

    def test_a_description_that_does_not_parse_names_the_bundle(self) -> None:
        """A sw-description with a syntax error, or without what SWUpdate needs, is a BundleError
        naming the bundle and where in sw-description (a bare LibconfigError named neither)."""
        for text, message in (("software = {", "sw-description: unexpected end of text"),
                              ("version = 1;", "sw-description has no software group")):
            path = self.write(cpio([("sw-description", text.encode())]))
            with self.assertRaises(BundleError) as caught:
                unpack(path, Path(self.mktemp()))
            self.assertTrue(str(caught.exception).startswith(f"{path.name}: {message}"), str(caught.exception))

    def test_image_entries_need_a_digest_and_a_plain_name(self) -> None:
        """An image without sha256, or with a path as its name, is refused naming it."""
        self.assertRaises(BundleError, parse_description, 'software = { images = ( { filename = "a"; } ); };')
        self.assertRaises(BundleError, parse_description,
                          f'software = {{ images = ( {{ filename = "../a"; sha256 = "{"0" * 64}"; }} ); }};')
        with self.assertRaises(BundleError) as caught:
            parse_description('software = { board1 = { images = (); }; };')
        self.assertIn("board1", str(caught.exception))

    def test_truncated_bundle(self) -> None:
        """An archive cut short is refused, not read as a shorter bundle."""
        data = bundle("2.0", [("app.tar.gz", "gateway-app", APP)])
        self.assertRaises(BundleError, unpack, self.write(data[:len(data) // 2]), Path(self.mktemp()))


class BundleInstallTests(SynchronousTestCase):
    """A .swu artifact through the update service: images to their targets, failures reported."""

    def run_bundle(self, data: bytes, settings: UpdatesSettings = UpdatesSettings()) -> tuple[list[str], str]:
        state = Path(self.mktemp())
        clock = Clock()
        stub = StubTreq(RangeFile(data))
        self.installer = FakeInstaller()
        self.installer.answers.append(succeed(InstallResult(True, "installed", "app", "2", None, "ok")))
        published: list[dict[str, Any]] = []
        service = UpdateService(settings, state, clock, stub, lambda t, p, q, r: published.append(json.loads(p)),
                                self.installer, run_inline, lambda attempt: 1.0)
        self.successResultOf(service.startService())
        service.submit("install", {"correlationId": "swu-1", "softwareModules": [{
            "softwareModule": {"name": "gw", "version": "2.0"},
            "artifacts": [{"filename": "gw-2.0.swu", "download": {"HTTPS": {"url": URL}}, "size": len(data),
                           "checksums": {"SHA256": hashlib.sha256(data).hexdigest()}}]}]})
        for _ in range(10):
            stub.flush()
            clock.advance(1)
        installed = [p["message"] for p in published if p["status"] in ("INSTALLED", "FINISHED_ERROR")]
        return [p["status"] for p in published], installed[-1] if installed else ""

    def test_a_bundle_resumed_after_a_restart_installs_its_apps_again_and_runs_no_script(self) -> None:
        """Restarted in the middle of a bundle, the next service unpacks it again, installs its
        app image again and does not run its script image (its outcome would be unknown): the
        operation ends FINISHED_ERROR saying so (docs/updates.md, SWUpdate bundles)."""
        data = bundle("2.0", [("app.tar.gz", "gateway-app", APP)], [("post.sh", b"echo hi\n")])
        state, clock, stub = Path(self.mktemp()), Clock(), StubTreq(RangeFile(data))
        published: list[dict[str, Any]] = []

        def start(installer: FakeInstaller) -> UpdateService:
            service = UpdateService(UpdatesSettings(), state, clock, stub,
                                    lambda t, p, q, r: published.append(json.loads(p)), installer, run_inline,
                                    lambda attempt: 1.0)
            self.successResultOf(service.startService())
            return service

        first = FakeInstaller()
        first.answers.append(Deferred())  # the app image's install: the gateway stops meanwhile
        service = start(first)
        service.submit("install", {"correlationId": "swu-1", "softwareModules": [{
            "softwareModule": {"name": "gw", "version": "2.0"},
            "artifacts": [{"filename": "gw-2.0.swu", "download": {"HTTPS": {"url": URL}}, "size": len(data),
                           "checksums": {"SHA256": hashlib.sha256(data).hexdigest()}}]}]})
        stub.flush()
        self.assertEqual((first.archives, published[-1]["status"]), ([APP], "INSTALLING"))
        self.successResultOf(service.stopService())
        again = FakeInstaller()
        start(again)
        stub.flush()
        self.assertEqual(again.archives, [APP])
        self.assertEqual([p["status"] for p in published[-2:]], ["INSTALLING", "FINISHED_ERROR"])
        self.assertIn("not run twice", published[-1]["message"])

    def test_app_image_goes_to_the_app_installer(self) -> None:
        """A bundle's gateway-app image is handed to the hosted-apps installer, verified."""
        statuses, message = self.run_bundle(bundle("2.0", [("app.tar.gz", "gateway-app", APP)]))
        self.assertEqual(statuses[-1], "FINISHED_SUCCESS")
        self.assertEqual(self.installer.archives, [APP])
        self.assertIn("bundle gw 2.0", message)

    def test_unknown_handler_fails_with_a_clear_reason(self) -> None:
        """A bundle for a handler the gateway lacks ends FINISHED_ERROR naming the handler and the setting."""
        statuses, message = self.run_bundle(bundle("2.0", [("rootfs.ext4", "raw", b"r" * 64)]))
        self.assertEqual(statuses[-1], "FINISHED_ERROR")
        self.assertIn("no handler in this gateway for raw", message)
        self.assertIn("swupdate_command", message)
        self.assertEqual(self.installer.archives, [])

    def test_missing_swupdate_program_is_said(self) -> None:
        """swupdate_command naming a program that is not installed is said in the refusal."""
        settings = UpdatesSettings(swupdate_command=("/nonexistent/swupdate", "-i"))
        statuses, message = self.run_bundle(bundle("2.0", [("rootfs.ext4", "raw", b"r" * 64)]), settings)
        self.assertEqual(statuses[-1], "FINISHED_ERROR")
        self.assertIn("not installed", message)
