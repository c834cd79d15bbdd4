"""Reads one configuration file into a mapping, every problem as one line naming the file.

The file must be UTF-8 YAML whose top is a mapping, of at most :data:`MAX_BYTES`. Beyond
what YAML itself refuses, a key given twice in one mapping is an error (YAML would silently
keep the last one), and so is a document that nests too deeply or grows too large once its
aliases are expanded. Keys are names: a key is read as the text written (``ON:`` is the key
``"ON"``, not YAML 1.1's boolean true, and ``01:`` is ``"01"``); values are typed as usual, a
number keeping the text written for it, which a key that takes text reads (``0123``, not 83).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from gateway import jsontext

#: The most values (keys, scalars, lists, mappings) a file may hold, aliases expanded: far
#: above any real configuration, far below what a file of nested aliases can expand to.
MAX_VALUES = 1_000_000
#: The largest file read, in bytes: a hundred times a large configuration; a bigger one is
#: refused before it is parsed (PyYAML takes about a minute per ten megabytes of values).
MAX_BYTES = 4 * 2**20


class WrittenInt(int):
    """An integer read from a configuration file, with the text written for it (``0123`` for
    YAML 1.1's octal 83): a key that takes text reads what was written (:func:`written_text`)."""

    written: str


class WrittenFloat(float):
    """A number with a fraction read from a configuration file, with the text written for it
    (``1.10`` for 1.1): a key that takes text reads what was written (:func:`written_text`)."""

    written: str


def written_text(value: object) -> str | None:
    """The text a number of a configuration file was written as, or ``None`` for any other
    value (a number from elsewhere, JSON's, has no other text than its own)."""
    return value.written if isinstance(value, (WrittenInt, WrittenFloat)) else None


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, reading keys as text and refusing a key given twice in one mapping.

    A scalar key is the text written (quoted or not): YAML 1.1 would read ``ON``, ``yes`` and
    ``True`` as one boolean and ``1``, ``01`` and ``1.0`` as one number, and the configuration,
    which names keys by their text, would then see ``"True"`` or ``"1"``. So ``true`` and
    ``True`` are two keys, and ``1`` and ``"1"`` one (given twice). Keys brought in by a merge
    (``<<: *base``) may be overridden, as YAML intends.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[str, yaml.ScalarNode] = {}  # each key's text -> its node
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                first = seen.get(key_node.value)
                if first is not None:
                    raise yaml.constructor.ConstructorError(
                        None, None, _duplicate_key(first, key_node), key_node.start_mark)
                seen[key_node.value] = key_node
        return super().construct_mapping(node, deep)

    def flatten_mapping(self, node: yaml.MappingNode) -> None:
        """As YAML's (merges brought in), then every scalar key made text as written; a copy of
        its node, which may be an anchor that a value uses too."""
        super().flatten_mapping(node)
        node.value = [(yaml.ScalarNode("tag:yaml.org,2002:str", key.value, key.start_mark, key.end_mark, key.style)
                       if isinstance(key, yaml.ScalarNode) else key, value) for key, value in node.value]

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        """An integer, with the text written for it (:class:`WrittenInt`); one longer than
        Python converts from text (4300 digits) is a YAML error at its line, not a ValueError."""
        try:
            number = WrittenInt(super().construct_yaml_int(node))
        except ValueError:
            digits = sum(char.isdigit() for char in str(node.value))
            raise yaml.constructor.ConstructorError(
                None, None, f"an integer of {digits} digits is too long", node.start_mark) from None
        number.written = str(node.value)
        return number

    def construct_yaml_float(self, node: yaml.ScalarNode) -> float:
        """A number with a fraction, with the text written for it (:class:`WrittenFloat`)."""
        number = WrittenFloat(super().construct_yaml_float(node))
        number.written = str(node.value)
        return number

    def construct_yaml_str(self, node: yaml.ScalarNode) -> str:
        """A string; one holding half of a UTF-16 surrogate pair (``"\\uD800"``: YAML's
        ``\\u`` escapes are read one by one) is a YAML error at its line, since it is no
        text: a value with one was taken, and failed far away when the gateway encoded it."""
        value = super().construct_yaml_str(node)
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            code = ord(value[exc.start])
            raise yaml.constructor.ConstructorError(
                None, None, f"\\u{code:04X} is half of a UTF-16 surrogate pair, not a character"
                " (write a character beyond U+FFFF as \\U and eight hex digits)", node.start_mark) from None
        return value


def _source(node: yaml.ScalarNode) -> str:
    """The text of ``node`` as written (quotes included), or its value if the text is not at hand."""
    start, end = node.start_mark, node.end_mark
    if isinstance(start.buffer, str) and end is not None:
        return str(start.buffer[start.index:end.index])
    return str(node.value)


def _duplicate_key(first: yaml.ScalarNode, again: yaml.ScalarNode) -> str:
    """What is wrong with key ``again``, the same text as ``first`` of the same mapping."""
    line = first.start_mark.line + 1
    if _source(first) == _source(again):
        return f"duplicate key {again.value!r}, given first on line {line} (YAML would keep only the last)"
    return (f"duplicate key {_source(again)!r}: the same key as {_source(first)!r} on line "
            f"{line} (YAML would keep only the last)")


_StrictLoader.add_constructor("tag:yaml.org,2002:int", _StrictLoader.construct_yaml_int)
_StrictLoader.add_constructor("tag:yaml.org,2002:float", _StrictLoader.construct_yaml_float)
_StrictLoader.add_constructor("tag:yaml.org,2002:str", _StrictLoader.construct_yaml_str)


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


def load(text: str, loader: type[yaml.SafeLoader] = yaml.SafeLoader) -> Any:
    """``yaml.load(text, Loader=loader)``, with YAML nested deeper than Python's recursion
    limit refused as the :class:`yaml.YAMLError` every other malformed text is (PyYAML's
    composer recurses, and raises :class:`RecursionError` for it).

    :param text: the YAML text.
    :param loader: a :class:`yaml.SafeLoader` or a subclass.
    :raises yaml.YAMLError: ``text`` is not valid YAML, or nested too deeply.
    """
    try:
        return yaml.load(text, Loader=loader)  # noqa: S506 - a SafeLoader (sub)class
    except RecursionError:
        raise yaml.YAMLError("nested too deeply") from None


def read_yaml(path: Path, errors: list[str]) -> dict[str, Any]:
    """The mapping in the YAML file ``path`` (``{}`` when empty or unusable).

    :param errors: each problem is appended as one line, ``path: [line N: ]what is wrong``.
    """
    text = read_text(path, errors)
    return {} if text is None else parse_mapping(text, path, errors)


def read_text(path: Path, errors: list[str]) -> str | None:
    """The text of the configuration file ``path``, or ``None`` when it cannot be read, is
    larger than :data:`MAX_BYTES` or is not UTF-8 (the problem appended to ``errors``)."""
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_BYTES + 1)
    except OSError as exc:
        errors.append(f"{path}: cannot read: {exc.strerror or exc}")
        return None
    if len(raw) > MAX_BYTES:
        errors.append(f"{path}: larger than {MAX_BYTES} bytes: not read (a configuration is far smaller)")
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        errors.append(f"{path}: line {line}: not valid UTF-8 (byte 0x{raw[exc.start]:02x} at offset"
                      f" {exc.start}); save the file as UTF-8")
        return None


def _top_given(data: Any) -> str:
    """What a file that holds no mapping holds, as its error says it: text by its length alone,
    never quoted, for such a file is most often another one named by mistake (a private key, a
    token or password file: ``--config /etc/gateway/key.pem``), whose first characters would go
    to the log (journald, under the unit's ``ExecStartPre``); anything else as
    :func:`gateway.jsontext.given` names it."""
    if isinstance(data, str):
        return f"text ({len(data)} characters, not shown: is it the configuration file?)"
    return jsontext.given(data)


def parse_mapping(text: str, path: Path, errors: list[str]) -> dict[str, Any]:
    """The mapping that ``text``, read from ``path``, holds (``{}`` when empty or unusable:
    the problem appended to ``errors``, naming ``path``)."""
    try:
        data = load(text, _StrictLoader)
    except yaml.YAMLError as exc:
        errors.append(f"{path}: {_yaml_problem(exc, text)}")
        return {}
    if data is None:
        return {}
    if not isinstance(data, dict):
        errors.append(f"{path}: <top>: must be a mapping of sections, not {_top_given(data)}")
        return {}
    if _too_many_values(data):
        errors.append(f"{path}: more than {MAX_VALUES} values once its aliases are expanded")
        return {}
    return data
