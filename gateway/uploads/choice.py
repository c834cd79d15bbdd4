"""The provider a ``start`` names: Kanto's ``storage.provider`` options -> an uploader.

Kept apart from :mod:`gateway.uploads.providers` (the generic HTTP provider and the
pieces every provider shares), which :mod:`gateway.uploads.azure` builds on.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from urllib.parse import urlsplit

from gateway.httpheaders import header_name_problem, header_value_problem
from gateway.portnumbers import url_port_problem
from gateway.shown import shown, shown_repr, shown_url, url_error_shown
from gateway.uploads.azure import AzureBlob
from gateway.uploads.errors import InvalidRequest
from gateway.uploads.providers import (
    AZURE_CONTAINER, AZURE_ENDPOINT, AZURE_SAS, HEADER_PREFIX, METHOD, STORAGE_PROVIDER, URL,
    GenericHTTP, HTTPClient, Provider, require_options)
from gateway.uploads.s3 import S3WithCredentials


def _check_url(url: str, allow_http: bool) -> str:
    """``url`` when it is an https (or, allowed, http) URL the HTTP client can send to.

    :raises InvalidRequest: another scheme, no host, a port that is not from 1 to 65535, a URL treq cannot
        encode (its host refused by IDNA), or one with a user name or password.
    """
    # what the gateway's treq client parses the URL with, and how it encodes it (an IPv6
    # address as it is: hyperlink's own to_uri() refused it, IDNA taking its colons for a name's)
    from gateway.treqclient import AddressURL

    try:
        parts = urlsplit(url)
        port = url_port_problem(parts.netloc)
        if port is not None:  # (urlsplit's words, Port out of range 0-65535, would not be the configuration's)
            raise InvalidRequest(f"{shown_url(url)!r} is not a usable URL: {port}")
        host = AddressURL.from_text(url).to_uri().host
    except ValueError as error:  # urlsplit's, hyperlink's URLParseError and idna's errors
        raise InvalidRequest(f"{shown_url(url)!r} is not a usable URL: {url_error_shown(url, error)}") from error
    scheme = parts.scheme
    if not (scheme == "https" or (scheme == "http" and allow_http)):
        raise InvalidRequest(f"{shown_url(url)!r}: an https or http URL is required" if allow_http
                             else f"{shown_url(url)!r}: an https URL is required (allow_http is off)")
    if not host:
        raise InvalidRequest(f"{shown_url(url)!r} is not a usable URL: it names no host")
    if "@" in parts.netloc:  # treq cannot send it: the request would fail quoting the user name
        raise InvalidRequest(f"{shown_url(url)!r}: a user name or password in the URL is not supported")
    return url


def _headers(options: dict[str, str]) -> dict[str, str]:
    """The headers the ``https.header.<Name>`` options give.

    :raises InvalidRequest: naming the first option whose name or value no request can carry
        (:mod:`gateway.httpheaders`): Twisted refused the name when the request was made (the
        upload failed with an internal error), or sent the value's UTF-8, read as Latin-1.
    """
    headers = {}
    for key, value in options.items():
        if key.startswith(HEADER_PREFIX):
            name = key[len(HEADER_PREFIX):]
            problem = header_name_problem(name) or header_value_problem(value)
            if problem is not None:
                raise InvalidRequest(f"{shown_repr(key)}: {problem}")
            headers[name] = value
    return headers


def make_provider(options: dict[str, str], http: HTTPClient, checksum: bool, allow_http: bool,
                  azure_threshold: int, azure_block_size: int, azure_parallel: int = 1,
                  aws_endpoint: str | None = None, now: Callable[[], float] = time.time) -> Provider:
    """The provider the ``start`` options name (Kanto: ``storage.provider``, ``generic`` by default).

    :param options: the ``start`` options.
    :param http: the HTTP client.
    :param checksum: send Content-MD5 to generic HTTP servers.
    :param allow_http: accept plain http URLs.
    :param azure_threshold: Azure blobs above this size go in blocks.
    :param azure_block_size: the Azure block size.
    :param azure_parallel: Azure blocks sent at once.
    :param aws_endpoint: the S3-compatible endpoint for AWS credentials (None: AWS's own).
    :param now: the current POSIX time (signatures).
    :raises InvalidRequest: naming the missing or wrong option.
    """
    provider = options.get(STORAGE_PROVIDER, "generic").strip().lower() or "generic"
    if provider in ("generic", "http", "https"):
        url = options.get(URL)
        if not url:
            raise InvalidRequest(f"required parameter '{URL}' missing or empty")
        method = options.get(METHOD, "PUT").upper()
        if method not in ("PUT", "POST"):
            raise InvalidRequest(f"unsupported HTTP method: {shown(method)}")
        return GenericHTTP(http, _check_url(url, allow_http), method, _headers(options), checksum)
    if provider == "aws":
        url = options.get(URL)
        if not url:  # Kanto's mode: the credentials, signed here
            if aws_endpoint is not None:
                _check_url(aws_endpoint, allow_http)
            return S3WithCredentials.from_options(options, http, aws_endpoint, now)
        return GenericHTTP(http, _check_url(url, allow_http), "PUT", _headers(options), True)
    if provider == "azure":
        require_options(options, (AZURE_ENDPOINT, AZURE_SAS, AZURE_CONTAINER))
        endpoint = _check_url(options[AZURE_ENDPOINT], allow_http)
        return AzureBlob(http, endpoint, options[AZURE_CONTAINER], options[AZURE_SAS], azure_threshold,
                         azure_block_size, azure_parallel)
    raise InvalidRequest(f"unknown storage provider '{shown(provider)}'")
