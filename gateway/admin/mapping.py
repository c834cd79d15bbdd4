"""Which HTTP status answers which gateway error: one table for the whole admin API."""

from __future__ import annotations

from gateway import errors as gateway_errors
from gateway.admin.errors import ApiError
from gateway.apps.errors import (AmbiguousProgramError, DesiredStateError, HealthCheckError, InstallError,
                                 ManifestError, UnknownAppError, UnsafeArchiveError)
from gateway.journal.errors import JournalClosedError, StreamInUseError, StreamNotDrainedError, UnknownStreamError
from gateway.telemetry.errors import ReportNotPublished, ReportTooLarge
from gateway.updates.errors import InvalidOperation


def map_error(error: BaseException) -> ApiError | None:
    """The API error answering ``error``, or None for an unexpected one (answered 500).

    :param error: what a handler raised.
    """
    if isinstance(error, ApiError):
        return error
    if isinstance(error, (UnknownAppError, UnknownStreamError)):
        return ApiError(404, str(error))
    if isinstance(error, StreamInUseError):
        return ApiError(409, str(error), stream=error.stream)
    if isinstance(error, StreamNotDrainedError):
        return ApiError(409, str(error), stream=error.stream, unacked=error.records)
    if isinstance(error, (UnsafeArchiveError, ManifestError, AmbiguousProgramError)):
        return ApiError(400, str(error))
    if isinstance(error, ReportTooLarge):
        # (the gateway works as configured: the configuration must change before it can be sent)
        return ApiError(409, f"{error}; asking again does not help: give that journal stream a larger max_bytes"
                             " (journal.streams in the configuration) first")
    if isinstance(error, (DesiredStateError, ReportNotPublished)):
        return ApiError(500, str(error))
    if isinstance(error, (InstallError, HealthCheckError, gateway_errors.AppError)):
        return ApiError(409, str(error))
    if isinstance(error, InvalidOperation):
        return ApiError(400, str(error))
    if isinstance(error, gateway_errors.ConfigApplyConflict):
        return ApiError(409, str(error))
    if isinstance(error, gateway_errors.ConfigKeyError):
        return ApiError(404, str(error.args[0]) if error.args else "no such key")
    if isinstance(error, gateway_errors.ConfigCheckError):
        return ApiError(500, str(error))
    if isinstance(error, gateway_errors.ConfigError):
        return ApiError(400, "invalid configuration", errors=list(error.errors))
    if isinstance(error, JournalClosedError):
        return ApiError(503, str(error))
    if isinstance(error, gateway_errors.JournalError):  # (a stream's directory not deleted: said, no traceback)
        return ApiError(500, str(error))
    return None
