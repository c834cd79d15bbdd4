"""Durable file writes: write a temp file, fsync it, rename it over, fsync the directory.

Shared by every service that persists state (apps, broker sessions, updates); the journal
has its own file layer so its tests can simulate power cuts. These calls block: run them
off the reactor thread."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

from gateway import jsontext
from gateway.stateaccess import is_permission_error, refusal, refuse_if_forbidden

#: Bytes :func:`write_parts_atomically` gathers into one write.
WRITE_SIZE = 1 << 20


def fsync_directory(directory: Path) -> None:
    """Make a rename or unlink inside ``directory`` durable.

    :param directory: the directory whose entries changed.
    """
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_quietly(path: Path) -> None:
    """Remove ``path`` if it is there, best effort: a failure to remove it (a read-only
    disk) is ignored, so that the error that made it a leftover is the one raised.

    :param path: the file to remove.
    """
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass


def write_atomically(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves the old or the new content.

    :param path: the file to replace (its directory is created if needed).
    :param data: the new content.
    :param mode: the new file's permissions (``0o600`` for secrets), narrowed by the
        process's umask as for any file it creates (the .deb's unit sets ``UMask=0027``).
    """
    write_parts_atomically(path, (data,), mode)


def write_parts_atomically(path: Path, parts: Iterable[bytes], mode: int = 0o644) -> None:
    """:func:`write_atomically` for content made piece by piece (a large state encoded a
    part at a time, so that the whole of it as bytes never exists at once): the parts are
    written in order, gathered into writes of about :data:`WRITE_SIZE` bytes.

    :param path: the file to replace (its directory is created if needed).
    :param parts: the new content, in order; taken one at a time, as they are written.
    :param mode: the new file's permissions, narrowed by the umask (:func:`write_atomically`).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.tmp")
    # Made afresh: a temp file a crash left behind would keep its own mode (and owner).
    try:
        os.unlink(temp)
    except FileNotFoundError:
        pass
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        try:
            gathered: list[bytes] = []
            size = 0
            for part in parts:
                gathered.append(part)
                size += len(part)
                if size >= WRITE_SIZE:
                    _write_all(fd, b"".join(gathered))
                    gathered, size = [], 0
            _write_all(fd, b"".join(gathered))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, path)
    except BaseException:
        remove_quietly(temp)  # a full disk keeps no half-written temp file
        raise
    fsync_directory(path.parent)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def write_json_atomically(path: Path, value: Any, mode: int = 0o644, sort_keys: bool = True) -> None:
    """Replace ``path`` with ``value`` as JSON, atomically and durably.

    :param path: the file to replace.
    :param value: anything :func:`json.dumps` takes.
    :param mode: the new file's permissions (narrower for secrets).
    :param sort_keys: write every object's keys sorted; False keeps their order (a map whose
        order means something, which :func:`json.loads` gives back).
    """
    write_atomically(path, json.dumps(value, indent=1, sort_keys=sort_keys).encode(), mode)


def set_aside(path: Path) -> str:
    """Move a state file the gateway cannot use to ``<name>.damaged`` beside it, so that
    the service starts without it and a person can still look at it (the next write
    makes a fresh file, never over the damaged one). A file the gateway's user may not
    read, or may not move, is not damaged: it is left as it is, and the caller stops.

    :param path: the unusable file.
    :return: where it is now, for the log: ``moved to <path>.damaged``, or why it was left.
    :raises StateAccessError: when the gateway's user may not read or move it (it says to
        give it back: :func:`~gateway.stateaccess.refusal`).
    """
    refuse_if_forbidden(path)
    aside = path.with_name(path.name + ".damaged")
    try:
        path.replace(aside)
    except OSError as why:
        if is_permission_error(why):  # (its directory's mode or owner)
            raise refusal(path.parent) from why
        return f"left where it is: {why.strerror or why}"
    return f"moved to {aside}"


def read_json(path: Path) -> Any:
    """Read a JSON file written by :func:`write_json_atomically`; None when it is absent
    (or cannot be there: a directory on its path is a file).

    :param path: the file to read.
    :raises ValueError: when the file holds no valid JSON (it was not written by us).
    """
    try:
        return jsontext.loads(path.read_bytes())
    except (FileNotFoundError, NotADirectoryError):
        return None
