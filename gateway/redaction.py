"""Which configuration values never leave the gateway as they are: one rule for every place
that shows configuration to someone else (the diagnostics bundle, the ``config.get`` command,
the configuration errors a remote change is answered and reported with, and those
``--check-config`` prints). Values under secret-looking keys, and under any key the password of a
URL (``http://user:password@proxy:3128``, ``gateway.proxy.url``), the values of its
secret-looking query parameters (``https://hooks.example/in?code=...``, a json link's ``url``)
and those of a connection string's secret-looking parts (an Azure IoT device's
``HostName=...;DeviceId=...;SharedAccessKey=...`` in an app's environment)."""

from __future__ import annotations

import datetime
import re
import urllib.parse
from collections.abc import Mapping
from typing import Any, Sequence

from gateway.shown import shown_repr

#: Keys whose values are secrets: passwords (DB_PASS, passphrase), secrets, tokens, keys,
#: signatures, SAS, CIKs (ingest.ciks), an Authorization header, credentials, cookies.
SECRET_KEY = re.compile(r"pass|secret|token|signature|sas|private|key|cik|authorization|credential|cookie",
                        re.IGNORECASE)
REDACTED = "<redacted>"
#: The password of a URL: ``scheme://user:`` (group 1), the password, ``@``.
#: (A user holds no ``[``: ``http://[user:password@]host:port``, a URL's form, is left as it is.)
_URL_PASSWORD = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^/?#@\s:\[]*:)[^@\s]*@", re.IGNORECASE)
#: The query of a URL, up to its fragment or the end of the URL (a space, a quote).
_URL_QUERY = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^?#\s\"'<>]*\?)([^#\s\"'<>]*)", re.IGNORECASE)
#: A query parameter: its name and ``=`` (group 1), its value (group 2).
_QUERY_PARAMETER = re.compile(r"([^&;=]*=)([^&;]*)")
#: Query parameters that carry secrets though their names match no :data:`SECRET_KEY`: an Azure
#: SAS's signature (``sig``), an Azure Functions key (``code``), ``auth``, ``pwd``.
_SECRET_QUERY_NAME = re.compile(r"sig|code|auth|pwd", re.IGNORECASE)


#: A part of a connection string (``Name=value`` parts separated by ``;``): what comes before
#: its value, the separator and name and ``=`` (group 1), its name (group 2), its value (group 3).
_CONNECTION_PART = re.compile(r"((?:^|;)\s*([A-Za-z][A-Za-z0-9 _.-]*)=)([^;\"'\n]*)")


def _secret_name(name: str) -> bool:
    """Whether a query parameter's or a connection string part's ``name`` marks its value a secret."""
    return bool(SECRET_KEY.search(name) or _SECRET_QUERY_NAME.fullmatch(name))


def _query_secret(name: str) -> bool:
    """Whether the query parameter ``name`` (``sig=``, ``X-Amz-Signature=``) holds a secret."""
    return _secret_name(urllib.parse.unquote(name[:-1]))


def _hide_query(match: re.Match[str]) -> str:
    return match.group(1) + _QUERY_PARAMETER.sub(
        lambda p: p.group(1) + (REDACTED if p.group(2) and _query_secret(p.group(1)) else p.group(2)), match.group(2))


def _hide_connection_part(match: re.Match[str]) -> str:
    secret = match.group(3) and _secret_name(match.group(2))
    return match.group(1) + (REDACTED if secret else match.group(3))


def hide_inline_secrets(text: str) -> str:
    """``text`` with the secrets it holds inline as ``<redacted>``: the password of every URL in
    it (``http://user:password@host``), the values of a URL's secret-looking query parameters
    (names that match :data:`SECRET_KEY`, and ``sig``, ``code``, ``auth``, ``pwd``:
    ``http://user:<redacted>@host/in?code=<redacted>&format=json``) and, in text with a ``;``,
    the values of a connection string's parts so named
    (``HostName=hub.example;DeviceId=d1;SharedAccessKey=<redacted>``, ``Pwd=<redacted>``)."""
    text = _URL_PASSWORD.sub(rf"\1{REDACTED}@", _URL_QUERY.sub(_hide_query, text))
    return _CONNECTION_PART.sub(_hide_connection_part, text) if ";" in text else text


def redact(value: Any) -> Any:
    """``value`` with every non-empty entry under a secret-looking key replaced by ``<redacted>``
    (in mappings and lists, at any depth), and the secrets a string holds inline anywhere (a
    URL's password and secret query parameters, a connection string's key:
    :func:`hide_inline_secrets`)."""
    if isinstance(value, str):
        return hide_inline_secrets(value)
    if isinstance(value, Mapping):
        return {k: (REDACTED if SECRET_KEY.search(str(k)) and v not in (None, "", [], {}) else redact(v))
                for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


def redact_at(keys: Sequence[str], value: Any) -> Any:
    """``value``, found at the key path ``keys``, as :func:`redact` leaves it in the whole
    configuration: ``<redacted>`` when it is not empty and a key of the path looks like a
    secret (an item of ``ingest.ciks``, the ``password`` asked for), else redacted inside."""
    if value not in (None, "", [], {}) and any(SECRET_KEY.search(key) for key in keys):
        return REDACTED
    return redact(value)


#: What a configuration error at a secret-looking key says instead of its own words.
WITHHELD = "not valid (why is not shown here: it may quote the value, and the key may hold a secret)"


def redact_error(line: str) -> str:
    """A configuration error, ``file: key.path: what is wrong`` (as ``--check-config`` words
    it), fit to leave the gateway: what is wrong is withheld when a key of its path looks like
    a secret, since it may quote the value; other lines are returned as they are."""
    parts = line.split(": ", 2)
    if len(parts) == 3 and any(SECRET_KEY.search(key) for key in parts[1].split(".")):
        return f"{parts[0]}: {parts[1]}: {WITHHELD}"
    return hide_inline_secrets(line)


def redact_quoted(keys: Sequence[str], value: Any, message: str) -> str:
    """``message``, what is wrong with ``value`` found at the key path ``keys``, with the value
    it quotes as ``<redacted>`` when a key of the path looks like a secret (the words stay:
    ``must not hold a NUL character: <redacted>``), and so does each of its characters quoted
    alone (``holds <redacted>: this system cannot pass it on``); a message that would still show the value
    some other way says :data:`WITHHELD` instead. Other messages are returned as they are
    (but for the secrets held inline in what they quote, :func:`hide_inline_secrets`), and so
    are those
    about a key that names a file (``key_file``, ``password_file``,
    ``cik_file``): its value is a path, which the person fixing it needs, and the secret is
    what the file holds.

    :param value: the value at ``keys`` as the configuration file wrote it (``None`` when
        there is none: then nothing is quoted).
    """
    if (not isinstance(value, (str, int, float, datetime.date)) or isinstance(value, bool) or value == ""
            or not any(SECRET_KEY.search(key) for key in keys) or keys[-1].lower().endswith("file")):
        return hide_inline_secrets(message)
    text = str(value)
    quotes = [shown_repr(value), repr(value)]
    if isinstance(value, datetime.date):  # a YAML timestamp, named as gateway.jsontext.given does
        quotes.append(value.isoformat())
    # (and each of its characters quoted alone: "holds 'é': this system cannot pass it on")
    quotes += [quoted for char in set(text) for quoted in (shown_repr(char), repr(char))]
    for quoted in quotes:
        message = message.replace(quoted, REDACTED)
    if text in message or repr(text)[1:-1] in message:
        return WITHHELD
    return message
