"""The resumable downloader: the public entry point; each download runs as a :class:`DownloadJob`."""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

from twisted.internet.defer import CancelledError, Deferred, DeferredSemaphore
from twisted.internet.interfaces import IReactorTime

from gateway.operations.retry import lazy_backoff
from gateway.shown import shown_url, url_error_shown
from gateway.updates.digests import normalise_digests
from gateway.updates.errors import InsecureURL
from gateway.updates.settings import DownloadSettings

if TYPE_CHECKING:  # the job (its body, responses, part files) is imported by the first download
    from gateway.blocking import RunBlocking
    from gateway.updates.job import DownloadJob, DownloadProgress

__all__ = ["Download", "DownloadProgress", "Downloader", "HTTPRequester"]


def __getattr__(name: str) -> Any:
    """``DownloadProgress``, re-exported from :mod:`gateway.updates.job` when first asked for."""
    if name == "DownloadProgress":
        from gateway.updates.job import DownloadProgress

        return DownloadProgress
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class HTTPRequester(Protocol):
    """What the downloader needs of a ``treq.client.HTTPClient`` (or a ``StubTreq``)."""

    def request(self, method: str, url: str, **kwargs: Any) -> Deferred[Any]:
        """Send a request; see :meth:`treq.client.HTTPClient.request`."""


class Download:
    """One running (or queued) download; :attr:`result` fires with the verified file's path.

    :attr:`result` errbacks with a :class:`DownloadError`, or :class:`CancelledError` after
    :meth:`cancel`, only once the download has really stopped (no write still pending).
    """

    def __init__(self, job: DownloadJob) -> None:
        self._job = job
        self.result: Deferred[Path] = job.result

    @property
    def received(self) -> int:
        """The bytes of the file so far: all of them once :attr:`result` has fired with it
        (the once-a-second progress reports miss the last chunk, and a quick download's all)."""
        return self._job.part.written

    def cancel(self) -> None:
        """Stop the download; the part file stays for a later resume (delete it to free space)."""
        self._job.stop(CancelledError(f"download of {shown_url(self._job.url)} canceled"))


def url_origin(url: str) -> tuple[str, str]:
    """``url``'s origin as ``(scheme, host:port)``, compared as origins are: scheme and host in
    lower case, the port always written (443 or 80 when the URL leaves it out).

    :param url: an absolute URL.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:  # not a number: kept as written, it matches nothing else
        return scheme, parts.netloc.lower()
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    return scheme, f"{host}:{port or {'https': 443, 'http': 80}.get(scheme, '')}"


class Downloader:
    """Downloads artifacts to disk, resumably, a few at a time.

    :param http: the HTTP client (``treq.client.HTTPClient``; ``StubTreq`` in tests). Build
        it with :func:`gateway.updates.httpclient.make_http_client` so https verifies hosts.
    :param clock: the reactor's time (``task.Clock`` in tests).
    :param settings: limits and retry knobs.
    :param run_blocking: runs a blocking callable off the reactor and fires with its result
        (``functools.partial(deferToThreadPool, reactor, pool)`` in production).
    :param retry_policy: seconds to wait before retry number N (1-based); defaults to an
        exponential backoff with jitter built from ``settings``.
    """

    def __init__(
        self,
        http: HTTPRequester,
        clock: IReactorTime,
        settings: DownloadSettings,
        run_blocking: RunBlocking,
        retry_policy: Callable[[int], float] | None = None,
    ) -> None:
        self.http = http
        self.clock = clock
        self.settings = settings
        self.run_blocking = run_blocking
        self.retry_policy = retry_policy or lazy_backoff(
            initialDelay=settings.retry_initial_delay,
            maxDelay=settings.retry_max_delay,
            factor=2.0,
            jitter=random.random,
        )
        self._slots = DeferredSemaphore(settings.concurrency)
        #: :func:`url_origin` ``-> Authorization`` sent to that origin only (a DDI server's token).
        self.credentials: dict[tuple[str, str], str] = {}

    def download(
        self,
        url: str,
        destination: Path,
        size: int | None = None,
        digests: Mapping[str, str] | None = None,
        progress: Callable[[DownloadProgress], None] | None = None,
    ) -> Download:
        """Start (or queue) a download of ``url`` to ``destination``.

        :param url: an https URL (http only when the settings allow it).
        :param destination: the final path; it appears only once the file is verified.
        :param size: the announced size, checked against the server's.
        :param digests: announced digests (``{"SHA256": hex, ...}``); the strongest is checked.
        :param progress: called with a :class:`DownloadProgress` at most once a second.
        :raises ValueError: when a digest is malformed.
        """
        from gateway.updates.job import DownloadJob

        job = DownloadJob(self, url, destination, size, normalise_digests(digests or {}), progress)
        job.queue(self._slots)
        return Download(job)

    def authorization(self, url: str) -> dict[str, list[str]]:
        """The ``Authorization`` header registered for ``url``'s origin, if any (never sent elsewhere,
        so a redirect to a CDN does not carry the token)."""
        value = self.credentials.get(url_origin(url))
        return {"Authorization": [value]} if value else {}

    def check_url(self, url: str) -> None:
        """Refuse URLs the settings do not allow.

        :param url: the URL, or a redirect target.
        :raises InsecureURL: for http:// without ``allow_http``, for other schemes, and for a URL
            with a user name or password (the HTTP client cannot send them, and a retry's log
            line would quote the user name, often a token), or that cannot be parsed at all.
        """
        try:
            parts = urlsplit(url)
        except ValueError as error:  # (a netloc NFKC changes): the operation crashed, quoting the password
            raise InsecureURL(url, f"not a usable URL: {url_error_shown(url, error)} (nothing was requested)") from error
        scheme = parts.scheme.lower()
        if "@" in parts.netloc:
            raise InsecureURL(url, "a user name or password in the URL is not supported (nothing was requested)")
        if scheme == "https" or (scheme == "http" and self.settings.allow_http):
            return
        allowed = "http and https only" if self.settings.allow_http else "https only unless allow_http"
        raise InsecureURL(url, f"{scheme or 'no'} scheme is not allowed ({allowed})")
