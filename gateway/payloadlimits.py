"""How large a message the gateway reads on the local topics it takes requests on: one larger
than :data:`REQUEST_BYTES` is refused by its size alone, before any of it is decoded or parsed
(docs/topics.md).

The broker takes messages up to its ``max_packet_size``, which may be raised to 64 MiB for
telemetry, and any local client may publish on these topics: a JSON text of 16 MiB with a
million keys held the reactor for 0.6 s while it was parsed (1.2 s for an update request, parsed
twice), every client of the broker waiting, and took 230 MiB more while it did
(docs/benchmarks.md).
"""

from __future__ import annotations

#: The most bytes of a request the gateway reads (the broker's default ``max_packet_size``): on
#: ``edge/gateway/reports/request``, ``edge/gateway/updates/<command>``,
#: ``edge/gateway/uploads/<operation>``, ``command//<gateway device>/req/...``, and for a twin
#: command on ``e``, ``e/#`` and ``event/#``.
REQUEST_BYTES = 1 << 20


def too_large(payload: bytes) -> str | None:
    """Why ``payload`` is refused unread: it is longer than :data:`REQUEST_BYTES`; ``None`` when
    it is not.

    :param payload: the message as it came.
    """
    if len(payload) <= REQUEST_BYTES:
        return None
    return f"the message is {len(payload)} bytes, more than the {REQUEST_BYTES} bytes a request may have"
