"""A test-only file layer that simulates power cuts: it forgets what was not fsynced.

Files are inodes holding their current bytes and the bytes they had at their last
fsync; directory entries become durable only when their directory is fsynced. On
:meth:`PowerCutFiles.cut` every file goes back to its last fsynced content (plus,
depending on the mode, zeros or random bytes where unsynced data was) and every
directory back to its last fsynced entries. ``fail_after`` makes the machine die
in the middle of a job: the N-th operation from now raises :class:`PowerLost`, and
so does every operation after it until the cut.
"""

from __future__ import annotations

import errno
import os
import random
from dataclasses import dataclass, field


class PowerLost(Exception):
    """The simulated machine lost power; nothing more reaches the disk."""


@dataclass
class Inode:
    """A file's current content and its content at the last fsync."""

    data: bytearray = field(default_factory=bytearray)
    synced: bytes = b""


class PowerCutFiles:
    """In-memory :class:`~gateway.filelayer.FileLayer` with power cuts and a size limit.

    :param capacity: bytes the simulated disk holds (writes past it raise ENOSPC).
    """

    def __init__(self, capacity: int = 1 << 40) -> None:
        self.capacity = capacity
        self.names: dict[str, Inode] = {}
        self.durable: dict[str, Inode] = {}
        self.dirs: set[str] = set()
        self.fail_after: int | None = None
        self.dead = False
        #: What free_bytes reports instead of the truth (a disk shared with other writers).
        self.reported_free: int | None = None

    def _op(self) -> None:
        if self.dead:
            raise PowerLost()
        if self.fail_after is not None:
            self.fail_after -= 1
            if self.fail_after < 0:
                self.dead = True
                raise PowerLost()

    def cut(self, mode: str = "drop", rng: random.Random | None = None) -> None:
        """Lose power now: unsynced data goes (``drop``) or turns to ``zeros``/``random``."""
        rng = rng or random.Random(0)
        self.names = dict(self.durable)
        for inode in {id(i): i for i in self.names.values()}.values():
            extra = len(inode.data) - len(inode.synced)
            tail = b""
            if extra > 0 and mode == "zeros":
                tail = bytes(extra)
            elif extra > 0 and mode == "random":
                tail = rng.randbytes(extra)
            inode.data = bytearray(inode.synced + tail)
        self.dead = False
        self.fail_after = None

    def used(self) -> int:
        """Bytes held by every file."""
        return sum(len(i.data) for i in {id(i): i for i in self.names.values()}.values())

    def _inode(self, path: str) -> Inode:
        try:
            return self.names[path]
        except KeyError:
            raise FileNotFoundError(errno.ENOENT, "no such file", path) from None

    def makedirs(self, path: str) -> None:
        self._op()
        while path and path not in self.dirs:
            self.dirs.add(path)
            path = os.path.dirname(path)

    def listdir(self, path: str) -> list[str]:
        self._op()
        found = {os.path.basename(p) for p in self.names if os.path.dirname(p) == path}
        found.update(os.path.basename(d) for d in self.dirs if os.path.dirname(d) == path and d != path)
        return sorted(found)

    def exists(self, path: str) -> bool:
        self._op()
        return path in self.names or path in self.dirs

    def size(self, path: str) -> int:
        self._op()
        return len(self._inode(path).data)

    def read(self, path: str, offset: int, length: int) -> bytes:
        self._op()
        return bytes(self._inode(path).data[offset : offset + length])

    def append(self, path: str, data: bytes) -> None:
        self._op()
        if os.path.dirname(path) not in self.dirs:
            raise FileNotFoundError(errno.ENOENT, "no such directory", path)
        inode = self.names.setdefault(path, Inode())
        room = self.capacity - self.used()
        inode.data += data[: max(room, 0)]
        if room < len(data):
            raise OSError(errno.ENOSPC, "No space left on device", path)

    def append_sync(self, path: str, data: bytes) -> None:
        # Two operations, so fail_after can cut power between the write and the sync.
        self.append(path, data)
        self.fsync(path)

    def fsync(self, path: str) -> None:
        self._op()
        inode = self._inode(path)
        inode.synced = bytes(inode.data)

    def truncate(self, path: str, size: int) -> None:
        self._op()
        del self._inode(path).data[size:]

    def write(self, path: str, data: bytes) -> None:
        self._op()
        self.names[path] = Inode()
        self.append(path, data)

    def replace(self, src: str, dst: str) -> None:
        self._op()
        self.names[dst] = self.names.pop(src)

    def unlink(self, path: str) -> None:
        self._op()
        self.names.pop(path, None)

    def fsync_dir(self, path: str) -> None:
        self._op()
        for p in [p for p in self.durable if os.path.dirname(p) == path]:
            del self.durable[p]
        self.durable.update((p, i) for p, i in self.names.items() if os.path.dirname(p) == path)

    def free_bytes(self, path: str) -> int:
        self._op()
        return self.reported_free if self.reported_free is not None else self.capacity - self.used()

    def close(self, path: str) -> None:
        """Nothing to close."""

    def close_all(self) -> None:
        """Nothing to close."""
