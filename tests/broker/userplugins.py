"""amqtt plugins as a user would write them (named by dotted path in the ``plugins:`` section)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from amqtt.contexts import Action
from amqtt.plugins.base import BaseAuthPlugin, BasePlugin, BaseTopicPlugin

#: What :class:`RecordingEvents` saw, as ``(event, client id or topic)``; tests clear it.
EVENTS: list[tuple[str, Any]] = []
#: The BrokerContext the plugins were given (tests reach the broker through it, as a plugin would).
CONTEXTS: list[Any] = []


class PasswordPrefixAuth(BaseAuthPlugin):
    """Accepts a client whose password is its user name followed by ``-ok``."""

    async def authenticate(self, *, session: Any) -> bool | None:
        return bool(session.username) and session.password == f"{session.username}-ok"


class ExplodingAuth(BaseAuthPlugin):
    """An authentication plugin with a bug: it raises."""

    async def authenticate(self, *, session: Any) -> bool | None:
        raise RuntimeError("the auth backend is down")


class NoSecrets(BaseTopicPlugin):
    """Publishing under ``secret/`` and subscribing to ``forbidden/`` are refused; ``hidden/`` is never received."""

    async def topic_filtering(self, *, session: Any = None, topic: str | None = None,
                              action: Action | None = None) -> bool | None:
        topic = topic or ""
        if action == Action.PUBLISH:
            return not topic.startswith("secret/")
        if action == Action.SUBSCRIBE:
            return not topic.startswith("forbidden/")
        return not topic.startswith("hidden/")

    @dataclass
    class Config:
        """Nothing to configure."""


class RecordingEvents(BasePlugin[Any]):
    """Records the broker events amqtt documents, with their arguments' key fields."""

    def __init__(self, context: Any) -> None:
        super().__init__(context)
        CONTEXTS.append(context)

    async def on_broker_client_connected(self, *, client_id: str, client_session: Any) -> None:
        EVENTS.append(("connected", (client_id, client_session.username)))

    async def on_broker_client_disconnected(self, *, client_id: str, client_session: Any) -> None:
        EVENTS.append(("disconnected", client_id))

    async def on_broker_client_subscribed(self, *, client_id: str, topic: str, qos: int) -> None:
        EVENTS.append(("subscribed", (client_id, topic, qos)))

    async def on_broker_client_unsubscribed(self, *, client_id: str, topic: str) -> None:
        EVENTS.append(("unsubscribed", (client_id, topic)))

    async def on_broker_message_received(self, *, client_id: str, message: Any) -> None:
        EVENTS.append(("received", (client_id, message.topic, bytes(message.data))))

    async def on_broker_retained_message(self, *, client_id: Any, retained_message: Any) -> None:
        EVENTS.append(("retained", (retained_message.topic, bytes(retained_message.data))))

    @dataclass
    class Config:
        """Nothing to configure."""

        note: str = field(default="")


class OwnTopicsOnly(BaseTopicPlugin):
    """A client receives only topics under ``to/<its user name>/`` (decided on the user name alone)."""

    async def topic_filtering(self, *, session: Any = None, topic: str | None = None,
                              action: Action | None = None) -> bool | None:
        if action != Action.RECEIVE:
            return True
        return session is not None and session.username is not None and \
            (topic or "").startswith(f"to/{session.username}/")

    @dataclass
    class Config:
        """Nothing to configure."""


class ExplodingTopics(BaseTopicPlugin):
    """A topic plugin with a bug on publishes under ``boom/``: it raises."""

    async def topic_filtering(self, *, session: Any = None, topic: str | None = None,
                              action: Action | None = None) -> bool | None:
        if action == Action.PUBLISH and (topic or "").startswith("boom/"):
            raise RuntimeError("the ACL backend is down")
        return True

    @dataclass
    class Config:
        """Nothing to configure."""


#: Released by the test that uses :class:`StalledAuth` (at its cleanup).
RELEASE: list[Any] = []


class StalledAuth(BaseAuthPlugin):
    """An authentication backend that does not answer until the test lets it."""

    async def authenticate(self, *, session: Any) -> bool | None:
        import asyncio

        event = asyncio.Event()
        RELEASE.append(event)
        await event.wait()
        return True
