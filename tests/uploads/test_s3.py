"""Amazon S3 through presigned PUT URLs against ministack on 127.0.0.1, which checks SigV4
signatures, expiry, Content-MD5 and x-amz-checksum-sha256."""

from __future__ import annotations

import base64
import datetime
import hashlib
from pathlib import Path
from typing import Any
from unittest import mock

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import SkipTest, TestCase

from gateway.uploads.filebody import digest_file
from gateway.uploads.settings import UploadsSettings
from tests.uploads.flow import make_file, start_service, upload
from tests.uploads.realservers import UploadCuttingProxy, ministack

try:
    import boto3
    from botocore.config import Config
except ImportError:  # pragma: no cover
    boto3 = None

BUCKET = "gateway-uploads"


class S3UploadTests(TestCase):
    """The ``aws`` provider with presigned URLs; results read back through boto3."""

    timeout = 120

    @inlineCallbacks
    def setUp(self) -> Any:
        if boto3 is None:
            raise SkipTest("boto3 is missing: pip install -e .[test]")
        self.server = ministack(Path(self.mktemp()))
        yield self.server.start(reactor)
        self.addCleanup(self.server.stop)
        self.s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{self.server.port}", region_name="us-east-1",
                               aws_access_key_id="test", aws_secret_access_key="test",
                               config=Config(signature_version="s3v4"))
        self.s3.create_bucket(Bucket=BUCKET)
        self.dir = Path(self.mktemp())

    def presign(self, key: str, path: Path, expires: int = 600, port: int | None = None,
                signed_at: datetime.datetime | None = None) -> str:
        """A presigned PUT that signs the file's Content-MD5 and SHA-256, as a backend would
        from the checksums in the gateway's request (the Host signed is ``port``'s)."""
        digests = digest_file(str(path))
        client = self.s3 if port is None else boto3.client(
            "s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1", aws_access_key_id="test",
            aws_secret_access_key="test", config=Config(signature_version="s3v4"))
        params = {"Bucket": BUCKET, "Key": key, "ContentMD5": digests.md5, "ChecksumSHA256": digests.sha256_base64}
        if signed_at is None:
            return str(client.generate_presigned_url("put_object", ExpiresIn=expires, Params=params))
        with mock.patch("botocore.auth.get_current_datetime", lambda: signed_at):
            return str(client.generate_presigned_url("put_object", ExpiresIn=expires, Params=params))

    def stored_sha256(self, key: str) -> str:
        return hashlib.sha256(self.s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()).hexdigest()

    @inlineCallbacks
    def test_presigned_put_stores_the_file(self) -> Any:
        """The signed Content-MD5 and x-amz-checksum-sha256 are sent; the object reads back equal."""
        sha = make_file(self.dir / "dump.bin", 5 * 2**20 + 3)
        service, watcher = yield start_service(self, UploadsSettings(checksum=True))
        status = yield upload(service, watcher, str(self.dir / "dump.bin"), {
            "storage.provider": "aws", "https.url": self.presign("dumps/dump.bin", self.dir / "dump.bin")})
        self.assertEqual(status["state"], "SUCCESS", status)
        self.assertEqual(self.stored_sha256("dumps/dump.bin"), sha)
        self.assertEqual(status["files"][0]["sha256"], sha)

    @inlineCallbacks
    def test_expired_and_tampered_urls_fail_with_s3s_reason(self) -> Any:
        """S3's 403 (expired, bad signature) ends the upload FAILED with S3's code and message."""
        make_file(self.dir / "x.bin", 10000)
        service, watcher = yield start_service(self)
        an_hour_ago = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None) - datetime.timedelta(hours=1)
        old = self.presign("x.bin", self.dir / "x.bin", expires=60, signed_at=an_hour_ago)
        expired = yield upload(service, watcher, str(self.dir / "x.bin"),
                               {"storage.provider": "aws", "https.url": old}, cid="expired")
        self.assertEqual(expired["state"], "FAILED")
        self.assertIn("HTTP 403: AccessDenied: Request has expired", expired["message"])
        good = self.presign("x.bin", self.dir / "x.bin")
        tampered = yield upload(service, watcher, str(self.dir / "x.bin"), {
            "storage.provider": "aws", "https.url": good.replace("X-Amz-Signature=", "X-Amz-Signature=0")},
            cid="tampered")
        self.assertEqual(tampered["state"], "FAILED")
        self.assertIn("SignatureDoesNotMatch", tampered["message"])

    @inlineCallbacks
    def test_a_connection_cut_mid_upload_is_retried(self) -> Any:
        """Cut after 1 MiB of 6 MiB: sent again, and S3 holds the file."""
        sha = make_file(self.dir / "big.bin", 6 * 2**20)
        proxy = UploadCuttingProxy(reactor, self.server.port, cut_after=2**20)
        port = proxy.listen()
        self.addCleanup(proxy.port.stopListening)
        service, watcher = yield start_service(self)
        status = yield upload(service, watcher, str(self.dir / "big.bin"), {
            "storage.provider": "aws", "https.url": self.presign("big.bin", self.dir / "big.bin", port=port)})
        self.assertEqual(status["state"], "SUCCESS", status)
        self.assertEqual(self.stored_sha256("big.bin"), sha)
        self.assertGreaterEqual(len(proxy.sent), 2)


class S3CredentialsTests(TestCase):
    """The ``aws`` provider with Kanto's credential options, signed by the gateway (SigV4 in
    the headers) against ministack, which checks an IAM user's signatures (not its root
    key's), Content-MD5 and the checksum."""

    timeout = 120

    @inlineCallbacks
    def setUp(self) -> Any:
        if boto3 is None:
            raise SkipTest("boto3 is missing: pip install -e .[test]")
        self.server = ministack(Path(self.mktemp()), services="s3,iam,sts")
        yield self.server.start(reactor)
        self.addCleanup(self.server.stop)
        self.endpoint = f"http://127.0.0.1:{self.server.port}"
        root = {"endpoint_url": self.endpoint, "region_name": "us-east-1", "aws_access_key_id": "test",
                "aws_secret_access_key": "test"}
        self.s3 = boto3.client("s3", config=Config(signature_version="s3v4"), **root)
        self.s3.create_bucket(Bucket=BUCKET)
        iam = boto3.client("iam", **root)
        iam.create_user(UserName="gateway")
        iam.put_user_policy(UserName="gateway", PolicyName="put", PolicyDocument=(
            '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}'))
        key = iam.create_access_key(UserName="gateway")["AccessKey"]
        self.key_id, self.secret = key["AccessKeyId"], key["SecretAccessKey"]
        self.dir = Path(self.mktemp())
        self.sts = boto3.client("sts", endpoint_url=self.endpoint, region_name="us-east-1",
                                aws_access_key_id=self.key_id, aws_secret_access_key=self.secret)

    def options(self, **extra: str) -> dict[str, str]:
        return {"storage.provider": "aws", "aws.access.key.id": self.key_id, "aws.secret.access.key": self.secret,
                "aws.region": "us-east-1", "aws.s3.bucket": BUCKET, **extra}

    @inlineCallbacks
    def test_signed_put_stores_the_file(self) -> Any:
        """A 5 MiB file under ``aws.object.key`` reads back with the same SHA-256, and S3 kept
        the x-amz-checksum-sha256 the gateway sent."""
        sha = make_file(self.dir / "dump bin+1.bin", 5 * 2**20 + 3)
        service, watcher = yield start_service(self, UploadsSettings(aws_endpoint=self.endpoint))
        status = yield upload(service, watcher, str(self.dir / "dump bin+1.bin"),
                              self.options(**{"aws.object.key": "dumps/dump bin+1.bin"}))
        self.assertEqual(status["state"], "SUCCESS", status)
        self.assertEqual(status["files"][0]["sha256"], sha)
        self.assertEqual(self.stored_sha256("dumps/dump bin+1.bin"), sha)
        head = self.s3.head_object(Bucket=BUCKET, Key="dumps/dump bin+1.bin", ChecksumMode="ENABLED")
        self.assertEqual(head.get("ChecksumSHA256"), base64.b64encode(bytes.fromhex(sha)).decode())

    @inlineCallbacks
    def test_the_key_defaults_to_the_files_path(self) -> Any:
        """Without ``aws.object.key`` the object is named after the file's path (no leading /)."""
        path = self.dir / "logs" / "app.log"
        sha = make_file(path, 1000)
        service, watcher = yield start_service(self, UploadsSettings(aws_endpoint=self.endpoint))
        status = yield upload(service, watcher, str(path), self.options())
        self.assertEqual(status["state"], "SUCCESS", status)
        self.assertEqual(self.stored_sha256(str(path.resolve()).lstrip("/")), sha)

    @inlineCallbacks
    def test_a_wrong_secret_fails_with_s3s_reason(self) -> Any:
        """ministack refuses the signature made with a wrong secret: FAILED with S3's reason."""
        make_file(self.dir / "x.bin", 10000)
        service, watcher = yield start_service(self, UploadsSettings(aws_endpoint=self.endpoint))
        status = yield upload(service, watcher, str(self.dir / "x.bin"),
                              self.options(**{"aws.secret.access.key": "wrong"}))
        self.assertEqual(status["state"], "FAILED", status)
        self.assertIn("HTTP 403: SignatureDoesNotMatch", status["message"])
        self.assertEqual(self.s3.list_objects_v2(Bucket=BUCKET).get("KeyCount", 0), 0)

    @inlineCallbacks
    def test_temporary_credentials_need_their_session_token(self) -> Any:
        """STS credentials sign with ``aws.session.token`` (sent as x-amz-security-token, which
        the signature covers): stored; the same keys with a wrong token fail with S3's reason."""
        temporary = self.sts.get_session_token()["Credentials"]
        options = self.options(**{"aws.access.key.id": temporary["AccessKeyId"],
                                  "aws.secret.access.key": temporary["SecretAccessKey"],
                                  "aws.session.token": temporary["SessionToken"], "aws.object.key": "tmp.bin"})
        sha = make_file(self.dir / "tmp.bin", 100000)
        service, watcher = yield start_service(self, UploadsSettings(aws_endpoint=self.endpoint))
        status = yield upload(service, watcher, str(self.dir / "tmp.bin"), options, cid="temporary")
        self.assertEqual(status["state"], "SUCCESS", status)
        self.assertEqual(self.stored_sha256("tmp.bin"), sha)
        status = yield upload(service, watcher, str(self.dir / "tmp.bin"),
                              {**options, "aws.session.token": "wrong", "aws.object.key": "wrong.bin"}, cid="wrong")
        self.assertEqual(status["state"], "FAILED", status)
        self.assertIn("HTTP 400: InvalidToken", status["message"])

    def stored_sha256(self, key: str) -> str:
        return hashlib.sha256(self.s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()).hexdigest()
