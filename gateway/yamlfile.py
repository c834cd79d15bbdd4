"""Reads one configuration file into a mapping, every problem as one line naming the file.

The file must be UTF-8 YAML whose top is a mapping, of at most :data:`MAX_BYTES`. Beyond
what YAML itself refuses, a key given twice in one mapping is an error (YAML would silently
keep the last one), and so are two keys written differently that are one key once read
(``true`` and ``True``, ``yes`` and ``on``, ``1`` and ``01``, ``1`` and ``"1"``), and so
is a document that nests too deeply or grows too large once its aliases are expanded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

#: The most values (keys, scalars, lists, mappings) a file may hold, aliases expanded: far
#: above any real configuration, far below what a file of nested aliases can expand to.
MAX_VALUES = 1_000_000
#: The largest file read, in bytes: a hundred times a large configuration; a bigger one is
#: refused before it is parsed (PyYAML takes about a minute per ten megabytes of values).
MAX_BYTES = 4 * 2**20


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping.

    Two keys are one key when they are read as equal values (YAML 1.1 reads ``true``,
    ``True``, ``yes`` and ``on`` as the same boolean; a Python mapping takes ``1``, ``1.0``
    and ``true`` as one key) or as the same text (the configuration names keys by their
    text: ``1`` and ``"1"``). Keys brought in by a merge (``<<: *base``) may be
    overridden, as YAML intends.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.ScalarNode] = {}  # each key's value and text -> its node
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                key = self.construct_object(key_node)  # kept: the mapping's own construction reuses it
                first = seen.get(key, seen.get(str(key)))
                if first is not None:
                    raise yaml.constructor.ConstructorError(
                        None, None, _duplicate_key(first, key_node), key_node.start_mark)
                seen[key] = seen[str(key)] = key_node
        return super().construct_mapping(node, deep)

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        """An integer; one longer than Python converts from text (4300 digits) is a YAML
        error at its line, not a ValueError."""
        try:
            return super().construct_yaml_int(node)
        except ValueError:
            digits = sum(char.isdigit() for char in str(node.value))
            raise yaml.constructor.ConstructorError(
                None, None, f"an integer of {digits} digits is too long", node.start_mark) from None


def _source(node: yaml.ScalarNode) -> str:
    """The text of ``node`` as written (quotes included), or its value if the text is not at hand."""
    start, end = node.start_mark, node.end_mark
    if isinstance(start.buffer, str) and end is not None:
        return str(start.buffer[start.index:end.index])
    return str(node.value)


def _duplicate_key(first: yaml.ScalarNode, again: yaml.ScalarNode) -> str:
    """What is wrong with key ``again``, one key with ``first`` of the same mapping."""
    if (first.tag, first.value) == (again.tag, again.value):
        return f"duplicate key {again.value!r} (YAML would keep only the last)"
    return (f"duplicate key {_source(again)!r}: read as the same key as {_source(first)!r} on line "
            f"{first.start_mark.line + 1} (only the last would be kept; quote keys meant as text)")


_StrictLoader.add_constructor("tag:yaml.org,2002:int", _StrictLoader.construct_yaml_int)


def _too_many_values(data: Any) -> bool:
    """Whether ``data``, walked as a tree (aliases expanded), holds more than :data:`MAX_VALUES`."""
    stack, count = [data], 0
    while stack:
        item = stack.pop()
        count += 1
        if count > MAX_VALUES:
            return True
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def _yaml_problem(exc: yaml.YAMLError, text: str) -> str:
    mark = getattr(exc, "problem_mark", None)
    if isinstance(exc, yaml.reader.ReaderError):
        line = text.count("\n", 0, exc.position) + 1
        code = exc.character if isinstance(exc.character, int) else ord(exc.character)
        return f"line {line}: not valid YAML: the character U+{code:04X} is not allowed in YAML text"
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
    problem = getattr(exc, "problem", None) or str(exc)
    return f"{where}not valid YAML: {' '.join(str(problem).split())}"


def read_yaml(path: Path, errors: list[str]) -> dict[str, Any]:
    """The mapping in the YAML file ``path`` (``{}`` when empty or unusable).

    :param errors: each problem is appended as one line, ``path: [line N: ]what is wrong``.
    """
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_BYTES + 1)
    except OSError as exc:
        errors.append(f"{path}: cannot read: {exc.strerror or exc}")
        return {}
    if len(raw) > MAX_BYTES:
        errors.append(f"{path}: larger than {MAX_BYTES} bytes: not read (a configuration is far smaller)")
        return {}
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        errors.append(f"{path}: line {line}: not valid UTF-8 (byte 0x{raw[exc.start]:02x} at offset"
                      f" {exc.start}); save the file as UTF-8")
        return {}
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        errors.append(f"{path}: {_yaml_problem(exc, text)}")
        return {}
    except RecursionError:
        errors.append(f"{path}: not valid YAML: nested too deeply")
        return {}
    if data is None:
        return {}
    if not isinstance(data, dict):
        errors.append(f"{path}: <top>: must be a mapping of sections, not {type(data).__name__}")
        return {}
    if _too_many_values(data):
        errors.append(f"{path}: more than {MAX_VALUES} values once its aliases are expanded")
        return {}
    return data
