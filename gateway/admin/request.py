"""Request bodies with a size limit, spooled to a file on disk, never held in memory.

twisted.web collects a request's body in ``request.content`` (a BytesIO for small
declared lengths, an anonymous temporary file otherwise) with no limit at all. The
admin API's requests instead write every body larger than a small JSON document into
a named file in the admin spool directory (on the state dir's filesystem, so an
uploaded package is installed from where it landed), and stop keeping bytes once the
limit is passed: the request is then answered 413 without a byte more stored.
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path
from typing import IO, Any

from twisted.web.server import Request

#: Bodies declared at most this long are kept in memory (JSON requests).
IN_MEMORY = 64 * 1024


class BoundedRequest(Request):
    """A twisted.web request whose body is bounded and spooled to ``spool_dir``.

    Subclasses (made by :func:`bounded_request_factory`) set the class attributes.

    :ivar spool_dir: where bodies larger than :data:`IN_MEMORY` are written.
    :ivar max_body: the largest body kept, in bytes.
    :ivar body_size: bytes received so far.
    :ivar body_too_large: the body passed ``max_body`` (it was discarded).
    """

    content: Any  # twisted.web declares it None until gotLength sets it
    spool_dir: Path = Path(tempfile.gettempdir())
    max_body: int = 2**20

    def gotLength(self, length: int | None) -> None:
        """Choose where the body goes, once its declared length (if any) is known."""
        self.body_size = 0
        self.body_too_large = length is not None and length > self.max_body
        content: IO[bytes]
        if self.body_too_large or (length is not None and length <= IN_MEMORY):
            content = io.BytesIO()
        else:
            self.spool_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            content = tempfile.NamedTemporaryFile(dir=self.spool_dir, prefix=".body-")
        self.content = content

    def handleContentChunk(self, data: bytes) -> None:
        """Store a chunk of the body, unless the body is already too large."""
        self.body_size += len(data)
        if self.body_too_large:
            return
        if self.body_size > self.max_body:
            self.body_too_large = True
            self.content.seek(0)
            self.content.truncate()  # give the disk space back at once
            return
        self.content.write(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        """Process the request, never parsing the body as a form.

        twisted.web would read a form-encoded or multipart body whole into memory to fill
        ``args`` (curl's ``--data-binary`` says ``application/x-www-form-urlencoded`` unless
        told otherwise); the admin API takes JSON or a raw package, so those content types
        are dropped here and the body is left where it is.
        """
        kind = (self.requestHeaders.getRawHeaders(b"content-type") or [b""])[0].lower()
        if kind.startswith((b"application/x-www-form-urlencoded", b"multipart/form-data")):
            self.requestHeaders.removeHeader(b"content-type")
        super().requestReceived(command, path, version)

    def body_path(self) -> Path | None:
        """The file the body was spooled to, or None when it is held in memory."""
        name = getattr(self.content, "name", None)
        return Path(name) if isinstance(name, str) else None


def bounded_request_factory(spool_dir: Path, max_body: int) -> Any:
    """A :class:`BoundedRequest` subclass for one site (``Site(requestFactory=...)``).

    :param spool_dir: where large bodies are written (created mode 0700 when needed).
    :param max_body: the largest body accepted, in bytes.
    """
    return type("AdminRequest", (BoundedRequest,), {"spool_dir": spool_dir, "max_body": max_body})
