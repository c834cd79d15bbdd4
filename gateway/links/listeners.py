"""Telling what a link was handed from outside (its status listener, its extensions): a bug
in one is logged, and the link goes on."""

from __future__ import annotations

from typing import Any, Callable

from twisted.logger import Logger


def tell(log: Logger, link: str, what: str, listener: Callable[..., object], *args: Any) -> None:
    """Call ``listener(*args)``; one that raises (a bug in it) is logged once, with its
    traceback (``link LINK: telling WHAT failed``), and the caller goes on.

    A link tells its listeners where a connection or a loop handles a change or a failure
    (a CONNACK, a lost connection, a failed request): an error raised there would end the
    loop for good, close the connection it just accepted, or leave the link half in its new
    state.

    :param log: the link's logger.
    :param link: the link's name, which the line begins with.
    :param what: what is told, for the line (``its status``).
    :param listener: the callable handed to the link.
    :param args: its arguments.
    """
    try:
        listener(*args)
    except Exception:
        log.failure("link {link}: telling {what} failed", link=link, what=what)
