"""Network errors (HTTP client, TCP, TLS) told as sentences a person can act on (never a ``Failure`` repr),
and a server's HTTP error answer told on one line; :class:`ProxyError`, the HTTP proxy's
(:mod:`gateway.httpproxy`), kept here so that what tells it apart (the MQTT links' causes)
need not import the proxy's module in a gateway without a proxy.

Used by downloads, uploads, the fleet's DDI client, the Exosite HTTP link and podman's event stream.
"""

from __future__ import annotations

import re

from twisted.internet import error as net
from twisted.python.failure import Failure
from twisted.web.http import PotentialDataLoss

from gateway.certwindow import CertificateTimeError
from gateway.nameresolver import FAILURES
from gateway.shown import escaped

#: Twisted wraps what went wrong in a list of Failures (``ResponseFailed.reasons`` and its kin).
_WRAPPED = "reasons"

#: The most characters of an HTTP error answer's words that a message quotes.
ANSWER_CHARS = 200
#: The most bytes of an error answer's body looked at for its words (an HTML page's title is near its start).
_ANSWER_READ = 16384
#: The start of an HTML page (a proxy's or a web server's error page), after blanks.
_HTML = re.compile(r"\s*<(!doctype\s+html|html|head|body|title)\b", re.IGNORECASE)
#: The tags around an HTML page's title.
_TITLE_OPEN, _TITLE_CLOSE = re.compile("<title", re.IGNORECASE), re.compile("</title", re.IGNORECASE)


class ProxyError(net.ConnectError):
    """The proxy gave no connection to the server: it cannot be reached, refused the CONNECT
    (its answer quoted), answered something that is not HTTP, or did not answer in time. A
    connection error like any other (it is retried as such), told in one line naming the proxy.

    :param message: the line.
    """

    def __init__(self, message: str) -> None:
        super().__init__(string=message)
        self.message = message

    def __str__(self) -> str:
        return self.message


def describe(problem: BaseException | Failure) -> str:
    """Say what went wrong on the network, briefly, without Python reprs.

    :param problem: an exception (or a Failure) from the HTTP client: ``ResponseFailed``,
        ``ResponseNeverReceived``, ``RequestTransmissionFailed`` (their wrapped reasons are
        told one by one), a connection error, a TLS error ...

    A server certificate refused for the clock (:class:`~gateway.certwindow.CertificateTimeError`)
    is told with the clock's reading and the certificate's validity window.
    """
    value = problem.value if isinstance(problem, Failure) else problem
    reasons = getattr(value, _WRAPPED, None)
    if isinstance(reasons, list) and reasons:
        parts: list[str] = []
        for reason in reasons:
            text = describe(reason)
            if text not in parts:
                parts.append(text)
        return "; ".join(parts)
    if isinstance(value, (net.ConnectionDone, net.ConnectionLost)):
        return "the server closed the connection"
    if isinstance(value, PotentialDataLoss) or type(value).__name__ == "_DataLoss":
        return "the body ended before the end the server announced: its length, or its last chunk"
    if isinstance(value, net.ConnectionRefusedError):
        return "the server refused the connection (is it running, is the port right?)"
    if isinstance(value, net.DNSLookupError):
        why = FAILURES.explain(value)
        return (f"{why} (check the URL and the gateway's DNS)" if why
                else "the server's name could not be resolved (check the URL and the gateway's DNS)")
    if isinstance(value, (net.TimeoutError, net.TCPTimedOutError)):
        return "the connection timed out"
    if isinstance(value, net.NoRouteError):
        return "there is no route to the server (is the network up?)"
    from service_identity.exceptions import CertificateError, VerificationError  # (loaded with TLS anyway)

    if isinstance(value, CertificateError):
        return ("the TLS connection failed: the server's certificate names no host (no subjectAltName), so it "
                "is valid for none; the server needs a certificate that carries its name")
    if isinstance(value, VerificationError):
        return ("the TLS connection failed: the server's certificate is not valid for the host name asked for "
                "(check the URL's host and the server's certificate)")
    if isinstance(value, CertificateTimeError):
        return f"the TLS connection failed: {value.window('the server')}; {value.remedy()}"
    if type(value).__module__.startswith("OpenSSL") or "SSL" in type(value).__name__:
        return f"the TLS connection failed ({_tls_reasons(value)}); check the server's certificate and ca_file"
    return _plain(value)


def tls_reasons(value: BaseException) -> list[str]:
    """The reasons of a pyOpenSSL error (``Error([('SSL routines', '', 'certificate verify
    failed')])``: ``['certificate verify failed']``); none for another error."""
    items = value.args[0] if value.args and isinstance(value.args[0], list) else []
    return [str(item[-1]) for item in items if isinstance(item, tuple) and item]


def _tls_reasons(value: BaseException) -> str:
    """OpenSSL's reasons (``[('SSL routines', '', 'certificate verify failed')]``) in words."""
    text = ", ".join(tls_reasons(value) or [_plain(value)])
    if "certificate verify failed" in text:
        text += ": no CA trusted vouches for it"
    return text


def _plain(value: BaseException) -> str:
    text = str(value).strip()
    if not text or text.startswith("[<") or "<twisted.python.failure.Failure" in text:
        return type(value).__name__
    return text


def one_line(text: str) -> str:
    """``text`` as a log line or a status message quotes words from outside: on one line (its
    blanks, line breaks included, collapsed to one space), its first :data:`ANSWER_CHARS`
    characters, and any other control character escaped (``\\x1b``), so that it cannot break
    or forge a line.

    :param text: words from a server (an error answer's body, its reason phrase).
    """
    cut = " ".join(text.split())[:ANSWER_CHARS].rstrip()
    return escaped(cut)


def answer_words(status: int, phrase: bytes, body: bytes) -> str:
    """What an HTTP error answer says, on one line: of an HTML page (a proxy's ``502``, a web
    server's ``501``) its title, else its text without the markup; of another body its start
    (:data:`ANSWER_CHARS` characters); of an empty one the reason phrase. A title that starts
    with the status (``502 Bad Gateway``) is given without it.

    :param status: the answer's status.
    :param phrase: its reason phrase (``response.phrase``).
    :param body: its body (or its start).
    """
    text = body[:_ANSWER_READ].decode("utf-8", "replace").lstrip("\ufeff")
    if _HTML.match(text):
        from html import unescape  # (its table of entities: only for an HTML page)

        text = re.sub(rf"^\s*{status}\b[\s:-]*", "", unescape(_title(text) or _page_text(text)))
    words = one_line(text)
    if not words:
        words = one_line(phrase.decode("latin-1"))
    return words


def _title(page: str) -> str:
    """The text of an HTML page's ``<title>`` ('' without one). Found a piece at a time, in
    time linear in the page: one regular expression for the whole element, retried at each
    ``<title`` of a page that never closes it, is not."""
    opening = _TITLE_OPEN.search(page)
    start = page.find(">", opening.end()) if opening else -1
    closing = _TITLE_CLOSE.search(page, start) if start >= 0 else None
    return page[start + 1:closing.start()].strip() if closing else ""


def _page_text(page: str) -> str:
    """An HTML page's text: its tags left out, and its scripts and styles with what they hold
    (a tag not closed is left out to the next one). Linear in the page's length."""
    kept, skipping = [], ""
    first, *pieces = page.split("<")
    kept.append(first)
    for piece in pieces:
        tag, closed, after = piece.partition(">")
        if not closed:
            continue
        name = (tag.split(None, 1) or [""])[0].lower()
        if skipping:
            if name == f"/{skipping}":
                skipping = ""
                kept.append(after)
            continue
        if name in ("script", "style"):
            skipping = name
            continue
        kept.append(after)
    return " ".join(kept)


def describe_answer(status: int, phrase: bytes, body: bytes = b"") -> str:
    """An HTTP error answer told on one line: ``HTTP <status>: <what it says>``
    (:func:`answer_words`), ``HTTP <status>`` when it says nothing.

    :param status: the answer's status.
    :param phrase: its reason phrase (``response.phrase``).
    :param body: its body (or its start); none when it was not read.
    """
    words = answer_words(status, phrase, body)
    return f"HTTP {status}: {words}" if words else f"HTTP {status}"
