"""An in-memory container runtime, for deterministic tests of the units and operations."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from twisted.internet.defer import Deferred, fail, succeed

from gateway.containers.description import ContainerDescription
from gateway.containers.errors import ImageError, NotFound, RuntimeFailure
from gateway.containers.runtime import ContainerState, ImageInfo, RuntimeEvent


class FakeStream:
    """A stream the test ends by hand."""

    def __init__(self) -> None:
        self.done: Deferred[None] = Deferred()

    def cancel(self) -> None:
        if not self.done.called:
            self.done.callback(None)


class FakeRuntime:
    """Containers and images as dicts; the test plays the containers' processes with
    :meth:`exit` and reads what was asked in ``calls``."""

    def __init__(self) -> None:
        self.images: dict[str, ImageInfo] = {}
        self.registry: dict[str, ImageInfo] = {}
        self.containers_by_id: dict[str, ContainerState] = {}
        self.created: dict[str, ContainerDescription] = {}
        self.calls: list[tuple[str, ...]] = []
        self.listeners: list[Callable[[RuntimeEvent], None]] = []
        self.streams: list[FakeStream] = []
        self.output: dict[str, Callable[[int, bytes], None]] = {}
        self.log_streams: dict[str, FakeStream] = {}
        self.refuse_start: str | None = None
        self.printed: dict[str, list[tuple[int, bytes]]] = {}
        self.held_inspects: list[tuple[Deferred[ContainerState], str]] | None = None
        self.orphans: list[str] = []  # containers removed while stuck stopping: their processes run on
        self.held_events: list[RuntimeEvent] | None = None  # (hold_events)
        self._next = 0

    def print(self, container_id: str, stream: int, data: bytes) -> None:
        """The container's process writes ``data`` (1 stdout, 2 stderr): kept, as podman keeps
        it, for a later :meth:`logs`, and given to the one following now."""
        self.printed.setdefault(container_id, []).append((stream, data))
        if container_id in self.log_streams:
            self.output[container_id](stream, data)

    def hold_inspect(self) -> None:
        """Answer no inspect until :meth:`release_inspects`."""
        self.held_inspects = []

    def release_inspects(self) -> None:
        """Answer the inspects held so far, and the later ones at once."""
        held, self.held_inspects = self.held_inspects or [], None
        for d, container_id in held:
            state = self.containers_by_id.get(container_id)
            if state is None:
                d.errback(NotFound(container_id))  # removed meanwhile
            else:
                d.callback(state)

    def hold_events(self) -> None:
        """Stream no event until :meth:`release_events`, as podman's event stream lags behind
        its answers (a stop answered before its ``died`` event is read)."""
        self.held_events = []

    def release_events(self) -> None:
        """Stream the events held so far, in order, and the later ones at once."""
        held, self.held_events = self.held_events or [], None
        for event in held:
            for listener in list(self.listeners):
                listener(event)

    def _emit(self, action: str, state: ContainerState, code: int | None = None) -> None:
        event = RuntimeEvent(action, state.id, state.name, dict(state.labels), code)
        if self.held_events is not None:
            self.held_events.append(event)
            return
        for listener in list(self.listeners):
            listener(event)

    def exit(self, container_id: str, code: int | None) -> None:
        """The container's process ends with ``code`` (None: its ``died`` event carries none)."""
        state = self.containers_by_id[container_id]
        self.containers_by_id[container_id] = ContainerState(state.id, state.name, state.labels, False, None, code,
                                                             state.started_at, state.image_id)
        stream = self.log_streams.pop(container_id, None)
        if stream is not None:
            stream.cancel()  # like podman, a followed log ends with the container
        self._emit("died", state, code)

    def ping(self) -> Deferred[None]:
        return succeed(None)

    def pull(self, reference: str, credentials: tuple[str, str] | None, tls_verify: bool) -> Deferred[ImageInfo]:
        self.calls.append(("pull", reference, str(tls_verify)))
        if reference not in self.registry:
            return fail(ImageError(f"cannot pull {reference}: manifest unknown"))
        self.images[self.registry[reference].id] = self.registry[reference]
        return succeed(self.registry[reference])

    def load(self, archive: Path) -> Deferred[list[str]]:
        return fail(ImageError("no archives here"))

    def image(self, reference: str) -> Deferred[ImageInfo]:
        found = next((i for i in self.images.values() if reference in (i.id, *i.names)), None)
        return succeed(found) if found else fail(NotFound(reference))

    def remove_image(self, image_id: str) -> Deferred[None]:
        self.calls.append(("rmi", image_id))
        if any(c.image_id == image_id for c in self.containers_by_id.values()):
            return fail(RuntimeFailure("image in use"))
        self.images.pop(image_id, None)
        return succeed(None)

    def create(self, name: str, image_id: str, description: ContainerDescription,
               labels: dict[str, str]) -> Deferred[str]:
        if any(c.name == name for c in self.containers_by_id.values()):
            return fail(RuntimeFailure(f"name {name} in use"))
        self._next += 1
        cid = f"c{self._next}"
        self.containers_by_id[cid] = ContainerState(cid, name, dict(labels), image_id=image_id,
                                                    memory_limit=description.memory_bytes)
        self.created[cid] = description
        self.calls.append(("create", name))
        return succeed(cid)

    def start(self, container_id: str) -> Deferred[None]:
        self.calls.append(("start", container_id))
        if self.refuse_start:
            return fail(RuntimeFailure(self.refuse_start))
        state = self.containers_by_id[container_id]
        if state.stopping:  # (as podman 4.3 refuses it)
            return fail(RuntimeFailure(f"container {container_id} must be in Created or Stopped state to be "
                                       "started: container state improper"))
        if not state.running:
            self._next += 1
            state = ContainerState(state.id, state.name, state.labels, True, 1000 + self._next, None,
                                   "2026-01-01T00:00:00Z", state.image_id, state.memory_limit)
            self.containers_by_id[container_id] = state
            self._emit("start", state)
        return succeed(None)

    def stop(self, container_id: str, timeout: float) -> Deferred[None]:
        self.calls.append(("stop", container_id))
        state = self.containers_by_id[container_id]
        if state.stopping:  # a stop cut short: podman 4.3 stops it again
            self.containers_by_id[container_id] = ContainerState(state.id, state.name, state.labels, True, state.pid)
            self.exit(container_id, 137)
        elif state.running:
            self.exit(container_id, 143)
        return succeed(None)

    def remove(self, container_id: str) -> Deferred[None]:
        self.calls.append(("rm", container_id))
        state = self.containers_by_id.pop(container_id, None)
        if state is not None and state.stopping:  # podman 4.3 forgets it, its process runs on
            self.orphans.append(container_id)
        return succeed(None)

    def inspect(self, container_id: str) -> Deferred[ContainerState]:
        if self.held_inspects is not None and container_id in self.containers_by_id:
            d: Deferred[ContainerState] = Deferred()
            self.held_inspects.append((d, container_id))
            return d
        state = self.containers_by_id.get(container_id)
        return succeed(state) if state else fail(NotFound(container_id))

    def containers(self, label: str) -> Deferred[list[ContainerState]]:
        return succeed([c for c in self.containers_by_id.values() if label in c.labels])

    def events(self, on_event: Callable[[RuntimeEvent], None]) -> Deferred[Any]:
        stream = FakeStream()
        self.listeners.append(on_event)

        def ended(result: Any) -> Any:
            self.listeners.remove(on_event)
            return result  # (how it ended: the supervisor logs it)

        stream.done.addBoth(ended)
        self.streams.append(stream)
        return succeed(stream)

    def logs(self, container_id: str, since: str, on_output: Callable[[int, bytes], None]) -> Deferred[Any]:
        self.output[container_id] = on_output
        for printed in self.printed.get(container_id, []):  # (every run's: the tests print once)
            on_output(*printed)
        stream = FakeStream()
        if self.containers_by_id[container_id].running:
            self.log_streams[container_id] = stream
        else:
            stream.cancel()
        return succeed(stream)
