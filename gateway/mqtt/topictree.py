"""Topic filters or topic names in a tree of their levels: which match, without trying each one.

A :class:`TopicTree` maps strings split at ``/`` to values, one node per level (an empty
level is a level too: ``a//b`` has three). Two questions are asked of it, each with the
MQTT 3.1.1 rules of :func:`gateway.mqtt.topics.matches` (§4.7):

- a tree of **filters**: :meth:`TopicTree.filters_matching` gives the values of every filter
  that matches a topic name (``+`` is one level, ``#`` the rest of them and their parent);
- a tree of **topic names**: :meth:`TopicTree.topics_matching` gives the values of every name
  that a filter matches.

Neither walks more of the tree than the levels that can match, so the cost grows with the
depth and the number of matches, not with the number of keys. A level that leads on to one
level only (``d1`` in ``devices/d1/cmd/#``, the common case) holds that child itself, not
a dict of one: a filter of its own then costs a node per level and the level's text. Topics starting with ``$``
are not matched by a filter whose first level is a wildcard (§4.7.2). Wildcards are those
of valid filters: ``+`` as a whole level, ``#`` as the whole last level (a ``#`` elsewhere,
which no valid filter has, is taken as a plain level).
"""

from __future__ import annotations

from typing import Generic, TypeVar

V = TypeVar("V")


class _Node(Generic[V]):
    """One level: its text, its children (none, the one child itself, or a dict by their
    text), the value of the key ending here and that of the key ending here with ``/#``
    (``rest``: a filter such as ``devices/d1/#``, the most common, costs no node of its own
    for its ``#``)."""

    __slots__ = ("name", "children", "value", "rest")

    def __init__(self, name: str) -> None:
        self.name = name
        self.children: _Node[V] | dict[str, _Node[V]] | None = None
        self.value: V | None = None
        self.rest: V | None = None

    def child(self, name: str) -> _Node[V] | None:
        """The child for the level ``name``, if there is one."""
        children = self.children
        if children is None:
            return None
        if isinstance(children, dict):
            return children.get(name)
        return children if children.name == name else None

    def all_children(self) -> list[_Node[V]]:
        """Every child."""
        children = self.children
        if children is None:
            return []
        if isinstance(children, dict):
            return list(children.values())
        return [children]

    def add_child(self, name: str) -> _Node[V]:
        """A new child for the level ``name`` (there is none yet)."""
        child: _Node[V] = _Node(name)
        children = self.children
        if children is None:
            self.children = child
        elif isinstance(children, dict):
            children[name] = child
        else:
            self.children = {children.name: children, name: child}
        return child

    def remove_child(self, child: _Node[V]) -> None:
        """Forget ``child``; one left is held as itself again."""
        children = self.children
        if isinstance(children, dict):
            del children[child.name]
            if len(children) == 1:
                self.children = next(iter(children.values()))
        else:
            self.children = None

    @property
    def unused(self) -> bool:
        """Whether no key ends here or below."""
        return self.value is None and self.rest is None and self.children is None


def _levels(key: str) -> tuple[list[str], bool]:
    """The levels of ``key`` down to its node, and whether it ends with a ``#`` level (kept in ``rest``)."""
    levels = key.split("/")
    if levels[-1] == "#":
        del levels[-1]
        return levels, True
    return levels, False


class TopicTree(Generic[V]):
    """Keys (topic filters, or topic names) by their levels, each with a value (never ``None``).

    Adding a key that is there replaces its value.
    """

    __slots__ = ("_root",)

    def __init__(self) -> None:
        self._root: _Node[V] = _Node("")

    @property
    def empty(self) -> bool:
        """Whether the tree holds no key (and no node but its root)."""
        return self._root.unused

    def add(self, key: str, value: V) -> None:
        """Keep ``value`` for ``key`` (a filter or a topic name)."""
        levels, rest = _levels(key)
        node = self._root
        for level in levels:
            node = node.child(level) or node.add_child(level)
        if rest:
            node.rest = value
        else:
            node.value = value

    def remove(self, key: str) -> None:
        """Forget ``key`` (nothing happens if it is not there), and the levels only it used."""
        levels, rest = _levels(key)
        path = [self._root]
        for level in levels:
            child = path[-1].child(level)
            if child is None:
                return
            path.append(child)
        if rest:
            path[-1].rest = None
        else:
            path[-1].value = None
        for parent, node in zip(reversed(path[:-1]), reversed(path)):
            if not node.unused:
                break
            parent.remove_child(node)

    def filters_matching(self, topic: str) -> list[V]:
        """The values of the filters (the keys, in a tree of filters) that match the topic name ``topic``.

        Each value once for a valid topic name; in no particular order.
        """
        levels = topic.split("/")
        last = len(levels)
        found: list[V] = []
        pending: list[tuple[_Node[V], int]] = [(self._root, 0)]
        while pending:
            node, depth = pending.pop()
            if depth == last:
                if node.value is not None:
                    found.append(node.value)
                if node.rest is not None:  # "a/#" matches "a" too (§4.7.1.2)
                    found.append(node.rest)
                continue
            wild = depth or not topic.startswith("$")
            if wild and node.rest is not None:
                found.append(node.rest)
            if node.children is None:
                continue
            if wild:
                one = node.child("+")
                if one is not None:
                    pending.append((one, depth + 1))
            same = node.child(levels[depth])
            if same is not None:
                pending.append((same, depth + 1))
        return found

    def topics_matching(self, topic_filter: str) -> list[V]:
        """The values of the topic names (the keys, in a tree of names) that ``topic_filter`` matches.

        Each value once; in no particular order.
        """
        levels = topic_filter.split("/")
        last = len(levels)
        found: list[V] = []
        pending: list[tuple[_Node[V], int]] = [(self._root, 0)]
        while pending:
            node, depth = pending.pop()
            if depth == last:
                if node.value is not None:
                    found.append(node.value)
                continue
            level = levels[depth]
            if level == "#" and depth == last - 1:
                if node.value is not None:  # "a/#" matches "a" too (§4.7.1.2)
                    found.append(node.value)
                self._everything_under(node, depth, found)
                continue
            if level == "+":
                if node.rest is not None and depth == last - 1:
                    found.append(node.rest)  # a name ending in a "#" level (no valid one does)
                pending.extend((child, depth + 1) for child in node.all_children()
                               if depth or not child.name.startswith("$"))
            else:
                child = node.child(level)
                if child is not None:
                    pending.append((child, depth + 1))
        return found

    @staticmethod
    def _everything_under(top: _Node[V], depth: int, found: list[V]) -> None:
        """Add the values below ``top`` (at ``depth``; not its own) to ``found``: what a ``#`` there matches."""
        if top.rest is not None:
            found.append(top.rest)
        pending = [child for child in top.all_children() if depth or not child.name.startswith("$")]
        while pending:
            node = pending.pop()
            if node.value is not None:
                found.append(node.value)
            if node.rest is not None:
                found.append(node.rest)
            pending.extend(node.all_children())
