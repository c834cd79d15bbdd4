"""The downloader against in-memory servers through StubTreq: every response case, limits."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from treq.testing import StubTreq
from twisted.internet.defer import CancelledError, Deferred, fail, maybeDeferred
from twisted.logger import formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from gateway.updates.downloader import Download, Downloader, DownloadProgress, url_origin
from gateway.updates.errors import (
    AttemptsExhausted,
    ContentRangeMismatch,
    DeadlineExceeded,
    DigestMismatch,
    HTTPStatusError,
    InsecureURL,
    SizeExceeded,
    SizeMismatch,
    TooManyRedirects,
)
from gateway.updates.settings import DownloadSettings
from tests.heldthreads import HeldThreads
from tests.logevents import capture_log_events
from tests.steppingclock import SteppingClock
from tests.updates.resources import RangeFile, Scripted

URL = "https://updates.example/artifact.bin"
DATA = bytes(range(256)) * 400  # 102400 bytes


def run_inline(f: Any, *args: Any) -> Any:
    """The test double of a thread: runs the blocking call at once."""
    return maybeDeferred(f, *args)


class _Chunked(Resource):
    """Sends ``data`` in chunked encoding (no Content-Length)."""

    isLeaf = True

    def __init__(self, data: bytes) -> None:
        super().__init__()
        self.data = data

    def render_GET(self, request: Request) -> int:
        for i in range(0, len(self.data), 4096):
            request.write(self.data[i:i + 4096])
        request.finish()
        return NOT_DONE_YET


class OriginTests(SynchronousTestCase):
    """Origins compared as origins (the DDI token goes to its server's origin only)."""

    def test_origin(self) -> None:
        """Scheme and host in lower case, the default port written, an IPv6 host in brackets."""
        self.assertEqual(url_origin("HTTPS://DDI.Example/a"), ("https", "ddi.example:443"))
        self.assertEqual(url_origin("https://ddi.example:443/b"), url_origin("https://ddi.example/c"))
        self.assertEqual(url_origin("http://ddi.example/"), ("http", "ddi.example:80"))
        self.assertNotEqual(url_origin("https://ddi.example:8443/"), url_origin("https://ddi.example/"))
        self.assertEqual(url_origin("https://[::1]:8443/"), ("https", "[::1]:8443"))
        self.assertNotEqual(url_origin("https://user@cdn.example/"), url_origin("https://ddi.example/"))


class DownloaderTests(SynchronousTestCase):
    """Downloads over an in-memory HTTP server, driven by a fake clock."""

    def setUp(self) -> None:
        self.dir = Path(self.mktemp())
        self.dir.mkdir()
        self.clock = SteppingClock()
        self.delays: list[int] = []

    def make(self, resource: Resource, **settings: Any) -> Downloader:
        self.stub = StubTreq(resource)
        settings.setdefault("write_batch", 8192)
        settings.setdefault("checkpoint_bytes", 16384)

        def policy(attempt: int) -> float:
            self.delays.append(attempt)
            return 2.0

        return Downloader(self.stub, self.clock, DownloadSettings(**settings), run_inline, policy)

    def start(self, downloader: Downloader, **kwargs: Any) -> Download:
        kwargs.setdefault("digests", {"SHA256": hashlib.sha256(DATA).hexdigest()})
        download = downloader.download(kwargs.pop("url", URL), self.dir / "artifact.bin", **kwargs)
        self.stub.flush()
        return download

    def settle(self, download: Download, seconds: float = 2.0, rounds: int = 20) -> None:
        """Let retries happen: advance the clock and move bytes until the download ends."""
        for _ in range(rounds):
            if download.result.called:
                return
            self.clock.advance(seconds)
            self.stub.flush()

    def test_fresh_download_is_verified_and_moved(self) -> None:
        """A plain download ends with the verified file at its destination and no part left."""
        download = self.start(self.make(RangeFile(DATA)))
        path = self.successResultOf(download.result)
        self.assertEqual(path.read_bytes(), DATA)
        self.assertEqual(sorted(p.name for p in self.dir.iterdir()), ["artifact.bin"])

    def test_cut_connection_resumes_with_range_and_if_range(self) -> None:
        """After a cut the next attempt asks for the rest only, guarded by the ETag."""
        resource = RangeFile(DATA)
        resource.cuts = [30000, 20000]
        download = self.start(self.make(resource))
        self.settle(download)
        self.assertEqual(self.successResultOf(download.result).read_bytes(), DATA)
        self.assertEqual(resource.requests, [(None, None), ("bytes=30000-", '"v1"'), ("bytes=50000-", '"v1"')])
        self.assertEqual(resource.served, len(DATA))

    def test_restart_resumes_from_durable_part(self) -> None:
        """A new downloader (after a restart) re-hashes the durable part and asks for the rest."""
        resource = RangeFile(DATA)
        resource.cuts = [40000]
        first = self.start(self.make(resource, checkpoint_bytes=16384))
        first.cancel()
        self.failureResultOf(first.result, CancelledError)
        meta = json.loads((self.dir / "artifact.bin.part.json").read_text())
        self.assertEqual(meta["durable"], 40000)
        second = self.start(self.make(resource))
        self.assertEqual(self.successResultOf(second.result).read_bytes(), DATA)
        self.assertEqual(resource.requests[-1], ("bytes=40000-", '"v1"'))

    def test_power_cut_garbage_past_durable_point_is_dropped(self) -> None:
        """Bytes past the recorded durable point are cut off before resuming."""
        part = self.dir / "artifact.bin.part"
        part.write_bytes(DATA[:5000] + b"garbage")
        (self.dir / "artifact.bin.part.json").write_text(json.dumps(
            {"url": URL, "size": None, "digests": {"sha256": hashlib.sha256(DATA).hexdigest()},
             "etag": '"v1"', "last_modified": None, "durable": 5000}))
        resource = RangeFile(DATA)
        download = self.start(self.make(resource))
        self.assertEqual(self.successResultOf(download.result).read_bytes(), DATA)
        self.assertEqual(resource.requests, [("bytes=5000-", '"v1"')])

    def test_server_ignoring_range_restarts_cleanly(self) -> None:
        """A 200 answer to a Range request replaces the part from byte 0."""
        resource = RangeFile(DATA)
        resource.cuts = [30000]
        download = self.start(self.make(resource))
        resource.ignore_range = True
        self.settle(download)
        self.assertEqual(self.successResultOf(download.result).read_bytes(), DATA)

    def test_416_with_complete_part_verifies_it(self) -> None:
        """A part that already holds the whole file (crash before the rename) is verified, not refetched."""
        (self.dir / "artifact.bin.part").write_bytes(DATA)
        (self.dir / "artifact.bin.part.json").write_text(json.dumps(
            {"url": URL, "size": len(DATA), "digests": {"sha256": hashlib.sha256(DATA).hexdigest()},
             "etag": '"v1"', "last_modified": None, "durable": len(DATA)}))
        resource = RangeFile(DATA)
        download = self.start(self.make(resource), size=len(DATA))
        self.assertEqual(self.successResultOf(download.result).read_bytes(), DATA)
        self.assertEqual(resource.served, 0)

    def test_416_for_a_shorter_file_starts_over(self) -> None:
        """A 416 saying the file is now shorter than our part drops the part and fetches it whole."""
        resource = RangeFile(DATA)
        resource.cuts = [60000]
        download = self.start(self.make(resource), digests={})
        resource.data, resource.etag = DATA[:50000], '"v2"'
        resource.ignore_if_range = True
        self.settle(download)
        self.assertEqual(self.successResultOf(download.result).read_bytes(), DATA[:50000])
        self.assertEqual(resource.requests[1:], [("bytes=60000-", '"v1"'), (None, None)])

    def test_wrong_content_range_fails_without_writing(self) -> None:
        """A 206 for other bytes than asked is an error and nothing of it is written."""
        resource = RangeFile(DATA)
        resource.cuts = [1000]
        downloader = self.make(resource)
        download = self.start(downloader)
        liar = Scripted([(206, {"content-range": f"bytes 0-99/{len(DATA)}", "etag": '"v1"'}, DATA[:100])])
        self.stub = StubTreq(liar)
        downloader.http = self.stub
        self.settle(download)
        failure = self.failureResultOf(download.result, ContentRangeMismatch)
        self.assertIn("asked for bytes 1000-", str(failure.value))
        self.assertEqual((self.dir / "artifact.bin.part").read_bytes(), DATA[:1000])

    def test_content_range_is_ascii(self) -> None:
        """A Content-Range is ASCII digits and spaces (RFC 9110): digits of other scripts, which
        int() reads, and a no-break space (U+00A0, one byte in the header's Latin-1) were taken."""
        from gateway.updates.response import parse_content_range

        self.assertEqual(parse_content_range("bytes 0-99/100"), (0, 99, 100))
        for value in ("bytes \u0660-\u0669/\u0661\u0660", "bytes \uff10-\uff19/100", "bytes\xa00-99/100"):
            self.assertRaises(ValueError, parse_content_range, value)

    def test_changed_file_restarts_through_if_range(self) -> None:
        """When the file changes between attempts, If-Range brings the new file whole."""
        new = DATA[::-1]
        resource = RangeFile(DATA)
        resource.cuts = [30000]
        download = self.start(self.make(resource), digests={})
        resource.data, resource.etag = new, '"v2"'
        self.settle(download)
        self.assertEqual(self.successResultOf(download.result).read_bytes(), new)
        self.assertEqual(resource.requests[1], ("bytes=30000-", '"v1"'))

    def test_206_with_changed_etag_starts_over(self) -> None:
        """A server that ignores If-Range but shows a new ETag makes us drop the part and refetch."""
        resource = RangeFile(DATA)
        resource.cuts = [30000]
        downloader = self.make(resource)
        download = self.start(downloader, digests={})
        liar = Scripted([
            (206, {"content-range": f"bytes 30000-{len(DATA) - 1}/{len(DATA)}", "etag": '"v2"'}, DATA[30000:]),
            (200, {"etag": '"v2"'}, DATA),
        ])
        self.stub = StubTreq(liar)
        downloader.http = self.stub
        self.settle(download)
        self.assertEqual(self.successResultOf(download.result).read_bytes(), DATA)
        self.assertEqual([r["range"] for r in liar.requests], ["bytes=30000-", None])

    def test_redirects_are_followed_within_the_limit(self) -> None:
        """Relative redirects are followed; one too many is an error."""
        hop = (302, {"location": "/next"}, b"")
        ok = Scripted([hop, hop, (200, {}, DATA)])
        self.successResultOf(self.start(self.make(ok, max_redirects=2)).result)
        self.assertEqual([r["path"] for r in ok.requests], ["/artifact.bin", "/next", "/next"])
        (self.dir / "artifact.bin").unlink()
        loop = Scripted([hop])
        self.failureResultOf(self.start(self.make(loop, max_redirects=2)).result, TooManyRedirects)

    def test_the_token_goes_to_its_origin_only_not_where_it_redirects(self) -> None:
        """fleet.md: artifact downloads carry the DDI token to the server's own origin only; a
        redirect to a CDN gets no Authorization, and one back to the server gets it again."""
        hops = Scripted([(302, {"location": "https://cdn.example/blob"}, b""),
                         (302, {"location": "https://updates.example/again"}, b""), (200, {}, DATA)])
        downloader = self.make(hops)
        downloader.credentials[url_origin(URL)] = "TargetToken tok"
        self.successResultOf(self.start(downloader).result)
        self.assertEqual([(r["host"], r["path"], r["authorization"]) for r in hops.requests],
                         [("updates.example", "/artifact.bin", "TargetToken tok"), ("cdn.example", "/blob", None),
                          ("updates.example", "/again", "TargetToken tok")])

    def test_plain_http_refused_unless_allowed(self) -> None:
        """http:// URLs, and redirects to them, are refused unless allow_http is set."""
        plain = URL.replace("https", "http")
        self.failureResultOf(self.start(self.make(RangeFile(DATA)), url=plain).result, InsecureURL)
        downgrade = Scripted([(302, {"location": plain}, b"")])
        self.failureResultOf(self.start(self.make(downgrade)).result, InsecureURL)
        allowed = self.start(self.make(RangeFile(DATA), allow_http=True), url=plain)
        self.successResultOf(allowed.result)

    def test_a_refused_scheme_says_what_is_allowed(self) -> None:
        """An ``ftp://`` URL is refused saying what the settings allow: http and https with
        ``allow_http``, else https only; with ``allow_http`` on it said ``https only unless
        allow_http``, sending the operator to a setting already set."""
        url = URL.replace("https", "ftp")
        for allow_http, allowed in ((True, "http and https only"), (False, "https only unless allow_http")):
            failure = self.failureResultOf(self.start(self.make(RangeFile(DATA), allow_http=allow_http),
                                                      url=url).result, InsecureURL)
            self.assertEqual(str(failure.value), f"{url}: ftp scheme is not allowed ({allowed})")

    def test_a_url_with_user_information_is_refused_without_naming_it(self) -> None:
        """updates.md: a URL with a user name or password (a token, often), given or redirected
        to, is refused at once, before its request, and the error names the URL without them;
        it was handed to the HTTP client, which cannot use it, and every retry's log line and
        the operation's error quoted the user name (``invalid hostname: TOKEN:@host``)."""
        for url in ("https://TOKEN@updates.example/artifact.bin", "https://TOKEN:s3cret@updates.example/artifact.bin"):
            site = RangeFile(DATA)
            failure = self.failureResultOf(self.start(self.make(site), url=url).result, InsecureURL)
            self.assertEqual(str(failure.value), "https://updates.example/artifact.bin: a user name or password in"
                             " the URL is not supported (nothing was requested)")
        hop = Scripted([(302, {"location": "https://TOKEN@cdn.example/blob"}, b"")])
        failure = self.failureResultOf(self.start(self.make(hop)).result, InsecureURL)
        self.assertNotIn("TOKEN", str(failure.value))
        self.assertEqual(len(hop.requests), 1)

    def test_a_url_that_cannot_be_parsed_is_refused_without_its_password(self) -> None:
        """A URL urlsplit refuses (a host that NFKC normalization changes) is refused before its
        request, naming the URL and why without its user information: the operation crashed
        (a critical traceback) with ``netloc 'u:SECRET@...' contains invalid characters``."""
        site = RangeFile(DATA)
        url = "https://u:SECRET-pw@\u2100.example/artifact.bin?sig=SECRET-sig"
        failure = self.failureResultOf(self.start(self.make(site), url=url).result, InsecureURL)
        self.assertEqual(str(failure.value), "https://\u2100.example/artifact.bin: not a usable URL: netloc"
                         " '\u2100.example' contains invalid characters under NFKC normalization (nothing was requested)")

    def test_a_refusal_is_told_on_one_line(self) -> None:
        """A final status is told as ``HTTP <status>: <reason phrase>``, the phrase's control
        characters escaped: a server's phrase went raw into the log and the operation's
        message (an escape sequence for the terminal reading the log, say)."""
        class Refusing(Resource):
            isLeaf = True

            def render_GET(self, request: Any) -> bytes:
                request.setResponseCode(404, b"Not\x1b[2J Found")
                return b"<html><title>gone</title></html>"

        failure = self.failureResultOf(self.start(self.make(Refusing())).result, HTTPStatusError)
        self.assertEqual(str(failure.value), "https://updates.example/artifact.bin: HTTP 404: Not\\x1b[2J Found")

    def test_server_errors_retry_with_backoff_then_give_up(self) -> None:
        """5xx answers are retried per the policy; max_attempts failures without progress end it."""
        download = self.start(self.make(Scripted([(503, {}, b"busy")]), max_attempts=3))
        self.settle(download)
        failure = self.failureResultOf(download.result, AttemptsExhausted)
        self.assertIn("HTTP 503", str(failure.value))
        self.assertEqual(self.delays, [1, 2])

    def test_a_clock_not_set_yet_counts_no_attempt(self) -> None:
        """A download resumed at boot on a gateway without a real-time clock (1970, before
        NTP): the server's certificate is not valid yet by the clock, which no attempt can
        cure. Those failures count against no max_attempts (the download failed after them,
        the update with it); the retries still back off, and once the clock is set the
        download goes on. A certificate that has expired still counts."""
        from twisted.web.client import ResponseNeverReceived

        from gateway.certwindow import CertificateTimeError

        downloader = self.make(RangeFile(DATA), max_attempts=3)
        stub, refusals = self.stub, [CertificateTimeError(60.0, 1798761600.0, 1830297600.0, "CN=cdn", 0)] * 6

        class NotYetValid:
            def request(self, *args: Any, **kwargs: Any) -> Any:
                if refusals:
                    return fail(ResponseNeverReceived([Failure(refusals.pop())]))
                return stub.request(*args, **kwargs)

        downloader.http = NotYetValid()
        download = self.start(downloader)
        self.settle(download)
        self.assertEqual(self.successResultOf(download.result).read_bytes(), DATA)
        self.assertEqual(self.delays, [1, 2, 3, 4, 5, 6])
        refusals[:] = [CertificateTimeError(2e9, 1e9, 1.5e9, "CN=cdn", 0)] * 6
        self.delays.clear()
        (self.dir / "artifact.bin").unlink()
        download = self.start(downloader)
        self.settle(download)
        self.failureResultOf(download.result, AttemptsExhausted)
        self.assertEqual(self.delays, [1, 2])

    def test_an_error_or_redirect_body_that_does_not_end_is_not_read_for_ever(self) -> None:
        """The body of an answer the download does not want (a redirect's, a 503's) is read only
        up to 64 KiB and for idle_timeout; then its connection is closed. It was read to its end,
        however long it took: a server trickling it (or sending gigabytes) held a connection,
        and took the bandwidth, long after the download had ended."""
        requests: dict[bytes, Request] = {}
        lost: list[bytes] = []

        class Endless(Resource):
            isLeaf = True

            def render_GET(self, request: Request) -> int:
                requests[request.path] = request
                request.notifyFinish().addErrback(lambda _: lost.append(request.path))
                if request.path == b"/artifact.bin":
                    request.setResponseCode(302)
                    request.setHeader(b"location", b"/busy")
                else:
                    request.setResponseCode(503)
                request.setHeader(b"content-length", b"1000000000")
                request.write(b"x" * 10)
                return NOT_DONE_YET

        download = self.start(self.make(Endless(), max_attempts=1, idle_timeout=5.0))
        self.failureResultOf(download.result, AttemptsExhausted)
        self.assertEqual(lost, [])
        requests[b"/busy"].write(b"y" * 64 * 1024)  # past 64 KiB: closed at once
        self.stub.flush()
        self.assertEqual(lost, [b"/busy"])
        self.clock.advance(4.9)
        requests[b"/artifact.bin"].write(b"z")  # a trickle: still closed after idle_timeout
        self.stub.flush()
        self.clock.advance(0.1)
        self.stub.flush()
        self.assertEqual((lost, self.clock.getDelayedCalls()), ([b"/busy", b"/artifact.bin"], []))

    def test_a_stop_closes_the_body_of_a_redirect_still_being_dropped(self) -> None:
        """A stop ends the reading of a redirect's body too (one a server trickles): its
        connection is closed at once and no timer is left, as for the request under way."""
        lost: list[bytes] = []

        class Trickling(Resource):
            isLeaf = True

            def render_GET(self, request: Request) -> int:
                request.notifyFinish().addErrback(lambda _: lost.append(request.path))
                if request.path == b"/artifact.bin":
                    request.setResponseCode(302)
                    request.setHeader(b"location", b"/next")
                    request.setHeader(b"content-length", b"1000")
                    request.write(b"x" * 10)
                return NOT_DONE_YET  # /next: no answer yet

        download = self.start(self.make(Trickling(), idle_timeout=5.0))
        self.assertNoResult(download.result)
        download.cancel()
        self.stub.flush()
        self.failureResultOf(download.result, CancelledError)
        self.assertEqual((sorted(lost), self.clock.getDelayedCalls()), ([b"/artifact.bin", b"/next"], []))

    def test_a_presigned_url_is_named_without_its_query_or_credentials(self) -> None:
        """The log lines (resuming, retrying, downloaded), a cancel's and a failure's message
        (which the operation's status carries to the cloud) name the URL without its query,
        fragment (user information is refused: the test below): a presigned URL's signature was
        logged whole."""
        events = capture_log_events(self)
        secret = "https://updates.example/artifact.bin?X-Amz-Signature=SECRET3#SECRET4"
        resource = RangeFile(DATA)
        resource.cuts = [40000, 20000]
        first = self.start(self.make(resource), url=secret)
        first.cancel()
        canceled = self.failureResultOf(first.result, CancelledError).value
        second = self.start(self.make(resource), url=secret)
        self.settle(second)
        self.successResultOf(second.result).unlink()
        failed = self.start(self.make(Scripted([(404, {}, b"no")])), url=secret)
        error = self.failureResultOf(failed.result, HTTPStatusError).value
        lines = [formatEvent(event) for event in events]
        self.assertEqual({line.split(" ")[0] for line in lines}, {"resuming", "retrying", "downloaded"})
        for said in [*lines, str(canceled), str(error)]:
            self.assertIn("https://updates.example/artifact.bin", said)
            self.assertNotIn("SECRET", said)

    def test_client_error_is_not_retried(self) -> None:
        """A 404 fails at once."""
        download = self.start(self.make(Scripted([(404, {}, b"no")])))
        self.failureResultOf(download.result, HTTPStatusError)
        self.assertEqual(self.delays, [])

    def test_idle_timeout_aborts_the_attempt_and_retries(self) -> None:
        """A server that stops sending is dropped after idle_timeout and the next attempt completes."""
        resource = RangeFile(DATA)
        resource.stall = True
        download = self.start(self.make(resource, idle_timeout=5.0))
        resource.stall = False
        self.clock.advance(4)
        self.assertNoResult(download.result)
        self.settle(download, seconds=1.0)
        self.assertEqual(self.successResultOf(download.result).read_bytes(), DATA)
        self.assertEqual(len(resource.requests), 2)

    def test_idle_timeout_across_a_step_back_of_the_wall_clock(self) -> None:
        """NTP steps the clock back an hour while the server stalls: the attempt is still
        dropped after idle_timeout (not an hour later) and the next one completes."""
        resource = RangeFile(DATA)
        resource.stall = True
        download = self.start(self.make(resource, idle_timeout=5.0))
        resource.stall = False
        self.clock.advance(1)
        self.clock.step(-3600.0)
        self.clock.advance(3)
        self.assertNoResult(download.result)
        self.settle(download, seconds=1.0)
        self.assertEqual(self.successResultOf(download.result).read_bytes(), DATA)

    def test_deadline_ends_the_download(self) -> None:
        """Past the overall deadline the download fails, even while it keeps retrying."""
        download = self.start(self.make(Scripted([(503, {}, b"")]), deadline=5.0, max_attempts=100))
        self.settle(download)
        self.failureResultOf(download.result, DeadlineExceeded)

    def test_max_size_without_content_length(self) -> None:
        """A chunked body is stopped as soon as it passes max_size."""
        download = self.start(self.make(_Chunked(DATA), max_size=50000), digests={})
        failure = self.failureResultOf(download.result, SizeExceeded)
        self.assertIn("50000", str(failure.value))

    def test_content_length_over_max_size_fails_before_the_body(self) -> None:
        """An announced Content-Length past max_size fails at once."""
        download = self.start(self.make(RangeFile(DATA), max_size=1000))
        self.failureResultOf(download.result, SizeExceeded)

    def test_size_other_than_announced(self) -> None:
        """A server whose size differs from the announced one is refused."""
        download = self.start(self.make(RangeFile(DATA)), size=len(DATA) - 1)
        self.failureResultOf(download.result, SizeMismatch)

    def test_weaker_digests_are_checked_when_alone(self) -> None:
        """MD5 or SHA-1 alone is verified; a wrong one deletes the file and the part."""
        for name in ("MD5", "SHA1"):
            digest = hashlib.new(name.lower(), DATA).hexdigest()
            self.successResultOf(self.start(self.make(RangeFile(DATA)), digests={name: digest}).result)
            (self.dir / "artifact.bin").unlink()
        bad = self.start(self.make(RangeFile(DATA)), digests={"MD5": "0" * 32})
        failure = self.failureResultOf(bad.result, DigestMismatch)
        self.assertIn("md5 is", str(failure.value))
        self.assertEqual(list(self.dir.iterdir()), [])

    def test_progress_at_most_once_a_second(self) -> None:
        """Progress events carry bytes, total and rate, and come at most once a second."""
        resource = RangeFile(DATA)
        resource.cuts = [10000, 10000, 10000]
        events: list[tuple[float, DownloadProgress]] = []
        download = self.start(self.make(resource), progress=lambda p: events.append((self.clock.seconds(), p)))
        self.settle(download, seconds=0.5)
        self.successResultOf(download.result)
        times = [t for t, _ in events]
        self.assertTrue(all(b - a >= 1.0 for a, b in zip(times, times[1:])), times)
        self.assertEqual(events[0][1].received, 10000)
        self.assertEqual(events[-1][1].total, len(DATA))
        self.assertGreater(events[-1][1].rate, 0)

    def test_concurrency_limit_queues_and_cancel_frees_the_slot(self) -> None:
        """With one slot the second download waits; canceling the first lets it run."""
        stalled = RangeFile(DATA)
        stalled.stall = True
        downloader = self.make(stalled, concurrency=1)
        first = self.start(downloader)
        second = downloader.download(URL, self.dir / "second.bin", digests={})
        self.stub.flush()
        self.assertEqual(len(stalled.requests), 1)
        stalled.stall = False
        first.cancel()
        self.stub.flush()
        self.failureResultOf(first.result, CancelledError)
        self.successResultOf(second.result)
        self.assertEqual(len(stalled.requests), 2)

    def test_cancel_while_queued(self) -> None:
        """A queued download can be canceled before it starts."""
        stalled = RangeFile(DATA)
        stalled.stall = True
        downloader = self.make(stalled, concurrency=1)
        self.start(downloader)
        queued = downloader.download(URL, self.dir / "second.bin")
        queued.cancel()
        self.failureResultOf(queued.result, CancelledError)

    def test_verified_destination_is_reused(self) -> None:
        """A file already downloaded and verified is not fetched again."""
        resource = RangeFile(DATA)
        downloader = self.make(resource)
        self.successResultOf(self.start(downloader).result)
        self.successResultOf(self.start(downloader).result)
        self.assertEqual(len(resource.requests), 1)


class RecordingHTTP:
    """An HTTP client whose requests never get an answer (a connection attempt under way):
    records each request and whether it was canceled."""

    def __init__(self) -> None:
        self.requests: list[Deferred[Any]] = []
        self.canceled: list[Deferred[Any]] = []

    def request(self, method: str, url: str, **kwargs: Any) -> Deferred[Any]:
        """Record the request; it stays pending until canceled."""
        d: Deferred[Any] = Deferred(self.canceled.append)
        self.requests.append(d)
        return d


class StopDuringDiskCallTests(SynchronousTestCase):
    """A stop that lands while a disk call runs in its thread: no request (and no retry timer)
    starts after it, and a request under way is canceled by it."""

    def setUp(self) -> None:
        self.dir = Path(self.mktemp())
        self.dir.mkdir()
        self.clock = SteppingClock()
        self.disk = HeldThreads()
        self.http = RecordingHTTP()
        settings = DownloadSettings(write_batch=8192, checkpoint_bytes=16384)
        self.downloader = Downloader(self.http, self.clock, settings, self.disk, lambda attempt: 2.0)

    def resumable(self) -> None:
        """A part of 5000 durable bytes, as a download stopped earlier left it."""
        (self.dir / "artifact.bin.part").write_bytes(DATA[:5000])
        (self.dir / "artifact.bin.part.json").write_text(json.dumps(
            {"url": URL, "size": None, "digests": {}, "etag": '"v1"', "last_modified": None, "durable": 5000}))

    def test_a_stop_while_the_part_opens_sends_no_request(self) -> None:
        """A resumed download stopped while its part file opens (a thread) sends no GET once
        the open returns, and its result fires with the stop's reason."""
        self.resumable()
        download = self.downloader.download(URL, self.dir / "artifact.bin")
        self.assertEqual(self.disk.run_next(), "destination_verified")
        self.assertEqual(self.disk.next_name(), "open")
        download.cancel()
        self.disk.release_all()
        self.assertEqual(self.http.requests, [])
        self.failureResultOf(download.result, CancelledError)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_stop_while_a_failed_attempt_checkpoints_starts_no_retry(self) -> None:
        """A download stopped while the checkpoint after a failed attempt runs neither waits
        for a retry nor sends one: its result fires with the stop's reason, no timer left."""
        download = self.downloader.download(URL, self.dir / "artifact.bin")
        self.disk.release_all()
        self.assertEqual(len(self.http.requests), 1)
        self.http.requests[0].errback(ConnectionRefusedError("refused"))
        self.assertEqual(self.disk.next_name(), "checkpoint")
        download.cancel()
        self.disk.release_all()
        self.failureResultOf(download.result, CancelledError)
        self.assertEqual(len(self.http.requests), 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_stop_cancels_the_request_under_way(self) -> None:
        """A stop while a request waits for its answer (a connection attempt) cancels it."""
        download = self.downloader.download(URL, self.dir / "artifact.bin")
        self.disk.release_all()
        self.assertEqual(len(self.http.requests), 1)
        download.cancel()
        self.assertEqual(self.http.canceled, self.http.requests)
        self.disk.release_all()
        self.failureResultOf(download.result, CancelledError)
        self.assertEqual(self.clock.getDelayedCalls(), [])
