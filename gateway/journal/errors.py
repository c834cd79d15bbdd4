"""Errors the journal raises, all under :class:`gateway.errors.JournalError`."""

from __future__ import annotations

from gateway.errors import JournalError


class StreamFullError(JournalError):
    """The append was refused: the stream is at a limit and its policy is reject-new, or the
    record would not fit even in an empty stream.

    :param stream: the stream's name.
    :param limit: which limit: ``max-bytes`` or ``min-free-disk``.
    :param why: what refused it, when the stream is not full (a record larger than
        ``max_bytes``); else the message says the stream is full.
    """

    def __init__(self, stream: str, limit: str, why: str | None = None) -> None:
        super().__init__(f"journal stream {stream!r} refused the append ({limit}): {why}" if why else
                         f"journal stream {stream!r} is full ({limit}); append rejected")
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
