"""Amazon S3 with the credentials Kanto's ``aws`` provider takes (``aws.access.key.id``,
``aws.secret.access.key``, optional ``aws.session.token``, ``aws.region``, ``aws.s3.bucket``,
optional ``aws.object.key``): one PUT Object, signed here with SigV4 in its headers (no AWS
SDK), its body streamed from disk.

The file is hashed before the PUT (the service does that for every provider that asks), so
the signature covers the body's real SHA-256 (``x-amz-content-sha256``: S3 refuses a body
that does not match it) and the request carries ``Content-MD5`` and
``x-amz-checksum-sha256`` as well, which S3 checks and stores.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from urllib.parse import quote, urlsplit

from twisted.internet.defer import Deferred

from gateway.links.sigv4 import Credentials, sign_request
from gateway.shown import shown
from gateway.uploads.errors import InvalidRequest
from gateway.uploads.providers import HTTPClient, Transfer, require_options, send_request

#: Kanto's option names (``uploaders/aws.go``).
AWS_REGION = "aws.region"
AWS_ACCESS_KEY_ID = "aws.access.key.id"
AWS_SECRET_ACCESS_KEY = "aws.secret.access.key"
AWS_SESSION_TOKEN = "aws.session.token"
AWS_BUCKET = "aws.s3.bucket"
AWS_OBJECT_KEY = "aws.object.key"
#: S3's limit for one PUT Object.
MAX_SINGLE_PUT = 5 * 2**30
#: S3's bucket naming rules: 3 to 63 lower-case letters, digits, dots and hyphens, a letter
#: or digit at each end (the bucket is a label of the host name, or a path segment).
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]\Z")
_IPV4 = re.compile(r"\d+\.\d+\.\d+\.\d+\Z", re.ASCII)
#: A region is one label of the host name (``eu-west-1``) and one segment of the signature's scope.
_REGION = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\Z")


def bucket_problem(bucket: str) -> str | None:
    """Why ``bucket`` is no S3 bucket name (it would make another host name or path), or ``None``."""
    if not _BUCKET.match(bucket) or ".." in bucket or ".-" in bucket or "-." in bucket or _IPV4.match(bucket):
        return (f"'{AWS_BUCKET}': {shown(bucket)!r} is not an S3 bucket name (3 to 63 lower-case letters,"
                " digits, '.' and '-', a letter or digit at each end, not an IP address)")
    return None


def region_problem(region: str) -> str | None:
    """Why ``region`` is no region name (it goes into the host name and the signature), or ``None``."""
    if not _REGION.match(region):
        return (f"'{AWS_REGION}': {shown(region)!r} is not a region name (letters, digits and '-', as in"
                " eu-west-1)")
    return None


def object_key(path: str) -> str:
    """The key a file gets when ``aws.object.key`` is not given: Kanto uses the file's path;
    here without its leading ``/`` (a key starting with ``/`` makes a ``//`` in every URL)."""
    return path.lstrip("/")


class S3WithCredentials:
    """PUT Object to ``bucket``/``key`` signed with ``credentials``.

    :param http: the HTTP client.
    :param credentials: the access key, secret and session token.
    :param region: the bucket's region (signed in the credential scope).
    :param bucket: the bucket.
    :param key: the object key (without a leading ``/``, as :func:`object_key`'s), or None for
        the file's path.
    :param endpoint: an S3-compatible endpoint (path-style URLs), or None for AWS's
        (``https://<bucket>.s3.<region>.amazonaws.com``; path-style for a bucket with dots).
    :param now: the current POSIX time (the signature's date).
    """

    name = "aws"

    def __init__(self, http: HTTPClient, credentials: Credentials, region: str, bucket: str, key: str | None,
                 endpoint: str | None = None, now: Callable[[], float] = time.time) -> None:
        self.http = http
        self.credentials = credentials
        self.region = region
        self.bucket = bucket
        self.key = key
        self.endpoint = endpoint.rstrip("/") if endpoint else None
        self.now = now

    @classmethod
    def from_options(cls, options: dict[str, str], http: HTTPClient, endpoint: str | None,
                     now: Callable[[], float] = time.time) -> S3WithCredentials:
        """Build it from Kanto's ``start`` options.

        :raises InvalidRequest: naming every required option missing (Kanto's order), or a
            bucket or region that is no name of one.
        """
        require_options(options, (AWS_BUCKET, AWS_ACCESS_KEY_ID, AWS_REGION, AWS_SECRET_ACCESS_KEY))
        problems = [problem for problem in (bucket_problem(options[AWS_BUCKET]), region_problem(options[AWS_REGION]))
                    if problem is not None]
        if problems:
            raise InvalidRequest("; ".join(problems))
        credentials = Credentials(options[AWS_ACCESS_KEY_ID], options[AWS_SECRET_ACCESS_KEY],
                                  options.get(AWS_SESSION_TOKEN) or None)
        return cls(http, credentials, options[AWS_REGION], options[AWS_BUCKET], options.get(AWS_OBJECT_KEY) or None,
                   endpoint, now)

    def digests_first(self, size: int) -> tuple[bool, int | None]:
        """The signature covers the body's SHA-256, and Content-MD5 is a header: hashed first.

        :raises InvalidRequest: for a file over S3's 5 GiB for one PUT, before it is hashed
            (minutes of CPU for a PUT S3 would refuse).
        """
        if size > MAX_SINGLE_PUT:
            raise InvalidRequest(f"{size} bytes is over S3's 5 GiB for one PUT")
        return True, None

    def location(self, path: str) -> tuple[str, str, str]:
        """Where the object goes: the base URL (scheme and host), the Host header and the path
        (not encoded) of the file at ``path``."""
        key = "/" + (self.key or object_key(path)).lstrip("/")
        if self.endpoint is not None:
            base, key = self.endpoint, f"/{self.bucket}{key}"
        elif "." in self.bucket:  # a dotted bucket does not match the wildcard certificate
            base, key = f"https://s3.{self.region}.amazonaws.com", f"/{self.bucket}{key}"
        else:
            base = f"https://{self.bucket}.s3.{self.region}.amazonaws.com"
        parts = urlsplit(base)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        if parts.port is not None and (parts.scheme, parts.port) not in (("http", 80), ("https", 443)):
            host = f"{host}:{parts.port}"
        return base, host, key

    def url(self, path: str) -> str:
        """The object's URL."""
        base, _, key = self.location(path)
        return base + quote(key, safe="/-_.~")

    def send(self, transfer: Transfer) -> Deferred[None]:
        """PUT the whole file, streamed, with the signed headers."""
        digests = transfer.digests
        assert digests is not None
        _, host, key = self.location(transfer.path)
        headers = sign_request(self.credentials, "PUT", host, key, self.region, "s3", self.now(), digests.sha256,
                               {"Content-MD5": digests.md5, "x-amz-checksum-sha256": digests.sha256_base64,
                                "Content-Type": "application/octet-stream"})
        body = transfer.body(0, transfer.size, transfer.on_bytes)
        return send_request(self.http, "PUT", self.url(transfer.path), headers, body).addCallback(lambda _: None)
