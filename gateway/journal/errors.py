"""Errors the journal raises, all under :class:`gateway.errors.JournalError`."""

from __future__ import annotations

from gateway.errors import JournalError


class StreamFullError(JournalError):
    """The append was refused: the stream is at a limit and its policy is reject-new.

    :param stream: the stream's name.
    :param limit: which limit: ``max-bytes`` or ``min-free-disk``.
    """

    def __init__(self, stream: str, limit: str) -> None:
        super().__init__(f"journal stream {stream!r} is full ({limit}); append rejected")
        self.stream = stream
        self.limit = limit


class JournalWriteError(JournalError):
    """Writing or fsyncing a segment failed (ENOSPC, EIO); nothing stored was damaged.

    :param stream: the stream's name.
    :param cause: the underlying :class:`OSError`.
    """

    def __init__(self, stream: str, cause: OSError) -> None:
        super().__init__(f"journal stream {stream!r}: write failed: {cause}")
        self.stream = stream
        self.cause = cause


class JournalClosedError(JournalError):
    """The journal was stopped; it takes no more appends, reads or acks."""


class UnknownCursorError(JournalError):
    """No cursor by that name exists on the stream (create it with ``stream.cursor``)."""
