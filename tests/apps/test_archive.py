"""Unsafe packages are refused before anything is written; safe ones unpack."""

from __future__ import annotations

import gzip
import os
import stat
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from gateway.apps import archive
from gateway.apps.archive import extract_archive, inspect_archive
from gateway.apps.errors import UnsafeArchiveError
from tests.apps.packages import build_tarball, member
from tests.test_filelayer import record_fsyncs


def inspect(path: Path, **limits: int):  # type: ignore[no-untyped-def]
    args = {"max_archive_bytes": 10**7, "max_unpacked_bytes": 10**7, "max_members": 100}
    args.update(limits)
    return inspect_archive(path, **args)


class UnsafeTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = Path(self.mktemp())
        self.dir.mkdir()

    def refused(self, pattern: str, files: dict[str, str] | None = None,
                extra: list[tarfile.TarInfo] | None = None, **limits: int) -> None:
        path = build_tarball(self.dir / "p.v1.tar.gz", {"install.sh": "", **(files or {})},
                             extra=extra)
        with self.assertRaisesRegex(UnsafeArchiveError, pattern):
            inspect(path, **limits)

    def test_absolute_path(self) -> None:
        """A member with an absolute path is refused."""
        self.refused("absolute", {"/etc/passwd": "x"})

    def test_dot_dot(self) -> None:
        """A member with '..' is refused."""
        self.refused("'..'", {"a/../../evil": "x"})

    def test_symlink_out(self) -> None:
        """Symbolic links pointing outside the tree are refused, relative or absolute."""
        self.refused("points outside", extra=[member("l", tarfile.SYMTYPE, "../../etc")])
        self.refused("absolute", extra=[member("l", tarfile.SYMTYPE, "/etc/passwd")])

    def test_write_through_symlink(self) -> None:
        """A member written through an in-tree link (link chains) is refused."""
        self.refused("through a link", extra=[member("d", tarfile.SYMTYPE, "."),
                                              member("d/x", tarfile.SYMTYPE, "../..")])

    def test_hard_link_out(self) -> None:
        """A hard link to anything not in the archive is refused."""
        self.refused("hard link", extra=[member("h", tarfile.LNKTYPE, "/etc/shadow")])
        self.refused("hard link", extra=[member("h", tarfile.LNKTYPE, "elsewhere")])

    def test_devices_and_fifos(self) -> None:
        """Device files and FIFOs are refused."""
        for kind in (tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE):
            self.refused("device", extra=[member("dev", kind)])

    def test_over_size(self) -> None:
        """Over-size archives, unpacked sizes and member counts are refused."""
        self.refused("over the 100 limit", {"big": "x"}, max_archive_bytes=100)
        self.refused("unpacks to over", {"big": "x" * 5000}, max_unpacked_bytes=4000)
        self.refused("members", {"a": "", "b": ""}, max_members=2)

    def test_an_app_yaml_that_is_too_big_or_no_file_is_refused(self) -> None:
        """An app.yaml over 64 KiB, or one that is not a regular file, is refused (docs/apps.md)."""
        self.refused("app.yaml is too large", {"app.yaml": "#" * (64 * 1024 + 1)})
        self.refused("app.yaml is not a regular file", {"x.yaml": "name: x\n"},
                     extra=[member("app.yaml", tarfile.SYMTYPE, "x.yaml")])

    def test_many_members_stops_reading(self) -> None:
        """An archive of many tiny members is refused after ``max_members + 1`` headers are
        read, not scanned to its end first."""
        path = build_tarball(self.dir / "p.v1.tar.gz", {f"f{i}": "" for i in range(500)})
        headers = []
        read_header = tarfile.TarInfo.fromtarfile

        def counting(tar: tarfile.TarFile) -> tarfile.TarInfo:
            headers.append(read_header(tar))
            return headers[-1]

        self.patch(tarfile.TarInfo, "fromtarfile", counting)
        with self.assertRaisesRegex(UnsafeArchiveError, "members"):
            inspect(path, max_members=10)
        self.assertEqual(len(headers), 11)

    def test_not_a_tarball(self) -> None:
        """A file that is not a tar archive is refused."""
        path = self.dir / "x.v1.tar.gz"
        path.write_bytes(b"not a tarball")
        with self.assertRaisesRegex(UnsafeArchiveError, "not a readable"):
            inspect(path)

    def test_a_file_no_tar_reader_opens_is_refused_in_one_sentence(self) -> None:
        """Junk, an empty file or a gzip of something else is refused saying it is no tar
        archive, in one line: before, the refusal (an install's message, the admin API's and
        gatewayctl's answer) was tarfile's five lines of each method's Python repr
        (``- method gz: ReadError('not a gzip file')`` ...)."""
        for content in (b"not a tarball", b"", gzip.compress(b"plain text, no tar" * 10)):
            path = self.dir / "x.v1.tar.gz"
            path.write_bytes(content)
            with self.assertRaises(UnsafeArchiveError) as caught:
                inspect(path)
            self.assertEqual(str(caught.exception), "not a readable tar archive: neither a plain tar file nor one"
                                                    " compressed with gzip, bzip2 or xz", content[:20])


class StrippedTopDirTests(SynchronousTestCase):
    """Links are judged where they are written: after the one top-level directory is stripped,
    and followed through the package's own links. These hold with or without Python's tar filter."""

    def setUp(self) -> None:
        self.dir = Path(self.mktemp())
        self.dir.mkdir()

    def refused(self, pattern: str, files: dict[str, str], extra: list[tarfile.TarInfo]) -> None:
        path = build_tarball(self.dir / "pkg.v1.tar.gz", files, extra=extra)
        with self.assertRaisesRegex(UnsafeArchiveError, pattern):
            inspect(path)

    def test_link_to_parent_in_top_dir(self) -> None:
        """``pkg/up -> ..`` is inside ``pkg/`` but, once ``pkg/`` is stripped, points above the
        version directory: refused."""
        self.refused("'up' -> '..' points outside", {"pkg/install.sh": ""},
                     [member("pkg/up", tarfile.SYMTYPE, "..")])
        self.refused("points outside", {"pkg/install.sh": ""},
                     [member("pkg/lib/up", tarfile.SYMTYPE, "../../x")])

    def test_link_through_another_link(self) -> None:
        """``a -> .`` and ``b -> a/..``: normpath calls ``a/..`` the package itself, but through the
        link it is the package's parent: refused."""
        self.refused("'b' -> 'a/..' points outside", {"install.sh": ""},
                     [member("a", tarfile.SYMTYPE, "."), member("b", tarfile.SYMTYPE, "a/..")])
        self.refused("points outside", {"install.sh": ""},
                     [member("b", tarfile.SYMTYPE, "a/../x"), member("a", tarfile.SYMTYPE, "sub/../..")])

    def test_link_loop(self) -> None:
        """Links that point at each other are refused, not followed forever."""
        self.refused("loop", {"install.sh": ""},
                     [member("a", tarfile.SYMTYPE, "b/x"), member("b", tarfile.SYMTYPE, "a/y")])

    def test_links_that_fan_out_cost_no_more_than_forty_hops(self) -> None:
        """Links that each expand into two others (2^30 paths to follow) are refused at once."""
        links = [member("l0", tarfile.SYMTYPE, "d")]
        links += [member(f"l{i}", tarfile.SYMTYPE, f"l{i - 1}/../l{i - 1}") for i in range(1, 31)]
        self.refused("chain of over 40 links", {"install.sh": "", "d/f": ""}, links)

    def test_top_level_link_is_not_stripped(self) -> None:
        """A top-level name that is a link is no directory to strip: members under it are written
        through a link."""
        self.refused("through a link", {"pkg/install.sh": ""}, [member("pkg", tarfile.SYMTYPE, "elsewhere")])

    def test_name_twice(self) -> None:
        """A name that appears twice (a file replaced by a link, say) is refused."""
        self.refused("appears twice", {"install.sh": "", "run": ""}, [member("run", tarfile.SYMTYPE, "install.sh")])

    def test_hard_link_out_of_top_dir(self) -> None:
        """A hard link in a top-level directory to a file outside it is refused."""
        self.refused("hard link", {"pkg/install.sh": ""}, [member("pkg/h", tarfile.LNKTYPE, "other/f")])


class SafeTests(SynchronousTestCase):
    def test_in_tree_links_and_top_dir(self) -> None:
        """In-tree links are fine; one top-level directory is stripped."""
        d = Path(self.mktemp())
        d.mkdir()
        path = build_tarball(d / "p.v1.tar.gz", {"p/install.sh": "echo", "p/lib/a.py": "A"},
                             extra=[member("p/link", tarfile.SYMTYPE, "lib/a.py"),
                                    member("p/hard", tarfile.LNKTYPE, "p/lib/a.py")])
        contents = inspect(path)
        self.assertEqual(contents.prefix, "p/")
        self.assertIn("install.sh", contents.members)
        extract_archive(path, contents, d / "out")
        self.assertEqual((d / "out" / "link").read_text(), "A")
        self.assertEqual((d / "out" / "hard").read_text(), "A")
        self.assertTrue((d / "out" / "install.sh").is_file())

    def test_the_unpacked_tree_is_durable(self) -> None:
        """Every unpacked file and directory, and the directory it was unpacked in, is fsynced
        before the install goes on to point ``current`` at it: nothing was, so a power cut
        after an install could leave the current version's files empty or missing."""
        d = Path(self.mktemp()).absolute()
        d.mkdir()
        path = build_tarball(d / "p.v1.tar.gz", {"p/install.sh": "echo", "p/lib/a.py": "A"},
                             extra=[member("p/link", tarfile.SYMTYPE, "lib/a.py")])
        fsynced = record_fsyncs(self)
        extract_archive(path, inspect(path), d / "out")
        self.assertEqual(sorted(set(fsynced)), sorted(str(p) for p in (
            d, d / "out", d / "out" / "install.sh", d / "out" / "lib", d / "out" / "lib" / "a.py")))

    def test_an_apps_first_version_is_durable_in_the_apps_folder(self) -> None:
        """An app's first version makes ``apps/<name>`` too, and that directory's entry in
        ``apps`` is fsynced: only the version's parent was, so a power cut after the first
        install could take the whole app, its ``current`` with it."""
        d = Path(self.mktemp()).absolute()
        root = d / "apps"
        root.mkdir(parents=True)
        path = build_tarball(d / "p.v1.tar.gz", {"p/install.sh": "echo"})
        fsynced = record_fsyncs(self)
        extract_archive(path, inspect(path), root / "p" / "1")
        self.assertIn(str(root), fsynced)
        self.assertTrue((root / "p" / "1" / "install.sh").is_file())

    def test_manifest_is_read(self) -> None:
        """app.yaml's text is read without unpacking."""
        d = Path(self.mktemp())
        d.mkdir()
        path = build_tarball(d / "x.tar.gz", {"app.yaml": "name: x\n"})
        self.assertEqual(inspect(path).manifest, "name: x\n")

    def with_and_without_the_filter(self) -> Iterator[Path]:
        """A new directory to unpack in without Python's tar filter, then with it (where it is)."""
        for with_filter in (False, True):
            if with_filter and not hasattr(tarfile, "data_filter"):
                continue
            self.patch(archive, "HAS_DATA_FILTER", with_filter)
            d = Path(self.mktemp())
            d.mkdir()
            yield d

    def test_modes_and_owner_are_tamed(self) -> None:
        """Unpacked files lose setuid/setgid/sticky and group/other write bits, with or without
        Python's tar filter."""
        for d in self.with_and_without_the_filter():
            path = build_tarball(d / "p.v1.tar.gz", {"install.sh": "", "tool": "x"}, mode=0o6777)
            extract_archive(path, inspect(path), d / "out")
            mode = stat.S_IMODE(os.stat(d / "out" / "tool").st_mode)
            self.assertEqual(mode & 0o7022, 0, oct(mode))
            self.assertEqual(mode & 0o700, 0o700, oct(mode))
            self.assertEqual(os.stat(d / "out" / "tool").st_uid, os.getuid())

    def test_no_directory_of_a_package_is_writable_by_others_under_any_umask(self) -> None:
        """A package's directories, those it lists no entry for (``tar czf p.tgz bin/run.sh``)
        too, are made as every directory the gateway makes is (docs/configuration.md,
        ``state_dir``): never writable by its group or by every user, whatever the umask. tarfile
        made them 0777 less the umask (with Python's "data" filter, which ignores a directory's
        mode, those it lists too): under ``umask 0`` every user could put their own ``run.sh``
        in place of the app's, which the gateway runs."""
        self.addCleanup(os.umask, os.umask(0))
        for d in self.with_and_without_the_filter():
            path = build_tarball(d / "p.v1.tar.gz", {"p/install.sh": "", "p/bin/deep/run.sh": "x"},
                                 extra=[member("p/data", tarfile.DIRTYPE)])
            extract_archive(path, inspect(path), d / "out")
            for directory in (d / "out" / "bin", d / "out" / "bin" / "deep", d / "out" / "data"):
                mode = stat.S_IMODE(os.stat(directory).st_mode)
                self.assertEqual(mode & 0o022, 0, f"{directory}: {mode:o}")
            self.assertEqual((d / "out" / "bin" / "deep" / "run.sh").read_text(), "x")

    def test_unpacks_without_the_filter(self) -> None:
        """Without Python's tar filter (Debian bookworm's 3.11.2) a safe package with links in a
        top-level directory unpacks the same."""
        self.patch(archive, "HAS_DATA_FILTER", False)
        d = Path(self.mktemp())
        d.mkdir()
        path = build_tarball(d / "p.v1.tar.gz", {"p/install.sh": "echo", "p/lib/a.py": "A"},
                             extra=[member("p/link", tarfile.SYMTYPE, "lib/a.py"),
                                    member("p/lib/back", tarfile.SYMTYPE, "../install.sh"),
                                    member("p/hard", tarfile.LNKTYPE, "p/lib/a.py")])
        extract_archive(path, inspect(path), d / "out")
        self.assertEqual((d / "out" / "link").read_text(), "A")
        self.assertEqual((d / "out" / "lib" / "back").read_text(), "echo")
        self.assertEqual((d / "out" / "hard").read_text(), "A")


#: Builds a pax and a GNU package of non-ASCII names (one of them Latin-1 bytes, a symbolic
#: link to a UTF-8 one), unpacks each with the gateway's functions, prints the bytes of what
#: was written: run under the locale a test gives it.
_UNPACK = r"""
import io, os, sys, tarfile
from pathlib import Path
from gateway.apps.archive import extract_archive, inspect_archive
top = Path(sys.argv[1])
for fmt in (tarfile.PAX_FORMAT, tarfile.GNU_FORMAT):
    path = top / f"p{fmt}.v1.tar.gz"
    with tarfile.open(path, "w:gz", format=fmt, encoding="utf-8", errors="surrogateescape") as tar:
        for name, data in (("p/install.sh", b""), ("p/donn\u00e9es/\u6e29\u5ea6.txt", b"x"),
                           ("p/caf\udce9", b"y")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("p/lien")
        link.type, link.linkname = tarfile.SYMTYPE, "donn\u00e9es/\u6e29\u5ea6.txt"
        tar.addfile(link)
    out = top / f"out{fmt}"
    extract_archive(path, inspect_archive(path, 10**6, 10**6, 100), out)
    print(sorted(os.fsencode(p.relative_to(out)) for p in out.rglob("*")), os.readlink(out / "lien") ==
          os.fsdecode("donn\u00e9es/\u6e29\u5ea6.txt".encode()), (out / "lien").read_text())
"""


class NameTests(SynchronousTestCase):
    """Member names are written as the bytes they were packed as, under any locale."""

    def test_non_ascii_names_unpack_as_packed_under_any_locale(self) -> None:
        """A pax package (Python's tarfile, bsdtar and macOS write non-ASCII names so) holding
        ``données/温度.txt`` failed to unpack under ``LC_ALL=C`` with ``PYTHONUTF8=0``
        (``UnicodeEncodeError``, the install failed with a traceback; under a Latin-1 locale
        a pax name went to disk in Latin-1, not as packed). Under that locale and under the
        unit's (none: Python's UTF-8 mode), both formats unpack every name, a Latin-1
        ``caf\\xe9`` and a link's target included, as the bytes they were packed as."""
        base = {name: value for name, value in os.environ.items() if not name.startswith(("LC_", "LANG", "PYTHON"))}
        base["PYTHONPATH"] = os.pathsep.join(sys.path)
        expected = str([b"caf\xe9", b"donn\xc3\xa9es", "données/温度.txt".encode(), b"install.sh", b"lien"]) + " True x"
        for locale in ({"LC_ALL": "C", "PYTHONUTF8": "0"}, {}):
            top = Path(self.mktemp())
            top.mkdir()
            run = subprocess.run([sys.executable, "-c", _UNPACK, str(top)], env={**base, **locale},
                                 capture_output=True, timeout=30)
            self.assertEqual(run.stdout.decode().splitlines(), [expected, expected], (locale, run.stderr.decode()))
