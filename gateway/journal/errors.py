"""Errors the journal raises, all under :class:`gateway.errors.JournalError`."""

from __future__ import annotations

import errno

from gateway.errors import JournalError

#: The errors of a write that say the disk is full (else a failed write is a ``write-error``).
DISK_FULL_ERRNOS = frozenset((errno.ENOSPC, errno.EDQUOT))


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


class RecordTooLargeError(StreamFullError):
    """The append was refused for good: the record (with its topic and framing) is larger
    than the stream's ``max_bytes`` on its own, so the emptiest stream refuses it too.
    Sending it again never helps, unlike a full stream's refusal (its ``limit`` is
    ``max-bytes``).

    :param stream: the stream's name.
    :param size: the record's bytes, framed.
    :param max_bytes: the stream's ``max_bytes``.
    """

    def __init__(self, stream: str, size: int, max_bytes: int) -> None:
        super().__init__(stream, "max-bytes", too_large_words(size, max_bytes))
        self.size = size
        self.max_bytes = max_bytes


def too_large_words(size: int, max_bytes: int) -> str:
    """What refuses a record of ``size`` bytes (framed) in a stream of ``max_bytes``, in words."""
    return f"a record of {size} bytes is larger than max_bytes ({max_bytes} bytes)"


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


class UnknownStreamError(JournalError):
    """No journal stream by that name exists (answered 404 by the admin API)."""


class StreamInUseError(JournalError):
    """The stream cannot be dropped: the configuration still uses it.

    :param stream: the stream's name.
    :param user: what uses it, in words (``the link 'cloud'``).
    """

    def __init__(self, stream: str, user: str) -> None:
        super().__init__(f"journal stream {stream!r} is in use by the configuration ({user}): only a stream the"
                         " configuration no longer uses (a link's, once removed or renamed) can be dropped")
        self.stream = stream
        self.user = user


class StreamNotDrainedError(JournalError):
    """The stream was not dropped: it holds records its cursors have not acknowledged, and
    the operator did not say to drop them anyway (``force``).

    :param stream: the stream's name.
    :param records: how many records not every cursor acknowledged.
    """

    def __init__(self, stream: str, records: int) -> None:
        super().__init__(f"journal stream {stream!r} holds {records} record{'' if records == 1 else 's'}"
                         " not acknowledged by its cursors"
                         " (never sent): drop it with force to lose them, counted as lost (dropped)")
        self.stream = stream
        self.records = records


def write_reason(error: OSError) -> str:
    """A failed write's reason for the read side: ``disk-full`` (ENOSPC, EDQUOT), ``read-only``
    (EROFS: the filesystem was remounted read-only, after an I/O error say) or ``write-error``."""
    if error.errno in DISK_FULL_ERRNOS:
        return "disk-full"
    return "read-only" if error.errno == errno.EROFS else "write-error"
