"""The upload service's smaller parts: the daily window, digests in one pass, provider
options, provider error reasons, the diagnostics bundle and the command wiring."""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import os
import stat
import tarfile
import time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock, deferLater
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from gateway import config
from gateway.uploads.azure import AzureBlob
from gateway.commands.dispatcher import CommandDispatcher
from gateway.uploads.commands import UPLOAD_COMMANDS, UploadCommands, command_handlers
from gateway.uploads.diagnostics import DiagnosticsBundle, redact
from gateway.uploads.errors import InvalidRequest
from gateway.uploads.filebody import digest_file
from gateway.uploads.messages import parse_time
from gateway.uploads.choice import make_provider
from gateway.uploads.providers import GenericHTTP
from gateway.uploads.s3 import S3WithCredentials
from gateway.uploads.schedule import Activation, PeriodicTrigger, in_daily_window
from gateway.uploads.settings import PeriodicSettings
from gateway.uploads.xmlerror import provider_reason
from tests.test_netfailures import NGINX_502


def at(hour: int, minute: int) -> time.struct_time:
    return time.struct_time((2027, 1, 1, hour, minute, 0, 0, 1, 0))


class ActivateTimeTests(SynchronousTestCase):
    """``activate``'s ``from``/``to``: RFC 3339 times, each the right instant or a clear 400."""

    def test_rfc3339_forms_are_the_right_instant(self) -> None:
        """``Z`` or an offset, a fraction of any length, RFC 3339's lower-case ``t``/``z`` and
        its space, and a leap second (POSIX time has none: the instant after it, as the next
        second's start). The lower-case forms and the leap second were refused as 'not an
        RFC 3339 time'."""
        utc = datetime.datetime(2027, 3, 1, 10, 0, tzinfo=datetime.timezone.utc).timestamp()
        cases = {"2027-03-01T10:00:00Z": utc, "2027-03-01T11:00:00+01:00": utc,
                 "2027-03-01T07:00:00-03:00": utc, "2027-03-01T10:00:00-00:00": utc,
                 "2027-03-01t10:00:00z": utc, "2027-03-01 10:00:00Z": utc,
                 "2027-03-01T10:00:00.5Z": utc + 0.5, "2027-03-01T10:00:00.123456789Z": utc + 0.123456,
                 "2016-12-31T23:59:60Z": datetime.datetime(2017, 1, 1, tzinfo=datetime.timezone.utc).timestamp(),
                 "2017-01-01T00:59:60+01:00": datetime.datetime(2017, 1, 1, tzinfo=datetime.timezone.utc).timestamp()}
        self.assertEqual({text: parse_time(text, "from") for text in cases}, cases)
        self.assertIsNone(parse_time(None, "from"))

    def test_what_is_no_rfc3339_time_is_a_clear_400(self) -> None:
        """No offset, a date alone, ISO 8601's other forms (week dates, the basic format, hours
        alone), a number: each refused, naming the field. A time whose instant is outside
        years 1-9999 in UTC was taken, then its ``autoUpload`` property could not be written
        (``year 0 is out of range``): the answer was a 500 with a logged traceback, and the
        activation was in force, saved, and published by nothing."""
        refused = {"2027-03-01T10:00:00": "from: a time zone offset is required (Z or +HH:MM): "
                                          "'2027-03-01T10:00:00'",
                   "2027-03-01": "from: not an RFC 3339 time (2027-03-01T10:00:00Z): '2027-03-01'",
                   "2027-W09-1T10:00:00Z": "from: not an RFC 3339 time (2027-03-01T10:00:00Z): '2027-W09-1T10:00:00Z'",
                   "20270301T100000Z": "from: not an RFC 3339 time (2027-03-01T10:00:00Z): '20270301T100000Z'",
                   "2027-03-01T10Z": "from: not an RFC 3339 time (2027-03-01T10:00:00Z): '2027-03-01T10Z'",
                   "2027-02-30T10:00:00Z": "from: not an RFC 3339 time (2027-03-01T10:00:00Z): "
                                           "'2027-02-30T10:00:00Z'",
                   "2027-03-01T10:00:00+24:00": "from: not an RFC 3339 time (2027-03-01T10:00:00Z): "
                                                "'2027-03-01T10:00:00+24:00'",
                   1803895200: "from: not an RFC 3339 time (2027-03-01T10:00:00Z): 1803895200",
                   "0001-01-01T00:00:00+01:00": "from: '0001-01-01T00:00:00+01:00' is before year 1 or after "
                                                "year 9999 in UTC",
                   "9999-12-31T23:59:59-01:00": "from: '9999-12-31T23:59:59-01:00' is before year 1 or after "
                                                "year 9999 in UTC"}
        for value, message in refused.items():
            error = self.assertRaises(InvalidRequest, parse_time, value, "from")
            self.assertEqual(str(error), f"invalid 'activate' operation parameters: {message}")


class WindowTests(SynchronousTestCase):
    """The daily window, in local time."""

    def test_window(self) -> None:
        """No window: always; a day window; a window across midnight."""
        self.assertTrue(in_daily_window(PeriodicSettings(), at(3, 0)))
        day = PeriodicSettings(window_from="08:00", window_to="17:30")
        self.assertEqual([in_daily_window(day, at(h, m)) for h, m in ((7, 59), (8, 0), (17, 29), (17, 30))],
                         [False, True, True, False])
        night = PeriodicSettings(window_from="22:00", window_to="06:00")
        self.assertEqual([in_daily_window(night, at(h, 0)) for h in (21, 23, 2, 6)], [False, True, True, False])

    def test_equal_ends_are_the_whole_day(self) -> None:
        """A window that opens when it closes spans a whole day from that time, as 00:00-00:00
        always did; 02:00-02:00 was a window of no time, in which no trigger ever fired."""
        for bound in ("00:00", "02:00", "23:59"):
            same = PeriodicSettings(window_from=bound, window_to=bound)
            self.assertEqual({in_daily_window(same, at(h, m)) for h in range(24) for m in range(60)}, {True}, bound)

    def fired(self, zone: str, window: tuple[str, str], period: float, day: tuple[int, int, int]) -> list[str]:
        """The local times (``HH:MM`` and the UTC offset) at which periodic triggers fire in
        the 24 hours of real time from ``day``'s local midnight, a tick every ``period``."""
        try:
            tz = ZoneInfo(zone)
        except ZoneInfoNotFoundError:
            raise SkipTest(f"no time zone data for {zone}")
        clock = Clock()
        clock.advance(datetime.datetime(*day, tzinfo=tz).timestamp())
        times: list[str] = []
        trigger = PeriodicTrigger(PeriodicSettings(period=period, window_from=window[0], window_to=window[1]),
                                  clock, lambda: times.append(datetime.datetime.fromtimestamp(
                                      clock.seconds(), tz).strftime("%H:%M%z")),
                                  localtime=lambda t: datetime.datetime.fromtimestamp(t, tz).timetuple())
        trigger.apply(Activation(True))
        clock.pump([period] * int(86400 // period))
        trigger.stop()
        return times

    def test_daylight_saving_changes(self) -> None:
        """The window is read off the local wall clock at each tick, which fires ``period``
        seconds after the last: where clocks fall back, the repeated hour is in the window
        twice (a tick in each fires, none twice); where they spring forward, a window in the
        skipped hour does not happen that day (Europe/Berlin, and Australia/Lord_Howe's
        30-minute change); a window spanning midnight keeps its ends across the change
        (America/Santiago changes at midnight)."""
        berlin_fall = self.fired("Europe/Berlin", ("02:00", "03:00"), 1800, (2027, 10, 31))
        self.assertEqual(berlin_fall, ["02:00+0200", "02:30+0200", "02:00+0100", "02:30+0100"])
        self.assertEqual(self.fired("Europe/Berlin", ("02:00", "03:00"), 1800, (2027, 3, 28)), [])
        self.assertEqual(self.fired("Europe/Berlin", ("02:30", "04:00"), 1800, (2027, 3, 28)),
                         ["03:00+0200", "03:30+0200"])
        self.assertEqual(self.fired("Australia/Lord_Howe", ("02:00", "02:30"), 600, (2027, 10, 3)), [])
        # Lord Howe falls back from 02:00 to 01:30: half an hour of the window happens twice
        self.assertEqual(self.fired("Australia/Lord_Howe", ("01:30", "02:30"), 600, (2027, 4, 4)),
                         ["01:30+1100", "01:40+1100", "01:50+1100", "01:30+1030", "01:40+1030", "01:50+1030", "02:00+1030", "02:10+1030", "02:20+1030"])
        self.assertEqual(self.fired("America/Santiago", ("23:00", "01:00"), 3600, (2027, 9, 4)),
                         ["23:00-0400"])  # (its 00:00 was 01:00, past the window's end)

    def test_a_window_waits_for_the_clock(self) -> None:
        """A gateway without a real-time clock at 1970, before NTP: the daily window cannot be
        told (1970's time of day is not the real one: a night window fired in the day), so
        the ticks wait, said once in the log; once NTP has set the clock, they fire in the
        window. Without a window (or a whole-day one) the ticks fire at 1970 too."""
        clock = Clock()
        fired: list[float] = []
        night = PeriodicTrigger(PeriodicSettings(period=3600, window_from="22:00", window_to="06:00"), clock,
                                lambda: fired.append(clock.seconds()), localtime=time.gmtime)
        always = PeriodicTrigger(PeriodicSettings(period=3600, window_from="02:00", window_to="02:00"), clock,
                                 lambda: fired.append(-clock.seconds()), localtime=time.gmtime)
        night.apply(Activation(True))
        always.apply(Activation(True))
        with capturedLogs() as events:
            clock.pump([3600] * 24)
        self.assertEqual(fired, [-3600.0 * hour for hour in range(1, 25)])
        self.assertEqual([formatEvent(e) for e in events],
                         ["periodic uploads wait for the clock: it reads 1970, not set yet (no real-time clock, "
                          "and NTP has not set it), so the daily window 22:00-06:00 cannot be told"])
        del fired[:]
        always.stop()
        clock.advance(datetime.datetime(2027, 3, 1, 21, 30, tzinfo=datetime.timezone.utc).timestamp()
                      - clock.seconds())  # (NTP)
        clock.pump([3600] * 10)
        night.stop()
        self.assertEqual([time.strftime("%H:%M", time.gmtime(t)) for t in fired],
                         ["22:30", "23:30", "00:30", "01:30", "02:30", "03:30", "04:30", "05:30"])

    def test_bad_time_of_day(self) -> None:
        """A window bound that is not HH:MM is a config error, each one named with its file and
        key path (``file: uploads.periodic.window_from: ...``)."""
        from gateway import config as gateway_config
        from gateway.errors import ConfigError

        path = Path(self.mktemp())
        path.write_text("uploads:\n  periodic:\n    window_from: '25:00'\n    window_to: '6'\n")
        errors = self.assertRaises(ConfigError, gateway_config.load, path).errors
        self.assertEqual(errors, [f"{path}: uploads.periodic.window_from: '25:00' is not a time of day HH:MM",
                                  f"{path}: uploads.periodic.window_to: '6' is not a time of day HH:MM"])
        # Arabic-Indic and fullwidth digits were taken (int() reads them): ASCII digits only
        path.write_text("uploads:\n  periodic:\n    window_from: '1\u0662:\u0663\u0660'\n"
                        "    window_to: '0\uff17:00'\n", encoding="utf-8")
        errors = self.assertRaises(ConfigError, gateway_config.load, path).errors
        self.assertEqual(errors, [f"{path}: uploads.periodic.window_from: '1\u0662:\u0663\u0660' is not a"
                                  " time of day HH:MM",
                                  f"{path}: uploads.periodic.window_to: '0\uff17:00' is not a time of day HH:MM"])

    def test_retry_delays_are_ordered(self) -> None:
        """retry_max_delay below retry_initial_delay is refused at load, as for downloads
        (docs/configuration.md: values that depend on each other are checked)."""
        from gateway import config as gateway_config
        from gateway.errors import ConfigError

        path = Path(self.mktemp())
        path.write_text("uploads:\n  retry_initial_delay: 30\n  retry_max_delay: 10\n")
        errors = self.assertRaises(ConfigError, gateway_config.load, path).errors
        self.assertEqual(errors, [f"{path}: uploads.retry_max_delay: must be at least retry_initial_delay (30.0)"])


class DigestTests(SynchronousTestCase):
    """One read gives MD5, SHA-256 and the block MD5s."""

    def test_digests(self) -> None:
        path = Path(self.mktemp())
        data = bytes(range(256)) * 5000
        path.write_bytes(data)
        digests = digest_file(str(path), block_size=400_000, read_size=65536)
        self.assertEqual(digests.md5, base64.b64encode(hashlib.md5(data).digest()).decode())
        self.assertEqual(digests.sha256, hashlib.sha256(data).hexdigest())
        self.assertEqual(digests.blocks, [base64.b64encode(hashlib.md5(data[i:i + 400_000]).digest()).decode()
                                          for i in range(0, len(data), 400_000)])
        small = digest_file(str(path), block_size=len(data), read_size=2 * len(data))  # one read, no side thread
        self.assertEqual((small.md5, small.sha256, small.blocks), (digests.md5, digests.sha256, [digests.md5]))


class ProviderOptionTests(SynchronousTestCase):
    """Kanto's start options name the provider and its place."""

    def make(self, options: dict[str, str], allow_http: bool = False) -> Any:
        return make_provider(options, object(), False, allow_http, 100, 65536)

    def test_generic_and_s3(self) -> None:
        """generic by default; an S3 presigned URL gets the checksums its signature covers."""
        plain = self.make({"https.url": "https://h/x", "https.header.A": "1"})
        self.assertIsInstance(plain, GenericHTTP)
        self.assertEqual((plain.method, plain.headers, plain.name), ("PUT", {"A": "1"}, "generic"))
        self.assertEqual(plain.digests_first(10), (False, None))
        s3 = self.make({"storage.provider": "aws", "https.url": "https://b.s3/k?X-Amz-Signature=1&"
                        "X-Amz-SignedHeaders=content-md5%3Bhost%3Bx-amz-checksum-sha256"})
        self.assertEqual((s3.name, s3.digests_first(10)), ("aws", (True, None)))
        self.assertIn("x-amz-checksum-sha256", s3.s3_signed)

    def test_s3_with_credentials(self) -> None:
        """Kanto's credential options: AWS's virtual-hosted URL (path-style for a dotted bucket or
        a configured endpoint), the key defaulting to the file's path."""
        options = {"storage.provider": "aws", "aws.access.key.id": "AKID", "aws.secret.access.key": "s",
                   "aws.session.token": "tok", "aws.region": "eu-west-1", "aws.s3.bucket": "logs"}
        s3 = self.make(options)
        self.assertIsInstance(s3, S3WithCredentials)
        self.assertEqual((s3.name, s3.digests_first(10), s3.credentials.session_token), ("aws", (True, None), "tok"))
        self.assertEqual(s3.url("/var/log/a b.log"), "https://logs.s3.eu-west-1.amazonaws.com/var/log/a%20b.log")
        dotted = self.make({**options, "aws.s3.bucket": "my.logs", "aws.object.key": "k/x"})
        self.assertEqual(dotted.url("/y"), "https://s3.eu-west-1.amazonaws.com/my.logs/k/x")
        local = make_provider(options, object(), False, True, 100, 65536, aws_endpoint="http://127.0.0.1:9000/")
        self.assertEqual(local.location("/y"), ("http://127.0.0.1:9000", "127.0.0.1:9000", "/logs/y"))
        error = self.assertRaises(InvalidRequest, make_provider, options, object(), False, False, 100, 65536,
                                  aws_endpoint="http://127.0.0.1:9000")
        self.assertIn("allow_http is off", str(error))
        error = self.assertRaises(InvalidRequest, make_provider, {"https.url": "ftp://h/x"}, object(), False, True,
                                  100, 65536)
        self.assertIn("'ftp://h/x': an https or http URL is required", str(error))  # said "https" with http allowed

    def test_s3_bucket_and_region_are_names(self) -> None:
        """The bucket and region of the cloud's ``start`` went into the host name unchecked
        (``aws.s3.bucket: "a/b"`` put a path into it, ``evil.example/x#`` another host):
        each that is no name of one is refused before any request, both named at once
        (uploads.md); a leading ``/`` of an explicit key is dropped, as the default key's."""
        options = {"storage.provider": "aws", "aws.access.key.id": "AKID", "aws.secret.access.key": "s",
                   "aws.region": "eu-west-1", "aws.s3.bucket": "logs"}
        for bucket in ("abc", "my.logs-2", "a" * 63, "0-0"):
            self.make({**options, "aws.s3.bucket": bucket})
        for region in ("us-gov-west-1", "garage", "EU1"):
            self.make({**options, "aws.region": region})
        for bucket in ("My_Bucket", "ab", "a" * 64, "a/b", "evil.example/x#", "-ab", "ab-", "a..b", "a.-b",
                       "192.168.1.1", "logs\n"):
            error = self.assertRaises(InvalidRequest, self.make, {**options, "aws.s3.bucket": bucket})
            self.assertEqual(str(error), f"'aws.s3.bucket': {bucket!r} is not an S3 bucket name (3 to 63"
                                         " lower-case letters, digits, '.' and '-', a letter or digit at each"
                                         " end, not an IP address)")
        for region in ("eu west", "eu-west-1.evil.example", "-eu", "x/y", "a" * 64):
            error = self.assertRaises(InvalidRequest, self.make, {**options, "aws.region": region})
            self.assertEqual(str(error), f"'aws.region': {region!r} is not a region name (letters, digits and"
                                         " '-', as in eu-west-1)")
        error = self.assertRaises(InvalidRequest, self.make,
                                  {**options, "aws.s3.bucket": "My_Bucket", "aws.region": "eu west"})
        self.assertEqual(str(error), "'aws.s3.bucket': 'My_Bucket' is not an S3 bucket name (3 to 63 lower-case"
                                     " letters, digits, '.' and '-', a letter or digit at each end, not an IP"
                                     " address); 'aws.region': 'eu west' is not a region name (letters, digits"
                                     " and '-', as in eu-west-1)")
        keyed = self.make({**options, "aws.object.key": "/k/x"})
        self.assertEqual(keyed.url("/y"), "https://logs.s3.eu-west-1.amazonaws.com/k/x")

    def test_a_refused_url_is_named_without_its_query_or_credentials(self) -> None:
        """The refusal is logged and answered: the URL it names leaves out the query (a presigned
        URL's signature, a SAS) and the user information (a token is often the user name, and
        ``u@`` was still shown), as a redirect's target does. The whole URL was quoted, and the
        log kept ``X-Amz-Signature=...``."""
        refusals = [
            ("ftp://h/x?X-Amz-Signature=SECRET1", "'ftp://h/x': an https or http URL is required"),
            ("https://u:SECRET2@/x?sig=SECRET3#SECRET4", "'https:///x' is not a usable URL: it names no host"),
            ("ftp://SECRET6@h/x", "'ftp://h/x': an https or http URL is required"),
            ("https://h:99999/x?X-Amz-Signature=SECRET5", "'https://h:99999/x' is not a usable URL: the port"
                                                           " must be from 1 to 65535, not '99999'"),
            ("https://h:\u0668\u0660/x", "'https://h:\u0668\u0660/x' is not a usable URL: the port must be from 1 to 65535,"
                                        " not '\u0668\u0660'"),
            ("https://h:0/x", "'https://h:0/x' is not a usable URL: the port must be from 1 to 65535, not '0'"),
            # the HTTP client cannot send user information: the upload failed at its request,
            # 'invalid hostname: SECRET7:@h' in its error and log
            ("https://SECRET7:SECRET8@h/x", "'https://h/x': a user name or password in the URL is not supported"),
            ("https://SECRET9@h/x", "'https://h/x': a user name or password in the URL is not supported"),
            # urlsplit's own error quoted the netloc whole, the password with it
            ("https://u:SECRET10@\u2100.example/x", "'https://\u2100.example/x' is not a usable URL: netloc"
                                                    " '\u2100.example' contains invalid characters under NFKC"),
        ]
        for url, said in refusals:
            error = self.assertRaises(InvalidRequest, make_provider, {"https.url": url}, object(), False, True,
                                      100, 65536)
            self.assertIn(said, str(error))
            self.assertNotIn("SECRET", str(error))

    def test_sigv4_header_signature_is_botocores(self) -> None:
        """The Authorization the gateway computes is the one botocore computes for the same PUT."""
        try:
            from botocore.auth import S3SigV4Auth
            from botocore.awsrequest import AWSRequest
            from botocore.credentials import Credentials as BotoCredentials
        except ImportError:  # pragma: no cover
            raise SkipTest("botocore is missing: pip install -e .[test]")
        from unittest import mock

        from gateway.links.sigv4 import Credentials, sign_request
        now = 1_700_000_000.0
        payload = hashlib.sha256(b"data").hexdigest()
        extra = {"Content-MD5": "jXd/OF09/siBXSD3SWAm3A==",
                 "x-amz-checksum-sha256": "Oh3rxwAH7F3f1/JB5i2OOHBZ/ElfrZRsoFZAHuXa3Fs=",
                 "Content-Type": "application/octet-stream"}
        ours = sign_request(Credentials("AKID", "secret", "tok"), "PUT", "127.0.0.1:9000", "/bkt/dir/a b+c.log",
                            "us-east-1", "s3", now, payload, extra)
        request = AWSRequest("PUT", "http://127.0.0.1:9000/bkt/dir/a%20b%2Bc.log", data=b"data",
                             headers={**extra, "X-Amz-Content-SHA256": payload})
        when = datetime.datetime.fromtimestamp(now, datetime.timezone.utc).replace(tzinfo=None)
        with mock.patch("botocore.auth.get_current_datetime", lambda: when):
            S3SigV4Auth(BotoCredentials("AKID", "secret", "tok"), "s3", "us-east-1").add_auth(request)
        self.assertEqual(ours["Authorization"], request.headers["Authorization"])
        self.assertEqual((ours["Host"], ours["x-amz-security-token"]), ("127.0.0.1:9000", "tok"))

    def test_azure(self) -> None:
        """azure: endpoint + container + file name + SAS; blocks above the threshold."""
        blob = self.make({"storage.provider": "azure", "azure.storage.endpoint": "https://acct.blob/",
                          "azure.shared.access.signature": "?sv=1&sig=x", "azure.blob.container": "c"})
        self.assertIsInstance(blob, AzureBlob)
        self.assertEqual(blob.blob_url("/var/log/a b.log", "comp=block"), "https://acct.blob/c/a%20b.log?comp=block&sv=1&sig=x")
        self.assertEqual(blob.digests_first(100), (True, None))
        self.assertEqual(blob.digests_first(101), (True, 65536))

    def test_a_block_list_that_is_not_azures_is_a_failed_attempt(self) -> None:
        """Get Block List answered 200 with something else (a proxy's HTML page, a list cut short, a
        size that is no number) fails the attempt as a cut connection does (retried), saying so;
        it raised the XML parser's ParseError (or a ValueError), and the upload ended FAILED at
        once with 'ParseError: syntax error: line 1, column 0' and a traceback in the log."""
        from treq.testing import StubTreq
        from twisted.web.resource import Resource

        from gateway.uploads.errors import TransferFailed

        class Answer(Resource):
            isLeaf = True
            body = b""

            def render_GET(self, request: Any) -> bytes:
                return self.body

        answer = Answer()
        blob = AzureBlob(StubTreq(answer), "https://acct.blob/", "c", "sv=1&sig=x", 1, 65536)
        for body in (b"<html><body>Sign in to the hotel Wi-Fi</body></html", b"",
                     b"<BlockList><UncommittedBlocks><Block><Name>a</Name><Size>x</Size></Block>"
                     b"</UncommittedBlocks></BlockList>",
                     # (int() read another script's digits as the size of a block the service holds)
                     "<BlockList><UncommittedBlocks><Block><Name>a</Name><Size>\u0665</Size></Block>"
                     "</UncommittedBlocks></BlockList>".encode()):
            answer.body = body
            failure = self.failureResultOf(blob.staged_blocks("/var/log/a.log"), TransferFailed)
            self.assertTrue(failure.value.retryable)
            self.assertTrue(failure.getErrorMessage().startswith("GET acct.blob: the block list is not Azure's ("),
                            failure.getErrorMessage())
        answer.body = (b"\xef\xbb\xbf<BlockList><UncommittedBlocks><Block><Name>a</Name><Size>5</Size></Block>"
                       b"</UncommittedBlocks></BlockList>")
        self.assertEqual(self.successResultOf(blob.staged_blocks("/var/log/a.log")), {"a": 5})

    def test_refusals(self) -> None:
        """Missing options, plain http, credentials mode and unknown providers are named."""
        cases = [({}, "'https.url' missing"), ({"https.url": "http://h/x"}, "allow_http is off"),
                 ({"https.url": "https://h", "https.method": "GET"}, "unsupported HTTP method: GET"),
                 ({"storage.provider": "aws", "aws.access.key.id": "k"}, "'aws.s3.bucket' missing"),
                 ({"storage.provider": "aws", "aws.s3.bucket": "b", "aws.access.key.id": "k", "aws.region": "r"},
                  "'aws.secret.access.key' missing"),
                 ({"storage.provider": "azure"}, "'azure.storage.endpoint' missing"),
                 ({"storage.provider": "ftp"}, "unknown storage provider 'ftp'")]
        for options, message in cases:
            error = self.assertRaises(InvalidRequest, self.make, options)
            self.assertIn(message, str(error))

    def test_a_header_no_request_can_carry_is_refused(self) -> None:
        """A cloud's ``https.header.<Name>`` whose name is no HTTP token (``X Token``,
        ``X-Städt``) was taken, and the upload then FAILED with the HTTP client's
        ``InvalidHeaderName: b'X Token'`` and a traceback in the log; one whose value is not
        ASCII (``Zürich``) went as UTF-8, which a server reads as Latin-1 (``ZÃ¼rich``). The
        ``start`` is refused (its 500, uploads.md) naming the option and why, the value
        itself left out (it may be a token); the presigned S3 form checks them too."""
        said = "is no HTTP header name: a name is one or more letters, digits and !#$%&'*+-.^_`|~"
        for name in ("X Token", "X:Token", "X-St\u00e4dt", ""):
            for provider in ("generic", "aws"):
                error = self.assertRaises(InvalidRequest, self.make, {
                    "storage.provider": provider, "https.url": "https://h/x", f"https.header.{name}": "abc"})
                self.assertTrue(str(error).startswith(f"{f'https.header.{name}'!r}: {said}"), str(error))
        error = self.assertRaises(InvalidRequest, self.make,
                                  {"https.url": "https://h/x", "https.header.X-Site": "Z\u00fcrich SECRET"})
        self.assertEqual(str(error), "'https.header.X-Site': holds '\u00fc', which is not ASCII: an HTTP header"
                                     " value is ASCII (a server reads other bytes as Latin-1, where UTF-8 arrives"
                                     " garbled); encode it as the server expects (percent-encoding, RFC 8187)")
        self.assertEqual(self.make({"https.url": "https://h/x", "https.header.X-A_b~1": "Bearer a\tb !~"}).headers,
                         {"X-A_b~1": "Bearer a\tb !~"})

    def test_every_missing_option_is_named_at_once(self) -> None:
        """The credentials mode without any option named only ``aws.s3.bucket`` (the first,
        in Kanto's order): the cloud fixed it and was refused again for the next one, three
        round trips for one mistake. Every missing or empty one is named, the first in Kanto's
        words; Azure's the same."""
        for options, message in (
                ({"storage.provider": "aws"}, "required parameter 'aws.s3.bucket' missing or empty; also missing or"
                 " empty: 'aws.access.key.id', 'aws.region', 'aws.secret.access.key'"),
                ({"storage.provider": "aws", "aws.access.key.id": "k", "aws.region": ""},
                 "required parameter 'aws.s3.bucket' missing or empty; also missing or empty: 'aws.region',"
                 " 'aws.secret.access.key'"),
                ({"storage.provider": "azure", "azure.blob.container": "c"},
                 "required parameter 'azure.storage.endpoint' missing or empty; also missing or empty:"
                 " 'azure.shared.access.signature'")):
            error = self.assertRaises(InvalidRequest, self.make, options)
            self.assertEqual(str(error), message)

    def test_a_url_without_a_usable_host_is_refused_at_start(self) -> None:
        """A URL with no host, a bad port or an unparsable host is an unusable provider (the
        start's 500): it was taken, then the transfer crashed and the upload stayed UPLOADING."""
        for url in ("https:///x", "https://:443/x", "https://h:99999/x", "https://[::1/x", "https://exa mple.com/x"):
            for options in ({"https.url": url}, {"storage.provider": "aws", "https.url": url},
                            {"storage.provider": "azure", "azure.storage.endpoint": url, "azure.blob.container": "c",
                             "azure.shared.access.signature": "sig=x"}):
                error = self.assertRaises(InvalidRequest, self.make, options)
                self.assertIn("not a usable URL", str(error))
        self.assertIsInstance(self.make({"https.url": "https://bücher.example/x"}), GenericHTTP)

    def test_an_ipv6_address_is_a_usable_host(self) -> None:
        """A URL with an IPv6 address in brackets is taken by every provider, as the HTTP client
        sends to it: it was refused, 'Codepoint U+003A at position 1 of '::1' not allowed' (IDNA
        reading the address as a name). One that is no address stays refused."""
        for url in ("http://[::1]:8080/up/a.txt", "https://[fd00::1]/x?sig=1"):
            for options in ({"https.url": url}, {"storage.provider": "aws", "https.url": url},
                            {"storage.provider": "azure", "azure.storage.endpoint": url, "azure.blob.container": "c",
                             "azure.shared.access.signature": "sig=x"}):
                self.make(options, allow_http=True)  # (raised InvalidRequest)
        error = self.assertRaises(InvalidRequest, self.make, {"https.url": "https://[::zz]/x"})
        self.assertIn("not a usable URL", str(error))


class FakeResponse:
    def __init__(self, headers: dict[bytes, list[bytes]], phrase: bytes = b"Forbidden", code: int = 403) -> None:
        from twisted.web.http_headers import Headers
        self.headers = Headers(headers)
        self.phrase = phrase
        self.code = code


class ReasonTests(SynchronousTestCase):
    """A refusal reads as the provider's code and message."""

    def test_reasons(self) -> None:
        xml = b'<?xml version="1.0"?><Error><Code>BadDigest</Code><Message>no match\nmore</Message></Error>'
        self.assertEqual(provider_reason(FakeResponse({}), xml), "BadDigest: no match")
        self.assertEqual(provider_reason(FakeResponse({b"x-ms-error-code": [b"AuthorizationFailure"]}), b""),
                         "AuthorizationFailure")
        self.assertEqual(provider_reason(FakeResponse({}), b""), "Forbidden")

    def test_an_error_with_a_blank_message_is_its_code(self) -> None:
        """An XML error whose Message is blank reads as its code; it raised IndexError, and the
        upload ended FAILED with 'IndexError: list index out of range' and a traceback."""
        for message in (b" ", b"\n", b""):
            xml = b"<Error><Code>AccessDenied</Code><Message>" + message + b"</Message></Error>"
            self.assertEqual(provider_reason(FakeResponse({}), xml), "AccessDenied")

    def test_an_html_page_is_told_by_its_title(self) -> None:
        """A proxy's HTML 502 page in front of a storage is told by its title: its first 200
        characters, line breaks and markup included, went into the upload's status and log line."""
        self.assertEqual(provider_reason(FakeResponse({}, b"Bad Gateway", 502), NGINX_502), "Bad Gateway")

    def test_words_come_on_one_line(self) -> None:
        """A text body's and an XML error's words come on one line, control characters escaped."""
        self.assertEqual(provider_reason(FakeResponse({}), b"quota\r\nexceeded\x1b[0m"), "quota exceeded\\x1b[0m")
        self.assertEqual(provider_reason(FakeResponse({}), b"<Error><Code>Slow\nDown</Code><Message>Please\treduce"
                                         b"</Message></Error>"), "Slow Down: Please reduce")
        self.assertEqual(provider_reason(FakeResponse({b"x-ms-error-code": [b"Server\x1bBusy"]}), b""),
                         "Server\\x1bBusy")


class DiagnosticsTests(SynchronousTestCase):
    """The bundle holds the redacted config, snapshots and the apps' log tails."""

    def test_bundle(self) -> None:
        state = Path(self.mktemp())
        (state / "logs" / "apps").mkdir(parents=True)
        (state / "logs" / "apps" / "sensor.log").write_bytes(b"x" * 100 + b"tail")
        config = {"links": {"cloud": {"password": "hunter2", "endpoint": "tcp:h"}}}
        bundle = DiagnosticsBundle(state, config, {"links": lambda: {"cloud": {"sent": 3}}, "broken": lambda: 1 / 0},
                                   ("logs/apps/*.log*",), lambda f, *a: maybeDeferred(f, *a), max_log_bytes=4)
        path = self.successResultOf(bundle.build(state / "b.tar.gz"))
        with tarfile.open(path) as tar:
            names = sorted(tar.getnames())
            self.assertEqual(names, ["broken.json", "config.json", "links.json", "logs/logs_apps_sensor.log"])
            config_doc = json.load(tar.extractfile("config.json"))  # type: ignore[arg-type]
            self.assertEqual(config_doc["links"]["cloud"], {"password": "<redacted>", "endpoint": "tcp:h"})
            self.assertEqual(tar.extractfile("logs/logs_apps_sensor.log").read(), b"tail")  # type: ignore[union-attr]
            self.assertIn("ZeroDivisionError", json.load(tar.extractfile("broken.json"))["error"])  # type: ignore[arg-type]

    def test_a_bundle_the_disk_refuses_leaves_no_partial_file(self) -> None:
        """A bundle whose write fails (a full disk) fails its trigger and leaves nothing under
        uploads/bundles/: its half-written temp file was left there for good, one more with
        every trigger, on the disk that was full."""
        state = Path(self.mktemp())
        (state / "logs" / "apps").mkdir(parents=True)
        (state / "logs" / "apps" / "sensor.log").write_bytes(b"x" * 100)
        addfile = tarfile.TarFile.addfile

        def full(tar: tarfile.TarFile, info: tarfile.TarInfo, *args: Any, **kwargs: Any) -> None:
            if info.name.startswith("logs/"):
                raise OSError(28, "No space left on device")
            addfile(tar, info, *args, **kwargs)
        self.patch(tarfile.TarFile, "addfile", full)
        bundle = DiagnosticsBundle(state, {}, {}, ("logs/apps/*.log",), lambda f, *a: maybeDeferred(f, *a))
        failure = self.failureResultOf(bundle.build(state / "uploads" / "bundles" / "b.tar.gz"), OSError)
        self.assertIn("No space left", failure.getErrorMessage())
        self.assertEqual(list((state / "uploads" / "bundles").iterdir()), [])

    def test_the_bundle_is_on_disk_before_it_is_named(self) -> None:
        """An upload's record names the bundle, and a restart sends it again from the disk: its
        content is fsynced before the rename and the rename after it (the project's atomic
        writer). It was renamed unsynced: a power cut could leave an empty or partial bundle
        under its name, which the resumed upload would have sent as the bundle."""
        state = Path(self.mktemp())
        bundles = state / "uploads" / "bundles"
        synced: list[str] = []
        real_fsync = os.fsync

        def fsync(fd: int) -> None:
            synced.append(os.readlink(f"/proc/self/fd/{fd}"))
            real_fsync(fd)

        self.patch(os, "fsync", fsync)
        bundle = DiagnosticsBundle(state, {"a": 1}, {}, (), lambda f, *a: maybeDeferred(f, *a))
        path = self.successResultOf(bundle.build(bundles / "b.tar.gz"))
        # (first the parents of the directories it made: filelayer.makedirs_durably)
        self.assertEqual(synced[-2:], [str((bundles / ".b.tar.gz.tmp").absolute()), str(bundles.absolute())])
        with tarfile.open(path) as tar:
            self.assertEqual(json.load(tar.extractfile("config.json")), {"a": 1})  # type: ignore[arg-type]

    def test_the_bundle_is_readable_by_the_gateway_only(self) -> None:
        """The bundle holds the configuration and the apps' logs: it is written 0600 whatever
        the umask, even over a temp file a crash left behind; it was 0644, readable by every
        user of the gateway."""
        state = Path(self.mktemp())
        bundles = state / "uploads" / "bundles"
        bundles.mkdir(parents=True)
        (bundles / ".b.tar.gz.tmp").write_bytes(b"left by a crash")
        (bundles / ".b.tar.gz.tmp").chmod(0o666)
        previous = os.umask(0o022)
        self.addCleanup(os.umask, previous)
        bundle = DiagnosticsBundle(state, {}, {}, (), lambda f, *a: maybeDeferred(f, *a))
        path = self.successResultOf(bundle.build(bundles / "b.tar.gz"))
        self.assertEqual(stat.S_IMODE(path.stat().st_mode), 0o600)
        with tarfile.open(path) as tar:
            self.assertEqual(tar.getnames(), ["config.json"])

    def test_bundle_redacts_secrets_of_the_real_configuration(self) -> None:
        """Secrets whose key is not spelled password/token/key: a json link's Authorization
        header, the CIKs ingest accepts, an app's DB_PASS."""
        cik = "5ec7e7" + "0" * 34  # (a CIK is 40 hex characters)
        path = Path(self.mktemp())
        path.write_text("http_links:\n  links:\n    cloud:\n      mode: json\n      url: https://c.example/in\n"
                        "      headers: {Authorization: Bearer s3cr3t-1, X-Trace: 'on'}\n"
                        f"ingest:\n  ciks: ['{cik}']\n"
                        "apps:\n  programs:\n    db:\n      command: /bin/true\n"
                        "      environment: {DB_PASS: s3cr3t-3, DB_HOST: db.local}\n")
        state = Path(self.mktemp())
        bundle = DiagnosticsBundle(state, config.load(path), {}, (), lambda f, *a: maybeDeferred(f, *a))
        with tarfile.open(self.successResultOf(bundle.build(state / "b.tar.gz"))) as tar:
            text = tar.extractfile("config.json").read().decode()  # type: ignore[union-attr]
        self.assertNotIn("s3cr3t", text)
        self.assertNotIn(cik, text)
        document = json.loads(text)
        self.assertEqual(document["http_links"]["links"]["cloud"]["headers"],
                         {"Authorization": "<redacted>", "X-Trace": "on"})
        self.assertEqual(document["apps"]["programs"]["db"]["environment"]["DB_HOST"], "db.local")

    def test_redact(self) -> None:
        self.assertEqual(redact({"key_file": "/k.pem", "api_token": "", "n": [{"secret": 1}]}),
                         {"key_file": "<redacted>", "api_token": "", "n": [{"secret": "<redacted>"}]})


class FakeBus:
    def __init__(self) -> None:
        self.subscriptions: dict[str, Any] = {}
        self.published: list[tuple[str, bytes]] = []

    def subscribe(self, topic_filter: str, callback: Any) -> Any:
        self.subscriptions[topic_filter] = callback
        return lambda: self.subscriptions.pop(topic_filter)

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False, reserved: bool = False) -> Any:
        self.published.append((topic, payload))
        return succeed(None)


class FakeHandler:
    def __init__(self) -> None:
        self.calls: list[tuple[str, bytes]] = []
        self.pending: list[Deferred[tuple[int, dict[str, Any]]]] = []

    def handle(self, operation: str, payload: bytes) -> Deferred[tuple[int, dict[str, Any]]]:
        self.calls.append((operation, payload))
        if operation == "start":  # answered later, as a real start is once its record is on disk
            d: Deferred[tuple[int, dict[str, Any]]] = Deferred()
            self.pending.append(d)
            return d
        return succeed((404, {"status": 404}) if operation == "cancel" else (204, {}))


class CommandTests(SynchronousTestCase):
    """Cloud commands upload.<operation> (through the one command dispatcher) and local topics
    reach the service and are answered."""

    def test_local_topics(self) -> None:
        """Each operation's local topic is answered on .../<operation>/response; no cloud
        command topic is subscribed (the dispatcher has them)."""
        from gateway.broker.bus import BusMessage
        bus, handler = FakeBus(), FakeHandler()
        commands = UploadCommands(handler, bus, Clock())
        commands.startService()
        self.assertEqual(sorted(bus.subscriptions), sorted(f"edge/gateway/uploads/{op}" for op in
                                                           ("trigger", "start", "cancel", "activate", "deactivate")))
        bus.subscriptions["edge/gateway/uploads/trigger"](BusMessage("edge/gateway/uploads/trigger", b"{}", 0, False))
        self.assertEqual(bus.published[-1], ("edge/gateway/uploads/trigger/response", b'{"status": 204}'))
        commands.stopService()
        self.assertEqual(bus.subscriptions, {})

    def test_an_answer_the_bus_refuses_is_a_throttled_warning(self) -> None:
        """An answer on a local topic the bus refuses (the broker stopping, a journal stream a
        route takes it to being full) is a warning without a traceback, the first, then one
        line per 10 minutes with the count; it failed the bus subscriber, a critical
        ``bus subscriber ... failed`` traceback at each message."""
        from twisted.internet.defer import fail
        from twisted.logger import capturedLogs, formatEvent
        from gateway.broker.bus import BusMessage
        from gateway.errors import BrokerError
        bus, handler, clock = FakeBus(), FakeHandler(), Clock()
        bus.publish = lambda *args: fail(BrokerError("the local broker is not running"))  # type: ignore[method-assign]
        commands = UploadCommands(handler, bus, clock)
        commands.startService()
        trigger = bus.subscriptions["edge/gateway/uploads/trigger"]
        with capturedLogs() as events:
            for _ in range(3):
                self.assertIsNone(self.successResultOf(trigger(BusMessage("edge/gateway/uploads/trigger", b"{}",
                                                                          0, False))))
                clock.advance(60)
            clock.advance(600)
            self.successResultOf(trigger(BusMessage("edge/gateway/uploads/trigger", b"{}", 0, False)))
        lines = [formatEvent(event) for event in events]
        self.assertEqual(len(lines), 2)
        self.assertTrue(lines[0].startswith("answer on edge/gateway/uploads/trigger/response not published: the"
                                            " local broker is not running (logged at most once"), lines[0])
        self.assertIn("(3 not published since", lines[1])
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_cloud_commands_through_the_dispatcher(self) -> None:
        """The five upload.<operation> names are dispatcher handlers: the raw body reaches the
        service and its (status, body) is the reply, also when it fires later."""
        from gateway.broker.bus import BusMessage
        self.assertEqual(UPLOAD_COMMANDS, ("upload.trigger", "upload.start", "upload.cancel",
                                           "upload.activate", "upload.deactivate"))
        bus, handler = FakeBus(), FakeHandler()
        handlers = command_handlers(handler)
        self.assertEqual(sorted(handlers), sorted(UPLOAD_COMMANDS))
        dispatcher = CommandDispatcher(bus, "gw", handlers, Clock())
        dispatcher.startService()
        [(topic_filter, deliver)] = bus.subscriptions.items()
        self.assertEqual(topic_filter, "command//gw/req/+/+/#")
        deliver(BusMessage("command//gw/req/r-1/upload.cancel", b'{"correlationId": "x"}', 1, False))
        self.assertEqual(handler.calls, [("cancel", b'{"correlationId": "x"}')])
        self.assertEqual(bus.published[-1], ("command//gw/res/r-1/404", b'{"status": 404}'))
        envelope = b'{"topic": "t", "path": "/features/AutoUploadable/inbox/messages/start", "value": {}}'
        deliver(BusMessage("command//gw/req/r-2/upload.start", envelope, 1, False))
        self.assertEqual(handler.calls[-1], ("start", envelope))  # the service reads the envelope itself
        self.assertEqual(len(bus.published), 1)  # not answered before the service answers
        handler.pending[0].callback((204, {}))
        self.assertEqual(bus.published[-1], ("command//gw/res/r-2/204", b"{}"))
        deliver(BusMessage("command//gw/req/r-3/upload.nope", b"{}", 1, False))
        self.assertEqual(bus.published[-1][0], "command//gw/res/r-3/404")
        dispatcher.stopService()


class PausingConsumer:
    """Pauses its producer after every write, as a full socket buffer does; the test resumes it."""

    def __init__(self) -> None:
        self.data: list[bytes] = []
        self.producer: Any = None

    def write(self, chunk: bytes) -> None:
        self.data.append(chunk)
        self.producer.pauseProducing()


class FileBodyTests(TestCase):
    """The body streams a byte range from a reader thread, honours pauses, hashes what it sent."""

    timeout = 30

    @inlineCallbacks
    def produce(self, path: Path, offset: int, length: int, chunk: int) -> Any:
        from twisted.internet import reactor
        from twisted.internet.threads import deferToThread

        from gateway.uploads.filebody import HashingFileBody
        body = HashingFileBody(str(path), deferToThread, reactor.callFromThread, offset, length, chunk, ahead=2)
        consumer = PausingConsumer()
        consumer.producer = body
        done = body.startProducing(consumer)
        writes_while_paused = []
        while not done.called:
            seen = len(consumer.data)
            yield deferLater(reactor, 0.01, lambda: None)
            writes_while_paused.append(len(consumer.data) - seen)
            body.resumeProducing()
        yield done
        return body, consumer, writes_while_paused

    @inlineCallbacks
    def test_range_pauses_and_digests(self) -> Any:
        path = Path(self.mktemp())
        data = bytes(range(256)) * 40
        path.write_bytes(data)
        body, consumer, writes_while_paused = yield self.produce(path, 1000, 5000, 512)
        self.assertEqual(b"".join(consumer.data), data[1000:6000])
        self.assertLessEqual(max(writes_while_paused), 1)  # one write per resume: pauses are honoured
        self.assertEqual(body.digests().sha256, hashlib.sha256(data[1000:6000]).hexdigest())
        # MD5 is hashed by the side thread, and is complete once the body's Deferred fired
        self.assertEqual(body.digests().md5, base64.b64encode(hashlib.md5(data[1000:6000]).digest()).decode())
        self.assertEqual((yield body.when_hashed()).md5, body.digests().md5)

    @inlineCallbacks
    def test_a_large_chunk_goes_a_slice_at_a_time(self) -> Any:
        """A 1 MiB chunk was handed to the transport in one write: the transport paused the
        body until all of it had gone, and the upload's idle watchdog saw no byte move for
        that long (1 MiB over a 20 kbit/s link: 7 minutes, past the 120 s idle_timeout: every
        attempt was aborted, and the upload FAILED). Each write is now at most 64 KiB, each
        told to on_bytes, and a pause after any of them is honoured."""
        slice_ = 1 << 16  # (filebody.WRITE_SLICE: what Twisted's transports buffer before they pause)
        path = Path(self.mktemp())
        data = os.urandom(3 * slice_ + 1000)
        path.write_bytes(data)
        body, consumer, writes_while_paused = yield self.produce(path, 0, len(data), 1 << 20)
        self.assertEqual(b"".join(consumer.data), data)
        self.assertEqual([len(d) for d in consumer.data], [slice_] * 3 + [1000])
        self.assertLessEqual(max(writes_while_paused), 1)
        self.assertEqual(body.digests().sha256, hashlib.sha256(data).hexdigest())

    @inlineCallbacks
    def test_a_file_that_shrinks_fails_the_body(self) -> Any:
        path = Path(self.mktemp())
        path.write_bytes(b"x" * 100)
        try:
            yield self.produce(path, 0, 200, 64)
        except OSError as error:
            self.assertIn("changed while being sent", str(error))
        else:
            self.fail("no error")


class WiringTests(SynchronousTestCase):
    """The service as the gateway builds it from its configuration."""

    def request_topic(self, yaml_text: str) -> str:
        """The topic of the outbox ``request`` envelope the built service would send."""
        from gateway.uploads.messages import outbox_request
        from gateway.uploads.wiring import build_uploads
        path = Path(self.mktemp())
        path.write_text(f"gateway:\n  state_dir: {self.mktemp()}\n" + yaml_text)
        service = build_uploads(config.load(path), Clock(), lambda *args: None, {})
        envelope = outbox_request(service.device_id, service.tenant_id, "AutoUploadable", "t#1", {})
        return str(envelope["topic"])

    def test_request_topic_names_the_gateways_thing(self) -> None:
        """The ``request`` envelope's topic is ``<namespace>/<name>/things/live/messages/request``
        of the gateway's thing id (docs/uploads.md: ``org.example/gateway/...``), by default
        ``<tenant_id>:<device_id>`` as ``edge/thing/response`` answers; it had an empty
        namespace (``/gateway/things/...``), the device id alone."""
        self.assertEqual(self.request_topic("  device_id: gw-7\n  tenant_id: acme\n"),
                         "acme/gw-7/things/live/messages/request")
        self.assertEqual(self.request_topic("twin:\n  thing_id: org.example:gateway\n"),
                         "org.example/gateway/things/live/messages/request")


class IdleImportTests(SynchronousTestCase):
    """An idle gateway does without treq and twisted.web.client (bench/footprint.py)."""

    def test_building_the_service_imports_no_http_client(self) -> None:
        """Importing the upload modules and building the service with its client imports
        neither treq nor twisted.web.client; the first request does (in a fresh interpreter)."""
        import subprocess
        import sys
        script = (
            "import sys\n"
            "from pathlib import Path\n"
            "from twisted.internet.task import Clock\n"
            "from gateway.config import Config\n"
            "from gateway.uploads.wiring import build_uploads\n"
            "import gateway.uploads.azure, gateway.uploads.commands\n"
            "service = build_uploads(Config(Path('gateway.yaml')), Clock(), lambda *a: None, {})\n"
            "idle = sorted(m for m in ('treq', 'twisted.web.client') if m in sys.modules)\n"
            "service.http.request\n"
            "used = sorted(m for m in ('treq', 'twisted.web.client') if m in sys.modules)\n"
            "print(idle, used)\n")
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
        self.assertEqual(out.stdout.strip(), "[] ['treq', 'twisted.web.client']")


class ThreadTests(TestCase):
    """The service's own blocking threads."""

    timeout = 10

    @inlineCallbacks
    def test_pool_threads_are_daemons(self) -> Any:
        """The uploads pool's threads are daemon threads (as the updates pool's): a stopService
        that raised before the pool was stopped cannot hang the interpreter's exit."""
        import threading

        from twisted.internet import reactor

        from gateway.uploads.service import UploadService
        from gateway.uploads.settings import UploadsSettings
        service = UploadService(UploadsSettings(), Path(self.mktemp()), reactor, object(),
                                lambda *args: None, ("t", "d"))
        yield service.startService()
        self.addCleanup(service.stopService)
        daemon = yield service.run_blocking(lambda: threading.current_thread().daemon)
        self.assertTrue(daemon)


class S3SizeLimitTests(SynchronousTestCase):
    """A file over S3's 5 GiB for one PUT is refused before it is hashed: hashing it would
    take minutes of a gateway's CPU for a PUT that cannot be sent."""

    def test_a_file_over_5_gib_fails_without_being_hashed(self) -> None:
        from twisted.internet.task import Clock

        from gateway.links.sigv4 import Credentials
        from gateway.uploads.s3 import MAX_SINGLE_PUT
        from gateway.uploads.transfer import FileTransfer

        path = Path(self.mktemp())
        with open(path, "wb") as f:
            f.truncate(MAX_SINGLE_PUT + 1)  # sparse: no 5 GiB written
        ran: list[str] = []

        def run_blocking(f: Any, *args: Any, **kwargs: Any) -> Any:
            ran.append(f.__name__)
            return maybeDeferred(f, *args, **kwargs)

        provider = S3WithCredentials(object(), Credentials("AKID", "s", None), "eu-west-1", "logs", None)
        transfer = FileTransfer(str(path), "u#1", provider, Clock(), run_blocking, lambda n: 1.0, 5, 2**20, 120,
                                lambda identity: None, lambda count: None)
        failure = self.failureResultOf(transfer.run(), InvalidRequest)
        self.assertEqual(str(failure.value), f"{MAX_SINGLE_PUT + 1} bytes is over S3's 5 GiB for one PUT")
        self.assertNotIn("digest_file", ran)
        self.assertEqual(transfer.attempts, 1)


class ClockNotSetTests(SynchronousTestCase):
    """An upload resumed at boot on a gateway without a real-time clock (1970, before NTP):
    the storage's certificate is not valid yet by the clock, which no attempt cures."""

    def test_a_clock_not_set_yet_counts_no_attempt(self) -> None:
        """Those failures count against no max_attempts (the upload failed after them); the
        retries still back off, and once the clock is set the file goes. An expired
        certificate still counts."""
        from twisted.python.failure import Failure
        from twisted.web.client import ResponseNeverReceived

        from gateway.certwindow import CertificateTimeError
        from gateway.uploads.errors import TransferFailed
        from gateway.uploads.transfer import FileTransfer
        from tests.uploads.fakes import FakeProvider
        from tests.uploads.test_retry import ThreadlessClock

        path = Path(self.mktemp())
        path.write_bytes(b"log lines")
        delays: list[int] = []

        def transfer(refused: CertificateTimeError) -> Any:
            del delays[:]
            clock, sends = ThreadlessClock(), []  # type: ignore[var-annotated]
            sending = FileTransfer(str(path), "u#1", FakeProvider(sends, {}), clock,
                                   lambda f, *a, **k: maybeDeferred(f, *a, **k),
                                   lambda n: delays.append(n) or 1.0, 3, 2**20, 120, lambda identity: None,
                                   lambda count: None)
            d = sending.run()
            for _ in range(6):
                if d.called:
                    break
                error = TransferFailed("PUT store.example: the TLS connection failed: ...")
                error.__cause__ = ResponseNeverReceived([Failure(refused)])  # (as send_request raises it)
                sends[-1][2].errback(error)
                clock.advance(1.0)
            if not d.called:
                sends[-1][2].callback(None)
            return d

        self.successResultOf(transfer(CertificateTimeError(60.0, 1798761600.0, 1830297600.0, "CN=store", 0)))
        self.assertEqual(delays, [1, 2, 3, 4, 5, 6])
        self.failureResultOf(transfer(CertificateTimeError(2e9, 1e9, 1.5e9, "CN=store", 0)), TransferFailed)
        self.assertEqual(delays, [1, 2])


class NetworkErrorTests(SynchronousTestCase):
    """A request that never got an answer is told in a sentence (the server, then what went
    wrong), never a ``Failure`` repr: it is the FAILED message a user reads."""

    def failed(self, error: Exception) -> str:
        from twisted.internet.defer import fail

        from gateway.uploads.errors import TransferFailed
        from gateway.uploads.providers import send_request

        class Refusing:
            def request(self, *args: Any, **kwargs: Any) -> Any:
                return fail(error)

        failure = self.failureResultOf(send_request(Refusing(), "PUT", "https://store.example:8443/x", {}, b""),
                                       TransferFailed)
        return str(failure.value)

    def test_messages(self) -> None:
        from OpenSSL import SSL
        from twisted.internet import error as net
        from twisted.python.failure import Failure
        from twisted.web._newclient import RequestTransmissionFailed

        self.assertEqual(self.failed(net.ConnectionRefusedError("Connection refused")),
                         "PUT store.example:8443: the server refused the connection (is it running, is the port right?)")
        self.assertEqual(self.failed(net.DNSLookupError("no results")),
                         "PUT store.example:8443: the server's name could not be resolved "
                         "(check the URL and the gateway's DNS)")
        tls = RequestTransmissionFailed([Failure(SSL.Error([("SSL routines", "", "certificate verify failed")]))])
        message = self.failed(tls)
        self.assertTrue(message.startswith("PUT store.example:8443: the TLS connection failed ("), message)
        self.assertIn("certificate verify failed", message)
        self.assertNotIn("Failure", message)

    def test_every_connection_error(self) -> None:
        """A connection error of any kind is a transfer failure, retried, not an unexpected
        error that ends the upload: no route to the server, a TCP timeout, as a refusal."""
        from twisted.internet import error as net

        self.assertEqual(self.failed(net.NoRouteError()),
                         "PUT store.example:8443: there is no route to the server (is the network up?)")
        self.assertEqual(self.failed(net.TCPTimedOutError()), "PUT store.example:8443: the connection timed out")

    def test_proxy_refusal(self) -> None:
        """A proxy (``gateway.proxy``) that gave no tunnel fails the transfer with its line,
        retried as any connection failure (not an unexpected error that ends the upload)."""
        from gateway.httpproxy import ProxyError

        self.assertEqual(self.failed(ProxyError("the proxy http://proxy:3128 refused the tunnel to"
                                                " store.example:8443: HTTP 403: Forbidden")),
                         "PUT store.example:8443: the proxy http://proxy:3128 refused the tunnel to"
                         " store.example:8443: HTTP 403: Forbidden")
