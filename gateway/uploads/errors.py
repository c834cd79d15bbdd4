"""Errors of uploads, all under :class:`UploadError`."""

from __future__ import annotations

from gateway.errors import GatewayError


class UploadError(GatewayError):
    """An upload could not be done; ``retryable`` says whether another attempt may succeed."""

    retryable = False


class InvalidRequest(UploadError):
    """A message from the cloud (or a local one) is malformed; answered with 400.

    :param message: names the wrong field.
    """


class UnknownUpload(UploadError):
    """No upload has the correlation id a message names; answered with 404."""


class ProviderRefused(UploadError):
    """The storage answered an error status: ``reason`` is its own words (code and message).

    :param status: the HTTP status.
    :param reason: what the provider said.
    """

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"HTTP {status}: {reason}")
        self.status = status
        self.reason = reason
        # 408/429/5xx are the provider's own trouble; anything else (403 expired or bad
        # signature, 400 bad request, 404) is final.
        self.retryable = status in (408, 429) or status >= 500


class TransferFailed(UploadError):
    """The connection failed before an answer (refused, cut mid-body): worth another attempt."""

    retryable = True


class FileChanged(UploadError):
    """The file changed while it was sent (size, mtime or the bytes streamed): sent again."""

    retryable = True
