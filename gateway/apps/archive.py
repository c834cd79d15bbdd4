"""Checks a package tarball member by member before anything is written, then unpacks it.

Blocking (reads and writes files): run these functions in a thread.
"""

from __future__ import annotations

import posixpath
import tarfile
from dataclasses import dataclass
from pathlib import Path

from gateway.apps.errors import UnsafeArchiveError

MAX_MANIFEST_BYTES = 64 * 1024
_MARKERS = ("install.sh", "app.yaml", "supervisor.conf")


@dataclass(frozen=True)
class ArchiveContents:
    """What a safe archive holds.

    :param prefix: a single top-level directory to strip ("" when files are at the top).
    :param members: every member's path, prefix stripped.
    :param manifest: the ``app.yaml`` text, when the package has one.
    :param unpacked_bytes: the total size of the regular files.
    """

    prefix: str
    members: tuple[str, ...]
    manifest: str | None
    unpacked_bytes: int


def _clean(name: str, what: str) -> str:
    if name.startswith("/") or name.startswith("\\"):
        raise UnsafeArchiveError(f"{what} {name!r} is an absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchiveError(f"{what} {name!r} contains '..'")
    return "/".join(parts)


def inspect_archive(path: Path, max_archive_bytes: int, max_unpacked_bytes: int,
                    max_members: int) -> ArchiveContents:
    """Refuse anything unsafe; describe the rest.

    Refused: a file over ``max_archive_bytes``, more than ``max_members`` members or
    ``max_unpacked_bytes`` unpacked, absolute paths, ``..``, symbolic links that point
    outside the tree or that other members would be written through, hard links to
    anything but an earlier regular file of the archive, devices, FIFOs.

    :raises UnsafeArchiveError: naming the first offending member.
    """
    size = path.stat().st_size
    if size > max_archive_bytes:
        raise UnsafeArchiveError(f"package is {size} bytes, over the {max_archive_bytes} limit")
    try:
        with tarfile.open(path, "r:*") as tar:
            members = tar.getmembers()
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise UnsafeArchiveError(f"not a readable tar archive: {exc}") from exc
    if len(members) > max_members:
        raise UnsafeArchiveError(f"{len(members)} members, over the {max_members} limit")
    files: set[str] = set()
    links: set[str] = set()
    names: list[str] = []
    total = 0
    for member in members:
        name = _clean(member.name, "member")
        if not name:
            continue
        for depth in range(1, name.count("/") + 1):
            if "/".join(name.split("/")[:depth]) in links:
                raise UnsafeArchiveError(f"member {name!r} would be written through a link")
        if member.issym():
            target = member.linkname
            if target.startswith("/"):
                raise UnsafeArchiveError(f"link {name!r} points to absolute {target!r}")
            resolved = posixpath.normpath(posixpath.join(posixpath.dirname(name), target))
            if resolved == ".." or resolved.startswith("../"):
                raise UnsafeArchiveError(f"link {name!r} points outside the package")
            links.add(name)
        elif member.islnk():
            target = _clean(member.linkname, "hard link target")
            if target not in files:
                raise UnsafeArchiveError(f"hard link {name!r} to {target!r} outside the package")
            files.add(name)
        elif member.isreg():
            total += member.size
            if total > max_unpacked_bytes:
                raise UnsafeArchiveError(f"unpacks to over {max_unpacked_bytes} bytes")
            files.add(name)
        elif not member.isdir():
            raise UnsafeArchiveError(f"member {name!r} is a device, FIFO or special file")
        names.append(name)
    prefix = _single_top_dir(names)
    stripped = tuple(n[len(prefix):] for n in names if n != prefix.rstrip("/"))
    manifest = None
    if "app.yaml" in stripped:
        manifest = _read_member(path, prefix + "app.yaml")
    return ArchiveContents(prefix, stripped, manifest, total)


def _single_top_dir(names: list[str]) -> str:
    if any(n in _MARKERS for n in names):
        return ""
    tops = {n.split("/")[0] for n in names}
    if len(tops) == 1:
        top = tops.pop()
        if any(n.startswith(top + "/") for n in names):
            return top + "/"
    return ""


def _read_member(path: Path, name: str) -> str:
    with tarfile.open(path, "r:*") as tar:
        for member in tar.getmembers():
            if _clean(member.name, "member") == name and member.isreg():
                if member.size > MAX_MANIFEST_BYTES:
                    raise UnsafeArchiveError("app.yaml is too large")
                handle = tar.extractfile(member)
                assert handle is not None
                return handle.read().decode("utf-8", "replace")
    raise UnsafeArchiveError("app.yaml is not a regular file")


def extract_archive(path: Path, contents: ArchiveContents, dest: Path) -> None:
    """Unpack an archive that :func:`inspect_archive` accepted into ``dest``.

    Python's ``data`` extraction filter runs too, as a second guard.
    """
    dest.mkdir(parents=True)
    with tarfile.open(path, "r:*") as tar:
        selected = []
        for member in tar.getmembers():
            name = _clean(member.name, "member")
            if not name or name + "/" == contents.prefix:
                continue
            linkname = member.linkname
            if member.islnk():
                linkname = _clean(linkname, "link")[len(contents.prefix):]
            selected.append(member.replace(name=name[len(contents.prefix):],
                                           linkname=linkname, deep=False))
        tar.extractall(dest, members=selected, filter="data")
