"""Azure Blob through a SAS: one Put Blob for small files; above a threshold Put Block per
block and Put Block List, resuming after a cut from the blocks the service already holds."""

from __future__ import annotations

import base64
from typing import Any
from urllib.parse import quote, urlsplit

from twisted.internet.defer import Deferred, DeferredList, FirstError, inlineCallbacks

from gateway.asciidigits import ascii_digits
from gateway.uploads.errors import FileChanged, ProviderRefused, TransferFailed
from gateway.uploads.providers import HTTPClient, Transfer, blob_name, send_request

#: The Blob service version the requests speak (Put Block List with x-ms-blob-content-md5 and
#: Get Block List are older than it).
API_VERSION = "2021-08-06"


class AzureBlob:
    """Uploads to ``<endpoint>/<container>/<file name>?<sas>`` (Kanto's option names).

    :param http: the HTTP client.
    :param endpoint: the account's blob endpoint.
    :param container: the container.
    :param sas: the shared access signature (a query string).
    :param threshold: files above this size go in blocks.
    :param block_size: the block size.
    :param parallel: blocks sent at once (each on its own connection).
    """

    name = "azure"

    def __init__(self, http: HTTPClient, endpoint: str, container: str, sas: str, threshold: int,
                 block_size: int, parallel: int = 1) -> None:
        self.http = http
        self.endpoint = endpoint.rstrip("/")
        self.container = container.strip("/")
        self.sas = sas.lstrip("?")
        self.threshold = threshold
        self.block_size = block_size
        self.parallel = parallel
        #: blocks found already staged by the last :meth:`send` (for logs and tests).
        self.resumed_blocks = 0

    def digests_first(self, size: int) -> tuple[bool, int | None]:
        """Put Blob sends the file's Content-MD5; each Put Block its block's."""
        return True, self.block_size if self.uses_blocks(size) else None

    def uses_blocks(self, size: int) -> bool:
        """Whether a file of ``size`` bytes goes in blocks."""
        return size > self.threshold

    def blob_url(self, path: str, query: str = "") -> str:
        """The blob's URL with the SAS (and ``query`` before it)."""
        base = f"{self.endpoint}/{quote(self.container)}/{quote(blob_name(path))}"
        return f"{base}?{query + '&' if query else ''}{self.sas}"

    def send(self, transfer: Transfer) -> Deferred[None]:
        """Put Blob, or the blocks and their list."""
        if self.uses_blocks(transfer.size):
            return self._send_blocks(transfer)
        assert transfer.digests is not None
        headers = {"x-ms-blob-type": "BlockBlob", "x-ms-version": API_VERSION, "Content-MD5": transfer.digests.md5,
                   "Content-Type": "application/octet-stream"}
        body = transfer.body(0, transfer.size, transfer.on_bytes)
        return send_request(self.http, "PUT", self.blob_url(transfer.path), headers, body).addCallback(lambda _: None)

    def block_ids(self, transfer: Transfer) -> list[str]:
        """Stable ids of equal length: the same file (same key) gets the same ids after a restart."""
        count = max(1, -(-transfer.size // self.block_size))
        return [base64.b64encode(f"{transfer.key[:20]}-{i:06d}".encode()).decode() for i in range(count)]

    @inlineCallbacks
    def staged_blocks(self, path: str) -> Any:
        """Name -> size of the uncommitted blocks the service holds for the blob (none: {})."""
        url = self.blob_url(path, "comp=blocklist&blocklisttype=uncommitted")
        try:
            _, content = yield send_request(self.http, "GET", url, {"x-ms-version": API_VERSION}, None)
        except ProviderRefused as error:
            if error.status == 404:
                return {}
            raise
        from xml.etree import ElementTree  # not at import: an idle gateway uploads nothing

        try:
            root = ElementTree.fromstring(content.lstrip(b"\xef\xbb\xbf"))
            return {block.findtext("Name"): _block_size(block.findtext("Size"))
                    for block in root.iterfind("UncommittedBlocks/Block")}
        except (ElementTree.ParseError, ValueError) as error:
            # no storage's answer (a proxy's page, a cut or garbled list): tried again as a cut is
            text = content[:60].decode("utf-8", "replace")
            raise TransferFailed(f"GET {urlsplit(url).netloc}: the block list is not Azure's ({error}): "
                                 f"{text!r}") from None

    @inlineCallbacks
    def _send_blocks(self, transfer: Transfer) -> Any:
        ids = self.block_ids(transfer)
        digests = transfer.digests
        assert digests is not None
        if len(digests.blocks) != len(ids):
            raise FileChanged("the block digests do not match the file's size")
        staged = yield self.staged_blocks(transfer.path)
        self.resumed_blocks = 0
        missing = []
        for index, block_id in enumerate(ids):
            length = min(self.block_size, transfer.size - index * self.block_size)
            if staged.get(block_id) == length:
                self.resumed_blocks += 1
                transfer.on_bytes(length)
            else:
                missing.append(index)
        transfer.found = transfer.held = self.resumed_blocks
        pending = iter(missing)

        @inlineCallbacks
        def worker() -> Any:
            for index in pending:  # the workers share one iterator: each block is sent once
                offset = index * self.block_size
                length = min(self.block_size, transfer.size - offset)
                url = self.blob_url(transfer.path, f"comp=block&blockid={quote(ids[index], safe='')}")
                headers = {"x-ms-version": API_VERSION, "Content-MD5": digests.blocks[index]}
                # Azure checks the block against its MD5 (hashed before): no second hashing here
                body = transfer.body(offset, length, transfer.on_bytes, hashing=False)
                yield send_request(self.http, "PUT", url, headers, body)
                transfer.held += 1  # staged: kept by Azure whatever happens to the attempt

        workers = [worker() for _ in range(min(self.parallel, len(missing)))]
        try:
            yield DeferredList(workers, fireOnOneErrback=True, consumeErrors=True)
        except FirstError as error:
            for d in workers:
                d.cancel()  # the first failure decides; the others stop now
            error.subFailure.raiseException()
        blocklist = "".join(f"<Latest>{block_id}</Latest>" for block_id in ids)
        data = f'<?xml version="1.0" encoding="utf-8"?><BlockList>{blocklist}</BlockList>'.encode()
        headers = {"x-ms-version": API_VERSION, "x-ms-blob-content-md5": digests.md5,
                   "Content-Type": "application/xml"}
        yield send_request(self.http, "PUT", self.blob_url(transfer.path, "comp=blocklist"), headers, data)


def _block_size(text: str | None) -> int:
    """A staged block's ``Size`` in the block list: ``-1`` when it has none (the block is sent
    again).

    :raises ValueError: when it is not a number in ASCII digits (``int()`` read ``٣`` too).
    """
    if not text:
        return -1
    if not ascii_digits(text.strip()):
        raise ValueError(f"a block's Size is not a number: {text[:40]!r}")
    return int(text)
