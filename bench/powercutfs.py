"""A FUSE file system that forgets, at a "power cut", every write not made durable.

A passthrough over a backing directory (every operation goes to it at once, so the process
on the mount sees an ordinary file system), which also keeps a model of what a disk would
still hold after a power cut, with the strict POSIX rules and none of ext4's kindness:

- a file's content (writes, truncates, its mode) becomes durable only when that file is
  fsynced or fdatasynced (``fsync`` op), or written through a handle opened ``O_SYNC`` /
  ``O_DSYNC``. ``pwritev2(RWF_DSYNC)`` reaches FUSE as a write followed by an ``fsync``
  (the kernel's ``generic_write_sync``), so it counts too (the run prints the counts);
- a directory's entries (create, mkdir, symlink, link, rename, unlink, rmdir) become
  durable only when that directory is fsynced (``fsyncdir`` op);
- a file whose name is durable but whose content never was comes back empty; a directory
  whose name is durable but whose entries never were comes back empty.

Files are followed by identity (the backing inode, renewed when a name is made afresh), so
a file fsynced, renamed and then made durable in its new directory keeps its content.

At mount, everything in the backing directory counts as durable. The power cut is the
unmount (``fusermount3 -u``, once the processes using the mount are killed): with ``--cut``
the backing directory is then rewritten to hold only the durable state (file times are
those of the rewrite); without it, it is left as the processes wrote it (a clean
shutdown). The operation counts go to ``--stats`` as JSON.

Run with the tools venv, which has ``mfusepy`` (ctypes bindings for libfuse 3)::

    .venv-tools/bin/python bench/powercutfs.py BACKING MOUNTPOINT --cut --stats stats.json

Used by ``bench/powercut.py``.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import shutil
import signal
import stat
import threading
import time
from typing import Any

import mfusepy as fuse  # type: ignore[import-not-found]

#: utimensat's special tv_nsec values (linux/stat.h).
_UTIME_NOW, _UTIME_OMIT = (1 << 30) - 1, (1 << 30) - 2

#: A durable directory: name -> (kind, identity, symlink target or None).
Entries = dict[str, tuple[str, int, str | None]]


class DurableModel:
    """What a disk holds after a power cut: durable entries per directory identity and
    durable content per file identity, plus each file's writes since its last fsync."""

    def __init__(self, backing: str) -> None:
        """Take everything under ``backing`` as durable.

        :param backing: the backing directory.
        """
        self.backing = backing
        self.lock = threading.RLock()
        self._next = 0
        self._ids: dict[int, int] = {}  # backing inode -> identity
        self.entries: dict[int, Entries] = {}
        self.content: dict[int, bytearray] = {}
        self.modes: dict[int, int] = {}
        self.pending: dict[int, list[tuple[int, bytes | None, int]]] = {}
        self.counts = {"writes": 0, "sync_writes": 0, "fsyncs": 0, "fsyncdirs": 0,
                       "renames": 0, "creates": 0, "unlinks": 0, "truncates": 0}
        self.root = self.identity(backing)
        self._snapshot(backing, self.root)

    def _snapshot(self, path: str, ident: int) -> None:
        self.sync_dir(path)
        for name, (kind, child, _) in self.entries[ident].items():
            full = os.path.join(path, name)
            if kind == "f":
                with open(full, "rb") as f:
                    self.content[child] = bytearray(f.read())
                self.modes[child] = os.lstat(full).st_mode
            elif kind == "d":
                self._snapshot(full, child)

    def identity(self, path: str, fresh: bool = False) -> int:
        """The identity of the file or directory at ``path`` (a backing path).

        :param fresh: the name was just made: a new identity even if the inode is reused.
        """
        ino = os.lstat(path).st_ino
        if fresh or ino not in self._ids:
            self._next += 1
            self._ids[ino] = self._next
        return self._ids[ino]

    def write(self, path: str, offset: int, data: bytes, durable: bool) -> None:
        """Record a write; made durable at once when ``durable``."""
        ident = self.identity(path)
        self.counts["sync_writes" if durable else "writes"] += 1
        self.pending.setdefault(ident, []).append((offset, data, 0))
        if durable:
            self.sync_file(path)

    def truncate(self, path: str, length: int) -> None:
        """Record a truncate."""
        self.counts["truncates"] += 1
        self.pending.setdefault(self.identity(path), []).append((length, None, 0))

    def sync_file(self, path: str) -> None:
        """fsync: the file's writes and mode are durable."""
        ident = self.identity(path)
        body = self.content.setdefault(ident, bytearray())
        for offset, data, _ in self.pending.pop(ident, []):
            if data is None:
                del body[offset:]
                body.extend(b"\0" * (offset - len(body)))
            else:
                if offset > len(body):
                    body.extend(b"\0" * (offset - len(body)))
                body[offset:offset + len(data)] = data
        self.modes[ident] = os.lstat(path).st_mode

    def sync_dir(self, path: str) -> None:
        """fsync of a directory: its entries as they are now are durable."""
        entries: Entries = {}
        for entry in os.scandir(path):
            st = entry.stat(follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                entries[entry.name] = ("l", 0, os.readlink(entry.path))
            elif stat.S_ISDIR(st.st_mode):
                entries[entry.name] = ("d", self.identity(entry.path), None)
            elif stat.S_ISREG(st.st_mode):
                entries[entry.name] = ("f", self.identity(entry.path), None)
        self.entries[self.identity(path)] = entries

    def restore(self) -> None:
        """The power cut: rewrite the backing directory to hold only the durable state."""
        for name in os.listdir(self.backing):
            full = os.path.join(self.backing, name)
            if os.path.isdir(full) and not os.path.islink(full):
                shutil.rmtree(full)
            else:
                os.unlink(full)
        self._write_dir(self.backing, self.root)

    def _write_dir(self, path: str, ident: int) -> None:
        for name, (kind, child, target) in self.entries.get(ident, {}).items():
            full = os.path.join(path, name)
            if kind == "l":
                os.symlink(target or "", full)
            elif kind == "d":
                os.mkdir(full)
                self._write_dir(full, child)
            else:
                with open(full, "wb") as f:
                    f.write(self.content.get(child, b""))
                os.chmod(full, stat.S_IMODE(self.modes.get(child, 0o644)))


class PowerCutFS(fuse.Operations):  # type: ignore[misc]
    """The passthrough operations, each also told to the :class:`DurableModel`."""

    use_ns = True

    def __init__(self, model: DurableModel) -> None:
        self.model = model
        self.root = model.backing
        self._sync_fhs: set[int] = set()

    def _full(self, path: str) -> str:
        return os.path.join(self.root, path.lstrip("/"))

    def access(self, path: str, amode: int) -> int:
        if not os.access(self._full(path), amode):
            raise fuse.FuseOSError(errno.EACCES)
        return 0

    def chmod(self, path: str, mode: int) -> int:
        os.chmod(self._full(path), mode)
        return 0

    def chown(self, path: str, uid: int, gid: int) -> int:
        os.lchown(self._full(path), uid, gid)
        return 0

    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        st = os.lstat(self._full(path))
        attrs = {key: getattr(st, key) for key in (
            "st_gid", "st_mode", "st_nlink", "st_size", "st_uid", "st_ino", "st_blocks")}
        # (times in nanoseconds: use_ns)
        attrs.update(st_atime=st.st_atime_ns, st_mtime=st.st_mtime_ns, st_ctime=st.st_ctime_ns)
        return attrs

    def readdir(self, path: str, fh: int) -> list[str]:
        return [".", ".."] + os.listdir(self._full(path))

    def readlink(self, path: str) -> str:
        return os.readlink(self._full(path))

    def mknod(self, path: str, mode: int, dev: int) -> int:
        os.mknod(self._full(path), mode, dev)
        return 0

    def rmdir(self, path: str) -> int:
        os.rmdir(self._full(path))
        return 0

    def mkdir(self, path: str, mode: int) -> int:
        full = self._full(path)
        os.mkdir(full, mode)
        with self.model.lock:
            self.model.identity(full, fresh=True)
            self.model.entries[self.model.identity(full)] = {}  # durable once named: empty
        return 0

    def statfs(self, path: str) -> dict[str, int]:
        sv = os.statvfs(self._full(path))
        return {key: getattr(sv, key) for key in (
            "f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail", "f_ffree", "f_files",
            "f_flag", "f_frsize", "f_namemax")}

    def unlink(self, path: str) -> int:
        with self.model.lock:
            self.model.counts["unlinks"] += 1
            os.unlink(self._full(path))
        return 0

    def symlink(self, target: str, source: str) -> int:
        os.symlink(source, self._full(target))
        return 0

    def rename(self, old: str, new: str) -> int:
        with self.model.lock:
            self.model.counts["renames"] += 1
            os.rename(self._full(old), self._full(new))
        return 0

    def link(self, target: str, source: str) -> int:
        os.link(self._full(source), self._full(target))
        return 0

    def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
        full = self._full(path)
        if times is None:
            os.utime(full, follow_symlinks=False)
            return 0
        # libfuse passes utimensat's UTIME_NOW and UTIME_OMIT on (as tv_nsec, tv_sec 0).
        st, now = os.lstat(full), time.time_ns()
        atime, mtime = (now if t == _UTIME_NOW else old if t == _UTIME_OMIT else t
                        for t, old in zip(times, (st.st_atime_ns, st.st_mtime_ns)))
        os.utime(full, ns=(atime, mtime), follow_symlinks=False)
        return 0

    def open(self, path: str, flags: int) -> int:
        full = self._full(path)
        if flags & os.O_TRUNC:
            with self.model.lock:
                self.model.truncate(full, 0)
        fd = os.open(full, flags)
        if flags & (os.O_SYNC | os.O_DSYNC):
            self._sync_fhs.add(fd)
        return fd

    def create(self, path: str, mode: int, fi: Any = None) -> int:
        full = self._full(path)
        flags = fi if isinstance(fi, int) else os.O_WRONLY
        with self.model.lock:
            fd = os.open(full, flags | os.O_CREAT, mode)
            self.model.counts["creates"] += 1
            ident = self.model.identity(full, fresh=True)
            self.model.content[ident] = bytearray()
        if flags & (os.O_SYNC | os.O_DSYNC):
            self._sync_fhs.add(fd)
        return fd

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        return os.pread(fh, size, offset)

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        with self.model.lock:
            written = os.pwrite(fh, data, offset)
            self.model.write(self._full(path), offset, bytes(data[:written]), fh in self._sync_fhs)
        return written

    def truncate(self, path: str, length: int, fh: int | None = None) -> int:
        with self.model.lock:
            os.truncate(self._full(path), length)
            self.model.truncate(self._full(path), length)
        return 0

    def flush(self, path: str, fh: int) -> int:
        return 0

    def release(self, path: str, fh: int) -> int:
        self._sync_fhs.discard(fh)
        os.close(fh)
        return 0

    def fsync(self, path: str, datasync: int, fh: int) -> int:
        with self.model.lock:
            self.model.counts["fsyncs"] += 1
            self.model.sync_file(self._full(path))
        return 0

    def fsyncdir(self, path: str, datasync: int, fh: int) -> int:
        with self.model.lock:
            self.model.counts["fsyncdirs"] += 1
            self.model.sync_dir(self._full(path))
        return 0


def main() -> None:
    """Mount, serve until unmounted or signalled, then (with ``--cut``) keep only what was
    durable in the backing directory."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("backing")
    parser.add_argument("mountpoint")
    parser.add_argument("--cut", action="store_true", help="at exit, keep only the durable state")
    parser.add_argument("--stats", help="write the operation counts here as JSON at exit")
    args = parser.parse_args()
    model = DurableModel(os.path.abspath(args.backing))
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        fuse.FUSE(PowerCutFS(model), args.mountpoint, foreground=True, default_permissions=True)
    finally:
        with model.lock:
            if args.cut:
                model.restore()
            if args.stats:
                with open(args.stats, "w") as f:
                    json.dump(model.counts, f)


if __name__ == "__main__":
    main()
