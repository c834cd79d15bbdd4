"""Durable file writes on paths: write a temp file, fsync it, rename it over, fsync the directory.

Shared by every service that persists state (apps, broker sessions, updates): the atomic
writer and ``set_aside`` of :mod:`gateway.filelayer` (the journal's too) on the real files,
for a :class:`~pathlib.Path`. These calls block: run them off the reactor thread."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path
from typing import Any, Iterable

from gateway import filelayer, jsontext
from gateway.configdirectory import link_to_nothing
from gateway.filelayer import OSFiles


def fsync_directory(directory: Path) -> None:
    """Make a rename or unlink inside ``directory`` durable.

    :param directory: the directory whose entries changed.
    """
    OSFiles().fsync_dir(str(directory))


def remove_quietly(path: Path) -> None:
    """Remove ``path`` if it is there, best effort: a failure to remove it (a read-only
    disk) is ignored, so that the error that made it a leftover is the one raised.

    :param path: the file to remove.
    """
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass


def remove_durably(path: Path) -> None:
    """Remove ``path`` if it is there and fsync its directory, so that a power cut cannot bring
    it back (a confirmed config change's pending record, which the next start would revert).

    :param path: the file to remove; a missing one is not an error.
    :raises OSError: when it cannot be removed, or its directory not fsynced.
    """
    try:
        path.unlink()
    except FileNotFoundError:
        return
    fsync_directory(path.parent)


def remove_tree_durably(path: Path) -> None:
    """Remove directory ``path`` with all it holds and fsync its parent, so that a power cut
    cannot bring it back (an ended operation's artifacts, left on the disk for good once its
    record is forgotten). Best effort, as ``shutil.rmtree(path, ignore_errors=True)``: what
    cannot be removed stays, and a parent that cannot be fsynced is let be.

    :param path: the directory; a missing one is not an error (nothing is fsynced then).
    """
    if not os.path.lexists(path):
        return
    shutil.rmtree(path, ignore_errors=True)
    try:
        fsync_directory(path.parent)
    except OSError:
        pass  # (as rmtree's own errors)


def write_atomically(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves the old or the new content.

    :param path: the file to replace (its directory is created if needed).
    :param data: the new content.
    :param mode: the new file's permissions (``0o600`` for secrets), narrowed by the
        process's umask as for any file it creates (the .deb's unit sets ``UMask=0027``).
    """
    write_parts_atomically(path, (data,), mode)


def write_parts_atomically(path: Path, parts: Iterable[bytes], mode: int = 0o644) -> int:
    """:func:`write_atomically` for content made piece by piece (a large state encoded a
    part at a time, so that the whole of it as bytes never exists at once): the parts are
    written in order, gathered into writes of about :data:`~gateway.filelayer.WRITE_SIZE` bytes.

    The temporary file is ``.<name>.tmp`` beside ``path``, made afresh: one a crash left
    behind gives the new file none of its mode (nor owner).

    :param path: the file to replace (its directory is created if needed).
    :param parts: the new content, in order; taken one at a time, as they are written.
    :param mode: the new file's permissions, narrowed by the umask (:func:`write_atomically`).
    :return: the new file's size in bytes.
    """
    files = OSFiles(mode)
    files.makedirs(str(path.parent))
    return filelayer.write_atomic(files, str(path), parts, str(temporary_path(path)))


def temporary_path(path: Path) -> Path:
    """Where :func:`write_parts_atomically` (and so every writer here) writes ``path``'s new
    content before the rename: ``.<name>.tmp`` beside it. A crash can leave it behind; the
    next write of ``path`` makes it afresh, and a sweep of a directory whose files may never
    be written again removes it (:func:`temporary_of`).

    :param path: the file written.
    """
    return path.with_name(f".{path.name}.tmp")


def temporary_of(name: str) -> str | None:
    """The name of the file whose temporary file (:func:`temporary_path`) ``name`` is; None
    when it is none.

    :param name: a directory entry's name.
    """
    return name[1:-4] if len(name) > 5 and name.startswith(".") and name.endswith(".tmp") else None


def write_json_atomically(path: Path, value: Any, mode: int = 0o644, sort_keys: bool = True) -> None:
    """Replace ``path`` with ``value`` as JSON, atomically and durably.

    :param path: the file to replace.
    :param value: anything :func:`json.dumps` takes.
    :param mode: the new file's permissions (narrower for secrets).
    :param sort_keys: write every object's keys sorted; False keeps their order (a map whose
        order means something, which :func:`json.loads` gives back).
    """
    write_atomically(path, json.dumps(value, indent=1, sort_keys=sort_keys).encode(), mode)


def set_aside(path: Path, secret: bool = False) -> str:
    """Move a state file the gateway cannot use to ``<name>.damaged`` beside it, or stop the
    caller when it is only out of the gateway's user's reach: :func:`gateway.filelayer.set_aside`.

    :param path: the unusable file.
    :param secret: whether it may hold a secret (a CIK): the file moved aside is made mode 0600,
        whatever mode an operator who put it there gave it (a regular file only; best effort).
    :return: where it is now, for the log: ``moved to <path>.damaged``, or why it was left.
    :raises StateAccessError: when the gateway's user may not read or move it.
    """
    aside, said = filelayer.move_aside(OSFiles(), str(path))
    if secret and aside is not None:
        _make_private(Path(aside))
    return said


def _make_private(path: Path) -> None:
    """Make the regular file at ``path`` mode 0600 (a link in its place is not followed, a
    named pipe not waited on); a failure is ignored: the file is set aside all the same."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return
    try:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            os.fchmod(fd, 0o600)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_json(path: Path) -> Any:
    """Read a JSON file written by :func:`write_json_atomically`; None when it is absent
    (or cannot be there: a directory on its path is a file).

    :param path: the file to read.
    :raises ValueError: when the file holds no valid JSON, or JSON's ``null`` (the gateway
        writes no such state), or is a symbolic link to nothing: it was not written by us.
    """
    try:
        data = path.read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        dangling = link_to_nothing(path)
        if dangling is not None:
            raise ValueError(dangling) from None
        return None
    value = jsontext.loads(data)
    if value is None:
        # (None is what an absent file reads as: a caller would pass it over in silence)
        raise ValueError("it holds null, not the gateway's state")
    return value


def read_json_object(path: Path) -> dict[str, Any] | None:
    """Read a JSON object written by :func:`write_json_atomically`, as :func:`read_json` does;
    None when it is absent.

    :param path: the file to read.
    :raises ValueError: as :func:`read_json` does, and when it holds valid JSON of another kind
        (a list, a number is no object either): ``it holds <kind>, not an object``.
    """
    value = read_json(path)
    if value is not None and not isinstance(value, dict):
        raise ValueError(f"it holds {jsontext.kind(value)}, not an object")
    return value
