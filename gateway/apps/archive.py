"""Checks a package tarball member by member before anything is written, then unpacks it.

Blocking (reads and writes files): run these functions in a thread.
"""

from __future__ import annotations

import copy
import os
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path

from gateway.apps.errors import UnsafeArchiveError
from gateway.filelayer import DIRECTORY_MODE, makedirs, makedirs_durably, sync_tree

MAX_MANIFEST_BYTES = 64 * 1024
#: Why a file that no tar reader opens (plain tar, gzip, bzip2, xz) is refused.
NOT_A_TARBALL = "neither a plain tar file nor one compressed with gzip, bzip2 or xz"
#: Whether this Python has PEP 706's extraction filters (tests turn it off to check that the
#: gateway's own checks suffice, as on Debian bookworm's Python 3.11.2).
HAS_DATA_FILTER = hasattr(tarfile, "data_filter")
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


def _open_tar(path: Path) -> tarfile.TarFile:
    """The tar archive at ``path``, its member names read as UTF-8, bytes that are not kept as
    lone surrogates. A pax header's name is always UTF-8 (Python's tarfile, bsdtar and macOS
    write non-ASCII names so); another header's was read in the locale's encoding, so one
    package's names depended on the locale it was installed under."""
    return tarfile.open(path, "r:*", encoding="utf-8", errors="surrogateescape")


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
    outside the tree (followed through the package's other links, as the kernel would)
    or that other members would be written through, hard links to anything but an
    earlier regular file of the archive, devices, FIFOs, and a name that appears twice
    for anything but a directory. Links are judged where they will be written: after the
    single top-level directory is stripped. This check is complete on its own; it does
    not rely on Python's extraction filter (Debian bookworm's Python has none).

    :raises UnsafeArchiveError: naming the first offending member.
    """
    size = path.stat().st_size
    if size > max_archive_bytes:
        raise UnsafeArchiveError(f"package is {size} bytes, over the {max_archive_bytes} limit")
    members: list[tarfile.TarInfo] = []
    try:
        tar = _open_tar(path)
    except tarfile.ReadError as exc:  # (its words: every method tried, as Python reprs, on five lines)
        raise UnsafeArchiveError(f"not a readable tar archive: {NOT_A_TARBALL}") from exc
    except (EOFError, OSError, ValueError) as exc:
        raise UnsafeArchiveError(f"not a readable tar archive: {exc}") from exc
    try:
        with tar:
            # One header at a time, not getmembers(): an archive of a huge number of tiny
            # members is refused after max_members + 1 headers, not read to its end first.
            for tar_member in tar:
                members.append(tar_member)
                if len(members) > max_members:
                    raise UnsafeArchiveError(f"over {max_members} members, the limit")
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
        raise UnsafeArchiveError(f"not a readable tar archive: {exc}") from exc
    named: list[tuple[str, tarfile.TarInfo]] = []
    total = 0
    for member in members:
        name = _clean(member.name, "member")
        if not name:
            continue
        if member.isreg():
            total += member.size
            if total > max_unpacked_bytes:
                raise UnsafeArchiveError(f"unpacks to over {max_unpacked_bytes} bytes")
        elif not (member.isdir() or member.issym() or member.islnk()):
            raise UnsafeArchiveError(f"member {name!r} is a device, FIFO or special file")
        named.append((name, member))
    prefix = _single_top_dir(named)
    placed = [(name[len(prefix):], member) for name, member in named if name != prefix[:-1]]
    _check_links(placed, prefix)
    stripped = tuple(name for name, _ in placed)
    manifest = None
    if "app.yaml" in stripped:
        manifest = _read_member(path, prefix + "app.yaml")
    return ArchiveContents(prefix, stripped, manifest, total)


#: Links followed in one resolution before giving up, as the kernel's ELOOP limit does.
MAX_LINK_HOPS = 40


def _check_links(placed: list[tuple[str, tarfile.TarInfo]], prefix: str) -> None:
    """Judge every member where it will be written (names relative to the version directory).

    :param placed: (name with ``prefix`` stripped, member).
    :param prefix: the stripped top-level directory ("" for none); hard link targets carry it.
    """
    kinds: dict[str, tarfile.TarInfo] = {}
    for name, member in placed:
        earlier = kinds.get(name)
        if earlier is not None and not (earlier.isdir() and member.isdir()):
            raise UnsafeArchiveError(f"member {name!r} appears twice")
        kinds[name] = member
    links = {name: member.linkname for name, member in placed if member.issym()}
    files: set[str] = set()
    for name, member in placed:
        parts = name.split("/")
        for depth in range(1, len(parts)):
            above = "/".join(parts[:depth])
            if above in links:
                raise UnsafeArchiveError(f"member {name!r} would be written through a link ({above!r})")
        if member.issym():
            target = member.linkname
            if target.startswith("/") or target.startswith("\\"):
                raise UnsafeArchiveError(f"link {name!r} points to absolute {target!r}")
            if _resolve(parts[:-1], target, links) is None:
                raise UnsafeArchiveError(f"link {name!r} -> {target!r} points outside the package")
        elif member.islnk():
            target = _clean(member.linkname, "hard link target")
            if prefix:
                target = target[len(prefix):] if target.startswith(prefix) else ""
            if target not in files:
                raise UnsafeArchiveError(f"hard link {name!r} to {target!r} outside the package")
            files.add(name)
        elif member.isreg():
            files.add(name)


def _resolve(base: list[str], target: str, links: dict[str, str],
             budget: list[int] | None = None) -> list[str] | None:
    """Where ``target``, read in directory ``base``, ends up; None when it leaves the package.

    Every component that is one of the package's own links is replaced by what it points to,
    so ``a -> .`` then ``b -> a/..`` is caught (``a/..`` is the package's parent, although
    ``normpath`` would call it ``.``). At most :data:`MAX_LINK_HOPS` links are followed in all,
    as the kernel does (links that expand into many links must not cost exponential time).

    :raises UnsafeArchiveError: when more links than that would have to be followed.
    """
    if budget is None:
        budget = [MAX_LINK_HOPS]
    parts = list(base)
    for component in target.split("/"):
        if component in ("", "."):
            continue
        if component == "..":
            if not parts:
                return None
            parts.pop()
            continue
        parts.append(component)
        key = "/".join(parts)
        if key in links:
            budget[0] -= 1
            if budget[0] < 0:
                raise UnsafeArchiveError(f"link {key!r} is part of a loop or a chain of over "
                                         f"{MAX_LINK_HOPS} links")
            linked = links[key]
            if linked.startswith("/"):
                return None
            resolved = _resolve(parts[:-1], linked, links, budget)
            if resolved is None:
                return None
            parts = resolved
    return parts


def _single_top_dir(named: list[tuple[str, tarfile.TarInfo]]) -> str:
    """The one top-level directory every member sits in, with a slash; "" when there is none.

    Only a real directory counts: a top-level link is never stripped (members under it are
    then refused as written through a link).
    """
    names = [name for name, _ in named]
    if any(n in _MARKERS for n in names):
        return ""
    tops = {n.split("/")[0] for n in names}
    if len(tops) != 1:
        return ""
    top = tops.pop()
    if not any(n.startswith(top + "/") for n in names):
        return ""
    if any(name == top and not member.isdir() for name, member in named):
        return ""
    return top + "/"


def _read_member(path: Path, name: str) -> str:
    with _open_tar(path) as tar:
        for member in tar.getmembers():
            if _clean(member.name, "member") == name and member.isreg():
                if member.size > MAX_MANIFEST_BYTES:
                    raise UnsafeArchiveError("app.yaml is too large")
                handle = tar.extractfile(member)
                assert handle is not None
                return handle.read().decode("utf-8", "replace")
    raise UnsafeArchiveError("app.yaml is not a regular file")


def extract_archive(path: Path, contents: ArchiveContents, dest: Path, sync: bool = True) -> None:
    """Unpack an archive that :func:`inspect_archive` accepted into ``dest``.

    Members are written under their stripped names, owned by the gateway's user, without
    setuid, setgid, sticky or group/other write bits (what Python's ``data`` filter does, done
    here so it holds on every Python). Where the filter exists it runs too, as a second guard.

    :param sync: fsync the unpacked tree (:func:`gateway.filelayer.sync_tree`) before returning;
        False for a caller that writes more there first and syncs the whole tree once itself.
    :raises UnsafeArchiveError: when that second guard refuses a member (``dest`` is removed).
    :raises OSError: when writing fails (a full disk); ``dest`` may hold part of the package.
    """
    # (an app's first version makes ``apps/<name>`` too: fsynced in ``apps`` at once; ``dest``
    # is fsynced with its contents below, or by the caller)
    makedirs_durably(str(dest.parent))
    dest.mkdir(DIRECTORY_MODE)
    with _open_tar(path) as tar:
        selected = []
        for member in tar.getmembers():
            name = _clean(member.name, "member")
            if not name or name + "/" == contents.prefix:
                continue
            linkname = member.linkname
            if member.islnk():
                linkname = _clean(linkname, "link")[len(contents.prefix):]
            renamed = copy.copy(member)
            renamed.name, renamed.linkname = _on_disk(name[len(contents.prefix):]), _on_disk(linkname)
            _tame(renamed)
            selected.append(renamed)
        # Its directories, and those its members are in that it lists no entry for (``tar czf
        # p.tgz bin/run.sh``), are made first as every directory the gateway makes: tarfile
        # made them 0777 less the umask (the "data" filter ignores a directory's mode), so that
        # under ``umask 0`` any user's files could take the place of the app's. Without the
        # filter those it lists get their tamed modes once unpacked. None is a link: members
        # written through one were refused.
        directories = {m.name for m in selected if m.isdir()} | {os.path.dirname(m.name) for m in selected}
        for directory in sorted(directories - {""}):
            makedirs(os.path.join(dest, directory))
        # Every member was checked by inspect_archive. PEP 706's "data" filter adds a second line
        # of defence where it exists (Python >= 3.11.4; Debian bookworm's 3.11.2, which the .deb
        # uses, lacks it).
        try:
            if HAS_DATA_FILTER:
                tar.extractall(dest, members=selected, filter="data")
            else:
                tar.extractall(dest, members=selected)
        except _FILTER_ERRORS as exc:
            shutil.rmtree(dest, ignore_errors=True)
            raise UnsafeArchiveError(f"refused while unpacking: {exc}") from exc
    # Durable before ``current`` may point at it: a power cut after the switch must not
    # leave the new version's files empty or missing.
    if sync:
        sync_tree(str(dest))


_FILTER_ERRORS: tuple[type[Exception], ...] = tuple(
    error for error in (getattr(tarfile, "FilterError", None),) if error is not None)


def _on_disk(name: str) -> str:
    """``name`` (as :func:`_open_tar` reads it) as the text that names its very bytes on disk
    under this process's file system encoding: a package's ``données.txt`` is written as the
    UTF-8 it was packed as under any locale (under ``LC_ALL=C`` with ``PYTHONUTF8=0`` a pax
    name raised ``UnicodeEncodeError``, and a Latin-1 locale wrote its Latin-1 bytes)."""
    return os.fsdecode(name.encode("utf-8", "surrogateescape"))


def _tame(member: tarfile.TarInfo) -> None:
    """Owner: the gateway's user; modes as the ``data`` filter leaves them."""
    member.uid, member.gid, member.uname, member.gname = os.getuid(), os.getgid(), "", ""
    mode = member.mode & 0o755
    if member.isreg() or member.islnk():
        if not mode & 0o100:
            mode &= ~0o111
        mode |= 0o600
    elif member.isdir():
        mode |= 0o700
    member.mode = mode
