"""treq's ``HTTPClient`` that also takes URLs with an IPv6 address (``http://[::1]:8080/``),
for every HTTP client the gateway makes (HTTP links, fleet, downloads, uploads).

treq turns each URL into hyperlink's ``to_uri()`` form, which puts the host through IDNA;
IDNA refuses the colons of an IPv6 address, so such a request raised
``InvalidCodepoint`` before it was sent (hyperlink issues #68 and #188). The URL is handed
to treq as an :class:`AddressURL` instead, whose ``to_uri()`` leaves an IPv6 host as it is.
Imported only where a client is built: an idle gateway imports neither treq nor hyperlink.
"""

from __future__ import annotations

from typing import Any

from hyperlink import EncodedURL
from treq.client import HTTPClient
from twisted.internet.defer import Deferred


class AddressURL(EncodedURL):
    """A URL whose host may be an IPv6 address: its ``to_uri()`` does not put that through IDNA."""

    def to_uri(self) -> EncodedURL:
        """The URL in URI form (``%``-encoded path and query), the IPv6 host as it is."""
        if ":" not in self.host:
            return super().to_uri()
        return EncodedURL.to_uri(self.replace(host="ipv6.invalid")).replace(host=self.host)


def with_address_host(url: Any) -> Any:
    """``url`` as an :class:`AddressURL` when it is text (or bytes) naming an IPv6 address as
    its host; any other URL as it is (treq parses it, and raises for a bad one, as before)."""
    if not isinstance(url, (str, bytes)):
        return url
    try:
        text = url.decode("ascii") if isinstance(url, bytes) else url
        parsed = AddressURL.from_text(text)
    except ValueError:  # (hyperlink's URLParseError, UnicodeDecodeError)
        return url
    return parsed if ":" in parsed.host else url


class GatewayHTTPClient(HTTPClient):
    """treq's client, taking URLs with an IPv6 address as their host as it takes others."""

    def request(self, method: str, url: Any, **kwargs: Any) -> Deferred[Any]:
        """treq's ``request``, ``url`` first made an :class:`AddressURL` when its host is an
        IPv6 address (:func:`with_address_host`)."""
        return super().request(method, with_address_host(url), **kwargs)
