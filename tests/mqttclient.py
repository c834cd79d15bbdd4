"""A real MQTT client for integration tests: paho-mqtt on its own thread, results as Deferreds."""

from __future__ import annotations

import socket
import ssl
import uuid
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as paho
from twisted.internet.defer import Deferred, DeferredQueue, TimeoutError, inlineCallbacks

#: Seconds any single wait in an integration test may take.
WAIT = 10.0


class TestClient:
    """One paho client whose events arrive on the reactor thread.

    :param reactor: the running reactor (results are delivered with ``callFromThread``).
    :param client_id: the MQTT client id (random when ``None``).
    :param clean_session: MQTT CleanSession.
    :param reconnect: the least and the most seconds between paho's attempts to connect again
        after a connection it made was lost; ``None`` (the default): its network thread ends
        there instead, so a later :meth:`stop` does not block the reactor for the rest of a
        reconnect wait (paho sleeps it in chunks of up to 1 s). (A first connection is retried
        either way.)
    """

    def __init__(self, reactor: Any, client_id: str | None = None, clean_session: bool = True,
                 username: str | None = None, password: str | None = None,
                 transport: str = "tcp", reconnect: tuple[float, float] | None = None) -> None:
        self.reactor = reactor
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2,
                                  client_id=client_id or f"test-{uuid.uuid4().hex[:8]}",
                                  clean_session=clean_session, transport=transport,
                                  protocol=paho.MQTTv311, reconnect_on_failure=reconnect is not None)
        if reconnect is not None:
            self.client.reconnect_delay_set(*reconnect)  # type: ignore[arg-type]  # (typed int; floats work)
        if username is not None:
            self.client.username_pw_set(username, password)
        self.messages: DeferredQueue[paho.MQTTMessage] = DeferredQueue()
        self._connected: Deferred[int] = Deferred()
        self._disconnected: Deferred[int] = Deferred()
        self._acks: dict[int, Deferred[Any]] = {}
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = lambda c, u, m: reactor.callFromThread(self.messages.put, m)
        self.client.on_publish = lambda c, u, mid, rc, p: reactor.callFromThread(self._ack, mid, rc)
        self.client.on_subscribe = lambda c, u, mid, rcs, p: reactor.callFromThread(self._ack, mid, rcs)

    def tls(self, cafile: str, certfile: str | None = None, keyfile: str | None = None) -> None:
        """Use TLS, trusting ``cafile``, optionally with a client certificate."""
        self.client.tls_set(ca_certs=cafile, certfile=certfile, keyfile=keyfile, cert_reqs=ssl.CERT_REQUIRED)

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        code = reason.value if hasattr(reason, "value") else int(reason)
        self.reactor.callFromThread(lambda: self._connected.called or self._connected.callback(code))

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        code = reason.value if hasattr(reason, "value") else int(reason)
        self.reactor.callFromThread(lambda: self._disconnected.called or self._disconnected.callback(code))
        self.reactor.callFromThread(lambda: self._connected.called or self._connected.callback(-1))

    def _ack(self, mid: int, result: Any) -> None:
        d = self._acks.pop(mid, None)
        if d is not None:
            d.callback(result)

    def connect(self, port: int, host: str = "127.0.0.1", will: tuple[str, bytes, int] | None = None,
                keepalive: int = 30) -> Deferred[int]:
        """Connect and start the network thread; fires with the CONNACK code (-1: closed)."""
        if will is not None:
            self.client.will_set(will[0], will[1], qos=will[2])
        self.client.connect_async(host, port, keepalive=keepalive)
        self.client.loop_start()
        return self._connected.addTimeout(WAIT, self.reactor)

    def connect_unix(self, path: str) -> Deferred[int]:
        """Connect over a unix socket."""
        self.client.connect_async(path, 1)
        self.client.loop_start()
        return self._connected.addTimeout(WAIT, self.reactor)

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> Deferred[Any]:
        """Publish; fires when the broker acknowledged it (at once for QoS 0)."""
        d: Deferred[Any] = Deferred()
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        self._acks[info.mid] = d
        if info.is_published():
            self._acks.pop(info.mid, None)
            d.callback(0)
        return d.addTimeout(WAIT, self.reactor)

    def subscribe(self, topic_filter: str, qos: int = 0) -> Deferred[Any]:
        """Subscribe; fires with the granted QoS list from SUBACK."""
        d: Deferred[Any] = Deferred()
        _, mid = self.client.subscribe(topic_filter, qos)
        self._acks[mid] = d
        return d.addTimeout(WAIT, self.reactor)

    def next_message(self, timeout: float = WAIT) -> Deferred[paho.MQTTMessage]:
        """The next message received."""
        return self.messages.get().addTimeout(timeout, self.reactor)

    @inlineCallbacks
    def next_matching(self, matches: Callable[[paho.MQTTMessage], bool], timeout: float = WAIT) -> Any:
        """The next message received that ``matches`` (those before it are dropped).

        :raises TimeoutError: when none came within ``timeout`` seconds.
        """
        deadline = self.reactor.seconds() + timeout
        while True:
            left = deadline - self.reactor.seconds()
            if left <= 0:
                raise TimeoutError(f"no matching message in {timeout:g} s")
            message = yield self.next_message(left)
            if matches(message):
                return message

    def disconnected(self) -> Deferred[int]:
        """Fires when the connection is closed (by either side)."""
        return self._disconnected

    def stop(self, drop: bool = False) -> None:
        """Disconnect cleanly (or just drop the socket) and stop the network thread."""
        if drop:
            sock = self.client.socket()
            if sock is not None:
                try:
                    # Wakes the network thread's select() at once (a close alone does not:
                    # loop_stop() then waited out its 1 s timeout).
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass  # not connected any more
                sock.close()
        else:
            self.client.disconnect()
        self.client.loop_stop()
