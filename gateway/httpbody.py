"""Reading the body of a server's HTTP answer with a limit on its size: a server that lies
or goes wrong must not fill the gateway's memory with an endless answer."""

from __future__ import annotations

from typing import Any

import treq
from twisted.internet.defer import Deferred


class BodyTooLarge(ValueError):
    """An answer's body went past the limit (the connection is closed, the rest never read)."""


def read_body(response: Any, limit: int) -> Deferred[bytes]:
    """The body of ``response``, at most ``limit`` bytes.

    :param response: a treq/Twisted ``IResponse``.
    :param limit: the most bytes taken.
    :raises BodyTooLarge: (as the Deferred's failure) once the body goes past ``limit``.
    """
    chunks: list[bytes] = []
    size = 0

    def take(data: bytes) -> None:
        nonlocal size
        size += len(data)
        if size > limit:
            raise BodyTooLarge(f"the answer is over {limit} bytes")
        chunks.append(data)

    return treq.collect(response, take).addCallback(lambda _: b"".join(chunks))
