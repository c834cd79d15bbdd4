"""Azure Blob through SAS URLs against Azurite on 127.0.0.1, which checks SAS signatures and
Content-MD5: Put Blob, Put Block + Put Block List, and a resume from the staged blocks."""

from __future__ import annotations

import atexit
import datetime
import hashlib
import itertools
import shutil
import tempfile
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import SkipTest, TestCase

from gateway.uploads.settings import UploadsSettings
from tests.uploads.flow import make_file, start_service, upload
from tests.uploads.realservers import AZURE_ACCOUNT, AZURE_KEY, ServerProcess, UploadCuttingProxy, azurite

try:
    from azure.storage.blob import BlobServiceClient, ContainerSasPermissions, generate_container_sas
except ImportError:  # pragma: no cover
    BlobServiceClient = None

#: Small blocks so that a few MiB exercise the block path.
BLOCKS = UploadsSettings(azure_block_threshold=2**20, azure_block_size=256 * 1024)
#: The Azurite the tests of a run share (1.5 s saved a test), each in its own blob container.
shared: ServerProcess | None = None
#: The number in the name of the next test's container (``uploads-<n>``).
containers = itertools.count(1)


@inlineCallbacks
def shared_azurite() -> Any:
    """Fire with the run's Azurite, started by its first test (again, should it have died) and
    removed when the run ends."""
    global shared
    if shared is None or shared.process is None or shared.process.poll() is not None:
        workdir = Path(tempfile.mkdtemp(prefix="gw-azurite-"))
        atexit.register(shutil.rmtree, workdir, True)
        server = azurite(workdir)
        yield server.start(reactor)
        atexit.register(server.stop)
        shared = server
    return shared


class AzuriteTestCase(TestCase):
    """A running Azurite with a container of the test's own (``uploads-<n>``); blobs read back
    through azure-storage-blob."""

    timeout = 120

    @inlineCallbacks
    def setUp(self) -> Any:
        if BlobServiceClient is None:
            raise SkipTest("azure-storage-blob is missing: pip install -e .[test]")
        self.server = yield shared_azurite()
        self.container = f"uploads-{next(containers)}"
        self.endpoint = f"http://127.0.0.1:{self.server.port}/{AZURE_ACCOUNT}/"
        connection = (f"DefaultEndpointsProtocol=http;AccountName={AZURE_ACCOUNT};AccountKey={AZURE_KEY};"
                      f"BlobEndpoint={self.endpoint}")
        self.blobs = BlobServiceClient.from_connection_string(connection)
        self.blobs.create_container(self.container)
        self.dir = Path(self.mktemp())

    def sas(self, hours: float = 1.0) -> str:
        return str(generate_container_sas(
            AZURE_ACCOUNT, self.container, account_key=AZURE_KEY,
            permission=ContainerSasPermissions(read=True, write=True, create=True, add=True),
            expiry=datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=hours)))

    def options(self, endpoint: str | None = None, sas: str | None = None) -> dict[str, str]:
        return {"storage.provider": "azure", "azure.storage.endpoint": endpoint or self.endpoint,
                "azure.shared.access.signature": sas or self.sas(), "azure.blob.container": self.container}

    def stored_sha256(self, name: str) -> str:
        return hashlib.sha256(self.blobs.get_blob_client(self.container, name).download_blob().readall()).hexdigest()


class AzureUploadTests(AzuriteTestCase):
    """The ``azure`` provider."""

    @inlineCallbacks
    def test_put_blob_stores_the_file_with_its_md5(self) -> Any:
        """A small file goes in one Put Blob with Content-MD5; the blob reads back equal."""
        sha = make_file(self.dir / "small.log", 700 * 1024)
        service, watcher = yield start_service(self)
        status = yield upload(service, watcher, str(self.dir / "small.log"), self.options())
        self.assertEqual(status["state"], "SUCCESS", status)
        self.assertEqual(self.stored_sha256("small.log"), sha)
        md5 = self.blobs.get_blob_client(self.container, "small.log").get_blob_properties().content_settings.content_md5
        self.assertEqual(bytes(md5), hashlib.md5((self.dir / "small.log").read_bytes()).digest())

    @inlineCallbacks
    def test_large_files_go_in_blocks(self) -> Any:
        """Above the threshold: Put Block per block, Put Block List with the blob's MD5."""
        sha = make_file(self.dir / "large.bin", 3 * 2**20 + 1234)
        service, watcher = yield start_service(self, BLOCKS)
        status = yield upload(service, watcher, str(self.dir / "large.bin"), self.options())
        self.assertEqual(status["state"], "SUCCESS", status)
        self.assertEqual(self.stored_sha256("large.bin"), sha)
        blocks = self.blobs.get_blob_client(self.container, "large.bin").get_block_list("committed")[0]
        self.assertEqual(len(blocks), 13)

    @inlineCallbacks
    def test_tampered_and_expired_sas_fail_with_azures_reason(self) -> Any:
        """Azurite's 403 ends the upload FAILED with its error code."""
        make_file(self.dir / "x.bin", 1000)
        service, watcher = yield start_service(self)
        sas = self.sas()
        tampered = sas.replace("sig=", "sig=AAAA")
        status = yield upload(service, watcher, str(self.dir / "x.bin"), self.options(sas=tampered), cid="tampered")
        self.assertEqual(status["state"], "FAILED")
        self.assertIn("HTTP 403: AuthorizationFailure: Server failed to authenticate", status["message"])
        status = yield upload(service, watcher, str(self.dir / "x.bin"), self.options(sas=self.sas(hours=-1)),
                              cid="expired")
        self.assertEqual(status["state"], "FAILED")
        self.assertIn("HTTP 403", status["message"])

    @inlineCallbacks
    def test_a_cut_resumes_from_the_staged_blocks(self) -> Any:
        """Cut after 1.5 MiB of a 3 MiB block upload: the retry asks Get Block List and sends only
        the blocks not staged, so less than the whole file crosses the wire again."""
        size = 3 * 2**20
        sha = make_file(self.dir / "resume.bin", size)
        proxy = UploadCuttingProxy(reactor, self.server.port, cut_after=3 * 2**19)
        port = proxy.listen()
        self.addCleanup(proxy.port.stopListening)
        service, watcher = yield start_service(self, BLOCKS)
        status = yield upload(service, watcher, str(self.dir / "resume.bin"),
                              self.options(endpoint=f"http://127.0.0.1:{port}/{AZURE_ACCOUNT}/"))
        self.assertEqual(status["state"], "SUCCESS", status)
        self.assertEqual(self.stored_sha256("resume.bin"), sha)
        self.assertGreaterEqual(len(proxy.sent), 2)
        self.assertLess(proxy.total, size + 2**20)  # without the resume it would be 4.5 MiB and more
