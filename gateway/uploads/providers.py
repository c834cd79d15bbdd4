"""Where a file goes: Kanto's ``start`` options turned into a provider (generic HTTP PUT/POST,
an S3 presigned PUT URL, an Azure Blob SAS), and the one request helper they share."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

from gateway.httpbody import read_body
from gateway.shown import shown_location
from gateway.uploads.errors import InvalidRequest, ProviderRefused, TransferFailed
from gateway.uploads.filebody import Digests, HashingFileBody
from gateway.uploads.xmlerror import provider_reason

#: Kanto's option names (``uploaders/common.go``, ``aws.go``, ``azure.go``, ``client/uploads.go``).
STORAGE_PROVIDER = "storage.provider"
URL = "https.url"
METHOD = "https.method"
HEADER_PREFIX = "https.header."
AZURE_ENDPOINT = "azure.storage.endpoint"
AZURE_SAS = "azure.shared.access.signature"
AZURE_CONTAINER = "azure.blob.container"

#: The most of a storage's answer read (an error's words, a block list): a longer one is
#: not read further, so that a broken server cannot fill the gateway's memory. The longest
#: answer of a storage is Azure's list of a blob's uncommitted blocks: 100,000 at most, some
#: 8 MB.
MAX_ANSWER = 16 * 2**20

def require_options(options: dict[str, str], names: tuple[str, ...]) -> None:
    """Check that the ``start`` options give each of ``names`` (not empty).

    :param options: the ``start`` options.
    :param names: the required ones, in Kanto's order.
    :raises InvalidRequest: naming every one missing or empty at once, the first in Kanto's
        words (``required parameter '<name>' missing or empty``), so that the cloud can fix
        them in one go.
    """
    missing = [name for name in names if not options.get(name)]
    if missing:
        also = f"; also missing or empty: {', '.join(repr(name) for name in missing[1:])}" if missing[1:] else ""
        raise InvalidRequest(f"required parameter '{missing[0]}' missing or empty{also}")


#: ``body(offset, length, on_bytes, hashing=True) -> producer`` over the file being uploaded.
BodyFactory = Callable[..., HashingFileBody]


#: ``treq.client.HTTPClient`` (or ``treq.testing.StubTreq``): the providers call its ``request``.
HTTPClient = Any


@dataclass
class Transfer:
    """What a provider needs to send one file.

    :param path: the file.
    :param size: its size.
    :param digests: its digests when computed before sending (headers precede the body), else None.
    :param body: makes the body producers.
    :param on_bytes: progress (bytes handed to the socket).
    :param run_blocking: runs blocking work in a thread.
    :param key: a stable name for this file's attempt (Azure derives its block ids from it).
    """

    path: str
    size: int
    digests: Digests | None
    body: BodyFactory
    on_bytes: Callable[[int], None]
    run_blocking: Callable[..., Deferred[Any]]
    key: str
    #: every body made for this attempt (the transfer checks and stops them).
    streamed: list[HashingFileBody] = field(default_factory=list)
    #: blocks of the file the storage held when the attempt began, as the provider learned
    #: it (Azure's Get Block List); None for a provider that keeps nothing of a failed
    #: attempt (one PUT) or before it learned it.
    found: int | None = None
    #: blocks of the file the storage is known to hold: ``found``, then one more for each
    #: block it takes (the transfer's measure of progress between failures).
    held: int = 0


class Provider(Protocol):
    """One storage: sends a file, fires when the storage has it."""

    name: str

    def digests_first(self, size: int) -> tuple[bool, int | None]:
        """Whether a file of ``size`` bytes must be hashed before sending, and the block size
        its block digests are needed for (None: no blocks).

        :raises UploadError: when the provider cannot take a file of that size.
        """

    def send(self, transfer: Transfer) -> Deferred[None]:
        """Upload ``transfer``'s file.

        :raises ProviderRefused: with the provider's reason.
        :raises TransferFailed: when the connection failed.
        """


@implementer(IBodyProducer)
class BytesBody:
    """A small body written at once (an Azure block list). treq would wrap bytes in a
    ``FileBodyProducer``, whose cooperative task raises ``NotPaused`` when a transport that
    was cut resumes it; written in one go there is nothing to pause or resume.

    :param data: the body.
    """

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.length = len(data)

    def startProducing(self, consumer: Any) -> Deferred[None]:
        """Write it all."""
        consumer.write(self.data)
        return succeed(None)

    def pauseProducing(self) -> None:
        """Nothing left to pause."""

    def resumeProducing(self) -> None:
        """Nothing left to resume."""

    def stopProducing(self) -> None:
        """Nothing left to stop."""


@inlineCallbacks
def send_request(http: HTTPClient, method: str, url: str, headers: dict[str, str], body: Any) -> Any:
    """Send one request and read the (small) answer; a non-2xx answer is raised.

    :param body: an ``IBodyProducer``, small ``bytes``, or None.
    :return: the response and its body.
    :raises ProviderRefused: on a status other than 2xx (a redirect is not followed), with the
        provider's code and message (from the answer's first :data:`MAX_ANSWER` bytes).
    :raises TransferFailed: when the request never got an answer, or a 2xx answer is longer
        than :data:`MAX_ANSWER` bytes (not the answer of a storage).
    """
    # not at import time: an idle gateway does without treq and twisted.web.client
    from twisted.internet.error import ConnectError
    from twisted.web.client import ResponseFailed

    from gateway.netfailures import describe

    if isinstance(body, bytes):
        body = BytesBody(body)
    try:
        # A redirect is not followed: the body is a stream that cannot be sent again, and
        # twisted's redirect error would put the signed URL in the message.
        response = yield http.request(method, url, headers={k: [v] for k, v in headers.items()},
                                      data=body, unbuffered=True, allow_redirects=False)
        content, cut = yield read_body(response, MAX_ANSWER)
    except (ResponseFailed, ConnectionError, OSError) as error:
        raise TransferFailed(f"{method} {urlsplit(url).netloc}: {describe(error)}") from error
    except Exception as error:  # treq/twisted wrap transport failures in several types
        # (a ConnectError of any kind: refused, no route, DNS, timed out, a proxy that gave no tunnel)
        if isinstance(error, ConnectError) or type(error).__name__ in ("RequestTransmissionFailed",
                                                                        "ResponseNeverReceived"):
            raise TransferFailed(f"{method} {urlsplit(url).netloc}: {describe(error)}") from error
        raise
    if not 200 <= response.code < 300:
        reason = provider_reason(response, content)
        location = shown_location(response.headers) if 300 <= response.code < 400 else None
        if location is not None:
            # its host and path: a query may hold a signature, user information a password, and
            # the message goes to the cloud
            reason += f" (redirected to {location})"
        raise ProviderRefused(response.code, reason)
    if cut:
        raise TransferFailed(f"{method} {urlsplit(url).netloc}: HTTP {response.code} with an answer over "
                             f"{MAX_ANSWER} bytes, not read further")
    return response, content


class GenericHTTP:
    """Kanto's ``generic`` provider: PUT or POST to ``https.url`` with ``https.header.*``.

    An S3 presigned URL (``X-Amz-Signature`` in its query) gets what S3 checks: ``Content-MD5``
    always, ``x-amz-checksum-sha256`` when the URL signed it.

    :param http: the HTTP client.
    :param url: where to send.
    :param method: ``PUT`` or ``POST``.
    :param headers: the cloud's headers.
    :param checksum: send ``Content-MD5`` (Kanto's ``checksum`` option).
    """

    def __init__(self, http: HTTPClient, url: str, method: str, headers: dict[str, str], checksum: bool) -> None:
        self.http = http
        self.url = url
        self.method = method
        self.headers = headers
        self.checksum = checksum
        query = {k.lower(): v for k, v in parse_qs(urlsplit(url).query).items()}
        self.s3 = "x-amz-signature" in query
        self.s3_signed = set((query.get("x-amz-signedheaders") or [""])[0].lower().split(";"))
        self.name = "aws" if self.s3 else "generic"

    def digests_first(self, size: int) -> tuple[bool, int | None]:
        """Content-MD5 (and S3's signed SHA-256) are headers: known before the body."""
        return self.checksum or self.s3, None

    def send(self, transfer: Transfer) -> Deferred[None]:
        """PUT/POST the whole file, streamed."""
        headers = {"Content-Type": "application/x-binary", **self.headers}
        lower = {k.lower() for k in headers}
        if transfer.digests is not None and "content-md5" not in lower:
            headers["Content-MD5"] = transfer.digests.md5
        if transfer.digests is not None and self.s3 and "x-amz-checksum-sha256" in self.s3_signed and "x-amz-checksum-sha256" not in lower:
            headers["x-amz-checksum-sha256"] = transfer.digests.sha256_base64
        body = transfer.body(0, transfer.size, transfer.on_bytes)
        return send_request(self.http, self.method, self.url, headers, body).addCallback(lambda _: None)


def blob_name(path: str) -> str:
    """The object name a file gets (Kanto: its base name)."""
    return os.path.basename(path)
