"""The one rule, and the one wording, of a TCP port written in the configuration or a request:
ASCII digits (``int()`` reads ``٨٠٨٠`` as 8080, ``8_080`` too), from 1 to 65535 for a port to
connect to (a URL's, a link's, the proxy's), from 0 for one to listen on (0: any free port)."""

from __future__ import annotations

from gateway.asciidigits import ascii_digits

#: The highest TCP port.
MAX_PORT = 65535


def port_problem(written: str, lowest: int = 1) -> str | None:
    """Why ``written`` is no port from ``lowest`` to :data:`MAX_PORT` in ASCII digits (``None``
    when it is one): ``the port must be from 1 to 65535, not '99999'``, every caller's words.

    :param written: the port as written.
    :param lowest: 1 for a port to connect to, 0 for one to listen on.
    """
    if ascii_digits(written) and lowest <= int(written) <= MAX_PORT:
        return None
    return f"the port must be from {lowest} to {MAX_PORT}, not {written!r}"


def url_port_problem(netloc: str) -> str | None:
    """:func:`port_problem` of the port written in a URL's ``netloc`` (``urlsplit(url).netloc``),
    after its host (a bracketed IPv6 address's closing bracket); ``None`` when the URL writes
    none (``host``, ``host:``, as ``urlsplit`` reads them) or a good one. ``urlsplit``'s own
    ``port`` says ``Port out of range 0-65535`` (0 is refused too) or ``Port could not be cast``."""
    host_port = netloc.rpartition("@")[2]
    if host_port.startswith("["):
        port = host_port.partition("]")[2].removeprefix(":")
    else:
        port = host_port.partition(":")[2]
    return port_problem(port) if port else None
