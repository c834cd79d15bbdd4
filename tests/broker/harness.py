"""Start a real broker service on 127.0.0.1 inside a trial test."""

from __future__ import annotations

from typing import Any, Callable

import yaml
from twisted.internet import protocol
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.task import LoopingCall

from gateway.broker.service import BrokerService
from gateway.broker.settings import parse_broker_section
from gateway.config import ErrorList
from gateway.errors import ConfigError

ANONYMOUS = {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}}


def broker_settings(section: dict[str, Any]) -> Any:
    """Build BrokerSettings from a ``broker:`` mapping, failing loudly on config errors."""
    errors = ErrorList()
    settings = parse_broker_section(yaml.safe_load(yaml.safe_dump(section)), errors)
    if errors.lines:
        raise ConfigError(errors.lines)
    return settings


@inlineCallbacks
def start_broker(test: Any, reactor: Any, section: dict[str, Any] | None = None, state_dir: Any = None) -> Any:
    """Start a BrokerService (default: anonymous, one TCP listener on a free port); stopped on cleanup."""
    section = section or {"listeners": {"default": {"endpoint": "tcp:0:interface=127.0.0.1"}}, "plugins": ANONYMOUS}
    service = BrokerService(broker_settings(section), reactor, state_dir=state_dir)
    yield service.startService()
    test.addCleanup(lambda: service.stopService() if service.running else None)
    return service


def port_of(service: BrokerService, listener: str = "default") -> int:
    """The TCP port a listener was given."""
    return service.ports[listener].getHost().port


class RawClient(protocol.Protocol):
    """A client that sends whatever bytes a test gives it and records what comes back."""

    def __init__(self) -> None:
        self.received = b""
        self.lost: Deferred[None] = Deferred()
        #: why the connection ended (ConnectionDone: closed in order; ConnectionLost: reset)
        self.reason: Any = None

    def dataReceived(self, data: bytes) -> None:
        """Keep what the broker sent."""
        self.received += data

    def connectionLost(self, reason: Any = None) -> None:
        """Keep the reason, fire ``lost``."""
        self.reason = reason
        self.lost.callback(None)


def raw_connect(reactor: Any, port: int) -> Deferred[RawClient]:
    """Open a plain TCP connection to the broker."""
    return connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), RawClient())


def eventually(reactor: Any, condition: Callable[[], bool], timeout: float = 10.0,
               interval: float = 0.02) -> Deferred[None]:
    """Fire once ``condition()`` holds, checking every ``interval`` seconds; fail after ``timeout``.

    For states that only the broker's side shows (a publisher held back), where no packet
    arrives to wait for.
    """
    done: Deferred[None] = Deferred()

    def check() -> None:
        if condition() and not done.called:
            done.callback(None)

    def stop(result: Any) -> Any:
        if poller.running:
            poller.stop()
        return result

    poller = LoopingCall(check)
    poller.clock = reactor
    done.addTimeout(timeout, reactor).addBoth(stop)
    poller.start(interval)
    return done
