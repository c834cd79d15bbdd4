"""SWUpdate bundles (``.swu``): ``sw-description`` read, each image extracted and checked
against its ``sha256`` before anything is installed (blocking: run off the reactor)."""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.filelayer import makedirs
from gateway.updates.swu.cpio import BundleError, CpioReader
from gateway.updates.swu.libconfig import LibconfigError, loads

#: SWUpdate handler (``type``) -> the gateway's update target.
HANDLERS = {"gateway-app": "app", "shellscript": "script", "gateway-deb": "gateway"}
_SECTIONS = ("images", "files", "scripts")
_MAX_DESCRIPTION = 1 << 20
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")


class UnknownHandler(BundleError):
    """The bundle has images for handlers the gateway does not have.

    :param handlers: the unknown handler names.
    """

    def __init__(self, message: str, handlers: list[str]) -> None:
        super().__init__(message)
        self.handlers = handlers


@dataclass(frozen=True)
class Image:
    """One image of a bundle.

    :param filename: its member name in the archive.
    :param handler: SWUpdate's ``type``.
    :param sha256: its digest as the description states it.
    :param name: its ``name`` (or the file name).
    :param version: its ``version`` (or the bundle's).
    """

    filename: str
    handler: str
    sha256: str
    name: str
    version: str


@dataclass(frozen=True)
class Description:
    """What ``sw-description`` says: the bundle's version and its images, in order."""

    version: str
    images: tuple[Image, ...]


def parse_description(text: str) -> Description:
    """Read ``sw-description`` (images, files and scripts at the top of ``software``).

    :raises BundleError: for bad syntax or a malformed image entry.
    """
    software = loads(text).get("software")
    if not isinstance(software, dict):
        raise BundleError("sw-description has no software group")
    version = str(software.get("version", ""))
    if not any(isinstance(software.get(s), list) for s in _SECTIONS):
        nested = [k for k, v in software.items() if isinstance(v, dict)]
        raise BundleError("sw-description lists no images, files or scripts at the top of software"
                          + (f" (board/selection groups {', '.join(nested)} are not supported)" if nested else ""))
    images = []
    for section in _SECTIONS:
        for i, raw in enumerate(software.get(section) or []):
            where = f"software.{section}[{i}]"
            if not isinstance(raw, dict):
                raise BundleError(f"{where}: a group is required")
            filename = raw.get("filename")
            if not isinstance(filename, str) or not filename or "/" in filename or filename in (".", ".."):
                raise BundleError(f"{where}.filename: a plain file name is required")
            default = "shellscript" if section == "scripts" else "raw"
            handler = str(raw.get("type", default))
            sha256 = raw.get("sha256")
            if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256):
                raise BundleError(f"{where}.sha256: a SHA-256 digest is required ({filename})")
            images.append(Image(filename, handler, sha256.lower(), str(raw.get("name") or filename),
                                str(raw.get("version") or version)))
    return Description(version, tuple(images))


def unknown_handlers(description: Description) -> list[str]:
    """The handlers of the description that the gateway does not have, sorted."""
    return sorted({image.handler for image in description.images if image.handler not in HANDLERS})


def read_description(bundle: Path) -> Description:
    """Read only the bundle's first member, which must be ``sw-description``."""
    with bundle.open("rb") as stream:
        reader = CpioReader(stream)
        return _description(reader, bundle)


def _description(reader: CpioReader, bundle: Path) -> Description:
    first = next(reader.entries(), None)
    if first is None or first.name != "sw-description":
        raise BundleError(f"{bundle.name}: sw-description must be the first member of the archive")
    if first.size > _MAX_DESCRIPTION:
        raise BundleError(f"{bundle.name}: sw-description is larger than {_MAX_DESCRIPTION} bytes")
    parts: list[bytes] = []
    reader.copy(parts.append)
    try:
        return parse_description(b"".join(parts).decode("utf-8"))
    except UnicodeDecodeError as error:
        raise BundleError(f"{bundle.name}: sw-description is not UTF-8") from error
    except LibconfigError as error:
        raise BundleError(f"{bundle.name}: sw-description: {error}") from error
    except BundleError as error:
        raise BundleError(f"{bundle.name}: {error}") from error


def unpack(bundle: Path, directory: Path) -> tuple[Description, list[tuple[Image, Path]]]:
    """Extract every image the description lists into ``directory``, each checked against its
    sha256 (and the newc checksum when the archive has them), fsynced.

    :raises UnknownHandler: before extracting anything, for handlers the gateway lacks.
    :raises BundleError: for a digest mismatch, a missing image, a broken archive.
    """
    with bundle.open("rb") as stream:
        reader = CpioReader(stream)
        description = _description(reader, bundle)
        unknown = unknown_handlers(description)
        if unknown:
            raise UnknownHandler(f"{bundle.name}: no handler in this gateway for {', '.join(unknown)} "
                                 f"(it has {', '.join(sorted(HANDLERS))})", unknown)
        wanted = {image.filename: image for image in description.images}
        makedirs(str(directory))
        found: dict[str, Path] = {}
        for entry in reader.entries():
            image = wanted.get(entry.name)
            if image is None or entry.name in found:
                continue  # sw-description.sig, or a member nothing refers to
            path = directory / entry.name
            digest = hashlib.sha256()
            with path.open("wb") as out:
                def write(chunk: bytes, out: Any = out) -> None:
                    digest.update(chunk)
                    out.write(chunk)

                total = reader.copy(write, entry.checksum is not None)
                out.flush()
                os.fsync(out.fileno())
            if entry.checksum is not None and total != entry.checksum:
                path.unlink()
                raise BundleError(f"{bundle.name}: member {entry.name} fails its cpio checksum")
            if not hmac.compare_digest(digest.hexdigest(), image.sha256):
                path.unlink()
                raise BundleError(f"{bundle.name}: image {entry.name} has sha256 {digest.hexdigest()}, "
                                  f"sw-description says {image.sha256}")
            found[entry.name] = path
        missing = [name for name in wanted if name not in found]
        if missing:
            raise BundleError(f"{bundle.name}: images missing from the archive: {', '.join(missing)}")
    return description, [(image, found[image.filename]) for image in description.images]
