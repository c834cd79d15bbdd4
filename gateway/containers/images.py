"""Images: pull by reference (credentials from a file, plain HTTP only where allowed), load a
verified OCI archive, and prune the images the gateway brought in and no longer needs."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import Any, Callable, Iterable

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.logger import Logger

from gateway import jsontext
from gateway.containers.errors import ImageError, RuntimeFailure
from gateway.containers.runtime import ContainerRuntime, ImageInfo

log = Logger()

Blocking = Callable[[Callable[[], Any]], "Deferred[Any]"]


def registry_of(reference: str) -> str:
    """The registry host of an image reference (``docker.io`` when it names none)."""
    first = reference.split("/", 1)[0]
    if "/" in reference and ("." in first or ":" in first or first == "localhost"):
        return first
    return "docker.io"


#: The keys ``docker login`` files Docker Hub's credentials under in a docker ``config.json``
#: (podman's ``auth.json`` says ``docker.io``).
DOCKER_HUB_KEYS = ["https://index.docker.io/v1/", "index.docker.io"]


def read_credentials(path: Path, registry: str) -> tuple[str, str] | None:
    """The user and password for ``registry`` in an ``auth.json`` / docker ``config.json``.

    :raises ImageError: when the file exists but cannot be read or parsed, or is not in that
        format.
    """
    try:
        data = jsontext.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ImageError(f"credentials file {path}: {exc}") from exc
    auths = data.get("auths", {}) if isinstance(data, dict) else None
    if not isinstance(auths, dict):
        raise ImageError(f"credentials file {path}: not in the auth.json / config.json format (a mapping with "
                         "an 'auths' mapping)")
    keys = [registry, f"https://{registry}"] + (DOCKER_HUB_KEYS if registry == "docker.io" else [])
    entry = next((auths[key] for key in keys if auths.get(key)), None)
    if entry is None:
        return None
    if not isinstance(entry, dict):
        raise ImageError(f"credentials file {path}: {registry}: not a mapping with auth, or username and password")
    if entry.get("username") is not None:
        return str(entry["username"]), str(entry.get("password", ""))
    try:
        user, _, password = base64.b64decode(str(entry.get("auth", ""))).decode().partition(":")
    except (ValueError, UnicodeDecodeError) as exc:
        raise ImageError(f"credentials file {path}: {registry}: bad auth: {exc}") from exc
    return user, password


def sha256_file(path: Path) -> str:
    """The hex sha256 of a file (blocking)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class ImageFetcher:
    """Brings images into the runtime's store.

    :param runtime: the container runtime.
    :param blocking: runs a blocking callable off the reactor thread.
    :param insecure_registries: registries reached without TLS verification (plain HTTP).
    :param credentials_file: an ``auth.json``; None for anonymous pulls.
    """

    def __init__(self, runtime: ContainerRuntime, blocking: Blocking,
                 insecure_registries: Iterable[str], credentials_file: Path | None) -> None:
        self._runtime = runtime
        self._blocking = blocking
        self._insecure = set(insecure_registries)
        self._credentials = credentials_file
        self._closed = False

    def close(self) -> None:
        """The service stops: no pull or load is sent to the runtime after this, not even one whose
        disk work (the credentials file's read, an archive's sha256: a thread) was under way; it
        fails with :class:`ImageError` instead. (An image brought in after the stop would be
        recorded by no desired state, so no prune would ever remove it.)"""
        self._closed = True

    @inlineCallbacks
    def pull(self, reference: str) -> Any:
        """Pull ``reference``; fires with its :class:`ImageInfo`.

        :raises ImageError: unknown reference, registry down or refusing, bad credentials file.
        """
        registry = registry_of(reference)
        credentials = None
        path = self._credentials
        if path is not None:
            credentials = yield self._blocking(lambda: read_credentials(path, registry))
        if self._closed:
            raise ImageError(f"{reference} was not pulled")
        info = yield self._runtime.pull(reference, credentials, registry not in self._insecure)
        return info

    @inlineCallbacks
    def load(self, archive: Path, reference: str, digests: dict[str, str]) -> Any:
        """Check ``archive`` against its announced sha256, load it and find ``reference`` in it.

        :param archive: the OCI archive (an update artifact).
        :param reference: the image the description names; it must be in the archive.
        :param digests: the artifact's announced digests (``sha256`` is required).
        :raises ImageError: no or wrong digest, not an image archive, image not in it (its
            ``brought`` then names the images the archive held, loaded all the same).
        """
        expected = (digests.get("sha256") or "").lower()
        if not expected:
            raise ImageError(f"{archive.name}: an image archive needs an announced sha256 digest")
        actual = yield self._blocking(lambda: sha256_file(archive))
        if actual != expected:
            raise ImageError(f"{archive.name}: sha256 is {actual}, not the announced {expected}")
        if self._closed:
            raise ImageError(f"{archive.name} was not loaded")
        names = yield self._runtime.load(archive)
        wanted = {reference, f"localhost/{reference}", f"docker.io/{reference}",
                  f"docker.io/library/{reference}"}
        if not wanted & set(names):
            brought = []
            for name in names:
                loaded: ImageInfo = yield self._runtime.image(name)
                brought.append(loaded.id)
            raise ImageError(f"{archive.name} holds {', '.join(names)}, not {reference}", frozenset(brought))
        info: ImageInfo = yield self._runtime.image(reference)
        return info

    @inlineCallbacks
    def prune(self, ours: set[str], keep: set[str]) -> Any:
        """Delete the images in ``ours`` that are not in ``keep``; fires with those deleted.

        An image still in use (the runtime refuses) is kept and tried again next time.
        """
        deleted = []
        for image_id in sorted(ours - keep):
            try:
                yield self._runtime.remove_image(image_id)
            except RuntimeFailure as exc:
                if "no such image" not in str(exc).lower() and "404" not in str(exc):
                    log.info("containers: image {image} kept: {why}", image=image_id[:12], why=str(exc))
                    continue
            deleted.append(image_id)
        return deleted
