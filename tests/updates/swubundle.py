"""Building SWUpdate bundles for tests: a cpio ``newc`` archive, ``sw-description`` first."""

from __future__ import annotations

import hashlib


def _member(name: str, data: bytes, crc: bool) -> bytes:
    raw = name.encode() + b"\0"
    fields = [0, 0o100644, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(raw), sum(data) & 0xFFFFFFFF if crc else 0]
    header = (b"070702" if crc else b"070701") + b"".join(b"%08X" % f for f in fields)
    out = header + raw
    out += b"\0" * ((4 - len(out) % 4) % 4)
    out += data
    out += b"\0" * ((4 - len(data) % 4) % 4)
    return out


def cpio(members: list[tuple[str, bytes]], crc: bool = False) -> bytes:
    """A newc archive of ``members`` in order, with its trailer."""
    return b"".join(_member(n, d, crc) for n, d in members) + _member("TRAILER!!!", b"", crc)


def description(version: str, images: list[tuple[str, str, bytes]], scripts: list[tuple[str, bytes]] = (),
                digests: dict[str, str] | None = None) -> str:
    """An ``sw-description`` listing ``images`` (filename, handler type, data) and ``scripts``."""
    digests = digests or {}

    def entry(name: str, kind: str, data: bytes) -> str:
        digest = digests.get(name, hashlib.sha256(data).hexdigest())
        return f'{{ filename = "{name}"; type = "{kind}"; sha256 = "{digest}"; }}'

    text = f'software =\n{{\n  version = "{version}";\n  description = "test " "bundle";\n'
    text += "  images: (\n    " + ",\n    ".join(entry(n, k, d) for n, k, d in images) + "\n  );\n"
    if scripts:
        text += "  scripts: (\n    " + ",\n    ".join(entry(n, "shellscript", d) for n, d in scripts) + "\n  );\n"
    return text + "}\n"


def bundle(version: str, images: list[tuple[str, str, bytes]], scripts: list[tuple[str, bytes]] = (),
           digests: dict[str, str] | None = None, crc: bool = False) -> bytes:
    """A whole ``.swu``."""
    text = description(version, images, scripts, digests)
    members = [("sw-description", text.encode())] + [(n, d) for n, _, d in images] + list(scripts)
    return cpio(members, crc)
