"""Host name resolution on a small thread pool of its own, each lookup bounded in time and their
number bounded, so that a DNS outage cannot take the reactor's thread pool (journal checkpoints,
identity writes, admin work) nor grow threads without bound.

Twisted's own resolver runs ``getaddrinfo`` in the reactor's thread pool, where a lookup that hangs
holds its thread for as long as the system resolver takes (10 s and more with DNS down), and a
gateway with many links, uploads and downloads can fill that pool. :func:`install` puts a
:class:`PooledNameResolver` in its place (``reactor.installNameResolver``): every
``HostnameEndpoint`` (the links, the HTTP client, the proxy) resolves through it.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, Literal

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.error import DNSLookupError
from twisted.internet.interfaces import (IAddress, IHostnameResolver, IHostResolution, IReactorTime,
                                         IResolutionReceiver)
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from gateway.clockstep import steady_seconds
from gateway.logthrottle import LogThrottle, since_last_line
from gateway.operations.threads import daemon_pool

#: Seconds a lookup may take, from when it is asked (waiting for a thread included): the
#: system resolver's own default (5 s per try, 2 tries) with one DNS server.
DNS_TIMEOUT = 10.0
#: Threads that run lookups at once (the rest wait for one).
DNS_THREADS = 4
#: Lookups under way at most (running, or waiting for a thread, or timed out but still holding
#: their thread): one more fails at once.
DNS_MAX_PENDING = 64
#: Seconds between two log lines about lookups refused for the cap, at least.
LOOKUP_REFUSED_LOG_INTERVAL = 60.0
#: Host names whose last lookup failed that are remembered (for the causes that name them).
REMEMBERED_FAILURES = 64

#: What ``getaddrinfo`` returns: (family, type, proto, canonname, sockaddr) tuples.
AddrInfo = Sequence[tuple[Any, ...]]
#: Runs a blocking callable with its arguments in the resolver's pool; fires with its result.
RunInPool = Callable[..., Any]


class LookupFailures:
    """Why the last lookup of a host name failed, for the few names that failed last.

    A failed lookup reaches a ``HostnameEndpoint`` as no address at all (Twisted's
    ``IResolutionReceiver`` has no way to say why), which it fails with a bare
    ``DNSLookupError``; the causes the gateway shows ask here for the reason.

    :param size: names remembered (the oldest is forgotten first).
    """

    def __init__(self, size: int = REMEMBERED_FAILURES) -> None:
        self._size = size
        self._reasons: OrderedDict[str, str] = OrderedDict()

    def record(self, host: str, reason: str) -> None:
        """Remember ``reason`` as why the last lookup of ``host`` failed."""
        self._reasons.pop(host, None)
        self._reasons[host] = reason
        while len(self._reasons) > self._size:
            self._reasons.popitem(last=False)

    def forget(self, host: str) -> None:
        """The last lookup of ``host`` succeeded."""
        self._reasons.pop(host, None)

    def reason(self, host: str) -> str | None:
        """Why the last lookup of ``host`` failed; None when it did not (or is forgotten)."""
        return self._reasons.get(host)

    def explain(self, error: DNSLookupError) -> str | None:
        """Why the lookup behind ``error`` (Twisted's, which names the host at its end:
        ``DNS lookup failed: no results for hostname lookup: NAME.``) failed."""
        text = str(error).rstrip("'.")
        for host in reversed(self._reasons):
            if text.endswith((f": {host}", f"'{host}")):
                return self._reasons[host]
        return None


#: The failures of the resolver :func:`install` puts in place.
FAILURES = LookupFailures()


@implementer(IHostResolution)
class _Resolution:
    """One lookup under way; cancelling it ends it with no address."""

    def __init__(self, name: str, cancel: Callable[[], None]) -> None:
        self.name = name
        self._cancel = cancel

    def cancel(self) -> None:
        """End the lookup now, with no address (its thread runs on to its end)."""
        self._cancel()


def _is_address(host: str) -> bool:
    """Whether ``host`` is an IP address (IPv6 with a ``%zone`` too): nothing to look up."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@implementer(IHostnameResolver)
class PooledNameResolver:
    """Resolves host names with ``getaddrinfo`` in a thread pool, within a timeout (an IP address
    at once, on the calling thread: it needs no lookup).

    :param clock: for the timeout.
    :param run_in_pool: runs ``getaddrinfo`` in the pool (``partial(deferToThreadPool, reactor, pool)``).
    :param getaddrinfo: the system's (``socket.getaddrinfo``).
    :param timeout: seconds a lookup may take from when it is asked.
    :param max_pending: lookups under way at most (see :data:`DNS_MAX_PENDING`).
    :param failures: where the reasons of failed lookups are kept.
    """

    log = Logger()

    def __init__(self, clock: IReactorTime, run_in_pool: RunInPool,
                 getaddrinfo: Callable[..., AddrInfo] = socket.getaddrinfo, timeout: float = DNS_TIMEOUT,
                 max_pending: int = DNS_MAX_PENDING, failures: LookupFailures = FAILURES) -> None:
        self._clock = clock
        self._run = run_in_pool
        self._getaddrinfo = getaddrinfo
        self.timeout = timeout
        self.max_pending = max_pending
        self.failures = failures
        #: lookups whose thread work has not ended (timed out ones included)
        self.pending = 0
        self._refused_lines = LogThrottle(LOOKUP_REFUSED_LOG_INTERVAL, partial(steady_seconds, clock))

    def resolveHostName(self, resolutionReceiver: IResolutionReceiver, hostName: str, portNumber: int = 0,
                        addressTypes: Sequence[type[IAddress]] | None = None,
                        transportSemantics: str = "TCP") -> IHostResolution:
        """Resolve ``hostName``, telling ``resolutionReceiver`` each address, then that it is done
        (with no address when the lookup failed, timed out, or too many are under way).

        :param addressTypes: ``IPv4Address`` and/or ``IPv6Address``; None: both.
        :param transportSemantics: ``TCP`` or ``UDP``.
        """
        over = False
        timer: Any = None

        def finish(result: AddrInfo | Failure | str | None) -> None:
            """End the lookup with ``result``: addresses, why it failed, or None when it was
            cancelled (which says nothing of the name: a failure's reason is kept)."""
            nonlocal over
            if over:
                return
            over = True
            if timer is not None and timer.active():
                timer.cancel()
            if result is None:
                resolutionReceiver.resolutionComplete()
                return
            if isinstance(result, Failure):
                exc = result.value
                strerror = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                result = f"DNS lookup for {hostName} failed: {strerror}"
            if isinstance(result, str):
                self.failures.record(hostName, result)
            else:
                self.failures.forget(hostName)
                for family, _, _, _, sockaddr in result:
                    if family == socket.AF_INET:
                        resolutionReceiver.addressResolved(IPv4Address(transport, *sockaddr[:2]))
                    elif family == socket.AF_INET6:
                        resolutionReceiver.addressResolved(IPv6Address(transport, *sockaddr))
            resolutionReceiver.resolutionComplete()

        transport: Literal["TCP", "UDP"] = "UDP" if transportSemantics == "UDP" else "TCP"
        resolution = _Resolution(hostName, partial(finish, None))
        resolutionReceiver.resolutionBegan(resolution)
        types = set(addressTypes) if addressTypes is not None else {IPv4Address, IPv6Address}
        family = (socket.AF_INET if types == {IPv4Address} else socket.AF_INET6 if types == {IPv6Address}
                  else socket.AF_UNSPEC)
        socktype = socket.SOCK_DGRAM if transport == "UDP" else socket.SOCK_STREAM
        if _is_address(hostName):  # (nothing to look up: not behind lookups DNS holds)
            try:
                finish(self._getaddrinfo(hostName, portNumber, family, socktype, 0, socket.AI_NUMERICHOST))
            except OSError:
                finish(Failure())
            return resolution
        if self.pending >= self.max_pending:
            refused = self._refused_lines.note()
            if refused is not None:
                self.log.warn("DNS lookup for {host} refused: {pending} lookups are already under way (DNS"
                              " does not answer?); {since}", host=hostName, pending=self.pending,
                              since=since_last_line(refused, "refused", "logged at most once a minute"))
            finish(f"DNS lookup for {hostName} not started: {self.pending} lookups are already under way"
                   " (is DNS down?)")
            return resolution
        timer = self._clock.callLater(
            self.timeout, finish, f"DNS lookup for {hostName} timed out after {self.timeout:g} s")
        self.pending += 1

        def ended(result: Any) -> None:
            self.pending -= 1
            finish(result)

        self._run(self._getaddrinfo, hostName, portNumber, family, socktype).addBoth(ended)
        return resolution


def install(reactor: Any, threads: int = DNS_THREADS,
            getaddrinfo: Callable[..., AddrInfo] = socket.getaddrinfo) -> PooledNameResolver:
    """Put a :class:`PooledNameResolver` in place of ``reactor``'s name resolver, on a pool of
    ``threads`` daemon threads named ``dns`` that starts when the reactor runs and stops at its
    shutdown (:func:`_stop_pool`).

    :param getaddrinfo: the system's (``socket.getaddrinfo``).
    :return: the resolver.
    """
    pool = daemon_pool(0, threads, "dns")
    resolver = PooledNameResolver(reactor, partial(deferToThreadPool, reactor, pool), getaddrinfo)
    reactor.callWhenRunning(pool.start)
    reactor.addSystemEventTrigger("during", "shutdown", _stop_pool, pool, resolver)
    reactor.installNameResolver(resolver)
    return resolver


def _stop_pool(pool: ThreadPool, resolver: PooledNameResolver) -> None:
    """Stop ``pool``: its idle threads are joined now; while a lookup still holds a thread (DNS
    does not answer), they are joined by a daemon thread of its own (``dns-stop``), so that the
    exit does not wait for the system's resolver (the threads are daemons)."""
    if resolver.pending:
        threading.Thread(target=pool.stop, name="dns-stop", daemon=True).start()
    else:
        pool.stop()
