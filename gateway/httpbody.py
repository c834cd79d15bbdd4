"""Reading the body of a server's HTTP answer with a limit on its size: a server that lies
or goes wrong must not fill the gateway's memory with an endless answer."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred


class _AnswerTooLong(Exception):
    """Stops reading an answer at its limit."""


def read_body(response: Any, limit: int) -> Deferred[tuple[bytes, bool]]:
    """The body of ``response``, at most ``limit`` bytes: beyond them the rest is not read and
    the connection is closed.

    :param response: a treq/Twisted ``IResponse``.
    :param limit: the most bytes taken.
    :return: (a Deferred firing with) the body and whether it was cut at the limit.
    """
    from treq import collect  # not at import time: an idle gateway does without treq

    parts: list[bytes] = []
    size = 0

    def keep(data: bytes) -> None:
        nonlocal size
        parts.append(data[:max(limit - size, 0)])
        size += len(data)
        if size > limit:
            raise _AnswerTooLong()

    def cut(failure: Any) -> tuple[bytes, bool]:
        failure.trap(_AnswerTooLong)
        return b"".join(parts), True

    return collect(response, keep).addCallbacks(lambda _: (b"".join(parts), False), cut)
