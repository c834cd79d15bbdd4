"""Builds package tarballs for tests: GWE tarballs, native packages, and malicious ones."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path


def build_tarball(path: Path, files: dict[str, str], mode: int = 0o755,
                  extra: list[tarfile.TarInfo] | None = None) -> Path:
    """Write a .tar.gz holding ``files`` (name -> text) and the raw ``extra`` members."""
    with tarfile.open(path, "w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = mode
            tar.addfile(info, io.BytesIO(data))
        for info in extra or []:
            tar.addfile(info)
    return path


def member(name: str, kind: bytes, linkname: str = "") -> tarfile.TarInfo:
    """A raw tar member of type ``kind`` (tarfile.SYMTYPE, LNKTYPE, CHRTYPE ...)."""
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info


def gwe_package(directory: Path, name: str, version: str, script: str,
                supervisor_conf: str | None = None, install_sh: str = "exit 0\n") -> Path:
    """A GWE tarball ``<name>.v<version>.tar.gz`` with install.sh, run.py, supervisor.conf."""
    files = {"install.sh": install_sh, "run.py": script}
    if supervisor_conf is not None:
        files["supervisor.conf"] = supervisor_conf
    return build_tarball(directory / f"{name}.v{version}.tar.gz", files)
