"""Errors of downloads and update operations, all under :class:`gateway.errors.UpdateError`."""

from __future__ import annotations

from gateway.errors import UpdateError
from gateway.shown import shown_url


class DownloadError(UpdateError):
    """A download failed; ``retryable`` says whether another attempt may succeed.

    :param url: the URL being fetched; the message names it as :func:`~gateway.shown.shown_url`
        does (it goes into the log and the operation's status: a presigned query is a credential).
    :param message: what went wrong, for a person.
    """

    retryable = False

    def __init__(self, url: str, message: str) -> None:
        super().__init__(f"{shown_url(url)}: {message}")
        self.url = url


class RetryableDownloadError(DownloadError):
    """An attempt failed in a way another attempt may cure (cut, timeout, 5xx, 429)."""

    retryable = True


class IdleTimeout(RetryableDownloadError):
    """No byte arrived for the configured idle timeout."""


class ServerChangedFile(RetryableDownloadError):
    """The file behind the URL changed while we resumed; the part was discarded."""


class HTTPStatusError(DownloadError):
    """The server answered with a status that no retry will change (404, 403, ...)."""


class InsecureURL(DownloadError):
    """The URL (or a redirect) is plain http:// and config does not allow it, not http(s), or
    carries a user name or password."""


class TooManyRedirects(DownloadError):
    """More redirects than allowed."""


class ContentRangeMismatch(DownloadError):
    """The server sent a Content-Range other than the one asked for; nothing was written."""


class SizeExceeded(DownloadError):
    """The body grew past the configured maximum size."""


class SizeMismatch(DownloadError):
    """The server's size differs from the size the artifact was announced with."""


class DigestMismatch(DownloadError):
    """The finished file does not have the announced digest; it was deleted."""


class DeadlineExceeded(DownloadError):
    """The download did not finish within its overall deadline."""


class AttemptsExhausted(DownloadError):
    """Too many consecutive attempts failed without progress."""


class InvalidOperation(UpdateError):
    """An update command is malformed; the message names the offending field."""


class InstallError(UpdateError):
    """Installing an artifact failed; the running version stays."""
