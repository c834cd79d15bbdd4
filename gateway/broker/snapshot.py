"""The broker's read-side snapshot: connections, sessions, retained messages, traffic, drops.

Taken by :meth:`gateway.broker.service.BrokerService.snapshot`; reports, ``/metrics`` and
the admin API read these, never the broker's fields.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.certinfo import CertificateSnapshot
from gateway.degraded import Degraded


@dataclass(frozen=True)
class ListenerSnapshot:
    """One listener of the broker.

    :param name: its name in the config.
    :param endpoint: its Twisted endpoint string.
    :param address: where it listens (``""`` when it is not listening).
    :param connections: open client connections.
    :param bytes_received: bytes read from its clients (Twisted-owned listeners).
    :param violations: connections closed for breaking the protocol.
    :param bytes_sent: bytes written to its clients: every packet, deliveries resent with DUP
        and acknowledgements too (Twisted-owned listeners).
    :param origins_refused: WebSocket handshakes of browser pages refused (HTTP 403) for their
        ``Origin`` (``type: ws`` listeners: ``allowed_origins``).
    """

    name: str
    endpoint: str
    address: str
    connections: int
    bytes_received: int
    violations: int
    bytes_sent: int = 0
    origins_refused: int = 0


@dataclass(frozen=True)
class ClientQueueSnapshot:
    """One session's queue, listed because it dropped messages (a slow or long-absent client).

    :param client_id: the session's client id.
    :param connected: whether its client is connected now.
    :param queued: messages in its queue now.
    :param queued_bytes: payload bytes in its queue now.
    :param dropped_qos0: QoS 0 messages its full queue dropped, over the session's life.
    :param dropped_qos12: QoS 1 and 2 messages its full queue dropped.
    """

    client_id: str
    connected: bool
    queued: int
    queued_bytes: int
    dropped_qos0: int
    dropped_qos12: int


@dataclass(frozen=True)
class CappedClientSnapshot:
    """One session that had subscriptions refused by ``max_subscriptions``.

    :param client_id: the session's client id.
    :param connected: whether its client is connected now.
    :param subscriptions: the topic filters it holds now.
    :param refused: the new filters refused to it, over the session's life (since the start).
    """

    client_id: str
    connected: bool
    subscriptions: int
    refused: int


@dataclass(frozen=True)
class BrokerSnapshot:
    """The local broker at one moment (counters are since the broker service started: the
    gateway's start, or the last configuration change applied or reverted while it runs, which
    restarts every service; they start again from zero then).

    :param running: whether amqtt is up.
    :param connections: open client connections, every listener.
    :param sessions: known sessions (connected, and persistent offline ones).
    :param subscriptions: subscriptions held, every session's topic filters (two sessions with one filter: two).
    :param retained: retained messages held.
    :param messages_in: PUBLISHes received from clients, by QoS (index 0, 1, 2); a QoS 2
        PUBLISH sent again before its PUBREL (the same message, not routed again) counts once.
    :param messages_out: PUBLISHes sent to clients, by QoS: each delivery once (its resends
        with DUP are in ``messages_resent``).
    :param payload_bytes_in: payload bytes of ``messages_in``.
    :param payload_bytes_out: payload bytes of ``messages_out``.
    :param violations: connections closed for breaking the protocol.
    :param queue_drops: messages dropped because a session's queue was full, or the persistent
        sessions' queues held ``max_queued_bytes_total`` (sum of ``queue_drops_by_qos``).
    :param dollar_drops: client publishes to ``$`` topics, dropped.
    :param persist_failures: journal appends that failed, each closing a connection
        without acknowledgement.
    :param listeners: each listener.
    :param certificates: the TLS certificates the listeners present.
    :param queue_drops_by_qos: ``queue_drops`` by the dropped message's QoS (index 0, 1, 2).
    :param offline_sessions: persistent sessions whose clients are offline (in ``sessions``).
    :param sessions_expired: offline persistent sessions ended by ``persistent_client_expiration``.
    :param sessions_evicted: offline persistent sessions ended by ``max_offline_sessions``.
    :param dropping_clients: the known sessions that dropped the most messages, most first (20 at most).
    :param topics_too_deep: connections closed for a PUBLISH or will topic with more than
        ``max_topic_levels`` levels (in ``violations``).
    :param filters_too_deep: SUBSCRIBE filters refused (0x80) for more than ``max_topic_levels`` levels.
    :param subscriptions_refused: new SUBSCRIBE filters refused (0x80) because their session held
        ``max_subscriptions``.
    :param capped_clients: the known sessions with the most ``subscriptions_refused``, most first (20 at most).
    :param durable_holds: times the broker stopped reading from a client because more than
        2,000 of its PUBLISHes (or 16 MiB of their payloads) waited: acknowledgements and
        QoS 0 messages for the disk, PUBLISHes for the topic plugins (a publisher that does
        not wait, on a slow disk or behind a slow plugin).
    :param checkpoint_failing: while saves of the checkpoint fail (a full or read-only disk:
        its changes stay in the state log, which is not compacted meanwhile), reason
        ``checkpoint-not-saved``, the last error, since when and how many failed; else ``None``.
    :param checkpoint_save_s: the last checkpoint saved (``state.json``: encoded, written,
        fsynced and renamed in a thread), from its hand-over to the thread until it was
        durable, in seconds; ``None`` until one is saved.
    :param checkpoint_bytes: that checkpoint's size in bytes; ``None`` until one is saved.
    :param messages_resent: QoS 1 and 2 deliveries sent again with DUP (their persistent
        session's client came back before acknowledging them).
    :param retained_bytes: all the retained messages' bytes, topics and payloads (the gateway's
        own and the links' included; ``max_retained_bytes`` bounds the clients' alone).
    :param retained_over_messages: clients' retained PUBLISHes (and wills) delivered and not
        retained because the broker held ``max_retained_messages`` (each to a new topic).
    :param retained_over_bytes: the same, because they would have taken the retained messages
        past ``max_retained_bytes`` (a topic's older retained message was removed then).
    :param retained_dropped_at_start: saved retained messages the start did not restore: the
        state held more than the bounds allow (written before them, or under larger ones).
    :param queued_total: what the persistent sessions' queues hold together, as
        ``max_queued_bytes_total`` counts it (payloads and topics, plus 330 bytes a message).
    :param queue_drops_over_total: messages dropped to keep ``queued_total`` within
        ``max_queued_bytes_total`` (also in ``queue_drops``), the start's included.
    :param route_cache: topics whose subscribers the broker caches now (at most 10,000: then
        the cache starts again empty).
    :param bus_cache: topics whose subscribers on the in-process bus are cached now (at most
        10,000, the same way).
    """

    running: bool
    connections: int
    sessions: int
    subscriptions: int
    retained: int
    messages_in: tuple[int, int, int]
    messages_out: tuple[int, int, int]
    payload_bytes_in: int
    payload_bytes_out: int
    violations: int
    queue_drops: int
    dollar_drops: int
    persist_failures: int
    listeners: tuple[ListenerSnapshot, ...]
    certificates: tuple[CertificateSnapshot, ...]
    queue_drops_by_qos: tuple[int, int, int] = (0, 0, 0)
    offline_sessions: int = 0
    sessions_expired: int = 0
    sessions_evicted: int = 0
    dropping_clients: tuple[ClientQueueSnapshot, ...] = ()
    topics_too_deep: int = 0
    filters_too_deep: int = 0
    subscriptions_refused: int = 0
    capped_clients: tuple[CappedClientSnapshot, ...] = ()
    checkpoint_failing: Degraded | None = None
    durable_holds: int = 0
    checkpoint_save_s: float | None = None
    checkpoint_bytes: int | None = None
    messages_resent: int = 0
    retained_bytes: int = 0
    retained_over_messages: int = 0
    retained_over_bytes: int = 0
    retained_dropped_at_start: int = 0
    queued_total: int = 0
    queue_drops_over_total: int = 0
    route_cache: int = 0
    bus_cache: int = 0
