"""Outgoing connections through the HTTP proxy of ``gateway.proxy``: https:// requests in a
CONNECT tunnel (TLS from the gateway to the server, verified as without a proxy), http://
requests forwarded by the proxy (absolute-URI requests, which squid and tinyproxy take for
any port), ``no_proxy`` hosts directly; MQTT links' connections in a CONNECT tunnel too
(:func:`tunnel_endpoint`, the one tunnel of both).

Imported only by the HTTP clients' builders (:mod:`gateway.operations.httpclient`,
:mod:`gateway.links.httpclient`) and the MQTT links' endpoints (:mod:`gateway.links.endpoint`)
of a gateway that has a proxy: without one their agent and endpoints are those of before,
with no layer added.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import (IAddress, IDelayedCall, IProtocol, IProtocolFactory, IReactorTime,
                                         IStreamClientEndpoint)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IAgentEndpointFactory, IBodyProducer, IPolicyForHTTPS, IResponse
from zope.interface import implementer

from gateway.addresses import host_port_text
from gateway.netfailures import ProxyError, describe, describe_answer, one_line
from gateway.proxysettings import ProxyAddress, ProxySettings, bypasses

__all__ = ["ProxyError", "ProxyRoutingAgent", "TunnelEndpoint", "proxied_agent", "tunnel_endpoint"]

#: Seconds a proxy may take to answer a CONNECT (its own connection to the server included).
CONNECT_TIMEOUT = 30.0
#: The most bytes of a CONNECT answer's head (status line and headers) read: more is not an HTTP proxy.
MAX_HEAD = 16384
#: The most bytes of a refusal's body read for its words (:func:`~gateway.netfailures.describe_answer`).
MAX_REFUSAL_BODY = 4096
_STATUS_LINE = re.compile(rb"HTTP/1\.[01] (\d{3})(?: ([^\r\n]*))?")
_CONTENT_LENGTH = re.compile(rb"^content-length:[ \t]*(\d+)[ \t]*$", re.IGNORECASE | re.MULTILINE)
#: What to check after a refusal of these statuses (tinyproxy refuses a CONNECT's credentials with a 401).
_HINTS = {
    401: " (the proxy wants a user and password: check them in gateway.proxy.url)",
    407: " (the proxy wants a user and password: check them in gateway.proxy.url)",
    403: " (the proxy's rules forbid it: its ACL, or the ports it tunnels to)",
}


@implementer(IStreamClientEndpoint)
class _ProxyEndpoint:
    """Connects to the proxy; a failure to does name it (``the proxy http://host:port cannot be
    reached: ...``) rather than tell of "the server".

    :param endpoint: the endpoint of the proxy.
    :param shown: the proxy as errors name it (no credentials).
    """

    def __init__(self, endpoint: IStreamClientEndpoint, shown: str) -> None:
        self._endpoint = endpoint
        self._shown = shown

    def connect(self, protocolFactory: IProtocolFactory) -> "Deferred[IProtocol]":
        """Connect to the proxy with ``protocolFactory``."""

        def unreachable(failure: Failure) -> Failure:
            if failure.check(CancelledError, ProxyError):
                return failure
            return Failure(ProxyError(f"the proxy {self._shown} cannot be reached: {describe(failure)}"))

        return self._endpoint.connect(protocolFactory).addErrback(unreachable)


class _TunnelProtocol(Protocol):
    """Asks the proxy for a tunnel (``CONNECT host:port``) and, once it answers 2xx, runs the
    protocol ``factory`` builds on the tunnel, handing it every byte and the end of the connection.

    :ivar established: fires with that protocol, or fails with :class:`ProxyError`.
    """

    def __init__(self, endpoint: TunnelEndpoint, factory: IProtocolFactory) -> None:
        self._endpoint = endpoint
        self._factory = factory
        self._connection: Any = None  # the transport (ITCPTransport: abortConnection)
        self._buffer = b""
        self._refusal: tuple[int, bytes, int] | None = None  # status, phrase, body length wanted
        self._wrapped: IProtocol | None = None
        self._timer: IDelayedCall | None = None
        self.established: Deferred[IProtocol] = Deferred(self._cancel)

    def connectionMade(self) -> None:
        """Send the CONNECT request; the proxy has :data:`CONNECT_TIMEOUT` seconds to answer."""
        self._connection = self.transport
        target = self._endpoint.target.encode("ascii")
        lines = [b"CONNECT " + target + b" HTTP/1.1", b"Host: " + target]
        if self._endpoint.proxy.authorization is not None:
            lines.append(b"Proxy-Authorization: " + self._endpoint.proxy.authorization)
        self._connection.write(b"\r\n".join(lines) + b"\r\n\r\n")
        self._timer = self._endpoint.clock.callLater(self._endpoint.timeout, self._timed_out)

    def dataReceived(self, data: bytes) -> None:
        """Bytes of the proxy's answer, then of the tunnel (to the protocol on it)."""
        if self._wrapped is not None:
            self._wrapped.dataReceived(data)
            return
        if self.established.called:
            return
        self._buffer += data
        if self._refusal is not None:
            self._refused_body(self._refusal)
            return
        if self._buffer[:5] != b"HTTP/"[:len(self._buffer)]:
            self._fail(f"answered the CONNECT with something that is not HTTP: "
                       f"{one_line(self._buffer[:60].decode('latin-1'))!r}")
            return
        head, found, rest = self._buffer.partition(b"\r\n\r\n")
        if not found:
            if len(self._buffer) > MAX_HEAD:
                self._fail(f"answered the CONNECT with a head over {MAX_HEAD} bytes")
            return
        status_line, _, headers = head.partition(b"\r\n")
        match = _STATUS_LINE.fullmatch(status_line)
        if match is None:
            self._fail(f"answered the CONNECT with a status line that is not HTTP: "
                       f"{one_line(status_line[:60].decode('latin-1'))!r}")
            return
        status, phrase = int(match.group(1)), match.group(2) or b""
        if 200 <= status < 300:
            self._open(rest)
            return
        length = _CONTENT_LENGTH.search(headers)
        self._refusal = (status, phrase, min(int(length.group(1)), MAX_REFUSAL_BODY) if length else 0)
        self._buffer = rest
        self._refused_body(self._refusal)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """The end of the tunnel, told to the protocol on it; before it, the end of the exchange."""
        if self._wrapped is not None:
            self._wrapped.connectionLost(reason)
        elif self._refusal is not None:
            self._refused(self._refusal, self._buffer)
        else:
            self._fail(f"closed the connection before it answered the CONNECT to {self._endpoint.target}")

    def _open(self, rest: bytes) -> None:
        """The tunnel is up: the protocol on it starts (``rest``: its first bytes, if any)."""
        self._stop_timer()
        wrapped = self._factory.buildProtocol(self._connection.getPeer())
        if wrapped is None:
            self._fail(f"opened the tunnel to {self._endpoint.target}, but no protocol was made for it")
            return
        self._wrapped = wrapped
        wrapped.makeConnection(self._connection)
        if rest:
            wrapped.dataReceived(rest)
        self.established.callback(wrapped)

    def _refused_body(self, refusal: tuple[int, bytes, int]) -> None:
        """Once the refusal's body (its start: ``refusal[2]`` bytes) is in, fail with its words."""
        if len(self._buffer) >= refusal[2]:
            self._refused(refusal, self._buffer[:refusal[2]])

    def _refused(self, refusal: tuple[int, bytes, int], body: bytes) -> None:
        """Fail with what the refusal (status, reason phrase) and its ``body`` say."""
        status, phrase, _ = refusal
        self._fail(f"refused the tunnel to {self._endpoint.target}: {describe_answer(status, phrase, body)}"
                   + _HINTS.get(status, ""))

    def _timed_out(self) -> None:
        self._timer = None
        self._fail(f"did not answer the CONNECT to {self._endpoint.target} within {self._endpoint.timeout:g} s")

    def _fail(self, what: str) -> None:
        """The exchange failed: ``established`` fails with ``the proxy URL <what>``, and the
        connection is dropped (once: a failure, or a cancel, ends the exchange)."""
        self._stop_timer()
        if self.established.called:
            return
        self.established.errback(ProxyError(f"the proxy {self._endpoint.proxy.shown} {what}"))
        self._connection.abortConnection()

    def _cancel(self, _: Deferred[IProtocol]) -> None:
        """The connection attempt was cancelled (a request's timeout): drop the connection."""
        self._stop_timer()
        if self._connection is not None:
            self._connection.abortConnection()

    def _stop_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None


class _TunnelFactory(Factory):
    """Makes the one :class:`_TunnelProtocol` of a connection to the proxy."""

    #: One factory per connection: Factory's "Starting factory"/"Stopping factory" lines were two
    #: lines logged at every connection (a link retrying a refused tunnel: at every attempt).
    noisy = False

    def __init__(self, endpoint: TunnelEndpoint, factory: IProtocolFactory) -> None:
        self._endpoint = endpoint
        self._factory = factory

    def buildProtocol(self, addr: IAddress | None) -> _TunnelProtocol:
        """The tunnel's protocol for ``addr`` (the proxy)."""
        protocol = _TunnelProtocol(self._endpoint, self._factory)
        protocol.factory = self
        return protocol


@implementer(IStreamClientEndpoint)
class TunnelEndpoint:
    """A connection to ``host:port`` through an HTTP proxy's CONNECT tunnel.

    :param clock: times the proxy's answer.
    :param proxy_endpoint: connects to the proxy.
    :param proxy: the proxy (its credentials, the name errors give it).
    :param host: the server's host (a name, or an IP address; IPv6 without brackets).
    :param port: the server's port.
    :param timeout: seconds the proxy has to answer the CONNECT.
    """

    def __init__(self, clock: IReactorTime, proxy_endpoint: IStreamClientEndpoint, proxy: ProxyAddress,
                 host: str, port: int, timeout: float = CONNECT_TIMEOUT) -> None:
        self.clock = clock
        self.proxy_endpoint = proxy_endpoint
        self.proxy = proxy
        #: ``host:port`` as the CONNECT names it (an IPv6 address in brackets).
        self.target = host_port_text(host, port)
        self.timeout = timeout

    def connect(self, protocolFactory: IProtocolFactory) -> "Deferred[IProtocol]":
        """Connect to the proxy, ask for the tunnel, and run ``protocolFactory``'s protocol on it.

        :return: fires with that protocol once the proxy opened the tunnel; fails with
            :class:`ProxyError` when it does not.
        """
        def established(tunnel: Any) -> "Deferred[IProtocol]":
            return tunnel.established

        return self.proxy_endpoint.connect(_TunnelFactory(self, protocolFactory)).addCallback(established)


def _to_proxy(reactor: Any, proxy: ProxyAddress, timeout: float = 30.0,
              bind_address: tuple[str, int] | None = None) -> _ProxyEndpoint:
    """The connection to ``proxy`` itself (TCP, ``timeout`` seconds to come up, from
    ``bind_address`` when given), its failures naming the proxy."""
    return _ProxyEndpoint(HostnameEndpoint(reactor, proxy.host, proxy.port, timeout=timeout,
                                           bindAddress=bind_address), proxy.shown)


def tunnel_endpoint(reactor: Any, proxy: ProxyAddress, host: str, port: int, timeout: float = 30.0,
                    bind_address: tuple[str, int] | None = None) -> TunnelEndpoint:
    """A stream connection to ``host:port`` through ``proxy``'s CONNECT tunnel (an MQTT link's
    connection to its broker; TLS to the broker goes on top of it, as on a direct connection).

    :param reactor: the reactor (connects, and times the proxy's answer: :data:`CONNECT_TIMEOUT`).
    :param proxy: the proxy (``gateway.proxy.url``).
    :param host: the server's host (a name, or an IP address; IPv6 without brackets).
    :param port: the server's port.
    :param timeout: seconds the connection to the proxy may take to come up.
    :param bind_address: the local address to connect to the proxy from, or ``None``.
    """
    return TunnelEndpoint(reactor, _to_proxy(reactor, proxy, timeout, bind_address), proxy, host, port)


@implementer(IAgentEndpointFactory)
class _TunnelEndpoints:
    """The endpoints of https:// requests through the proxy: TLS (``policy``'s, the server's
    name verified) in a CONNECT tunnel."""

    def __init__(self, reactor: Any, proxy_endpoint: IStreamClientEndpoint, proxy: ProxyAddress,
                 policy: IPolicyForHTTPS) -> None:
        self._reactor = reactor
        self._proxy_endpoint = proxy_endpoint
        self._proxy = proxy
        self._policy = policy

    def endpointForURI(self, uri: Any) -> IStreamClientEndpoint:
        """TLS to ``uri``'s host and port, through the tunnel."""
        tunnel = TunnelEndpoint(self._reactor, self._proxy_endpoint, self._proxy, uri.host.decode("ascii"), uri.port)
        return wrapClientTLS(self._policy.creatorForNetloc(uri.host, uri.port), tunnel)


@implementer(IAgent)
class ProxyRoutingAgent:
    """Sends each request its way: to a ``no_proxy`` host (or of another scheme) with
    ``direct``; https:// with ``tunnel``; http:// with ``forward``, which asks the proxy with
    the absolute URI (``Proxy-Authorization`` added when the proxy has credentials).

    :param no_proxy: the hosts reached directly (``gateway.proxy.no_proxy``).
    :param authorization: the proxy's ``Proxy-Authorization`` value, or ``None``.
    :param direct: the agent without a proxy.
    :param tunnel: the agent of https:// requests, in CONNECT tunnels.
    :param forward: the agent of http:// requests (a ``ProxyAgent``).
    :param shown: the proxy as errors name it (no credentials).
    """

    def __init__(self, no_proxy: tuple[str, ...], authorization: bytes | None, direct: IAgent, tunnel: IAgent,
                 forward: IAgent, shown: str = "") -> None:
        self._no_proxy = no_proxy
        self._authorization = authorization
        self._direct = direct
        self._tunnel = tunnel
        self._forward = forward
        self._shown = shown

    def request(self, method: bytes, uri: bytes, headers: Headers | None = None,
                bodyProducer: IBodyProducer | None = None) -> "Deferred[IResponse]":
        """Send the request through the proxy, or directly (:func:`~gateway.proxysettings.bypasses`)."""
        parts = urlsplit(uri.decode("ascii", "replace"))
        if parts.scheme not in ("http", "https") or bypasses(self._no_proxy, parts.hostname or ""):
            return self._direct.request(method, uri, headers, bodyProducer)
        if parts.scheme == "https":
            return self._tunnel.request(method, uri, headers, bodyProducer)
        if self._authorization is not None:
            headers = headers.copy() if headers is not None else Headers()
            headers.setRawHeaders(b"proxy-authorization", [self._authorization])
        return self._forward.request(method, uri, headers, bodyProducer).addCallback(self._proxy_refusal,
                                                                                    parts.netloc)

    def _proxy_refusal(self, response: IResponse, server: str) -> IResponse:
        """A forwarded request's answer, or a :class:`~gateway.netfailures.ProxyError` for a
        407: that is the proxy asking for its credentials, not the server's answer (a client
        would take it for the server's refusal, fleet feedback for one for good)."""
        if response.code != 407:
            return response
        response.deliverBody(Protocol())  # (its body is dropped: the connection is not reused)
        raise ProxyError(f"the proxy {self._shown} refused to forward the request to {server}:"
                         f" {describe_answer(407, response.phrase)}{_HINTS[407]}")


def proxied_agent(reactor: Any, settings: ProxySettings, direct: IAgent, policy: IPolicyForHTTPS,
                  pool: Any) -> IAgent:
    """The agent of an HTTP client under ``gateway.proxy``: ``direct`` itself when there is no
    proxy, else a :class:`ProxyRoutingAgent` whose agents share ``pool``.

    :param reactor: the reactor.
    :param settings: ``gateway.proxy``.
    :param direct: the client's agent without a proxy (its ``policy`` and ``pool``).
    :param policy: the TLS policy of https:// servers (the same with a proxy as without).
    :param pool: the client's connection pool.
    """
    proxy = settings.address()
    if proxy is None:
        return direct
    from twisted.web.client import Agent, ProxyAgent

    endpoint = _to_proxy(reactor, proxy)
    tunnel = Agent.usingEndpointFactory(reactor, _TunnelEndpoints(reactor, endpoint, proxy, policy), pool)
    return ProxyRoutingAgent(settings.no_proxy, proxy.authorization, direct, tunnel, ProxyAgent(endpoint, reactor, pool),
                             proxy.shown)
