"""AWS Signature Version 4: the signing core and presigned (query-signed) URLs.

AWS IoT's MQTT over WebSocket authenticates with a SigV4-signed URL
(``wss://<endpoint>/mqtt?X-Amz-Algorithm=...&X-Amz-Signature=...``, service
``iotdevicegateway``, the session token appended after signing). No AWS SDK is a
dependency of the gateway, so the few steps of the published algorithm are here.
"""

from __future__ import annotations

import configparser
import hashlib
import hmac
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

ALGORITHM = "AWS4-HMAC-SHA256"
#: The hash of an empty payload (a GET's).
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


@dataclass(frozen=True)
class Credentials:
    """An AWS access key, with the session token of temporary credentials."""

    access_key: str
    secret_key: str
    session_token: str | None = None


def read_credentials(path: str | Path, profile: str = "default") -> Credentials:
    """Read a profile of an AWS shared credentials file (INI: ``aws_access_key_id``,
    ``aws_secret_access_key``, optional ``aws_session_token``).

    :raises ValueError: naming the file and what is missing.
    """
    parser = configparser.ConfigParser()
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ValueError(f"{path}: {exc.strerror or exc}") from None
    try:
        parser.read_string(text)
    except configparser.Error as exc:
        raise ValueError(f"{path}: not an AWS credentials file: {_parse_problem(exc)}") from None
    if not parser.has_section(profile):
        raise ValueError(f"{path}: no [{profile}] profile")
    section = parser[profile]
    missing = [k for k in ("aws_access_key_id", "aws_secret_access_key") if not section.get(k)]
    if missing:
        raise ValueError(f"{path}: [{profile}] lacks {', '.join(missing)}")
    return Credentials(section["aws_access_key_id"], section["aws_secret_access_key"],
                       section.get("aws_session_token") or None)


def _parse_problem(exc: configparser.Error) -> str:
    """What configparser found wrong, by line number and key name only: its own message
    quotes the offending line, which in a credentials file may be the secret."""
    if isinstance(exc, configparser.MissingSectionHeaderError):
        return f"line {exc.lineno} comes before any [profile] header"
    if isinstance(exc, configparser.ParsingError):
        return ", ".join(f"line {lineno} is not key = value" for lineno, _ in exc.errors)
    if isinstance(exc, configparser.DuplicateSectionError):
        return f"[{exc.section}] appears twice"
    if isinstance(exc, configparser.DuplicateOptionError):
        return f"{exc.option} appears twice in [{exc.section}]"
    return type(exc).__name__


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def uri_encode(text: str, safe: str = "-_.~") -> str:
    """AWS's URI encoding: everything but unreserved characters as %XX (uppercase)."""
    return quote(text, safe=safe)


def canonical_query(params: dict[str, str]) -> str:
    """Parameters encoded and sorted by name, as SigV4 wants them."""
    return "&".join(f"{uri_encode(k)}={uri_encode(v)}" for k, v in sorted(params.items()))


def signature(secret_key: str, amz_date: str, region: str, service: str, canonical_request: str) -> str:
    """The hex signature of ``canonical_request`` (SigV4 steps 2 to 4).

    :param amz_date: ``YYYYMMDDTHHMMSSZ``.
    """
    scope = f"{amz_date[:8]}/{region}/{service}/aws4_request"
    to_sign = "\n".join((ALGORITHM, amz_date, scope, hashlib.sha256(canonical_request.encode()).hexdigest()))
    key = _hmac(("AWS4" + secret_key).encode(), amz_date[:8])
    for part in (region, service, "aws4_request"):
        key = _hmac(key, part)
    return hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()


def amz_date(seconds: float) -> str:
    """``YYYYMMDDTHHMMSSZ`` of a POSIX time."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(seconds))


def presign(credentials: Credentials, host: str, path: str, region: str, service: str, now: float,
            expires: int | None = None, payload_hash: str = EMPTY_SHA256, token_signed: bool = False) -> str:
    """The query string of a presigned GET of ``https://host/path`` (without the ``?``).

    :param host: the Host header as sent (``name`` or ``name:port``), the one signed header.
    :param expires: seconds the URL is valid (``X-Amz-Expires``; ``None``: not sent).
    :param payload_hash: the payload's hash (S3 signs ``UNSIGNED-PAYLOAD``).
    :param token_signed: put a session token in the signed parameters (most services);
        AWS IoT wants it appended after signing (``False``).
    """
    date = amz_date(now)
    params = {"X-Amz-Algorithm": ALGORITHM,
              "X-Amz-Credential": f"{credentials.access_key}/{date[:8]}/{region}/{service}/aws4_request",
              "X-Amz-Date": date, "X-Amz-SignedHeaders": "host"}
    if expires is not None:
        params["X-Amz-Expires"] = str(expires)
    if credentials.session_token and token_signed:
        params["X-Amz-Security-Token"] = credentials.session_token
    query = canonical_query(params)
    request = "\n".join(("GET", uri_encode(path, safe="/-_.~"), query, f"host:{host}", "", "host", payload_hash))
    query += "&X-Amz-Signature=" + signature(credentials.secret_key, date, region, service, request)
    if credentials.session_token and not token_signed:
        query += "&X-Amz-Security-Token=" + uri_encode(credentials.session_token)
    return query


def canonical_headers(headers: dict[str, str]) -> tuple[str, str]:
    """SigV4's canonical headers block (each ``name:value\\n``, names lowercase and sorted,
    values trimmed) and the signed header list (``a;b;c``)."""
    lowered = sorted((name.lower().strip(), " ".join(value.strip().split())) for name, value in headers.items())
    return "".join(f"{name}:{value}\n" for name, value in lowered), ";".join(name for name, _ in lowered)


def sign_request(credentials: Credentials, method: str, host: str, path: str, region: str, service: str,
                 now: float, payload_hash: str, headers: dict[str, str] | None = None,
                 query: dict[str, str] | None = None) -> dict[str, str]:
    """The headers that sign a request in its ``Authorization`` header (SigV4, header form).

    Every header in ``headers`` is signed, with ``host``, ``x-amz-date``,
    ``x-amz-content-sha256`` and, for temporary credentials, ``x-amz-security-token``. The
    request must then carry exactly these headers (the returned ones included) and the
    ``Host`` given here.

    :param host: the Host header as sent (``name`` or ``name:port``).
    :param path: the request path, not yet encoded (S3 encodes it once: ``/`` kept).
    :param payload_hash: the body's SHA-256 in hex, or ``UNSIGNED-PAYLOAD`` (S3).
    :param headers: other headers to sign (``Content-MD5``, ``x-amz-checksum-sha256``...).
    :param query: the query parameters, if any.
    :return: ``headers`` plus ``Host``, ``x-amz-date``, ``x-amz-content-sha256``, the token
        and ``Authorization``.
    """
    date = amz_date(now)
    signed = {**(headers or {}), "host": host, "x-amz-date": date, "x-amz-content-sha256": payload_hash}
    if credentials.session_token:
        signed["x-amz-security-token"] = credentials.session_token
    block, names = canonical_headers(signed)
    request = "\n".join((method, uri_encode(path, safe="/-_.~"), canonical_query(query or {}), block, names,
                         payload_hash))
    scope = f"{date[:8]}/{region}/{service}/aws4_request"
    authorization = (f"{ALGORITHM} Credential={credentials.access_key}/{scope}, SignedHeaders={names}, "
                     f"Signature={signature(credentials.secret_key, date, region, service, request)}")
    signed.pop("host")
    return {**signed, "Host": host, "Authorization": authorization}
