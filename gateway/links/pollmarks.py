"""The ``Last-Modified`` of each alias an HTTP link long-polls, kept on disk beside its CIK.

A long-poll without ``If-Modified-Since`` may be answered at once with the alias's current
value, one the gateway already ran: after a restart (or a configuration change, which
restarts the links) a ``restart`` command would run again, and again. The link polls from
the mark of the last value it published instead, so a value comes down once, and one the
cloud wrote while the gateway was away still comes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from twisted.internet.defer import Deferred, DeferredLock, inlineCallbacks, succeed
from twisted.logger import Logger

from gateway.atomic import read_json, write_json_atomically


class PollMarks:
    """The marks of one link's long-polled aliases, for the device its CIK is for.

    :param link: the link's name, which its log lines start with.
    :param path: the file (``<cik_file>.polls``).
    :param device: the configured device (``vendor=...&model=...&sn=...``): marks of another
        device's aliases are not used.
    :param run_blocking: ``(function, *args) -> Deferred`` off the reactor thread.
    """

    log = Logger()

    def __init__(self, link: str, path: Path, device: str, run_blocking: Callable[..., Deferred[Any]]) -> None:
        self.link = link
        self.path = path
        self.device = device
        self.run_blocking = run_blocking
        self._marks: dict[str, str] = {}
        #: one write at a time (each alias's long-poll marks on its own; the file's temporary
        #: file is one): a write holding fewer marks never lands after one holding more
        self._writing = DeferredLock()

    @inlineCallbacks
    def load(self) -> Any:
        """Read the marks (none when the file is absent, damaged, or for another device)."""
        try:
            kept = yield self.run_blocking(read_json, self.path)
        except (OSError, ValueError) as exc:
            self.log.warn("link {link}: {path} not read ({error}): the long-polls start without If-Modified-Since",
                          link=self.link, path=str(self.path), error=str(exc))
            return
        if isinstance(kept, dict) and kept.get("device") == self.device and isinstance(kept.get("since"), dict):
            self._marks = {alias: since for alias, since in kept["since"].items() if _header_value(since)}
            unusable = sorted(alias for alias in kept["since"] if alias not in self._marks)
            if unusable:
                self.log.warn("link {link}: {path}: the marks of {aliases} are no Last-Modified: their long-polls"
                              " start without If-Modified-Since", link=self.link, path=str(self.path),
                              aliases=", ".join(unusable))

    def since(self, alias: str) -> bytes | None:
        """The ``Last-Modified`` of the last value of ``alias`` published (None: none yet)."""
        mark = self._marks.get(alias)
        return None if mark is None else mark.encode("latin-1")

    def mark(self, alias: str, modified: bytes) -> Deferred[None]:
        """Keep ``modified`` as the mark of ``alias``, on disk (after the write under way, with
        every mark made so far); a failed write is logged (the link goes on with the mark in
        memory). Fires once written, or failed (at once when it is the mark already)."""
        text = modified.decode("latin-1")
        if self._marks.get(alias) == text:
            return succeed(None)
        self._marks[alias] = text
        return self._writing.run(self._write, alias)

    def written(self) -> Deferred[None]:
        """Fires once the writes of the marks made so far are done (or failed): at the link's
        stop, so that the next start reads them."""
        return self._writing.run(succeed, None)

    @inlineCallbacks
    def _write(self, alias: str) -> Any:
        """Write every mark as it is now (one write at a time: :attr:`_writing`)."""
        try:
            yield self.run_blocking(write_json_atomically, self.path,
                                    {"device": self.device, "since": dict(self._marks)})
        except OSError as exc:
            self.log.warn("link {link}: {path} not written ({error}): after a restart, the long-poll of {alias} "
                          "may bring its last value again", link=self.link, path=str(self.path), error=str(exc),
                          alias=alias)


def _header_value(since: Any) -> bool:
    """Whether ``since`` can be sent as ``If-Modified-Since`` (a string of printable Latin-1, as
    a ``Last-Modified`` the link kept is): a file edited or damaged may hold anything."""
    return isinstance(since, str) and since.isprintable() and all(ord(c) < 256 for c in since)
