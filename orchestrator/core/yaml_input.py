"""YAML a person hands the sweep (a config, a catalog, a ``--set`` value), read so that a hostile
or mistaken file is refused in milliseconds, naming the line to fix.

PyYAML's ``safe_load`` builds no arbitrary objects, but it still takes three things a sweep config
never needs and that cost dearly when misused: aliases (nine anchors of nine aliases each expand
to 9**9 nodes, minutes and gigabytes from a few hundred bytes), duplicate keys (the last one wins
silently, so the value a reader sees near the top of the file is not the one that runs) and
unbounded nesting (a long run of ``[`` overflows the composer's recursion with a traceback). This
loader refuses all three while the document is composed, before any value is built. Size is
bounded twice: :func:`read` takes at most 1 MiB from a file, and composing stops after
:data:`MAX_NODES` nodes, since pure-Python PyYAML needs ~10 s for a 1 MiB list.

Anchors are refused rather than capped: a config has a few dozen keys, and a value written twice
reads more plainly than one pointed at. Merge keys (``<<``) go with them, since they exist to pull
in an anchor. Pure module: PyYAML only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

MAX_BYTES = 1 << 20  # the shipped configs and the catalog are a few KiB each
MAX_DEPTH = 32  # a config nests four levels (catalog: schemes, a scheme, fp8_share, a value)
# a shipped config composes to ~200 nodes; the cap keeps a 1 MiB list from taking ~10 s to parse
MAX_NODES = 10_000
_MERGE = "tag:yaml.org,2002:merge"


class YamlRefused(ValueError):
    """Input this loader will not read; the message is one line, with the line number where the
    problem is (1-based) when there is one."""


def read(path: Path) -> bytes:
    """The file's bytes, refused above :data:`MAX_BYTES`: by its size before anything is read,
    and by the bytes read, which also bounds a pipe or a device that ``stat`` cannot size."""
    size = path.stat().st_size
    if size > MAX_BYTES:
        raise YamlRefused(f"{size:,} bytes is over {_limit()}")
    with path.open("rb") as f:
        data = f.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise YamlRefused(f"holds more than {_limit()}")
    return data


def load(text: str | bytes) -> Any:
    """One YAML document as plain data (``None`` when empty); :class:`YamlRefused` for an anchor,
    an alias, a merge key, a repeated key, nesting deeper than :data:`MAX_DEPTH` or a scalar
    Python will not convert; ``yaml.YAMLError`` for YAML that does not parse."""
    loader = _Loader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def _limit() -> str:
    return f"the {MAX_BYTES / (1 << 20):g} MiB limit for a config file"


def _line(node_or_event: Any) -> int:
    return int(node_or_event.start_mark.line) + 1


class _Loader(yaml.SafeLoader):  # type: ignore[misc]  # PyYAML ships no types
    """SafeLoader that refuses while composing (anchors, aliases, depth) and checks the composed
    tree (merge and repeated keys, unconvertible scalars) before constructing it."""

    def __init__(self, stream: str | bytes) -> None:
        super().__init__(stream)
        self._depth = 0
        self._nodes = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            raise YamlRefused(
                f"line {_line(event)}: alias '*{event.anchor}' refused; a config takes no "
                "anchors or aliases, write the value out"
            )
        if event.anchor is not None:
            raise YamlRefused(
                f"line {_line(event)}: anchor '&{event.anchor}' refused; a config takes no "
                "anchors or aliases, write the value out"
            )
        self._depth += 1
        self._nodes += 1
        try:
            if self._depth > MAX_DEPTH:
                raise YamlRefused(f"line {_line(event)}: nested deeper than {MAX_DEPTH} levels")
            if self._nodes > MAX_NODES:
                raise YamlRefused(
                    f"line {_line(event)}: more than {MAX_NODES} keys and values; a config "
                    "holds a few hundred"
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def get_single_data(self) -> Any:
        node = self.get_single_node()
        if node is None:
            return None
        problems: list[str] = []
        self._check(node, (), problems)
        if problems:
            raise YamlRefused("; ".join(problems))
        return self.construct_document(node)

    def _check(self, node: Any, path: tuple[str, ...], problems: list[str]) -> None:
        """Every problem below ``node``, by dotted key path (list items by index, as pydantic
        names them), collected so that one message lists them all."""
        if isinstance(node, yaml.ScalarNode):
            self._scalar(node, problems)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self._check(item, (*path, str(i)), problems)
        elif isinstance(node, yaml.MappingNode):
            first: dict[Any, Any] = {}  # key -> the node it first appeared at
            for key_node, value_node in node.value:
                scalar = isinstance(key_node, yaml.ScalarNode)  # others fail later: unhashable
                text = str(key_node.value) if scalar else "?"
                name = ".".join((*path, text))
                if key_node.tag == _MERGE:
                    problems.append(
                        f"line {_line(key_node)}: merge key '{name}' refused; write the keys out"
                    )
                    continue
                if scalar:
                    key = self._scalar(key_node, problems)
                    if key in first:
                        problems.append(_repeated(name, first[key], key_node))
                    else:
                        first[key] = key_node
                self._check(value_node, (*path, text), problems)

    def _scalar(self, node: Any, problems: list[str]) -> Any:
        """The scalar's value (cached by the constructor for the document it builds next)."""
        try:
            return self.construct_object(node)
        except ValueError as e:  # e.g. an integer past Python's 4300-digit limit
            reason = str(e).split(":")[0]
            shown = node.value if len(node.value) <= 20 else node.value[:20] + "..."
            problems.append(f"line {_line(node)}: value {shown!r} cannot be read ({reason})")
            return None


def _repeated(name: str, first: Any, again: Any) -> str:
    a, b = first.start_mark, again.start_mark
    where = (
        f"lines {a.line + 1} and {b.line + 1}"
        if a.line != b.line
        else f"line {a.line + 1}, columns {a.column + 1} and {b.column + 1}"
    )
    return f"key '{name}' appears twice ({where}); keep one"
