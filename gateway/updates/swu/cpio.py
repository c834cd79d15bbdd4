"""Reading SWUpdate bundles' container: a cpio archive in the ``newc`` format (``070701``,
or ``070702`` with a checksum), read forward once, entry by entry, in bounded memory."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from gateway.errors import UpdateError

_MAGICS = (b"070701", b"070702")
_HEADER = 110
_TRAILER = "TRAILER!!!"
_CHUNK = 1 << 20


class BundleError(UpdateError):
    """The bundle is not a usable cpio ``newc`` archive, or breaks SWUpdate's rules."""


@dataclass(frozen=True)
class Entry:
    """One archive member: its name, size and the newc checksum (``070702``: sum of bytes)."""

    name: str
    size: int
    checksum: int | None


def _pad(offset: int) -> int:
    return (4 - offset % 4) % 4


class CpioReader:
    """Walks a cpio ``newc`` stream.

    :param stream: the bundle, opened for binary reading at its start.
    """

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream
        self.offset = 0
        self._unread = 0  # bytes of the current entry's data not consumed yet

    def _read(self, n: int) -> bytes:
        data = self.stream.read(n)
        if len(data) != n:
            raise BundleError(f"the archive ends early (at byte {self.offset + len(data)})")
        self.offset += n
        return data

    def entries(self) -> Iterator[Entry]:
        """The members in order (the trailer ends the walk); each member's data must be consumed
        with :meth:`copy` or is skipped when the next one is asked for."""
        while True:
            if self._unread:
                self.copy(lambda _: None)
            header = self._read(_HEADER)
            if header[:6] not in _MAGICS:
                raise BundleError(f"not a cpio newc archive (bad magic at byte {self.offset - _HEADER})")
            try:
                fields = [int(header[6 + 8 * i:14 + 8 * i], 16) for i in range(13)]
            except ValueError as error:
                raise BundleError(f"corrupt cpio header at byte {self.offset - _HEADER}") from error
            mode, size, name_size, check = fields[1], fields[6], fields[11], fields[12]
            raw = self._read(name_size)
            self._read(_pad(self.offset))
            name = raw.rstrip(b"\0").decode("utf-8", "replace")
            if name == _TRAILER:
                return
            if mode & 0o170000 not in (0o100000, 0):
                raise BundleError(f"member {name!r} is not a regular file")
            self._unread = size
            yield Entry(name, size, check if header[:6] == b"070702" else None)

    def copy(self, write: Callable[[bytes], object], checksum: bool = False) -> int:
        """Pass the current member's data to ``write`` in chunks; return the newc byte sum when
        ``checksum`` is asked for (else 0)."""
        total = 0
        while self._unread:
            chunk = self._read(min(_CHUNK, self._unread))
            self._unread -= len(chunk)
            if checksum:
                total += sum(chunk)
            write(chunk)
        self._read(_pad(self.offset))
        return total & 0xFFFFFFFF
