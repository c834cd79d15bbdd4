"""The one check of the configuration's server URLs (``fleet.base_url``, ``uploads.aws_endpoint``,
``http_links.links.<name>.url``): a URL that passes it is one the gateway's HTTP client can
send its requests to, so that ``--check-config`` refuses what would fail at run time.

The proxy's URL (``gateway.proxy.url``) is not a server's: :mod:`gateway.proxysettings` reads it
(it takes a user and password, and needs a port).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from gateway.portnumbers import url_port_problem
from gateway.shown import shown_url, url_error_shown


@dataclass(frozen=True)
class URLForm:
    """What a configuration key's URL may hold, and what its errors say.

    :ivar form: the URL's shape as its errors name it (``https://host[:port]``).
    :ivar path: a path may follow the host (a prefix, or the URL posted to).
    :ivar query: a query may follow (the URL is requested as it is, nothing goes after it).
    :ivar goes_after: what is appended to the URL, said when a query or fragment would swallow it.
    :ivar authenticates: what authenticates instead of a user name and password (which the HTTP
        client never sends).
    """

    form: str
    path: bool
    query: bool
    goes_after: str
    authenticates: str


def url_problem(url: str, form: URLForm, *, allow_http: bool) -> str | None:
    """Why ``url`` cannot be a server's URL of the shape ``form`` (``None`` when it can): it
    must parse (an IPv6 address in closed brackets, a port from 1 to 65535 in ASCII digits:
    :func:`~gateway.portnumbers.url_port_problem`), be ``https://``
    (``http://`` with ``allow_http``) with a host, hold no space or control character, no
    user name or password, and no fragment (never sent); a path and a query only where
    ``form`` takes them. The message never repeats the URL's user information nor its query.

    :param url: the configured URL.
    :param form: what the key's URL may hold.
    :param allow_http: whether a plain ``http://`` URL is accepted.
    """
    shown = shown_url(url)
    if any(char.isspace() or not char.isprintable() for char in url):
        return f"must be {form.form}, without spaces or control characters, not {shown!r}"
    try:
        parts = urlsplit(url)
    except ValueError as error:  # (an IPv6 bracket left open)
        return f"not a usable URL ({url_error_shown(url, error)}): {shown!r}; it must be {form.form}"
    port = url_port_problem(parts.netloc)
    if port is not None:
        return f"{shown!r}: {port}"
    if parts.scheme.lower() not in ("https", "http") or not parts.hostname:
        return f"must be {form.form}, not {shown!r}"
    if "@" in parts.netloc:
        return f"must be {form.form}, without a user name or password (never sent): {form.authenticates}"
    if not form.path and parts.path.strip("/"):
        return f"must be {form.form}, without a path, not {shown!r}"
    if parts.fragment or url.endswith("#") or (not form.query and (parts.query or url.endswith("?"))):
        without = "a fragment (never sent)" if form.query else "a query or fragment"
        return f"must be {form.form}, without {without}: {form.goes_after}, not {shown!r}"
    if parts.scheme.lower() == "http" and not allow_http:
        return "http:// is refused unless allow_http is set"
    return None
