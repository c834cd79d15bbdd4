"""Errors of the admin API: each carries the HTTP status it is answered with."""

from __future__ import annotations

from typing import Any

from gateway.errors import GatewayError


class ApiError(GatewayError):
    """A request the admin API refuses; answered as ``{"error": message, ...extra}``.

    :param status: the HTTP status (400, 401, 404, 405, 409, 413, 503).
    :param message: what is wrong, for a person.
    :param extra: more JSON fields for the answer (e.g. ``errors``: a list).
    """

    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.extra = extra


def bad_request(message: str, **extra: Any) -> ApiError:
    """400: bad JSON or bad arguments."""
    return ApiError(400, message, **extra)


def not_found(message: str) -> ApiError:
    """404: unknown app, report, key or route."""
    return ApiError(404, message)


def conflict(message: str) -> ApiError:
    """409: the request conflicts with the current state."""
    return ApiError(409, message)


def too_large(message: str) -> ApiError:
    """413: the request body is larger than allowed."""
    return ApiError(413, message)


def unavailable(message: str) -> ApiError:
    """503: the service that would answer is not running (or not part of this gateway)."""
    return ApiError(503, message)
