"""Host names resolve on a pool of their own, each lookup within a timeout, their number capped."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from typing import Any

from twisted.internet import error
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import IHostnameResolver
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from gateway import nameresolver
from gateway.links.causes import Peer, describe
from gateway.nameresolver import LookupFailures, PooledNameResolver
from gateway.netfailures import describe as describe_http
from tests.logevents import capture_log_events, first_line

V4 = [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("192.0.2.7", 8883))]
V6 = [(socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("2001:db8::7", 8883, 0, 0))]


class Receiver:
    """Records what a resolver tells it."""

    def __init__(self) -> None:
        self.began: Any = None
        self.addresses: list[Any] = []
        self.complete = False

    def resolutionBegan(self, resolution: Any) -> None:
        self.began = resolution

    def addressResolved(self, address: Any) -> None:
        self.addresses.append(address)

    def resolutionComplete(self) -> None:
        assert not self.complete, "completed twice"
        self.complete = True


class FakePool:
    """Stands in for the resolver's thread pool: each call waits until the test ends it."""

    def __init__(self) -> None:
        self.calls: list[tuple[Callable[..., Any], tuple[Any, ...], Deferred[Any]]] = []

    def run(self, work: Callable[..., Any], *args: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.calls.append((work, args, d))
        return d

    def end(self, index: int, result: Any) -> None:
        """The thread of call ``index`` returns ``result`` (an exception: raises it)."""
        d = self.calls[index][2]
        d.errback(Failure(result)) if isinstance(result, BaseException) else d.callback(result)


class PooledNameResolverTests(SynchronousTestCase):
    """What the resolver tells its receivers, and when."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.pool = FakePool()
        self.failures = LookupFailures()
        self.resolver = PooledNameResolver(self.clock, self.pool.run, failures=self.failures, max_pending=3)

    def resolve(self, host: str = "mqtt.example.com", **kwargs: Any) -> Receiver:
        receiver = Receiver()
        self.resolver.resolveHostName(receiver, host, 8883, **kwargs)  # type: ignore[arg-type]
        return receiver

    def test_interface(self) -> None:
        """It is an IHostnameResolver."""
        verifyObject(IHostnameResolver, self.resolver)

    def test_addresses(self) -> None:
        """getaddrinfo runs in the pool, asked for the family and socket type; its IPv4 and IPv6
        addresses are told, then the end."""
        receiver = self.resolve()
        self.assertEqual(receiver.began.name, "mqtt.example.com")
        work, args, _ = self.pool.calls[0]
        self.assertIs(work, socket.getaddrinfo)
        self.assertEqual(args, ("mqtt.example.com", 8883, socket.AF_UNSPEC, socket.SOCK_STREAM))
        self.assertFalse(receiver.complete)
        self.pool.end(0, V4 + V6)
        self.assertEqual(receiver.addresses, [IPv4Address("TCP", "192.0.2.7", 8883),
                                              IPv6Address("TCP", "2001:db8::7", 8883, 0, 0)])
        self.assertTrue(receiver.complete)
        self.assertEqual((self.resolver.pending, self.clock.getDelayedCalls()), (0, []))
        self.resolve(addressTypes=[IPv6Address], transportSemantics="UDP")
        self.assertEqual(self.pool.calls[1][1][2:], (socket.AF_INET6, socket.SOCK_DGRAM))

    def test_timeout(self) -> None:
        """A lookup that hangs ends with no address after the timeout, its reason kept; its thread
        still counts until it returns, and what it returns then is dropped."""
        receiver = self.resolve()
        self.clock.advance(nameresolver.DNS_TIMEOUT - 0.1)
        self.assertFalse(receiver.complete)
        self.clock.advance(0.1)
        self.assertEqual((receiver.complete, receiver.addresses), (True, []))
        self.assertEqual(self.failures.reason("mqtt.example.com"),
                         "DNS lookup for mqtt.example.com timed out after 10 s")
        self.assertEqual(self.resolver.pending, 1)
        self.pool.end(0, V4)
        self.assertEqual((receiver.addresses, self.resolver.pending), ([], 0))

    def test_failure(self) -> None:
        """A name that does not resolve is told as no address, its reason kept until a lookup succeeds."""
        receiver = self.resolve()
        self.pool.end(0, socket.gaierror(socket.EAI_NONAME, "Name or service not known"))
        self.assertEqual((receiver.complete, receiver.addresses), (True, []))
        self.assertEqual(self.failures.reason("mqtt.example.com"),
                         "DNS lookup for mqtt.example.com failed: Name or service not known")
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.resolve()
        self.pool.end(1, V4)
        self.assertIsNone(self.failures.reason("mqtt.example.com"))

    def test_cap(self) -> None:
        """Past the cap of lookups under way (timed out ones holding their thread included), one more
        fails at once and starts no thread."""
        for _ in range(3):
            self.resolve()
        self.clock.advance(nameresolver.DNS_TIMEOUT)
        refused = self.resolve("other.example.com")
        self.assertEqual((refused.complete, len(self.pool.calls)), (True, 3))
        self.assertEqual(self.failures.reason("other.example.com"),
                         "DNS lookup for other.example.com not started: 3 lookups are already under way"
                         " (is DNS down?)")
        self.pool.end(0, V4)
        self.resolve("other.example.com")
        self.assertEqual(len(self.pool.calls), 4)

    def test_refusals_logged_throttled(self) -> None:
        """Lookups refused for the cap are logged once a minute at most, each line counting them."""
        events = capture_log_events(self)
        for _ in range(3):
            self.resolve()

        def lines() -> list[str]:
            found = [formatEvent(event) for event in events if "refused" in event.get("log_format", "")]
            events.clear()
            return found

        for _ in range(5):
            self.resolve("other.example.com")
        line = ("DNS lookup for other.example.com refused: 3 lookups are already under way (DNS does not answer?);"
                " {count} refused since the last such line; logged at most once a minute")
        self.assertEqual(lines(), [first_line(line)])
        self.clock.advance(nameresolver.LOOKUP_REFUSED_LOG_INTERVAL)  # (the 3 time out, and still hold their threads)
        self.resolve("other.example.com")
        self.assertEqual(lines(), [line.format(count=5)])

    def test_addresses_at_once(self) -> None:
        """An IP address needs no lookup: it is told at once, without the pool, even when DNS holds
        every lookup (a link to 127.0.0.1 waited behind them)."""
        calls: list[tuple[Any, ...]] = []

        def getaddrinfo(*args: Any) -> Any:
            calls.append(args)
            return socket.getaddrinfo(*args)

        self.resolver = PooledNameResolver(self.clock, self.pool.run, getaddrinfo, max_pending=3,
                                           failures=self.failures)
        self.resolver.pending = 3  # (the cap: DNS holds them all)
        receiver = self.resolve("127.0.0.1")
        six = self.resolve("::1")
        self.assertEqual((receiver.complete, receiver.addresses), (True, [IPv4Address("TCP", "127.0.0.1", 8883)]))
        self.assertEqual(six.addresses, [IPv6Address("TCP", "::1", 8883, 0, 0)])
        self.assertEqual(calls[0], ("127.0.0.1", 8883, socket.AF_UNSPEC, socket.SOCK_STREAM, 0,
                                    socket.AI_NUMERICHOST))
        self.assertEqual(self.pool.calls, [])
        wrong = self.resolve("::1", addressTypes=[IPv4Address])  # (an IPv6 address asked for as IPv4)
        self.assertEqual((wrong.complete, wrong.addresses), (True, []))
        self.assertIn("DNS lookup for ::1 failed: ", self.failures.reason("::1") or "")

    def test_cancel(self) -> None:
        """Cancelling a lookup ends it with no address."""
        receiver = self.resolve()
        receiver.began.cancel()
        self.assertEqual((receiver.complete, receiver.addresses), (True, []))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_cancel_keeps_the_last_failures_reason(self) -> None:
        """A cancelled lookup says nothing of the name: the reason its last lookup failed stays
        for the causes (it was forgotten as if the lookup had succeeded)."""
        self.failures.record("mqtt.example.com", "DNS lookup for mqtt.example.com timed out after 10 s")
        receiver = self.resolve()
        receiver.began.cancel()
        self.assertEqual(self.failures.reason("mqtt.example.com"),
                         "DNS lookup for mqtt.example.com timed out after 10 s")

    def test_causes(self) -> None:
        """A link connecting through a HostnameEndpoint while DNS hangs fails after the timeout, and
        its cause, and an HTTP transfer's, says the lookup timed out."""
        reactor = MemoryReactorClock()
        resolver = PooledNameResolver(reactor, self.pool.run, failures=nameresolver.FAILURES)
        reactor.installNameResolver(resolver)
        d = HostnameEndpoint(reactor, "hung.example.com", 8883).connect(Factory.forProtocol(Protocol))
        self.assertNoResult(d)
        reactor.advance(nameresolver.DNS_TIMEOUT)
        failure = self.failureResultOf(d, error.DNSLookupError)
        self.assertEqual(describe(failure, Peer("hung.example.com:8883", "hung.example.com")),
                         "DNS lookup for hung.example.com timed out after 10 s: check the host name and the"
                         " gateway's DNS")
        self.assertEqual(describe_http(failure), "DNS lookup for hung.example.com timed out after 10 s"
                                                 " (check the URL and the gateway's DNS)")
        self.pool.end(0, V4)
        nameresolver.FAILURES.forget("hung.example.com")
        self.assertEqual(describe_http(failure),
                         "the server's name could not be resolved (check the URL and the gateway's DNS)")

    def test_failures_bounded(self) -> None:
        """Only the names that failed last are remembered."""
        failures = LookupFailures(size=2)
        for host in ("a", "b", "c"):
            failures.record(host, f"{host} failed")
        self.assertEqual([failures.reason(host) for host in "abc"], [None, "b failed", "c failed"])


class ShutdownReactor(Clock):
    """The parts of a reactor :func:`nameresolver.install` uses, with its triggers run by the test."""

    def __init__(self) -> None:
        super().__init__()
        self.when_running: list[Callable[[], Any]] = []
        self.shutdown: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []
        self.from_threads: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []
        self.nameResolver: Any = None
        self._lock = threading.Lock()
        #: set when a thread has handed the reactor something to call
        self.called_from_thread = threading.Event()

    def callWhenRunning(self, f: Callable[[], Any]) -> None:
        self.when_running.append(f)

    def addSystemEventTrigger(self, phase: str, event: str, f: Callable[..., Any], *args: Any) -> None:
        assert (phase, event) == ("during", "shutdown")
        self.shutdown.append((f, args))

    def installNameResolver(self, resolver: Any) -> None:
        self.nameResolver = resolver

    def callFromThread(self, f: Callable[..., Any], *args: Any) -> None:
        with self._lock:
            self.from_threads.append((f, args))
        self.called_from_thread.set()


class InstallTests(SynchronousTestCase):
    """:func:`nameresolver.install` runs lookups on its own threads, stopped at the reactor's shutdown."""

    def test_pool_threads(self) -> None:
        """A lookup runs on a thread named for the pool (the reactor's own pool is not used: this
        reactor has none); at shutdown the pool's threads end."""
        released = threading.Event()
        seen: list[str] = []

        def getaddrinfo(*args: Any) -> Any:
            seen.append(threading.current_thread().name)
            released.wait(30)
            return V4

        reactor = ShutdownReactor()
        resolver = nameresolver.install(reactor, getaddrinfo=getaddrinfo)
        self.assertIs(reactor.nameResolver, resolver)
        for f in reactor.when_running:
            f()
        receiver = Receiver()
        resolver.resolveHostName(receiver, "mqtt.example.com", 8883)  # type: ignore[arg-type]
        released.set()
        self.assertTrue(reactor.called_from_thread.wait(30))  # (the lookup has returned)
        for f, args in reactor.from_threads:
            f(*args)
        self.assertEqual(resolver.pending, 0)
        for f, args in reactor.shutdown:  # (no lookup under way: joins the pool's threads now)
            f(*args)
        self.assertEqual(pool_threads(), [])
        self.assertEqual(len(seen), 1)
        self.assertTrue(seen[0].startswith("PoolThread-dns-"), seen)
        self.assertEqual(receiver.addresses, [IPv4Address("TCP", "192.0.2.7", 8883)])
        self.assertTrue(receiver.complete)

    def test_shutdown_with_a_hung_lookup(self) -> None:
        """A lookup DNS holds at shutdown does not hold the shutdown: the pool's threads are joined
        by a thread of their own once it returns."""
        released = threading.Event()
        reactor = ShutdownReactor()
        resolver = nameresolver.install(reactor, getaddrinfo=lambda *args: released.wait(30) and V4)
        for f in reactor.when_running:
            f()
        resolver.resolveHostName(Receiver(), "hung.example.com", 8883)  # type: ignore[arg-type]
        for f, args in reactor.shutdown:
            f(*args)  # (returns at once)
        [stopper] = [t for t in threading.enumerate() if t.name == "dns-stop"]
        self.assertTrue(stopper.daemon)
        self.assertEqual(len(pool_threads()), 1)
        released.set()
        stopper.join(30)
        self.assertEqual((stopper.is_alive(), pool_threads()), (False, []))


def pool_threads() -> list[str]:
    """The names of the resolver pool's threads alive."""
    return [t.name for t in threading.enumerate() if t.name.startswith("PoolThread-dns")]
