"""The reason a storage gives for refusing a request: S3 and Azure answer XML
``<Error><Code>..</Code><Message>..</Message></Error>``; others, a short text."""

from __future__ import annotations

from typing import Any

from gateway.netfailures import answer_words, one_line


def provider_reason(response: Any, content: bytes) -> str:
    """``Code: Message`` from an XML error body, else what the body says (an HTML page's title,
    a text's start), else the phrase: on one line (:func:`~gateway.netfailures.answer_words`).

    :param response: the treq response (its headers carry ``x-ms-error-code`` on Azure).
    :param content: the response body.
    """
    code = message = ""
    if content.lstrip().startswith((b"<?xml", b"<Error")):
        from xml.etree import ElementTree  # not at import: an idle gateway uploads nothing

        try:
            root = ElementTree.fromstring(content.lstrip().lstrip(b"\xef\xbb\xbf"))
            code = (root.findtext("Code") or "").strip()
            message = next(iter((root.findtext("Message") or "").strip().splitlines()), "")  # (its first line)
        except ElementTree.ParseError:
            pass
    if not code:
        header = response.headers.getRawHeaders(b"x-ms-error-code") or []
        code = header[0].decode("latin-1") if header else ""
    code, message = one_line(code), one_line(message)
    if code or message:
        return f"{code}: {message}" if code and message else code or message
    return answer_words(response.code, getattr(response, "phrase", b""), content)
